"""`tunery export RUN --format gguf-lora`: the adapter alone as a llama.cpp LoRA GGUF, its base GGUF,
and an Ollama Modelfile with `ADAPTER`, verified by applying the adapter in llama.cpp.

The export folder holds three files: `<base>-<type>.gguf` (the base model, written once and shared
by every adapter of that base), `<run>-lora-<f16|f32>.gguf` (the adapter, a few MB) and a `Modelfile`
(`FROM` the base, `ADAPTER` the adapter, the run's template and stops). Two checks, both against the
unmerged run (the base plus its PEFT adapter, as trained):

- weights: the adapter file is read back with the `gguf` reader, its `alpha / rank * B @ A` added to
  the base weights, and compared with tunery's merge (`lora_math`) of the run's adapter; this needs no
  llama.cpp and catches wrong names, scales or q/k row orders;
- llama.cpp: the base GGUF loaded with the adapter applied (`llama_adapter_lora_init` +
  `llama_set_adapter_lora`, what `llama-server --lora` does), its logits, greedy continuations,
  tokenisation, template and end tokens compared with the unmerged run on the probe prompts, with the
  tolerances of the base file's type.
"""

from __future__ import annotations

import re
from pathlib import Path


from tunery.errors import TuneryError
from tunery.export import lora_math
from tunery.runfolder import RunFolder, write_text_atomic

# f16 factors carry a relative error of 2^-11 each; the base weights the update is added to are exact
# here, so the merged weights differ by rounding of the (small) update only.
WEIGHT_TOLERANCE = {"f32": 1e-5, "f16": 2e-3}


def _stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text).name) or "model"


def unmerged_reference(run: RunFolder, info: dict, tokenizer, max_new_tokens: int):
    """(base model in full precision, probe logits and greedy answers of the unmerged run)."""
    from peft import PeftModel

    from tunery.export.probe import logits_of, probe_ids
    from tunery.export.verify import greedy_continuations
    from tunery.models.quant import dequantized_base, load_base_for_run

    if not (run.adapter / "adapter_config.json").is_file():
        raise TuneryError(f"{run.root} has no final adapter/ yet", fix="finish the run (tunery train --resume)")
    model = PeftModel.from_pretrained(load_base_for_run(info, run.root), str(run.adapter)).eval()
    logits = logits_of(model, probe_ids(tokenizer))
    greedy = greedy_continuations(model, tokenizer, max_new_tokens)
    base = model.unload()
    if info.get("adapter") == "qlora":  # the weights the adapter was trained on, not the originals
        base = dequantized_base(info, base)
    return base.eval(), logits, greedy


def check_weights(adapter_path: Path, base, adapter: dict, config: dict, file_type: str) -> dict:
    """The adapter file read back and merged, against tunery's merge of the run's adapter."""
    from tunery.export.gguf_lora import merged_from_file

    state = base.state_dict()
    expected = lora_math.merge_lora_weights(state, adapter, config)
    got = merged_from_file(adapter_path, state, base.config)
    factors, _ = lora_math.split_adapter(adapter)
    worst, largest = 0.0, 0.0
    for name in got:
        update = expected[name].float() - state[name].float()
        worst = max(worst, float((got[name] - expected[name].float()).abs().max()))
        largest = max(largest, float(update.abs().max()))
    tolerance = WEIGHT_TOLERANCE[file_type] * max(largest, 1e-6)
    failures = []
    if len(got) != len(factors):
        failures.append(f"the file adapts {len(got)} weights, the run {len(factors)}")
    if worst > tolerance:
        failures.append(f"merged weights differ by {worst:.3g} > {tolerance:.3g}")
    return {"adapted_weights": len(got), "max_abs_diff": worst, "largest_update": largest,
            "tolerance_abs": tolerance, "passed": not failures, "failures": failures}


def export_gguf_lora(run: RunFolder, info: dict, tokenizer, out: Path, file_type: str, log) -> dict:
    """Write base GGUF + adapter GGUF + Modelfile into `out` and verify them; returns the record."""
    from tunery.data.render import chat_template_of
    from tunery.export.gguf_lora import write_lora_gguf
    from tunery.export.gguf_vocab import pre_tokenizer_name, read_vocab
    from tunery.export.exporter import VERIFY, write_gguf_of_type
    from tunery.export.merge import read_adapter
    from tunery.export.verify import verify_with_llama_cpp

    if info.get("adapter", "lora") not in ("lora", "qlora"):
        raise TuneryError(f"--format gguf-lora needs a LoRA run; {run.root} is a '{info.get('adapter')}' run",
                          fix="export it with --format gguf")
    adapter, config = read_adapter(run.adapter)
    log(f"loading {run.root} ({info.get('adapter', 'lora')} on {info['base_model']}) ...")
    base, ref_logits, ref_greedy = unmerged_reference(run, info, tokenizer, 16)
    adapter_type = "f32" if file_type == "f32" else "f16"
    adapter_path = out / f"{_stem(str(run.root.resolve()))}-lora-{adapter_type}.gguf"
    log(f"writing {adapter_path} ...")
    write_lora_gguf(adapter, config, base.config, adapter_path, adapter_type, name=run.root.resolve().name)
    base_path = out / f"{_stem(info['base_model'])}-{file_type}.gguf"
    log(f"writing the base model as {base_path} ...")
    vocab = read_vocab(tokenizer, base.config.vocab_size, chat_template_of(tokenizer))
    pre, warning = pre_tokenizer_name(tokenizer)
    write_gguf_of_type(base, vocab, base_path, file_type, name=Path(info["base_model"]).name, pre=pre)
    (out / VERIFY).unlink(missing_ok=True)  # an earlier record describes the files just replaced
    weights = check_weights(adapter_path, base, adapter, config, adapter_type)
    log("applying the adapter over the base in llama.cpp and comparing with the unmerged run ...")
    llama = verify_with_llama_cpp(base_path, ref_logits, ref_greedy, tokenizer, file_type, 16, adapter=adapter_path)
    record = {"reader": "gguf reader (adapter factors) + llama.cpp (base with the adapter applied)",
              "type": file_type, "file": adapter_path.name, "base_file": base_path.name,
              "size_bytes": adapter_path.stat().st_size, "base_size_bytes": base_path.stat().st_size,
              "adapter_type": adapter_type, "weights": weights, "llama_cpp": llama}
    failures = [f"weights: {f}" for f in weights["failures"]]
    if llama.get("ran"):
        failures += [f"llama.cpp: {f}" for f in llama["failures"]]
    structural = [f"weights: {f}" for f in weights["failures"]]
    if llama.get("ran"):
        structural += [f"llama.cpp: {f}" for f in llama["structural_failures"]]
    record |= {"passed": not failures, "failures": failures, "structural_failures": structural}
    if warning:
        record["warnings"] = [warning]
    record["ollama"] = write_adapter_modelfile(tokenizer, base_path, adapter_path, out)
    return record


def write_adapter_modelfile(tokenizer, base_path: Path, adapter_path: Path, out: Path) -> dict:
    """A Modelfile whose FROM is the base GGUF and whose ADAPTER is the LoRA GGUF (Ollama applies it at
    load time); TEMPLATE, SYSTEM and stops as for `--format ollama`."""
    from tunery.export.ollama import modelfile
    from tunery.inference import stop_token_ids

    stops = [tokenizer.convert_ids_to_tokens(i) for i in stop_token_ids(tokenizer)]
    text, record = modelfile(tokenizer, base_path.name, stops)
    lines = text.splitlines(keepends=True)
    text = lines[0] + f"ADAPTER ./{adapter_path.name}\n" + "".join(lines[1:])
    write_text_atomic(out / "Modelfile", text)
    return record | {"modelfile": "Modelfile", "adapter": adapter_path.name,
                     "create_with": f"ollama create {adapter_path.stem.lower()} -f Modelfile  (in the export folder)"}


def print_lora_summary(record: dict, log) -> None:
    verdict = "PASSED" if record["passed"] else "FAILED: " + "; ".join(record["failures"])
    weights = record["weights"]
    log(f"verification (LoRA GGUF {record['file']} over {record['base_file']}): {verdict}")
    log(f"  adapter {record['size_bytes'] / 1e6:.2f} MB, base {record['base_size_bytes'] / 1e6:.1f} MB; "
        f"{weights['adapted_weights']} adapted weights read back, merged max |diff| {weights['max_abs_diff']:.3g} "
        f"(tolerance {weights['tolerance_abs']:.3g})")
    llama = record["llama_cpp"]
    if not llama.get("ran"):
        log(f"  {llama['why']}")
        return
    log(f"  llama.cpp with the adapter applied vs the unmerged run: max |logit diff| "
        f"{llama['logits']['max_abs_diff']:.3g} (tolerance {llama['tolerance_abs']:.3g}); greedy identical: "
        f"{llama['greedy_identical']}; template identical: {llama['tokenizer']['chat_template_identical']}; "
        f"stop ids identical: {llama['tokenizer']['stop_ids_identical']}")
    log(f"  Ollama: {record['ollama']['create_with']}")
