"""Vision-language fine-tuning: next-token loss on the assistant tokens of conversations with images.

What differs from SFT, and nothing else (accumulation, the NaN guard, validation, checkpoints and exact
resume are the loop's): the records hold images (`tunery.vision.records`), the model's own processor
renders them (`tunery.vision.render`: image and prompt tokens never trained), the model is the family's
image-text-to-text class, and `vision.train` says which vision parts learn next to the language model
(`tunery.vision.parts`). Each example goes through forward and backward on its own: images of different
sizes expand to different token counts and pixel shapes per family, and one example at a time keeps
memory at one example's images; the step's gradient is the same sum over its examples.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunery.data.batching import count_trained
from tunery.data.problems import raise_if_errors
from tunery.data.render import Datasets
from tunery.errors import TuneryError
from tunery.losses.lm import token_ce_sum
from tunery.models.forward import device_of, next_token_targets
from tunery.trainers.method import LossOut, Method


class VisionSFT(Method):
    """Cross-entropy summed over the trained (assistant) tokens of image-text conversations."""

    name = "vision"
    unit = "tokens"

    def __init__(self, cfg, tokenizer, processor=None):
        super().__init__(cfg, tokenizer)
        if processor is None:
            from tunery.vision.model import configured_processor

            processor = configured_processor(cfg.base_model, cfg.vision)
        self.processor = processor

    def load_base(self):
        from tunery.vision.model import load_vlm

        return load_vlm(self.cfg.base_model, self.cfg.dtype)

    def load_data(self, cache_dir: Path | None = None, write_cache: bool = True) -> Datasets:
        from tunery.data.dataset import split_validation
        from tunery.vision.records import load_vision_examples
        from tunery.vision.render import render_vision

        data = self.cfg.data
        train, problems = load_vision_examples(data.train)
        validation, found = load_vision_examples(data.validation)
        raise_if_errors(problems + found)
        if not data.validation and data.val_split > 0:
            train, validation = split_validation(train, data.val_split, self.cfg.training.seed)
        render = lambda e: render_vision(e, self.processor, data.train_on, data.max_length,  # noqa: E731
                                         self.cfg.vision.max_image_pixels)
        rows = [render(e) for e in train]
        warnings = [f"{r.location}: cut at data.max_length ({data.max_length}); the end of its answer is not "
                    "trained" for r in rows if r.answer_cut]
        rows = [r for r in rows if r.num_trained > 0]
        if not rows:
            raise TuneryError("no training example is left to train on", why="no example has a trained token",
                              fix="check that assistant turns are not all weight 0")
        return Datasets(rows, [render(e) for e in validation], warnings)

    def make_trainable(self, model):
        from tunery.models import adapters
        from tunery.vision import parts

        vision_train = self.cfg.vision.train
        if getattr(model.config, "untrained_projector", False) and vision_train == "none":
            raise TuneryError(f"{self.cfg.base_model}'s projector is untrained, and vision.train is none",
                              why="the language model would learn from image features no trained layer maps",
                              fix="set vision.train=projector (the projector learns next to the LoRA adapter)")
        if self.cfg.adapter == "full":
            model.requires_grad_(True)
            parts.freeze_for(model, vision_train)
            return model
        cfg = self.cfg
        if cfg.lora.target_modules == "all-linear":  # the language model's linear layers, not the vision parts'
            cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(
                update={"target_modules": parts.language_lora_pattern(model)})})
        return adapters.prepare_trainable(model, cfg, extra_modules=parts.saved_modules(model, vision_train))

    def param_groups(self, model) -> list[tuple[str, list[torch.nn.Parameter]]]:
        """The vision parts that learn in full (projector, tower) and the language model, apart: each has
        its own learning rate (`vision.projector_lr`) and stage (`vision.projector_first_steps`)."""
        from tunery.vision.parts import is_vision_weight

        groups: dict[str, list[torch.nn.Parameter]] = {"vision": [], "language": []}
        for name, param in model.named_parameters():
            if param.requires_grad:
                groups["vision" if is_vision_weight(name) else "language"].append(param)
        return [(name, params) for name, params in groups.items() if params]

    def lr_scale(self, group: str, step: int) -> float:
        vision = self.cfg.vision
        if group == "vision":
            return vision.projector_lr / self.cfg.peak_lr() if vision.projector_lr else 1.0
        return 0.0 if step < vision.projector_first_steps else 1.0

    def pieces(self, rows: list) -> list[list]:
        return [[row] for row in rows]

    def collate(self, rows: list) -> dict[str, torch.Tensor]:
        from tunery.vision.render import collate_vision

        return collate_vision(rows, self.processor, self.cfg.vision.max_image_pixels)

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return count_trained(batch)

    def loss(self, model, batch, logits_at) -> LossOut:
        device = device_of(model)
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        logits = model(**inputs, use_cache=False).logits
        positions, targets = next_token_targets(batch["labels"])
        total, count = token_ce_sum(logits[positions.to(device)], targets.to(device))
        return LossOut(total, count)

    def final_artefact(self, model, run, state_dict=None) -> Path:
        """adapter/ or model/ and tokenizer/, as for text models, plus processor/ (the image settings a
        later command needs to render images the same way)."""
        from tunery.atomic import atomic_dir

        target = super().final_artefact(model, run, state_dict)
        with atomic_dir(run.root / "processor") as tmp:
            getattr(self.processor, "processor", self.processor).save_pretrained(tmp)
        return target
