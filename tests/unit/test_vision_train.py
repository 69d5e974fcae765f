"""`method: vision` on the shared loop: one step changes only the weights `vision.train` names (LoRA on
the language model; the projector and the tower in full only when asked), per family, on tiny
random-weight models built in the test."""

from __future__ import annotations

import json

import pytest
import torch

from tunery.config.schema import TrainConfig
from tunery.trainers import loop as training_loop
from tunery.trainers.methods.vision import VisionSFT
from tunery.vision.parts import PROJECTORS, TOWERS
from vlm_helpers import FAMILIES, write_png


def write_data(folder, count: int = 4):
    colours = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}
    lines = []
    for i, (name, rgb) in enumerate(list(colours.items())[:count]):
        write_png(folder / f"{name}.png", rgb, (36 + 4 * i, 40))
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": [{"type": "image", "path": f"{name}.png"},
                                         {"type": "text", "text": "Which colour?"}]},
            {"role": "assistant", "content": name}]}))
    path = folder / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def vision_config(data, mode="none", adapter="lora", **training) -> TrainConfig:
    return TrainConfig(method="vision", base_model="unused", adapter=adapter, data={"train": [str(data)]},
                       lora={"dropout": 0.0, "rank": 4}, vision={"train": mode},
                       training={"max_steps": 1, "lr": 1e-2, "batch_size": 2, "preflight": False, "warmup_ratio": 0,
                                 **training})


def part_of(name: str) -> str:
    pieces = name.split(".")
    if any(p in PROJECTORS for p in pieces):
        return "projector"
    return "tower" if any(p in TOWERS for p in pieces) else "language"


def changed_parts(model_before: dict, model) -> dict[str, set[str]]:
    """{part: {kinds of weight that changed}}, kinds: base (a weight of the model), lora, copy (a
    module trained in full next to the adapter)."""
    changed: dict[str, set[str]] = {}
    for name, param in model.named_parameters():
        if not torch.equal(model_before[name], param.detach()):
            kind = "lora" if "lora_" in name else "copy" if "modules_to_save" in name else "base"
            changed.setdefault(part_of(name), set()).add(kind)
    return changed


def one_step(family, smol_tokenizer, tmp_path, mode, adapter="lora"):
    model, processor = FAMILIES[family](smol_tokenizer)
    cfg = vision_config(write_data(tmp_path), mode, adapter)
    method = VisionSFT(cfg, processor.tokenizer, processor)
    loop = training_loop.setup(cfg, method, model, method.load_data())
    before = {n: p.detach().clone() for n, p in loop.model.named_parameters()}
    result = training_loop.accumulate(loop, 0)
    applied, _, _ = training_loop.optimizer_step(loop, 0, result.loss)
    assert applied and result.units > 0
    return changed_parts(before, loop.model)


EXPECTED_LORA = {
    "none": {"language": {"lora"}},
    "projector": {"language": {"lora"}, "projector": {"copy"}},
    "tower": {"language": {"lora"}, "projector": {"copy"}, "tower": {"copy"}},
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("mode", ["none", "projector", "tower"])
def test_one_step_changes_only_the_intended_weights(family, mode, smol_tokenizer, tmp_path):
    assert one_step(family, smol_tokenizer, tmp_path, mode) == EXPECTED_LORA[mode]


@pytest.mark.parametrize("mode,expected", [("none", {"language"}), ("projector", {"language", "projector"})])
def test_full_fine_tuning_freezes_the_vision_parts_not_named(mode, expected, smol_tokenizer, tmp_path):
    changed = one_step("idefics3", smol_tokenizer, tmp_path, mode, adapter="full")
    assert set(changed) == expected and all(kinds == {"base"} for kinds in changed.values())


@pytest.mark.parametrize("override,match", [({"adapter": "qlora"}, "adapter: lora or full"),
                                            ({"training": {"fsdp": True}}, "without training.fsdp"),
                                            ({"eval": {"graders": ["exact"]}}, "leave eval.graders empty")])
def test_config_refuses_what_vision_does_not_support(override, match, tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=match):
        TrainConfig(method="vision", data={"train": ["x.jsonl"]}, **override)


def stepped_loop(smol_tokenizer, tmp_path, steps: int, **vision):
    """A tiny LLaVA loop with the composed model's recipe options (`vision.*`), stepped `steps` times;
    returns (loop, weights before, weights after each step)."""
    model, processor = FAMILIES["llava"](smol_tokenizer)
    cfg = vision_config(write_data(tmp_path), "projector", max_steps=steps, scheduler="constant")
    cfg = cfg.model_copy(update={"vision": cfg.vision.model_copy(update=vision)})
    method = VisionSFT(cfg, processor.tokenizer, processor)
    loop = training_loop.setup(cfg, method, model, method.load_data())
    snapshots = [{n: p.detach().clone() for n, p in loop.model.named_parameters()}]
    for step in range(steps):
        result = training_loop.accumulate(loop, step)
        assert training_loop.optimizer_step(loop, step, result.loss)[0]
        snapshots.append({n: p.detach().clone() for n, p in loop.model.named_parameters()})
    return loop, snapshots


def largest_change(before: dict, after: dict, part: str, kind: str) -> float:
    """Largest absolute change of the weights of `part` (projector, language) of `kind` (copy, lora)."""
    changes = [float((after[n] - before[n]).abs().max()) for n in before
               if part_of(n) == part and (kind == "lora") == ("lora_" in n) and (kind == "copy") == ("modules_to_save" in n)]
    return max(changes, default=0.0)


def test_projector_first_steps_keep_the_language_model_still(smol_tokenizer, tmp_path):
    """`vision.projector_first_steps: 1`: step 1 moves the projector only (LLaVA's first stage), step 2
    the LoRA too; without it, step 1 moves both."""
    _, snaps = stepped_loop(smol_tokenizer, tmp_path, 2, projector_first_steps=1)
    assert largest_change(snaps[0], snaps[1], "projector", "copy") > 0
    assert largest_change(snaps[0], snaps[1], "language", "lora") == 0.0
    assert largest_change(snaps[1], snaps[2], "language", "lora") > 0
    _, together = stepped_loop(smol_tokenizer, tmp_path, 1)
    assert largest_change(together[0], together[1], "language", "lora") > 0


def test_projector_lr_is_the_vision_parts_own(smol_tokenizer, tmp_path):
    """AdamW's first update moves each weight by at most its learning rate, and a weight with a gradient
    by almost exactly it (m / sqrt(v) = +-1): the projector by `vision.projector_lr`, the LoRA by
    `training.lr` (1e-2 here)."""
    _, snaps = stepped_loop(smol_tokenizer, tmp_path, 1, projector_lr=3e-2)
    assert largest_change(snaps[0], snaps[1], "projector", "copy") == pytest.approx(3e-2, rel=1e-3)
    assert largest_change(snaps[0], snaps[1], "language", "lora") == pytest.approx(1e-2, rel=1e-3)


def test_projector_first_steps_need_a_learning_projector(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="vision.projector_first_steps needs vision.train"):
        TrainConfig(method="vision", data={"train": ["x.jsonl"]}, vision={"projector_first_steps": 5})
