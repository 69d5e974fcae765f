"""`tunery combine`: each method on hand-made adapter tensors, the compatibility checks, side-by-side loading."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapter_helpers import logits, make_adapter_run, write_base
from typer.testing import CliRunner

from tunery.cli.main import app
from tunery.errors import TuneryError
from tunery.export.combine import combine_runs, load_side_by_side

QUIET = dict(log=lambda _: None)
IDS = [1, 9, 48, 3, 250, 17]
KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"


def hand_made(run, values_a: list[float], values_b: list[float]) -> None:
    """Overwrite layer 0's q_proj factors with hand-made values (A: 4 x 32, B: 32 x 4, rows repeated)."""
    path = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    tensors[KEY.format("A")] = torch.tensor(values_a).repeat(4, 8)  # (4, 32): each row = values_a x 8
    tensors[KEY.format("B")] = torch.tensor(values_b).repeat(32, 1)  # (32, 4): each row = values_b
    save_file(tensors, str(path))


@pytest.fixture()
def two_runs(smol_tokenizer, tmp_path):
    base = write_base(tmp_path / "base", smol_tokenizer)
    a, _ = make_adapter_run(tmp_path, smol_tokenizer, base, seed=7, name="a")
    b, _ = make_adapter_run(tmp_path, smol_tokenizer, base, seed=8, name="b")
    hand_made(a, [1.0, -2.0, 0.5, 0.0], [1.0, 2.0, -1.0, 0.5])
    hand_made(b, [3.0, 1.0, -0.5, -1.0], [-1.0, 2.0, 1.0, 0.25])
    return base, a, b


def factors(run):
    tensors = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    return tensors[KEY.format("A")], tensors[KEY.format("B")]


def test_cat_is_the_weighted_sum_of_updates_and_linear_sums_factors(two_runs, tmp_path):
    _, a, b = two_runs
    (a_a, b_a), (a_b, b_b) = factors(a), factors(b)
    scale = 8 / 4  # alpha / r of both parts
    info = combine_runs([a, b], "cat", tmp_path / "cat", weights=[0.7, 0.3], **QUIET)
    cat_a, cat_b = factors(tmp_path / "cat")
    config = json.loads((tmp_path / "cat" / "adapter" / "adapter_config.json").read_text())
    assert info["rank"] == config["r"] == 8 and config["lora_alpha"] == 8  # new scale: exactly 1
    expected = 0.7 * scale * b_a @ a_a + 0.3 * scale * b_b @ a_b
    torch.testing.assert_close(cat_b @ cat_a, expected)

    combine_runs([a, b], "linear", tmp_path / "lin", weights=[0.7, 0.3], **QUIET)
    lin_a, lin_b = factors(tmp_path / "lin")
    w = torch.tensor([0.7 * scale, 0.3 * scale]).sqrt()
    torch.testing.assert_close(lin_a, w[0] * a_a + w[1] * a_b)
    torch.testing.assert_close(lin_b, w[0] * b_a + w[1] * b_b)
    assert lin_a[0, :4].tolist() == pytest.approx([(w[0] * 1 + w[1] * 3).item(), (w[0] * -2 + w[1] * 1).item(),
                                                  (w[0] * 0.5 - w[1] * 0.5).item(), -w[1].item()])


def test_ties_keeps_the_elected_sign_and_dare_prunes_at_random(two_runs, tmp_path):
    _, a, b = two_runs
    combine_runs([a, b], "ties", tmp_path / "ties", weights=[1.0, 1.0], density=1.0, **QUIET)
    ties_a, _ = factors(tmp_path / "ties")
    s = 2.0 ** 0.5  # sqrt(weight * scale)
    # columns of A: part a [1, -2, 0.5, 0], part b [3, 1, -0.5, -1]; signs elected by the raw sums
    # [4, -1, 0, -1] -> [+, -, + (ties go to +), -]; the entries that agree are averaged
    assert ties_a[0, :4].tolist() == pytest.approx([s * (1 + 3) / 2, s * -2, s * 0.5, s * -1])

    combine_runs([a, b], "dare_linear", tmp_path / "dare1", density=1.0, **QUIET)
    combine_runs([a, b], "linear", tmp_path / "lin", **QUIET)
    assert torch.equal(factors(tmp_path / "dare1")[0], factors(tmp_path / "lin")[0])  # nothing pruned at 1.0
    combine_runs([a, b], "dare_ties", tmp_path / "d1", density=0.5, seed=3, **QUIET)
    combine_runs([a, b], "dare_ties", tmp_path / "d2", density=0.5, seed=3, **QUIET)
    combine_runs([a, b], "dare_ties", tmp_path / "d3", density=0.5, seed=4, **QUIET)
    d1, d2, d3 = (factors(tmp_path / n)[0] for n in ("d1", "d2", "d3"))
    assert torch.equal(d1, d2) and not torch.equal(d1, d3)  # seeded
    assert 0 < int((d1 == 0).sum()) < d1.numel()  # some entries pruned, not all


def test_incompatible_parts_are_refused_with_the_reason(smol_tokenizer, two_runs, tmp_path):
    base, a, b = two_runs
    r8, _ = make_adapter_run(tmp_path, smol_tokenizer, base, rank=8, name="r8")
    with pytest.raises(TuneryError, match=r"linear needs adapters of one rank; these have ranks \[4, 8\]"):
        combine_runs([a, r8], "linear", tmp_path / "x", **QUIET)
    assert combine_runs([a, r8], "cat", tmp_path / "ok", **QUIET)["rank"] == 12
    other_modules, _ = make_adapter_run(tmp_path, smol_tokenizer, base, target=("k_proj",), name="k")
    with pytest.raises(TuneryError, match="different adapted modules") as err:
        combine_runs([a, other_modules], "cat", tmp_path / "x", **QUIET)
    assert "only in the first" in str(err.value)
    dora, _ = make_adapter_run(tmp_path, smol_tokenizer, base, dora=True, name="dora")
    with pytest.raises(TuneryError, match="DoRA"):
        combine_runs([a, dora], "cat", tmp_path / "x", **QUIET)
    other_base = write_base(tmp_path / "base2", smol_tokenizer, seed=9)
    elsewhere, _ = make_adapter_run(tmp_path, smol_tokenizer, other_base, name="elsewhere")
    with pytest.raises(TuneryError, match="different base models"):
        combine_runs([a, elsewhere], "cat", tmp_path / "x", **QUIET)
    with pytest.raises(TuneryError, match="2 weights for 3 runs"):
        combine_runs([a, b, r8], "cat", tmp_path / "x", weights=[1, 1], **QUIET)
    with pytest.raises(TuneryError, match="unknown combination method"):
        combine_runs([a, b], "svd", tmp_path / "x", **QUIET)
    assert not (tmp_path / "x").exists()


def test_side_by_side_switches_per_request_and_combined_run_loads(smol_tokenizer, tmp_path):
    from tunery.inference import load_run

    base = write_base(tmp_path / "base", smol_tokenizer)
    a, model_a = make_adapter_run(tmp_path, smol_tokenizer, base, seed=7, name="a")
    b, model_b = make_adapter_run(tmp_path, smol_tokenizer, base, seed=8, name="b")
    both, names = load_side_by_side([a, b])
    assert names == ["a", "b"]
    for name, single in (("a", model_a), ("b", model_b)):
        both.set_adapter(name)
        torch.testing.assert_close(logits(both, IDS), logits(single, IDS), rtol=0, atol=1e-6)
    result = CliRunner().invoke(app, ["combine", str(a), str(b), "--method", "cat", "--weights", "1,1",
                                      "--out", str(tmp_path / "ab"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["combination"] == {"method": "cat", "weights": [1.0, 1.0], "density": None, "seed": 0}
    combined, _ = load_run(tmp_path / "ab")
    # cat with weights 1, 1 applies both updates: base + delta_a + delta_b, as two merges in a row do
    from transformers import AutoModelForCausalLM

    from tunery.export.lora_math import merge_lora_weights
    from tunery.export.merge import read_adapter

    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    state = plain.state_dict()
    for run in (a, b):
        state = merge_lora_weights(state, *read_adapter(run / "adapter"))
    plain.load_state_dict(state)
    torch.testing.assert_close(logits(combined, IDS), logits(plain, IDS), rtol=0, atol=1e-5)
    card = (tmp_path / "ab" / "adapter" / "README.md").read_text()
    assert "Combined from `a` x 1.0, `b` x 1.0 with `cat`" in card
    assert combined.peft_config["default"].r == 8
