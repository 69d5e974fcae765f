"""`tunery export --format gguf-lora`: the adapter alone as a llama.cpp LoRA GGUF, applied by llama.cpp
over the base GGUF, equals the merged export and the unmerged run."""

from __future__ import annotations

import json

import pytest
import torch

from adapter_helpers import make_adapter_run, tiny_bpe_tokenizer, write_base
from external_tools import llama_cpp, require
from tunery.errors import TuneryError
from tunery.export import llamacpp
from tunery.export.exporter import export_run

QUIET = dict(log=lambda _: None)


@pytest.fixture(scope="module")
def tiny_tok(smol_tokenizer):
    return tiny_bpe_tokenizer(smol_tokenizer.chat_template)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tok):
    root = tmp_path_factory.mktemp("lora-gguf")
    base = write_base(root / "base", tiny_tok, scrambled=True)
    plain, _ = make_adapter_run(root, tiny_tok, base, target="all-linear", name="plain", adapter_scale=0.1)
    rs, _ = make_adapter_run(root, tiny_tok, base, target=("q_proj", "k_proj", "down_proj"), rslora=True,
                             rank=8, name="rslora", seed=11, adapter_scale=0.1)
    dora, _ = make_adapter_run(root, tiny_tok, base, dora=True, name="dora")
    return {"plain": plain, "rslora": rs, "dora": dora}


def test_lora_gguf_has_llama_cpp_adapter_layout(runs, tmp_path):
    from gguf import GGUFReader

    record = export_run(runs["plain"], "gguf-lora", tmp_path / "out", gguf_type="f32", **QUIET)
    assert record["weights"]["passed"] is True, record["weights"]["failures"]
    assert record["weights"]["adapted_weights"] == 2 * 7  # 2 layers x q,k,v,o,gate,up,down
    adapter = GGUFReader(tmp_path / "out" / record["file"])
    fields = adapter.fields
    assert fields["general.type"].contents() == "adapter"
    assert fields["adapter.type"].contents() == "lora"
    assert fields["adapter.lora.alpha"].contents() == 8.0  # make_adapter_run: alpha = 2 * rank 4
    assert fields["general.architecture"].contents() == "llama"
    shapes = {t.name: [int(x) for x in t.shape] for t in adapter.tensors}
    # GGUF shapes list the fastest dimension first: A is (rank x in), B is (out x rank).
    hidden = json.loads((runs["plain"].parent / "base" / "config.json").read_text())["hidden_size"]
    assert shapes["blk.0.attn_q.weight.lora_a"] == [hidden, 4]
    assert shapes["blk.0.attn_q.weight.lora_b"] == [4, hidden]
    assert len(shapes) == 2 * 14
    assert record["size_bytes"] < record["base_size_bytes"] / 5
    modelfile = (tmp_path / "out" / "Modelfile").read_text().splitlines()
    assert modelfile[0] == f"FROM ./{record['base_file']}" and modelfile[1] == f"ADAPTER ./{record['file']}"
    assert json.loads((tmp_path / "out" / "verify.json").read_text())["format"] == "gguf-lora"


@pytest.mark.parametrize("name", ["plain", "rslora"])
def test_llama_cpp_applies_the_lora_gguf_like_the_unmerged_run(runs, tmp_path, name):
    require("llama.cpp", llama_cpp())
    record = export_run(runs[name], "gguf-lora", tmp_path / "out", gguf_type="f32", **QUIET)
    llama = record["llama_cpp"]
    assert llama["ran"] is True, llama.get("why")
    assert record["passed"] is True, record["failures"]
    assert llama["greedy_identical"] is True
    assert llama["logits"]["max_abs_diff"] < 1e-4 * llama["logits"]["max_abs_logit"]
    assert llama["tokenizer"]["stop_ids_identical"] and llama["tokenizer"]["chat_template_identical"]


def test_lora_gguf_applied_by_llama_cpp_equals_the_merged_export(runs, tmp_path):
    require("llama.cpp", llama_cpp())
    lora = export_run(runs["plain"], "gguf-lora", tmp_path / "lora", gguf_type="f32", **QUIET)
    merged = export_run(runs["plain"], "gguf", tmp_path / "merged", gguf_type="f32", **QUIET)
    rows = [[1, 5, 9, 40, 41, 42, 100, 7], [3, 3, 200, 17]]
    applied = llamacpp.read_back_isolated(tmp_path / "lora" / lora["base_file"], [], rows, 4, set(),
                                          adapter=tmp_path / "lora" / lora["file"])
    whole = llamacpp.read_back_isolated(tmp_path / "merged" / merged["file"], [], rows, 4, set())
    top = max(float(x.abs().max()) for x in whole.logits)
    worst = max(float((a - b).abs().max()) for a, b in zip(applied.logits, whole.logits))
    assert top > 1.0 and worst < 1e-4 * top, f"{worst:.3g} of {top:.3g}"
    assert applied.greedy == whole.greedy


def test_a_wrong_alpha_in_the_adapter_file_fails_both_checks(runs, tmp_path):
    """A corrupted adapter (alpha doubled, so every update counts twice) must fail verification."""
    from transformers import AutoTokenizer

    from tunery.export.gguf_lora import write_lora_gguf
    from tunery.export.lora_export import check_weights, unmerged_reference
    from tunery.export.merge import read_adapter
    from tunery.export.verify import verify_with_llama_cpp
    from tunery.runfolder import RunFolder

    good = export_run(runs["plain"], "gguf-lora", tmp_path / "out", gguf_type="f32", **QUIET)
    run = RunFolder(runs["plain"])
    info = json.loads((runs["plain"] / "run.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(run.tokenizer)
    adapter, config = read_adapter(run.adapter)
    base, ref_logits, ref_greedy = unmerged_reference(run, info, tokenizer, 16)
    bad_path = tmp_path / "bad.gguf"
    write_lora_gguf(adapter, config | {"lora_alpha": 2 * config["lora_alpha"]}, base.config, bad_path, "f32")
    weights = check_weights(bad_path, base, adapter, config, "f32")
    assert weights["passed"] is False and "merged weights differ" in weights["failures"][0]
    require("llama.cpp", llama_cpp())
    base_gguf = tmp_path / "out" / good["base_file"]
    llama = verify_with_llama_cpp(base_gguf, ref_logits, ref_greedy, tokenizer, "f32", 16, adapter=bad_path)
    assert llama["ran"] is True and llama["passed"] is False
    assert any("max |logit diff|" in f for f in llama["failures"])


def test_dora_runs_are_refused_with_the_merged_format_as_the_fix(runs, tmp_path):
    with pytest.raises(TuneryError) as err:
        export_run(runs["dora"], "gguf-lora", tmp_path / "out", **QUIET)
    assert "DoRA" in str(err.value) and "--format gguf" in str(err.value)


def test_adapter_file_type_q8_0_is_refused_for_the_adapter_but_used_for_the_base(runs, tmp_path):
    record = export_run(runs["plain"], "gguf-lora", tmp_path / "out", gguf_type="q8_0", **QUIET)
    assert record["adapter_type"] == "f16" and record["base_file"].endswith("-q8_0.gguf")
    assert record["weights"]["passed"] is True
    assert torch.tensor(record["weights"]["max_abs_diff"]) > 0  # f16 factors: rounding, not exact


@pytest.mark.parametrize("family", ["qwen2", "phi3"])
def test_lora_gguf_of_other_families_applies_like_the_unmerged_run(family, tiny_tok, tmp_path):
    """No rotary reordering for these (llama.cpp rotates halves, as Hugging Face does); Phi-3's LoRA
    sits on the fused qkv and gate_up projections."""
    require("llama.cpp", llama_cpp())
    from test_export_families import family_configs, random_model

    model = random_model(family_configs(len(tiny_tok))[family])
    model.save_pretrained(tmp_path / "base")
    tiny_tok.save_pretrained(tmp_path / "base")
    run, _ = make_adapter_run(tmp_path, tiny_tok, tmp_path / "base", target="all-linear", name="fam",
                              adapter_scale=0.1)
    record = export_run(run, "gguf-lora", tmp_path / "out", gguf_type="f32", **QUIET)
    assert record["weights"]["passed"] is True, record["weights"]["failures"]
    llama = record["llama_cpp"]
    assert llama["ran"] is True, llama.get("why")
    assert llama["logits"]["max_abs_diff"] < 1e-4 * llama["logits"]["max_abs_logit"]
    assert llama["greedy_identical"] is True and record["passed"] is True, record["failures"]
