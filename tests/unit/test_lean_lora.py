"""The lean LoRA forward gives PEFT's outputs and gradients, and hands every other case to PEFT."""

from __future__ import annotations

import copy

import pytest
import torch

from adapter_helpers import randomize_adapter
from conftest import make_tiny_model
from tunery.models.lean_lora import LeanLoraLinear, lean_lora


def peft_pair(rank=4, alpha=8, dora=False, dropout=0.0, seed=0):
    """The same random LoRA model twice: PEFT's own layers and the lean ones."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", use_dora=dora)
    theirs = get_peft_model(make_tiny_model(500), config)
    randomize_adapter(theirs, seed=seed)
    ours = copy.deepcopy(theirs)
    return theirs, ours, lean_lora(ours)


def loss_and_grads(model, ids, seed=1):
    torch.manual_seed(seed)  # the same dropout masks for both
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


IDS = torch.randint(3, 500, (2, 11), generator=torch.Generator().manual_seed(5))


def test_every_plain_lora_layer_is_swapped_and_saves_the_same_files(tmp_path):
    theirs, ours, swapped = peft_pair()
    layers = [m for m in ours.modules() if isinstance(m, LeanLoraLinear)]
    assert swapped == len(layers) == 2 * 7  # 2 layers x q, k, v, o, gate, up, down
    theirs.save_pretrained(tmp_path / "theirs")
    ours.save_pretrained(tmp_path / "ours")
    assert ((tmp_path / "ours" / "adapter_model.safetensors").read_bytes()
            == (tmp_path / "theirs" / "adapter_model.safetensors").read_bytes())


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_power_of_two_scaling_gives_peft_s_loss_and_gradients_bit_for_bit(dropout):
    theirs, ours, _ = peft_pair(rank=4, alpha=8, dropout=dropout)  # scaling 2
    theirs.train(), ours.train()
    loss_a, grads_a = loss_and_grads(theirs, IDS)
    loss_b, grads_b = loss_and_grads(ours, IDS)
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == 2 * 2 * 7
    assert all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)


def test_other_scalings_agree_to_rounding():
    theirs, ours, _ = peft_pair(rank=4, alpha=6)  # scaling 1.5
    loss_a, grads_a = loss_and_grads(theirs, IDS)
    loss_b, grads_b = loss_and_grads(ours, IDS)
    assert torch.allclose(loss_a, loss_b, rtol=1e-6, atol=0)
    assert all(torch.allclose(grads_a[k], grads_b[k], rtol=1e-4, atol=1e-7) for k in grads_a)


def test_dora_disabled_merged_and_mixed_batches_take_peft_s_own_path():
    theirs, ours, _ = peft_pair(dora=True)
    with torch.no_grad():
        assert torch.equal(theirs(input_ids=IDS).logits, ours(input_ids=IDS).logits)  # DoRA: PEFT's forward
    theirs, ours, _ = peft_pair()
    theirs.eval(), ours.eval()
    with torch.no_grad():
        adapted = ours(input_ids=IDS).logits
        with ours.disable_adapter(), theirs.disable_adapter():
            base = ours(input_ids=IDS).logits
            assert torch.equal(base, theirs(input_ids=IDS).logits)
        assert not torch.allclose(adapted, base)  # the adapter does change the output
        mixed = ["default", "__base__"]
        assert torch.equal(ours(input_ids=IDS, adapter_names=mixed).logits,
                           theirs(input_ids=IDS, adapter_names=mixed).logits)
        ours.merge_adapter()
        assert torch.allclose(ours(input_ids=IDS).logits, adapted, atol=1e-5)


def test_a_cast_input_goes_to_peft():
    _, ours, _ = peft_pair()
    layer = next(m for m in ours.modules() if isinstance(m, LeanLoraLinear))
    x = torch.randn(3, layer.in_features)
    assert layer._plain_adapter(x, (), {}) == "default"
    assert layer._plain_adapter(x.double(), (), {}) is None
    assert layer._plain_adapter(x, (), {"adapter_names": ["default"] * 3}) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer._plain_adapter(x, (), {}) is None  # autocast chooses the products' dtypes: PEFT's path


def test_under_autocast_the_output_is_peft_s():
    theirs, ours, _ = peft_pair()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(theirs(input_ids=IDS).logits, ours(input_ids=IDS).logits)
