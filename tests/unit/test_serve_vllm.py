"""`tunery serve --engine vllm`: vLLM's command line built from run folders (here), and vLLM itself
serving the same names (only where vLLM is installed: GPU machines)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import pytest

from serve_helpers import CHAT, cli_env, make_runs, wait_until_healthy
from tunery.errors import TuneryError
from tunery.serve.vllm import vllm_command, vllm_installed


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smol_tokenizer):
    return make_runs(tmp_path_factory.mktemp("vllm"), smol_tokenizer)


def test_the_command_serves_each_run_as_a_lora_module_under_its_name(runs):
    base, (alpha, beta) = runs
    argv, served = vllm_command([str(alpha), f"b2={beta}"], None, "127.0.0.1", 8123)
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--model") + 1] == str(base.resolve())
    assert served == base.name and argv[argv.index("--served-model-name") + 1] == base.name
    start = argv.index("--lora-modules") + 1
    assert argv[start:start + 2] == [f"alpha={alpha.resolve() / 'adapter'}", f"b2={beta.resolve() / 'adapter'}"]
    assert argv[argv.index("--max-lora-rank") + 1] == "8"  # rank 4, rounded up to a rank vLLM takes
    assert argv[argv.index("--max-loras") + 1] == "2"
    template = argv[argv.index("--chat-template") + 1]
    assert template.endswith("chat_template.jinja") and "<|im_start|>" in open(template).read()
    assert "--api-key" not in argv  # the key goes through the environment, out of `ps`


def test_runs_on_different_bases_or_full_runs_are_refused(runs, tmp_path):
    _, (alpha, beta) = runs
    other = tmp_path / "other"
    shutil.copytree(beta, other)
    info = json.loads((other / "run.json").read_text())
    (other / "run.json").write_text(json.dumps(info | {"base_model": str(tmp_path / "elsewhere")}))
    with pytest.raises(TuneryError, match="do not share one base model"):
        vllm_command([str(alpha), str(other)], None, "127.0.0.1", 8000)
    assert vllm_command([str(alpha), str(other)], str(alpha.parent.parent / "base"), "127.0.0.1", 8000)
    (other / "run.json").write_text(json.dumps(info | {"adapter": "full"}))
    with pytest.raises(TuneryError, match="full run"):
        vllm_command([str(other)], None, "127.0.0.1", 8000)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not (vllm_installed() and _cuda()),
                    reason="vLLM is not installable here: it ships CUDA builds only and this machine has no GPU")
def test_vllm_serves_the_runs_under_the_same_names(runs, tmp_path):
    import openai

    base, (alpha, beta) = runs
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tunery.cli.main", "serve", str(alpha), str(beta), "--engine",
                             "vllm", "--port", str(port), "--max-prompt-tokens", "256", "--max-tokens", "64"],
                            cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", 600)
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        assert {m.id for m in api.models.list()} >= {base.name, "alpha", "beta"}
        answers = {name: api.chat.completions.create(model=name, messages=CHAT, max_tokens=12,
                                                     temperature=0).choices[0].message.content
                   for name in (base.name, "alpha", "beta")}
        assert len(set(answers.values())) == 3  # each adapter is applied
    finally:
        proc.terminate()
        proc.wait(120)
