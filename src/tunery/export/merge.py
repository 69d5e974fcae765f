"""`tunery merge`: a run's adapter merged into its base, written as a plain Hugging Face model folder.

The output (safetensors, config, generation config with the end-of-turn token, tokenizer with the
run's chat template, `merge.json`) loads with `AutoModelForCausalLM.from_pretrained` alone. The
arithmetic is `lora_math.merge_lora_weights`; this wrapper adds what makes it safe:

- the base is read fresh from its source each time, so a second merge never adds the update twice;
- NaN/inf in the merged weights (after the cast to the output dtype, where fp16 can overflow) stops
  the merge before anything is written;
- the output is written to a temporary folder, fsynced and renamed (`tunery.atomic`), so a crash or a
  full disk leaves no half model, and an earlier merge stays in place until the new one is complete;
- `--out` may only be a new or empty folder or an earlier merge (its `.tunery` marker), never a folder
  tunery did not make; the run folder is only read;
- the merged model's logits are compared with the unmerged (base + adapter) model on fixed prompts,
  and the difference is stored in `merge.json`;
- running it again with the same inputs finds the same fingerprint and does nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch

from tunery.errors import TuneryError
from tunery.export import lora_math
from tunery.export.probe import compare_logits, logits_of, probe_ids
from tunery.models.load import DTYPES
from tunery.atomic import atomic_dir, write_text_atomic
from tunery.runfolder import RunFolder, check_output, made_by, portable_path, write_marker

MERGE_RECORD = "merge.json"
ADAPTER_KINDS = ("lora", "qlora")


def fingerprint(run: RunFolder, info: dict, dtype: str) -> str:
    """A hash of what the merge depends on: adapter or full weights, base model spec, output dtype."""
    digest = hashlib.sha256(f"{info.get('base_model')}|{info.get('adapter')}|{dtype}".encode())
    source = run.adapter if info.get("adapter") in ADAPTER_KINDS else run.model
    for path in sorted(source.glob("*")):
        if path.suffix in (".json", ".safetensors"):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def read_adapter(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, adapter_config) of a PEFT adapter folder."""
    from safetensors.torch import load_file

    weights, config = folder / "adapter_model.safetensors", folder / "adapter_config.json"
    if not weights.is_file() or not config.is_file():
        raise TuneryError(f"{folder} holds no PEFT adapter (adapter_model.safetensors + adapter_config.json)")
    return load_file(str(weights)), json.loads(config.read_text())


def _untie_if_needed(model, merged: dict[str, torch.Tensor]) -> None:
    """A trained copy of a tied head or embedding (modules_to_save) gives two different matrices; the
    merged model must then store both, or loading would silently keep only one of them."""
    tied = getattr(model, "_tied_weights_keys", None) or {}
    for target, source in tied.items():
        if target in merged and source in merged and merged[target] is not merged[source]:
            if not torch.equal(merged[target], merged[source]):
                module_name = target.rsplit(".", 1)[0]
                module = model.get_submodule(module_name)
                module.weight = torch.nn.Parameter(merged[target].clone())
                model.config.tie_word_embeddings = False
                if hasattr(model.config, "get_text_config"):
                    model.config.get_text_config().tie_word_embeddings = False


def merged_model(run: RunFolder, info: dict, tokenizer):
    """(merged model, logit comparison against the unmerged model) for a LoRA or QLoRA run.

    The unmerged reference is the model the adapter was trained with (for QLoRA: the 4-bit base plus
    the adapter). The merge target is the same base in full precision; for QLoRA that is the
    dequantized 4-bit weights, not the original ones, because those are what the adapter learned on.
    """
    from peft import PeftModel

    from tunery.models.quant import dequantized_base, load_base_for_run

    rows = probe_ids(tokenizer)
    reference_model = PeftModel.from_pretrained(load_base_for_run(info, run.root), str(run.adapter)).eval()
    reference = logits_of(reference_model, rows)
    base = reference_model.unload()  # takes the LoRA layers out; base weights are untouched
    if info.get("adapter") == "qlora":
        base = dequantized_base(info, base)
    adapter, config = read_adapter(run.adapter)
    merged = lora_math.merge_lora_weights(base.state_dict(), adapter, config)
    bad = lora_math.non_finite(merged)
    if bad:
        raise TuneryError(
            f"the merged weights hold NaN/inf in {len(bad)} tensor(s), e.g. {bad[0]}; nothing was written",
            why="the adapter or the base model holds non-finite values",
            fix="check the run (tunery train refuses to save NaN, so the adapter may have been edited)",
        )
    _untie_if_needed(base, merged)
    base.load_state_dict(merged, strict=True)
    return base.eval(), compare_logits(reference, logits_of(base, rows))


def _full_model(run: RunFolder):
    from transformers import AutoModelForCausalLM

    if not (run.model / "config.json").is_file():
        raise TuneryError(f"{run.root} has no final model/ folder", fix="finish the run (tunery train --resume)")
    return AutoModelForCausalLM.from_pretrained(run.model, dtype=torch.float32).eval()


def merge_run(run_dir: str | Path, out_dir: str | Path, dtype: str = "float32", overwrite: bool = False,
              log: Callable[[str], None] = print) -> dict:
    """Merge the run's adapter into its base and write a plain HF model folder to `out_dir`.

    Returns the merge record (also saved as `out_dir/merge.json`). For a full fine-tuning run the model
    is copied as is. Idempotent: the same run, base and dtype into an existing merge does nothing.
    """
    from transformers import AutoTokenizer

    from tunery.inference import read_run_info
    from tunery.vision.inference import is_vision_run

    if is_vision_run(run_dir):  # the processor goes with it, and the model class differs
        from tunery.export.merge_vision import merge_vision_run

        return merge_vision_run(run_dir, out_dir, dtype, overwrite, log)
    run, out = RunFolder(Path(run_dir)), Path(out_dir).expanduser()
    info = read_run_info(run.root)
    if dtype not in DTYPES:
        raise TuneryError(f"unknown dtype '{dtype}'", fix=f"use one of {', '.join(DTYPES)}")
    kind = info.get("adapter", "lora")
    if kind in ADAPTER_KINDS and not (run.adapter / "adapter_config.json").is_file():
        raise TuneryError(f"{run.root} has no final adapter/ yet", fix="finish the run (tunery train --resume)")
    print_ = log
    key = fingerprint(run, info, dtype)
    done = already_merged(out, key, print_)
    if done is not None:
        return done
    out = check_output(out, "merge", overwrite)
    tokenizer = AutoTokenizer.from_pretrained(run.tokenizer)
    if kind in ADAPTER_KINDS:
        print_(f"merging {run.adapter} into {info['base_model']} ...")
        model, check = merged_model(run, info, tokenizer)
    else:
        model, check = _full_model(run), None
    model = model.to(DTYPES[dtype])
    bad = lora_math.non_finite(model.state_dict())
    if bad:
        raise TuneryError(
            f"the merged weights overflow in {dtype} ({bad[0]} holds inf/NaN); nothing was written",
            fix="merge with --dtype float32 or bfloat16",
        )
    record = {"source_run": portable_path(str(run.root), out), "base_model": portable_path(info["base_model"], out),
              "adapter": kind, "dtype": dtype, "fingerprint": key, "logits_vs_unmerged": check}
    write_model_folder(model, tokenizer, out, record)
    if check is not None:
        print_(f"merged model vs unmerged: max |logit diff| {check['max_abs_diff']:.3g} over "
               f"{check['positions']} positions; argmax agrees: {check['argmax_agrees']}")
    print_(f"wrote {out}")
    return record


def already_merged(out: Path, key: str, log: Callable[[str], None]) -> dict | None:
    """The record of a merge already in `out` with this fingerprint (marked skipped), or None: a second
    merge of the same adapter, base and dtype does nothing."""
    previous = _previous_record(out) if made_by(out) == "merge" else None
    if previous is None or previous.get("fingerprint") != key:
        return None
    log(f"{out} already holds this merge (same adapter, base and dtype); nothing to do")
    return previous | {"skipped": True}


def _previous_record(out: Path) -> dict | None:
    path = out / MERGE_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def write_model_folder(model, tokenizer, out: Path, record: dict, maker: str = "merge") -> None:
    """Save model + tokenizer (+ chat template, end tokens in the generation config) atomically, with
    the marker of the command that made it (`maker`), so that only that command replaces it later."""
    from tunery.inference import stop_token_ids

    stops = stop_token_ids(tokenizer, model)
    if getattr(model, "generation_config", None) is not None and stops:
        # Plain `generate` then stops at the end-of-turn token, not only at the tokenizer's eos.
        model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_text_atomic(tmp / MERGE_RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
        write_marker(tmp, maker)
