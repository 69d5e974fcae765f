"""`tunery merge` of a vision run: the LoRA adapter merged into the language model, written with the
processor as a plain Hugging Face folder that `AutoModelForImageTextToText.from_pretrained` loads.

The merge is PEFT's own (`merge_and_unload`): a vision run's adapter holds, next to the LoRA factors
of the language model's linear layers, the full weights of the parts `vision.train` let learn (the
projector, the vision tower) as `modules_to_save`, and PEFT's merge puts both in place. What makes it
safe is the text merge's (`tunery.export.merge`): the base is read fresh, non-finite weights stop the
merge before anything is written, the folder is written atomically with its marker, a second run with
the same inputs does nothing, and the merged model's logits on a probe (a fixed image and question,
through the processor) are compared with the unmerged run's and stored in `merge.json`.

GGUF: llama.cpp reads a vision model as two files, the language model's GGUF and a projector file
(mmproj) that its own conversion script writes per family; tunery writes neither for a vision run.
`vision_gguf_error` says so, as the error of `tunery export --format gguf|gguf-lora|ollama`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from tunery.errors import TuneryError



def vision_gguf_error(fmt: str) -> TuneryError:
    """The error of `tunery export --format FMT` (a GGUF format) on a vision run: what GGUF readers take."""
    return TuneryError(
        f"tunery exports a vision run as a Hugging Face folder only, not as {fmt}",
        why="GGUF readers (llama.cpp, Ollama) take a vision model as two files: the language model's GGUF and a "
            "projector file (mmproj) that llama.cpp's own conversion script writes per model family; tunery "
            "writes neither, and a language-only GGUF of the run would answer without seeing the image",
        fix="tunery export RUN --format hf (or tunery merge RUN --out DIR): the merged model with its processor, "
            "which transformers loads with AutoModelForImageTextToText; for llama.cpp, convert that folder with "
            "llama.cpp's convert_hf_to_gguf.py (and its --mmproj option) where llama.cpp supports the family")


def probe_image():
    """A fixed 64 x 64 image (colour gradients), the same on every machine."""
    from PIL import Image

    pixels = bytes(v for y in range(64) for x in range(64) for v in (x * 4, y * 4, (x + y) * 2))
    return Image.frombytes("RGB", (64, 64), pixels)


@torch.no_grad()
def probe_logits(model, processor) -> list[torch.Tensor]:
    """Float32 logits of the probe (the fixed image and a question, with the generation prompt)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = dict(processor(text=[text], images=[[probe_image()]], return_tensors="pt"))
    device = next(model.parameters()).device
    return [model(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False).logits[0].float().cpu()]


def merged_vision_model(run_dir: Path, info: dict):
    """(merged model, processor, logit comparison with the unmerged run) of a LoRA vision run, or the
    full weights of model/ (no comparison) for a full one."""
    from peft import PeftModel

    from tunery.export.lora_math import non_finite
    from tunery.export.probe import compare_logits
    from tunery.vision.inference import load_vision_run
    from tunery.vision.model import load_vlm

    if info.get("adapter", "lora") not in ("lora", "qlora"):
        model, processor = load_vision_run(run_dir)
        return model, processor, None
    _, processor = load_vision_run(run_dir, merge=False)  # the processor with the run's image options
    unmerged = PeftModel.from_pretrained(load_vlm(info["base_model"]), str(run_dir / "adapter")).eval()
    reference = probe_logits(unmerged, processor)
    merged = unmerged.merge_and_unload().eval()
    bad = non_finite(merged.state_dict())
    if bad:
        raise TuneryError(f"the merged weights hold NaN/inf in {len(bad)} tensor(s), e.g. {bad[0]}; nothing was "
                          "written", why="the adapter or the base model holds non-finite values")
    return merged, processor, compare_logits(reference, probe_logits(merged, processor))


def merge_vision_run(run_dir: str | Path, out_dir: str | Path, dtype: str = "float32", overwrite: bool = False,
                     log: Callable[[str], None] = print) -> dict:
    """Merge a vision run and write model + processor to `out_dir` (see the module's note); the record."""
    from tunery.atomic import atomic_dir, write_text_atomic
    from tunery.export.lora_math import non_finite
    from tunery.export.merge import MERGE_RECORD, already_merged, fingerprint
    from tunery.models.load import DTYPES
    from tunery.runfolder import RunFolder, check_output, portable_path, read_run_info, write_marker
    from tunery.vision.inference import vision_stop_ids
    import json
    import shutil

    run, out = RunFolder(Path(run_dir)), Path(out_dir).expanduser()
    info = read_run_info(run.root)
    if dtype not in DTYPES:
        raise TuneryError(f"unknown dtype '{dtype}'", fix=f"use one of {', '.join(DTYPES)}")
    key = fingerprint(run, info, dtype)
    done = already_merged(out, key, log)
    if done is not None:
        return done
    out = check_output(out, "merge", overwrite)
    log(f"merging {run.root} into {info['base_model']} (vision) ...")
    model, processor, check = merged_vision_model(run.root, info)
    model = model.to(DTYPES[dtype])
    bad = non_finite(model.state_dict())
    if bad:
        raise TuneryError(f"the merged weights overflow in {dtype} ({bad[0]} holds inf/NaN); nothing was written",
                          fix="merge with --dtype float32 or bfloat16")
    stops = vision_stop_ids(processor, model)
    if getattr(model, "generation_config", None) is not None and stops:
        model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    record = {"source_run": portable_path(str(run.root), out), "base_model": portable_path(info["base_model"], out),
              "adapter": info.get("adapter", "lora"), "dtype": dtype, "fingerprint": key, "method": "vision",
              "logits_vs_unmerged": check}
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for saved in sorted((run.root / "processor").iterdir()):  # the run's processor as trained, file for file
            if saved.is_file():
                shutil.copyfile(saved, tmp / saved.name)
        write_text_atomic(tmp / MERGE_RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
        write_marker(tmp, "merge")
    if check is not None:
        log(f"merged model vs unmerged (probe image): max |logit diff| {check['max_abs_diff']:.3g} over "
            f"{check['positions']} positions; argmax agrees: {check['argmax_agrees']}")
    log(f"wrote {out}")
    return record
