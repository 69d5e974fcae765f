"""Architectures newer than llama-cpp-cffi's llama.cpp (early 2025): Qwen3, plain and with rope scaling,
read back by whichever llama.cpp binding is installed (llama-cpp-python when present, see
`tunery.export.llamacpp_bindings`). Where that llama.cpp does not know the architecture the test skips
and says which reader it was and what reads it; every other outcome is asserted."""

from __future__ import annotations

import pytest

from adapter_helpers import tiny_bpe_tokenizer
from export_helpers import ORIGINAL, QWEN3_CASES, family_configs, random_model, scaled_config, write
from external_tools import llama_cpp, require


@pytest.fixture(scope="module")
def tiny_tok(smol_tokenizer):
    return tiny_bpe_tokenizer(smol_tokenizer.chat_template)


@pytest.mark.parametrize("case", ["qwen3"] + QWEN3_CASES)
def test_qwen3_runs_in_llama_cpp_like_transformers(case, tiny_tok, tmp_path):
    reader = require("llama.cpp", llama_cpp())
    from tunery.export.probe import probe_ids
    from tunery.export.verify import verify_gguf

    config = family_configs(len(tiny_tok))["qwen3"] if case == "qwen3" else scaled_config(case, len(tiny_tok))
    model = random_model(config)
    record = verify_gguf(write(model, tiny_tok, tmp_path / f"{case}.gguf"), model, tiny_tok, "f32")
    llama = record["llama_cpp"]
    if not llama["ran"] and "unknown model architecture: 'qwen3'" in llama["why"]:
        pytest.skip(f"the llama.cpp of {reader} does not know the architecture 'qwen3' ({llama['why']}); "
                    "llama-cpp-python 0.3.36 (compiled at install: pip install llama-cpp-python) reads it")
    assert llama["ran"] is True, llama.get("why")
    assert llama["reader"] == f"llama.cpp ({reader})"
    top = llama["logits"]["max_abs_logit"]
    assert llama["logits"]["max_abs_diff"] < 1e-4 * top, llama["logits"]
    assert llama["greedy_identical"] is True
    assert llama["tokenizer"]["chat_template_identical"] and llama["tokenizer"]["stop_ids_identical"]
    assert llama["tokenizer"]["probe_tokens_identical"]
    assert record["passed"] is True, record["failures"]
    if case != "qwen3":  # scaled: past the original context, and transformers' reader named as skipped
        assert min(len(r) for r in probe_ids(tiny_tok)) > ORIGINAL
        assert record["transformers"]["ran"] is False
