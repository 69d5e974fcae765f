"""LoRA dropout with one mask per input: q, k and v share a mask, other inputs draw their own."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from conftest import make_tiny_model
from loop_helpers import tiny_config
from tunery.models.adapters import prepare_trainable
from tunery.models.shared_dropout import SharedInputDropout


def lora_inputs(model, layer: int = 0) -> dict[str, torch.Tensor]:
    """Run one training forward pass and return what each LoRA A matrix of `layer` received."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if f"layers.{layer}." in name and name.endswith("lora_A.default"):
            short = name.split(".")[-3]
            hooks.append(module.register_forward_hook(lambda m, args, out, short=short: seen.__setitem__(short, args[0])))
    model.train()
    torch.manual_seed(0)
    model(torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]]), use_cache=False)
    for hook in hooks:
        hook.remove()
    return seen


def adapted(tokenizer, mask: str, p: float = 0.5):
    cfg = tiny_config()
    cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"dropout": p, "dropout_mask": mask})})
    return prepare_trainable(make_tiny_model(len(tokenizer)), cfg)


def test_adapters_on_one_input_share_one_mask_and_other_inputs_draw_their_own(smol_tokenizer):
    seen = lora_inputs(adapted(smol_tokenizer, "shared"))
    assert seen["q_proj"] is seen["k_proj"] is seen["v_proj"]
    assert seen["gate_proj"] is seen["up_proj"]
    dropped = seen["q_proj"] == 0
    assert 0.3 < dropped.float().mean().item() < 0.7  # p = 0.5
    assert not torch.equal(dropped, seen["o_proj"] == 0)


def test_per_module_keeps_peft_independent_masks(smol_tokenizer):
    model = adapted(smol_tokenizer, "per_module")
    seen = lora_inputs(model)
    assert not torch.equal(seen["q_proj"] == 0, seen["k_proj"] == 0)
    assert not any(isinstance(m, SharedInputDropout) for m in model.modules())


def test_dropout_zero_and_eval_mode_pass_the_input_through(smol_tokenizer):
    model = adapted(smol_tokenizer, "shared", p=0.0)
    assert not any(isinstance(m, SharedInputDropout) for m in model.modules())
    dropout = SharedInputDropout(0.5).eval()
    x = torch.randn(3, 4)
    assert dropout(x) is x


def test_kept_values_are_scaled_and_an_input_changed_in_place_gets_a_new_mask():
    dropout = SharedInputDropout(0.25).train()
    torch.manual_seed(1)
    x = torch.rand(64, 32) + 1.0
    out = dropout(x)
    kept = out != 0
    assert torch.allclose(out[kept], x[kept] / 0.75)
    assert dropout(x) is out  # the same input again: the same tensor back
    x.mul_(1.0)  # modified in place: its version changes, so a fresh mask is drawn
    assert dropout(x) is not out
    assert dropout(x.clone()) is not dropout(x)


def test_no_activation_is_kept_alive_between_steps():
    dropout = SharedInputDropout(0.5).train()
    x = torch.randn(8, 8)
    out = dropout(x)
    del x, out
    gc.collect()
    assert dropout._last_input() is None and dropout._last_output() is None


def test_gradients_flow_through_the_shared_mask_to_every_reader():
    torch.manual_seed(2)
    x = torch.randn(5, 6, requires_grad=True)
    dropout = SharedInputDropout(0.5).train()
    a, b = nn.Linear(6, 3, bias=False), nn.Linear(6, 3, bias=False)
    xa = dropout(x)
    loss = a(xa).sum() + b(dropout(x)).sum()
    loss.backward()
    mask = (xa != 0).float() / 0.5
    expected = mask * (a.weight.sum(0) + b.weight.sum(0))
    assert torch.allclose(x.grad, expected)


@pytest.mark.parametrize("mask", ["shared", "per_module"])
def test_config_accepts_both_masks_and_refuses_others(mask):
    cfg = tiny_config()
    assert cfg.lora.dropout_mask == "shared"
    from tunery.config.load import validate

    data = {"base_model": "x", "data": {"train": ["t.jsonl"]}, "lora": {"dropout_mask": mask}}
    assert validate(data).lora.dropout_mask == mask
    with pytest.raises(Exception, match="dropout_mask"):
        validate(data | {"lora": {"dropout_mask": "sometimes"}})


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_cpu_masks_drop_the_asked_share_and_keep_the_mean(p):
    from tunery.models.shared_dropout import cpu_dropout

    torch.manual_seed(3)
    out = cpu_dropout(torch.ones(1000, 1000), p)
    assert abs((out == 0).float().mean().item() - p) < 0.002  # 1M draws: 4 standard errors
    assert abs(out.mean().item() - 1.0) < 0.005
    assert out.max().item() == pytest.approx(1 / (1 - round(p * 65536) / 65536))
    torch.manual_seed(3)
    assert torch.equal(cpu_dropout(torch.ones(1000, 1000), p), out)  # seeded: reproducible
    assert not torch.equal(cpu_dropout(torch.ones(1000, 1000), p), out)  # next draw differs


def test_inference_mode_tensors_share_a_mask_too():
    dropout = SharedInputDropout(0.5).train()  # RL sampling: train mode under torch.inference_mode
    with torch.inference_mode():
        x = torch.randn(16, 16)
        assert dropout(x) is dropout(x)
