"""Load a vision run (or a vision base model) with its processor, and answer conversations with images.

A vision run folder names its base model and holds `processor/` next to `adapter/` (or `model/`), so
its path is all a later command needs. Answers are generated one conversation at a time, on exactly
the tensors the processor gives for the template's text and the images (images expand to different
token counts and pixel shapes per family, so there is no common batch to pad to), greedily unless a
temperature is given, and cut at the first stop token (eos, the model's eos ids, the template's
end-of-turn token).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunery.errors import TuneryError
from tunery.vision.images import MAX_PIXELS, open_image
from tunery.vision.records import VisionMessage


def is_vision_run(path: str | Path) -> bool:
    """Was the run folder trained with `method: vision`?"""
    from tunery.runfolder import RunFolder, is_run_folder

    folder = Path(path).expanduser()
    if not is_run_folder(folder):
        return False
    config = RunFolder(folder).read_config()
    return config is not None and config.method == "vision"


def run_vision_section(path: str | Path):
    """The run's `vision` config section (image options the processor must be called with)."""
    from tunery.config.schema import VisionSection
    from tunery.runfolder import RunFolder

    config = RunFolder(Path(path).expanduser()).read_config()
    return config.vision if config is not None else VisionSection()


def load_vision_run(run_dir: Path, dtype: str = "float32", merge: bool = True):
    """(model, processor) of a finished vision run: the LoRA adapter (and any projector or tower it saved)
    on the base model, merged into it when `merge` (the same function, faster to generate with), or the
    full weights of `model/`; the processor of `processor/` with the run's image options."""
    from tunery.runfolder import RunFolder, read_run_info, unfinished_error
    from tunery.vision import model as vision_model

    info, folder = read_run_info(run_dir), RunFolder(run_dir)
    is_adapter = info.get("adapter", "lora") in ("lora", "qlora")
    weights = folder.adapter if is_adapter else folder.model
    if not (weights / ("adapter_config.json" if is_adapter else "config.json")).is_file():
        raise unfinished_error(run_dir, info, weights)
    processor_dir = run_dir / "processor"
    if not processor_dir.is_dir():
        raise TuneryError(f"{run_dir} is a vision run without a processor/ folder",
                          why="the run folder is incomplete (copied in part?)", fix="copy the whole run folder")
    processor = vision_model.load_processor(str(processor_dir))
    vision = run_vision_section(run_dir)
    configured = vision_model.ConfiguredProcessor(processor, vision_model.image_kwargs(processor, vision))
    if not is_adapter:
        return vision_model.load_vlm(str(weights), dtype), configured
    from peft import PeftModel

    model = PeftModel.from_pretrained(vision_model.load_vlm(info["base_model"], dtype), str(weights)).eval()
    return (model.merge_and_unload().eval() if merge else model), configured


def load_vision_target(target: str, vision=None, dtype: str = "float32"):
    """(model, processor) of a vision run folder or a vision base model (alias, folder, hub id); a base
    model's processor takes `vision` (a `VisionSection`: the run's image options, for a fair baseline)."""
    from tunery.config.schema import VisionSection
    from tunery.vision import model as vision_model

    if is_vision_run(target):
        return load_vision_run(Path(target).expanduser(), dtype)
    processor = vision_model.load_processor(target)
    options = vision_model.image_kwargs(processor, vision or VisionSection())
    return vision_model.load_vlm(target, dtype), vision_model.ConfiguredProcessor(processor, options)


def vision_inputs(processor, messages: list[VisionMessage], max_pixels: int = MAX_PIXELS) -> dict[str, torch.Tensor]:
    """The processor's tensors for a conversation with the generation prompt: what the model answers from."""
    from tunery.vision.render import process, template_text

    text = template_text(processor, messages, generation_prompt=True)
    images = [open_image(ref, max_pixels) for m in messages for ref in m.images]
    return process(processor, [text], [images])


def vision_stop_ids(processor, model) -> list[int]:
    """Ids that end an answer: the tokenizer's eos, the model's configured eos ids, and the end-of-turn
    token the processor's template writes after an answer."""
    tokenizer = processor.tokenizer
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, list) else [configured])
    turn = [VisionMessage("user", (("text", "hi"),))]
    head = processor.apply_chat_template(_dicts(turn), tokenize=False, add_generation_prompt=True)
    full = processor.apply_chat_template(_dicts(turn + [VisionMessage("assistant", (("text", "ok"),))]),
                                         tokenize=False)
    if full.startswith(head):
        tail = tokenizer(full[len(head):], add_special_tokens=False)["input_ids"]
        special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        ids.update([i for i in tail if i in special][:1])
    return sorted(i for i in ids if i is not None)


def _dicts(messages: list[VisionMessage]) -> list[dict]:
    from tunery.vision.render import hf_messages

    return hf_messages(messages)


@torch.inference_mode()
def generate_vision_ids(model, processor, conversations: list[list[VisionMessage]], max_new_tokens: int = 128,
                        temperature: float = 0.0, seed: int = 0, max_pixels: int = MAX_PIXELS,
                        streamer=None) -> list[list[int]]:
    """The answer token ids of each conversation (images and text), cut before the first stop token."""
    from transformers import GenerationConfig

    from tunery.data.chat_template import cut_at_stop

    stop = vision_stop_ids(processor, model)
    pad = processor.tokenizer.pad_token_id
    # An explicit config replaces the checkpoint's own sampling defaults, as for text (tunery.inference).
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                              temperature=temperature if temperature > 0 else None, top_p=None, top_k=None,
                              pad_token_id=pad if pad is not None else (stop[0] if stop else 0), eos_token_id=stop,
                              use_cache=True)
    device = next(model.parameters()).device
    answers = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for messages in conversations:
            inputs = {k: v.to(device) for k, v in vision_inputs(processor, messages, max_pixels).items()}
            out = model.generate(**inputs, generation_config=config, streamer=streamer)
            answers.append(cut_at_stop(out[0, inputs["input_ids"].shape[1]:].tolist(), stop))
    return answers


def generate_vision(model, processor, conversations: list[list[VisionMessage]], *args, **options) -> list[str]:
    """Decoded answers (special tokens dropped, whitespace stripped) of `generate_vision_ids`."""
    rows = generate_vision_ids(model, processor, conversations, *args, **options)
    return [processor.tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]
