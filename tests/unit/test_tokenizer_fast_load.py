"""`tunery data check` needs only the tokenizer and chat template: it neither converts the embedded
model nor imports torch, and the tokenizer it reads from the GGUF file is transformers' own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from data_helpers import chat, write

# Runs the real command in-process, then reports what it imported.
CHECK_THEN_REPORT = """
import json, sys
from tunery.cli.main import main
sys.argv = ["tunery", "data", "check", sys.argv[1], "--json"]
try:
    main()
except SystemExit as exit:
    print(json.dumps({"code": exit.code, "torch": "torch" in sys.modules}), file=sys.stderr)
"""


def check_in_process(path: str, env: dict) -> tuple[dict, dict]:
    result = subprocess.run(
        [sys.executable, "-c", CHECK_THEN_REPORT, path],
        env=os.environ | env, capture_output=True, text=True, timeout=120,
    )
    return json.loads(result.stdout), json.loads(result.stderr.strip().splitlines()[-1])


def test_data_check_reads_the_tokenizer_from_the_gguf_without_torch_or_conversion(tmp_path):
    train = write(tmp_path / "t.jsonl", [chat("Capital of France?", "Paris.")])
    empty_cache = tmp_path / "cache"
    report, process = check_in_process(train, {"TUNERY_CACHE": str(empty_cache)})
    assert process == {"code": 0, "torch": False}
    # The same figures as with the converted model's tokenizer (test_cli_data.py): 38 tokens, 3 trained.
    assert report["stats"]["train"]["tokens"] == 38 and report["stats"]["train"]["trained_tokens"] == 3
    assert not (empty_cache / "models").exists()  # nothing was converted


def test_data_check_with_the_converted_model_does_not_import_torch(tmp_path, smol_tokenizer):
    train = write(tmp_path / "t.jsonl", [chat("Capital of France?", "Paris.")])
    report, process = check_in_process(train, {})
    assert process == {"code": 0, "torch": False} and report["stats"]["train"]["tokens"] == 38


def test_gguf_tokenizer_is_the_one_transformers_builds(smol_tokenizer):
    from transformers import AutoTokenizer

    from tunery.models import embedded, gguf_tokenizer

    path = embedded.find_packaged_gguf(*embedded.ALIASES["smollm2-135m-instruct"])
    ours = gguf_tokenizer.build_tokenizer(gguf_tokenizer.read_metadata(path))
    reference = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert json.loads(ours.backend_tokenizer.to_str()) == json.loads(reference.backend_tokenizer.to_str())
    assert ours.chat_template == reference.chat_template == smol_tokenizer.chat_template
    assert ours.special_tokens_map == reference.special_tokens_map
    texts = ["Hello world", " leading space", "été 東京 🙂", "<|im_start|>user\nhi<|im_end|>", "a\r\nb\tc  "]
    for text in texts:
        assert ours(text)["input_ids"] == reference(text)["input_ids"] == smol_tokenizer(text)["input_ids"]
    assert ours.decode(ours("été 🙂")["input_ids"]) == "été 🙂"
