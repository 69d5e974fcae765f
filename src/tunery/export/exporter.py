"""`tunery export RUN --format hf|gguf|ollama --out DIR`: write, then verify by reading back.

Every format starts from the same in-memory model: the run's adapter merged into its base (see
`merge.merged_model`; for QLoRA the dequantized base), or the full model of a full fine-tuning run.
Each export is then read back by an independent reader and compared with that model on fixed prompts
(`verify.py`); the result is printed and stored next to the export (`verify.json`), and a failed check
makes the command exit non-zero. The run folder is an input: nothing is written into it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import torch

from tunery.errors import TuneryError
from tunery.export import merge as merging
from tunery.runfolder import MARKER, RunFolder, check_output, made_by, portable_path, write_marker, write_text_atomic

FORMATS = ("hf", "gguf", "ollama", "gguf-lora")
GGUF_TYPES = ("f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m")
VERIFY = "verify.json"


def source_model(run: RunFolder, info: dict, tokenizer):
    """(model to export, logit check of merged vs unmerged or None) for a finished run."""
    if info.get("adapter", "lora") in merging.ADAPTER_KINDS:
        if not (run.adapter / "adapter_config.json").is_file():
            raise TuneryError(f"{run.root} has no final adapter/ yet", fix="finish the run (tunery train --resume)")
        return merging.merged_model(run, info, tokenizer)
    return merging._full_model(run), None


def _prepare_out(out: Path, fmt: str, overwrite: bool) -> Path:
    """Where an export goes: a new or empty folder, or an earlier export (replaced as a whole for hf,
    its files replaced for gguf/ollama). With --overwrite a GGUF may also go next to files tunery did
    not write, which it never touches; an hf export never replaces such a folder."""
    if fmt == "hf":
        return check_output(out, "export", overwrite=True)  # an earlier export is replaced, nothing else
    path = out.resolve()
    if path.exists() and not path.is_dir():
        raise TuneryError(f"--out {out} is a file, not a folder", fix="name a folder")
    earlier = made_by(path) == "export" or (path / VERIFY).is_file()  # exports before markers: verify.json
    if path.is_dir() and any(path.iterdir()) and not earlier and not overwrite:
        raise TuneryError(f"{out} already exists and holds something else: files that tunery did not write",
                          fix="choose another --out folder, or add --overwrite to add the GGUF next to them")
    path.mkdir(parents=True, exist_ok=True)
    if not any(p.name != MARKER for p in path.iterdir()):
        write_marker(path, "export")
    return path


def _gguf_name(run: RunFolder, file_type: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", run.root.resolve().name) or "model"
    return f"{stem}-{file_type}.gguf"


def export_gguf(model, tokenizer, run: RunFolder, out: Path, file_type: str, log) -> tuple[Path, dict]:
    """Write and verify a GGUF of `model`; returns (path, verification record)."""
    from tunery.data.render import chat_template_of
    from tunery.export.gguf_vocab import pre_tokenizer_name, read_vocab
    from tunery.export.verify import verify_gguf

    vocab = read_vocab(tokenizer, model.config.vocab_size, chat_template_of(tokenizer))
    pre, warning = pre_tokenizer_name(tokenizer)
    path = out / _gguf_name(run, file_type)
    log(f"writing {path} ({file_type}) ...")
    write_gguf_of_type(model, vocab, path, file_type, name=run.root.resolve().name, pre=pre)
    (out / VERIFY).unlink(missing_ok=True)  # an earlier record describes the file just replaced
    log("reading it back with transformers' GGUF loader and comparing on fixed prompts ...")
    record = verify_gguf(path, model, tokenizer, file_type) | {"file": path.name}  # relative to the export
    record["size_bytes"] = path.stat().st_size
    record["tensor_types"] = tensor_types(path)
    if warning:
        record["warnings"] = [warning]
    return path, record


def write_gguf_of_type(model, vocab, path: Path, file_type: str, name: str, pre: str) -> None:
    """Our writer for f32/f16/q8_0; the k-quants are an f16 file passed through llama.cpp's quantizer."""
    from tunery.export.gguf_writer import FILE_TYPES, write_gguf
    from tunery.export.quantize import LLAMA_QUANT_TYPES, quantize_isolated

    if file_type in LLAMA_QUANT_TYPES:
        f16 = path.with_name(f".{path.stem}.f16-for-quantize.gguf")
        try:
            write_gguf(model, vocab, f16, "f16", name=name, pre=pre)
            quantize_isolated(f16, path, file_type)
        finally:
            f16.unlink(missing_ok=True)
        return
    if file_type not in FILE_TYPES:
        raise TuneryError(f"unknown GGUF type '{file_type}'", fix=f"use one of {', '.join(GGUF_TYPES)}")
    write_gguf(model, vocab, path, file_type, name=name, pre=pre)


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGML type the file holds: a k-quant keeps rows that are not a multiple
    of 256 in llama.cpp's fallback type, so this says what `--type` really gave."""
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for tensor in GGUFReader(str(path)).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return dict(sorted(counts.items()))


def export_hf(model, tokenizer, out: Path, base_record: dict) -> dict:
    """Write a plain HF folder and verify it by reloading it with AutoModelForCausalLM alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunery.export.probe import compare_logits, logits_of, probe_ids
    from tunery.export.verify import compare_tokenizers, greedy_continuations, judge

    merging.write_model_folder(model, tokenizer, out, base_record, maker="export")
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    loaded_tok = AutoTokenizer.from_pretrained(out)
    rows = probe_ids(tokenizer)
    record = {"reader": "transformers AutoModelForCausalLM", "file": ".", "type": "hf",
              "tokenizer": compare_tokenizers(tokenizer, loaded_tok),
              "logits": compare_logits(logits_of(model, rows), logits_of(loaded, rows))}
    record["greedy_identical"] = (greedy_continuations(model, tokenizer, 16)
                                  == greedy_continuations(loaded, loaded_tok, 16))
    return judge(record, "hf")


def _export_vision(run_dir, fmt: str, out_dir, overwrite: bool, log) -> dict:
    """A vision run exports as its merged HF folder (model + processor); GGUF formats are refused with
    what GGUF readers take (`tunery.export.merge_vision`)."""
    from tunery.export.merge_vision import merge_vision_run, vision_gguf_error

    if fmt != "hf":
        raise vision_gguf_error(fmt)
    record = merge_vision_run(run_dir, out_dir, "float32", overwrite, log)
    check = record.get("logits_vs_unmerged")
    return record | {"format": "hf", "passed": check is None or bool(check["argmax_agrees"])}


def export_run(run_dir: str | Path, fmt: str, out_dir: str | Path, gguf_type: str = "f16",
               overwrite: bool = False, log: Callable[[str], None] = print, verify_data: str | None = None,
               verify_samples: int | None = None, verify_margin: float | None = None) -> dict:
    """Export a finished run (see the module docstring). Returns the verification record.

    `verify_data`, `verify_samples`, `verify_margin`: the task check (`task_verify.py`): which examples
    (default: the run's validation data), how many (seeded sample), and the allowed drop in points."""
    from transformers import AutoTokenizer

    from tunery.export import task_verify
    from tunery.inference import read_run_info

    if fmt not in FORMATS:
        raise TuneryError(f"unknown export format '{fmt}'", fix=f"use one of {', '.join(FORMATS)}")
    if fmt != "hf" and gguf_type not in GGUF_TYPES:  # said before anything is loaded
        raise TuneryError(f"unknown GGUF type '{gguf_type}'", fix=f"use one of {', '.join(GGUF_TYPES)}")
    from tunery.vision.inference import is_vision_run

    if is_vision_run(run_dir):  # said before anything is loaded
        return _export_vision(run_dir, fmt, out_dir, overwrite, log)
    run, out = RunFolder(Path(run_dir)), Path(out_dir).expanduser()
    info = read_run_info(run.root)
    tokenizer = AutoTokenizer.from_pretrained(run.tokenizer)
    sample = task_verify.task_sample(run, verify_data, verify_samples or task_verify.DEFAULT_SAMPLES)
    out = _prepare_out(out, fmt, overwrite)
    head = {"source_run": portable_path(str(run.root), out), "base_model": portable_path(info["base_model"], out),
            "adapter": info.get("adapter", "lora"), "format": fmt}
    if fmt == "gguf-lora":  # the adapter alone; its own loading and checks
        from tunery.export.lora_export import export_gguf_lora

        record = head | export_gguf_lora(run, info, tokenizer, out, gguf_type, log)
        files = (out / record["base_file"], out / record["file"])
    else:
        log(f"loading {run.root} ({info.get('adapter', 'lora')} on {info['base_model']}) ...")
        model, merge_check = source_model(run, info, tokenizer)
        model.eval()
        head["merge_vs_unmerged"] = merge_check
        if fmt == "hf":
            record, files = head | export_hf(model, tokenizer, out, head), (out, None)
        else:
            path, check = export_gguf(model, tokenizer, run, out, gguf_type, log)
            record, files = head | check, (path, None)
            if fmt == "ollama":
                record["ollama"] = write_modelfile(tokenizer, path, out)
        del model
    timing: dict = {}
    task = task_verify.verify_on_task(
        sample, lambda: unmerged_answers(run, info, tokenizer, sample),
        lambda: exported_answers(fmt, files, tokenizer, sample, timing),
        tokenizer, "transformers (the reloaded folder)" if fmt == "hf" else "llama.cpp",
        task_verify.DEFAULT_MARGIN_POINTS if verify_margin is None else verify_margin, log, timing)
    record = task_verify.with_task_verdict(record, task)
    write_text_atomic(out / VERIFY, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    if fmt == "gguf-lora":
        from tunery.export.lora_export import print_lora_summary

        print_lora_summary(record, log)
    else:
        _print_summary(record, log)
    for line in task_verify.task_table(task):
        log(line)
    return record


def unmerged_answers(run: RunFolder, info: dict, tokenizer, sample) -> list[list[int]]:
    """The run's own greedy answers to the task sample: its base plus the PEFT adapter, as trained
    (a full fine-tuning run: its model)."""
    from tunery.export.task_verify import answer_ids_with_model

    if info.get("adapter", "lora") in merging.ADAPTER_KINDS:
        from peft import PeftModel

        from tunery.models.quant import load_base_for_run

        model = PeftModel.from_pretrained(load_base_for_run(info, run.root), str(run.adapter)).eval()
    else:
        model = merging._full_model(run)
    return answer_ids_with_model(model, tokenizer, sample)


def exported_answers(fmt: str, files: tuple, tokenizer, sample, timing: dict) -> list[list[int]]:
    """Greedy answers of the export: an hf folder reloaded by transformers, a GGUF through llama.cpp
    (with the LoRA GGUF applied for gguf-lora)."""
    from tunery.export.task_verify import answer_ids_with_llama_cpp, answer_ids_with_model

    if fmt == "hf":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        loaded = AutoModelForCausalLM.from_pretrained(files[0], dtype=torch.float32).eval()
        return answer_ids_with_model(loaded, AutoTokenizer.from_pretrained(files[0]), sample)
    return answer_ids_with_llama_cpp(files[0], tokenizer, sample, adapter=files[1], timing=timing)


def write_modelfile(tokenizer, gguf_path: Path, out: Path) -> dict:
    """Write `Modelfile` next to the GGUF; returns its check record."""
    from tunery.export.ollama import modelfile
    from tunery.inference import stop_token_ids

    stops = [tokenizer.convert_ids_to_tokens(i) for i in stop_token_ids(tokenizer)]
    text, record = modelfile(tokenizer, gguf_path.name, stops)
    write_text_atomic(out / "Modelfile", text)
    # Paths in the record are relative to the export folder: verify.json travels with it.
    return record | {"modelfile": "Modelfile",
                     "create_with": f"ollama create {gguf_path.stem.lower()} -f Modelfile  (in the export folder)"}


def _print_summary(record: dict, log) -> None:
    logits = record.get("logits")
    verdict = "PASSED" if record["passed"] else "FAILED: " + "; ".join(record["failures"])
    log(f"verification ({record['reader']}, {record['type']}): {verdict}")
    if record.get("verdict_on") == "task":
        log("  (verdict on the task, below; the probe figures are diagnostics"
            + (f": {'; '.join(record['probe_failures'])})" if record["probe_failures"] else ")"))
    if "transformers" in record:  # a file transformers' reader cannot run (rope scaling): said why
        log(f"  {record['transformers']['why']}")
    if logits:
        log(f"  max |logit diff| {logits['max_abs_diff']:.3g} (tolerance {record['tolerance_abs']:.3g}, "
            f"largest |logit| {logits['max_abs_logit']:.3g}); argmax agrees at all {logits['positions']} "
            f"positions: {logits['argmax_agrees']}; greedy continuations identical: {record['greedy_identical']}")
    tok = record["tokenizer"]
    log(f"  chat template identical: {tok['chat_template_identical']}; probe tokens identical: "
        f"{tok['probe_tokens_identical']}; stop ids {tok['stop_ids']} identical: {tok['stop_ids_identical']}")
    _print_llama_cpp(record.get("llama_cpp"), log)
    if "ollama" in record:
        log(f"  Modelfile TEMPLATE reproduces the chat template on {record['ollama']['template_checked_on']} "
            f"conversations; stop {record['ollama']['stop']}; {record['ollama']['create_with']}")


def _print_llama_cpp(llama: dict | None, log) -> None:
    """One line on the second reader: its verdict and figures, or why it did not run."""
    if not llama:
        return
    if not llama.get("ran"):
        log(f"  {llama['why']}")
        return
    verdict = "PASSED" if llama["passed"] else "FAILED: " + "; ".join(llama["failures"])
    tok = llama["tokenizer"]
    log(f"  llama.cpp: {verdict}; max |logit diff| {llama['logits']['max_abs_diff']:.3g} (tolerance "
        f"{llama['tolerance_abs']:.3g}); greedy identical: {llama['greedy_identical']}; its own tokenisation "
        f"of the prompts identical: {tok['probe_tokens_identical']}; template identical: {tok['chat_template_identical']}")
