"""Load a vision-language model and its processor (from an alias, a local folder or a hub id), with the
family's image options of the config (`vision.longest_edge`, `vision.tiling`, `vision.max_pixels`)."""

from __future__ import annotations

from pathlib import Path

from tunery.config.schema import VisionSection
from tunery.errors import TuneryError


class ConfiguredProcessor:
    """A model's processor with the config's image options passed on every call (so the rendering of
    the data and the batches of training see the same image sizes)."""

    def __init__(self, processor, image_kwargs: dict):
        self.processor, self.image_kwargs = processor, image_kwargs

    def __call__(self, *args, **kwargs):
        return self.processor(*args, **self.image_kwargs, **kwargs)

    def __getattr__(self, name):
        return getattr(self.processor, name)


def image_kwargs(processor, vision: VisionSection) -> dict:
    """Processor call arguments for the config's image options; an option the family does not have
    is an error rather than silently ignored."""
    image_processor = getattr(processor, "image_processor", None)
    family = type(image_processor).__name__
    out: dict = {}
    if vision.longest_edge is not None or vision.tiling is not None:
        if not hasattr(image_processor, "do_image_splitting"):
            raise TuneryError(f"vision.longest_edge and vision.tiling are Idefics3 / SmolVLM options; this model's "
                              f"image processor is {family}", fix="leave them empty for this model")
        if vision.longest_edge is not None:
            out["size"] = {"longest_edge": vision.longest_edge}
        if vision.tiling is not None:
            out["do_image_splitting"] = vision.tiling
    if vision.max_pixels is not None:
        if not hasattr(image_processor, "merge_size"):
            raise TuneryError(f"vision.max_pixels is a Qwen2-VL / Qwen2.5-VL option; this model's image processor "
                              f"is {family}", fix="leave it empty for this model")
        size = dict(getattr(image_processor, "size", None) or {})
        out["size"] = {"shortest_edge": min(size.get("shortest_edge", 3136), vision.max_pixels),
                       "longest_edge": vision.max_pixels}
    return out


def load_processor(spec: str):
    """The model's own processor (AutoProcessor) from an alias, a folder or a hub id."""
    from transformers import AutoProcessor

    from tunery.models.load import resolve_model_source
    from tunery.models.composed_vision.processor import TuneryVisionProcessor, is_composed_folder

    # A run's processor/ folder holds a processor and no model (no config.json): read it as it is.
    is_processor_folder = Path(spec).is_dir() and not (Path(spec) / "config.json").is_file()
    source = spec if is_processor_folder else resolve_model_source(spec)
    try:
        if is_composed_folder(source):
            return TuneryVisionProcessor.from_pretrained(source)
        return AutoProcessor.from_pretrained(source)
    except (OSError, ValueError, ImportError) as exc:
        raise TuneryError(f"could not load the processor of '{spec}'", why=f"{type(exc).__name__}: {exc}",
                          fix="a vision-language model folder holds its processor (preprocessor_config.json, "
                          "processor_config.json); Qwen2-VL's processor also needs torchvision") from exc


def configured_processor(spec: str, vision: VisionSection) -> ConfiguredProcessor:
    processor = load_processor(spec)
    return ConfiguredProcessor(processor, image_kwargs(processor, vision))


def load_vlm(spec: str, dtype: str = "float32"):
    """The vision-language model (AutoModelForImageTextToText) of a spec, in `dtype`, in eval mode."""
    from transformers import AutoModelForImageTextToText

    from tunery.models.load import DTYPES, quiet_transformers, resolve_model_source
    from tunery.models.composed_vision import model as composed  # noqa: F401  registers the composed model's classes

    quiet_transformers()
    source = resolve_model_source(spec)
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=DTYPES[dtype])
    except (OSError, ValueError) as exc:
        raise TuneryError(f"could not load '{spec}' as a vision-language model", why=f"{type(exc).__name__}: {exc}",
                          fix="use a LLaVA, Idefics3/SmolVLM or Qwen2-VL folder, or smollm2-135m-vision") from exc
    return model.eval()
