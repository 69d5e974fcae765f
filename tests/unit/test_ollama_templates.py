"""Ollama Modelfiles for each template family, golden: the exact Modelfile text for the templates that
translate, the exact refusal for those that cannot (a Modelfile that prompts differently from training
must never be written). The TEMPLATEs are then rendered by Go's own text/template (tests/go/, the
engine Ollama runs), not only by tunery's renderer, and compared with the Jinja template."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from external_tools import go, require
from template_helpers import tokenizer_with
from tunery.errors import TuneryError
from tunery.export import ollama

GO_PROGRAM = Path(__file__).resolve().parents[1] / "go" / "ollama_render.go"

CHATML_BODY = ('{{ range .Messages }}{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n'
               '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
               '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n'
               '{{ end }}{{ end }}<|im_start|>assistant\n')
GOLDEN_MODELFILES = {
    "smollm2": (
        'FROM ./m.gguf\nTEMPLATE """' + CHATML_BODY + '"""\n'
        'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""\n'
        'PARAMETER stop "<|im_end|>"\n'),
    "qwen2.5-7b-instruct": (
        'FROM ./m.gguf\nTEMPLATE """' + CHATML_BODY + '"""\n'
        'SYSTEM """You are Qwen, created by Alibaba Cloud. You are a helpful assistant."""\n'
        'PARAMETER stop "<|im_end|>"\n'),
    # The empty reasoning block belongs to the last answer only; prompts end before it.
    "qwen3-0.6b": 'FROM ./m.gguf\nTEMPLATE """' + CHATML_BODY + '"""\nPARAMETER stop "<|im_end|>"\n',
}
REFUSED = {
    # Llama 3.x always writes a system turn (knowledge date, today's date), empty without a system
    # message; Ollama's SYSTEM line adds nothing for an empty text, so no per-message TEMPLATE matches.
    "llama-3.3-70b-instruct": "the Ollama TEMPLATE derived from the chat template does not reproduce it",
    "mistral-7b-instruct-v0.2": "the chat template could not be rendered for the Ollama translation",
    "gemma-2-2b-it": "the chat template could not be rendered for the Ollama translation",
    # Mistral Nemo moves the system message into the last user turn.
    "mistral-nemo-instruct-2407": "the chat template does not write each message in its own place",
}
CONVERSATIONS = ollama.CHECK_CONVERSATIONS + [
    [{"role": "user", "content": "Quote: {{ .Content }} and \"\"\" stay text"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "empty system"}],
]


@pytest.fixture(scope="module")
def tokenizers(smol_tokenizer):
    found = {"smollm2": smol_tokenizer}
    for name in [*GOLDEN_MODELFILES, *REFUSED]:
        if name != "smollm2":
            found[name] = tokenizer_with(smol_tokenizer, name)
    return found


def template_and_system(modelfile: str) -> tuple[str, str | None]:
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    system = modelfile.split('SYSTEM """', 1)[1].split('"""', 1)[0] if 'SYSTEM """' in modelfile else None
    return template, system


@pytest.mark.parametrize("name", sorted(GOLDEN_MODELFILES))
def test_modelfile_is_the_golden_text(tokenizers, name):
    tok = tokenizers[name]
    text, record = ollama.modelfile(tok, "m.gguf", [tok.eos_token])
    assert text == GOLDEN_MODELFILES[name]
    assert record["template_matches"] is True and record["template_checked_on"] == 4


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_templates_without_an_ollama_translation_are_refused_with_the_reason(tokenizers, name):
    tok = tokenizers[name]
    with pytest.raises(TuneryError) as err:
        ollama.modelfile(tok, "m.gguf", [tok.eos_token])
    assert err.value.what.startswith(REFUSED[name])


@pytest.fixture(scope="session")
def go_renderer(tmp_path_factory):
    """tests/go/ollama_render.go, built once (about a second)."""
    require("go", go())
    binary = tmp_path_factory.mktemp("go") / "ollama_render"
    env = {"GOCACHE": str(binary.parent / "cache"), "GOPATH": str(binary.parent / "path"), "GOFLAGS": "-mod=mod"}
    subprocess.run([go(), "build", "-o", str(binary), str(GO_PROGRAM)], check=True, timeout=300,
                   cwd=binary.parent, env=os.environ | env)

    def render(cases: list[dict]) -> list[str]:
        proc = subprocess.run([str(binary)], input=json.dumps(cases), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    return render


@pytest.mark.go
@pytest.mark.parametrize("name", sorted(GOLDEN_MODELFILES))
def test_go_text_template_renders_the_modelfile_as_the_jinja_template_does(tokenizers, go_renderer, name):
    tok = tokenizers[name]
    template, system = template_and_system(GOLDEN_MODELFILES[name])
    cases = [{"template": template, "system": system or "", "messages": conv} for conv in CONVERSATIONS]
    rendered = go_renderer(cases)
    for conv, text in zip(CONVERSATIONS, rendered):
        expected = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        assert text == expected, json.dumps(conv)
        assert ollama.render_go_template(template, conv, system) == text  # tunery's renderer agrees with Go
