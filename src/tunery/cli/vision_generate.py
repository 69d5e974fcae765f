"""`tunery generate --image`: answer prompts about images with a vision run or a vision base model."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tunery.errors import TuneryError


def image_turns(prompt: str, images: list[str], system: str | None):
    """One user turn of the images (each opened and checked first) then the prompt's text, after a system
    message when one is given."""
    from tunery.vision.images import ImageProblem, ImageRef, open_image
    from tunery.vision.records import VisionMessage

    refs = [ImageRef(path=str(Path(p).expanduser().resolve())) for p in images]
    for ref in refs:
        try:
            open_image(ref)
        except ImageProblem as exc:
            raise TuneryError(f"--image: {exc.reason}", fix="give the path of a PNG, JPEG, WEBP, BMP, GIF or TIFF "
                              "still image") from None
    head = [VisionMessage("system", (("text", system),))] if system else []
    return head + [VisionMessage("user", tuple(("image", r) for r in refs) + (("text", prompt),))]


def generate_with_images(target: str, prompts: list[str], images: list[str], system: str | None,
                         max_new_tokens: int, temperature: float, seed: int, log: Callable[[str], None]) -> list[str]:
    """The answer of each prompt, each asked with the same images."""
    from tunery.vision.inference import generate_vision, is_vision_run, load_vision_target

    conversations = [image_turns(p, images, system) for p in prompts]
    log(f"loading {target} ...")
    try:
        model, processor = load_vision_target(target)
    except TuneryError as exc:
        if is_vision_run(target):
            raise
        raise TuneryError(f"--image needs a vision run or a vision-language model; {target} did not load as one",
                          why=exc.what, fix="train with method: vision, or name a LLaVA, Idefics3/SmolVLM or "
                          "Qwen2-VL model (or smollm2-135m-vision)") from exc
    return generate_vision(model, processor, conversations, max_new_tokens, temperature, seed)
