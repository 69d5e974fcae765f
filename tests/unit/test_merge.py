"""`tunery merge`: the pure merge function on hand-made tensors, and whole run folders on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from adapter_helpers import logits, make_adapter_run, write_base
from typer.testing import CliRunner

from tunery.cli.main import app
from tunery.errors import TuneryError
from tunery.export import lora_math
from tunery.export.merge import merge_run

IDS = [1, 9, 48, 3, 250, 17, 2, 77]


def test_pure_merge_matches_hand_computed_lora_dora_and_rslora():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    a = torch.tensor([[1.0, 2.0]])  # r = 1
    b = torch.tensor([[1.0], [0.0], [-1.0]])
    adapter = {"base_model.model.layer.lora_A.weight": a, "base_model.model.layer.lora_B.weight": b}
    base = {"layer.weight": w, "other.weight": torch.ones(2)}
    merged = lora_math.merge_lora_weights(base, adapter, {"lora_alpha": 2, "r": 1})
    # W + (2 / 1) * B @ A: row 0 += [2, 4], row 2 -= [2, 4]
    assert merged["layer.weight"].tolist() == [[3.0, 4.0], [0.0, 2.0], [-1.0, -3.0]]
    assert merged["other.weight"] is base["other.weight"]  # untouched tensors are passed through
    assert base["layer.weight"].tolist() == [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]  # input not modified

    a4 = torch.ones(4, 2)
    b4 = torch.zeros(3, 4)
    b4[0, 0] = 1.0
    rs = lora_math.merge_lora_weights(base, {"layer.lora_A.weight": a4, "layer.lora_B.weight": b4},
                                      {"lora_alpha": 4, "use_rslora": True})
    assert rs["layer.weight"][0].tolist() == [3.0, 2.0]  # scale 4 / sqrt(4) = 2

    mag = torch.tensor([2.0, 1.0, 10.0])
    dora = lora_math.merge_lora_weights(
        base, adapter | {"base_model.model.layer.lora_magnitude_vector": mag}, {"lora_alpha": 2})
    # V = [[3, 4], [0, 2], [-1, -3]]; rows scaled to norms 2, 1, 10
    expected = torch.tensor([[1.2, 1.6], [0.0, 1.0], [-10 / 10**0.5, -30 / 10**0.5]])
    torch.testing.assert_close(dora["layer.weight"], expected)


def test_pure_merge_rejects_what_it_cannot_merge():
    base = {"layer.weight": torch.zeros(2, 2)}
    with pytest.raises(TuneryError, match="no matching weight"):
        lora_math.merge_lora_weights(base, {"x.lora_A.weight": torch.ones(1, 2),
                                            "x.lora_B.weight": torch.ones(2, 1)}, {"lora_alpha": 1})
    with pytest.raises(TuneryError, match="cannot merge"):
        lora_math.merge_lora_weights(base, {"emb.lora_embedding_A": torch.ones(1, 2)}, {"lora_alpha": 1})
    assert lora_math.non_finite({"a": torch.tensor([1.0, float("nan")]), "b": torch.ones(1)}) == ["a"]


@pytest.mark.parametrize("variant", [
    dict(dora=True), dict(rslora=True, target="all-linear"),
    dict(modules_to_save=["lm_head"], target=r".*layers\.1\..*(q|k|o)_proj"),
])
def test_merged_folder_loads_alone_and_equals_unmerged_logits(smol_tokenizer, tmp_path, variant):
    base_dir = write_base(tmp_path / "base", smol_tokenizer)
    run, peft_model = make_adapter_run(tmp_path, smol_tokenizer, base_dir, **variant)
    out = tmp_path / "merged"
    record = merge_run(run, out, log=lambda _: None)
    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no PEFT
    expected = logits(peft_model, IDS)
    torch.testing.assert_close(logits(merged, IDS), expected, rtol=0, atol=5e-5)
    base_logits = logits(AutoModelForCausalLM.from_pretrained(base_dir), IDS)
    assert (base_logits - expected).abs().max() > 1e-2  # the adapter does change the model
    assert record["logits_vs_unmerged"]["max_abs_diff"] < 5e-5  # float32 rounding of W + BA
    assert record["logits_vs_unmerged"]["argmax_agrees"] is True
    assert json.loads((out / "merge.json").read_text())["fingerprint"] == record["fingerprint"]
    assert "<|im_start|>" in (out / "chat_template.jinja").read_text()
    assert not (out / "adapter_config.json").exists()


def test_merge_refuses_nan_and_writes_nothing(smol_tokenizer, tmp_path):
    from safetensors.torch import load_file, save_file

    base_dir = write_base(tmp_path / "base", smol_tokenizer)
    run, _ = make_adapter_run(tmp_path, smol_tokenizer, base_dir)
    path = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    key = next(k for k in tensors if "lora_B" in k)
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(path))
    with pytest.raises(TuneryError, match="NaN/inf"):
        merge_run(run, tmp_path / "merged", log=lambda _: None)
    assert not (tmp_path / "merged").exists()


def test_merge_command_line_then_idempotent(smol_tokenizer, tmp_path):
    base_dir = write_base(tmp_path / "base", smol_tokenizer)
    run, peft_model = make_adapter_run(tmp_path, smol_tokenizer, base_dir)
    out = tmp_path / "merged"
    result = CliRunner().invoke(app, ["merge", str(run), "--out", str(out), "--json"])  # in-process: seconds
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["logits_vs_unmerged"]["max_abs_diff"] < 5e-5
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(logits(merged, IDS), logits(peft_model, IDS), rtol=0, atol=5e-5)
    first = (out / "model.safetensors").read_bytes()
    again = merge_run(run, out, log=lambda _: None)
    assert again["skipped"] is True and (out / "model.safetensors").read_bytes() == first
    merge_run(run, out, overwrite=True, log=lambda _: None)  # recomputed from the base: same bytes
    assert (out / "model.safetensors").read_bytes() == first
    other = tmp_path / "occupied"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(TuneryError, match="holds something else"):
        merge_run(run, other, log=lambda _: None)
    with pytest.raises(TuneryError, match="run.json"):
        merge_run(tmp_path / "nowhere", tmp_path / "m2", log=lambda _: None)
