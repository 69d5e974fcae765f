"""The adapter card: `adapter/README.md`, generated from the run folder alone.

It says what the adapter is (base model, method, adapter settings), what it was trained on (data
files and example counts), how well (validation loss, steps, tokens), and how to load it with PEFT,
vLLM and tunery, including what vLLM will refuse (DoRA, trained whole modules) so that a user finds
out from the card and not from a server error. The text is a pure function of the run's files, so
writing it again gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunery.runfolder import RunFolder, portable_path, write_text_atomic


def vllm_problems(adapter_config: dict) -> list[str]:
    """Reasons vLLM's LoRA loader would refuse this adapter (empty: it loads as is)."""
    problems = []
    if adapter_config.get("use_dora"):
        problems.append("DoRA adapters are not supported by vLLM; serve the merged model (tunery merge)")
    if adapter_config.get("modules_to_save"):
        problems.append(f"whole trained modules ({', '.join(adapter_config['modules_to_save'])}) are not "
                        "loaded by vLLM's LoRA path; serve the merged model (tunery merge)")
    if adapter_config.get("peft_type", "LORA") != "LORA":
        problems.append(f"vLLM loads LoRA adapters only, not {adapter_config.get('peft_type')}")
    return problems


def _config(run: RunFolder) -> dict:
    config = run.read_config()
    return config.model_dump(mode="json") if config is not None else {}


def _fmt(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else ("n/a" if value is None else str(value))


def _combination_lines(info: dict) -> list[str]:
    combo = info.get("combination")
    if not combo:
        return []
    parts = ", ".join(f"`{Path(p).name}` x {w}" for p, w in zip(info.get("combined_from", []), combo["weights"]))
    density = f", density {combo['density']}" if combo.get("density") is not None else ""
    return [f"Combined from {parts} with `{combo['method']}`{density} (tunery combine).", ""]


def _files(files: list[str], run: RunFolder) -> str:
    """Data files as paths relative to the run folder: a card is shared, the author's folders are not."""
    return ", ".join(f"`{portable_path(f, run.root)}`" for f in files)


def _validation(data: dict, run: RunFolder) -> str:
    if data.get("validation"):
        return _files(data["validation"], run)
    return f"{data['val_split']:.0%} split from training" if data.get("val_split") else "none"


def _targets(adapter_config: dict) -> str:
    targets = adapter_config.get("target_modules")
    if isinstance(targets, list):
        return ", ".join(f"`{t}`" for t in sorted(targets))
    return f"`{targets}`"


def card_text(run: RunFolder, name: str | None = None) -> str:
    """The card's Markdown (with the YAML header the Hugging Face hub reads). `name`: the run's name
    when the card is written in a temporary folder (default: the folder's own name)."""
    name = name or run.root.resolve().name
    info, config = run.read_info(), _config(run)
    adapter_config = json.loads((run.adapter / "adapter_config.json").read_text())
    base, kind = info.get("base_model", "unknown"), info.get("adapter", "lora")
    method = {"sft": "supervised fine-tuning", "cpt": "continued pre-training",
              "combine": "a weighted combination of adapters"}.get(info.get("method"), info.get("method"))
    lora = config.get("lora") or {}
    flavour = "DoRA" if adapter_config.get("use_dora") else "LoRA"
    scale = "alpha / sqrt(r) (rsLoRA)" if adapter_config.get("use_rslora") else "alpha / r"
    data = config.get("data") or {}
    problems = vllm_problems(adapter_config)
    lines = [
        "---", f"base_model: {json.dumps(base)}", "library_name: peft",
        "tags: [tunery, lora" + (", qlora" if kind == "qlora" else "") + "]", "---", "",
        f"# Adapter `{name}`", "",
        f"A {flavour} adapter for `{base}`, trained with tunery ({method}"
        + (", on a 4-bit NF4 base (QLoRA)" if kind == "qlora" else "") + ").", "",
        *_combination_lines(info),
        "## Adapter", "",
        f"- rank r = {adapter_config.get('r')}, alpha = {adapter_config.get('lora_alpha')}, "
        f"update scaled by {scale}, dropout {adapter_config.get('lora_dropout')}",
        f"- target modules: {_targets(adapter_config)}",
        f"- trained whole modules: {', '.join(adapter_config.get('modules_to_save') or []) or 'none'}",
        f"- trainable parameters: {info.get('trainable_params', 'n/a'):,}" if isinstance(info.get("trainable_params"), int)
        else "- trainable parameters: n/a",
    ]
    if kind == "qlora":
        lines.append(f"- base quantization: {lora.get('qlora_quant_type', 'nf4')}, double quantization "
                     f"{lora.get('qlora_double_quant', True)}, compute dtype {lora.get('qlora_compute_dtype', 'float32')}")
    lines += [
        "", "## Data", "",
        f"- training files: {_files(data.get('train', []), run) or 'n/a'} "
        f"({info.get('train_examples', 'n/a')} examples)",
        f"- validation: {_validation(data, run)} "
        f"({info.get('val_examples', 'n/a')} examples); trained tokens: {data.get('train_on', 'assistant')} turns",
        "", "## Results", "",
        f"- best validation loss: {_fmt(info.get('best_val_loss'))} at step {_fmt(info.get('best_step'))}",
        f"- steps: {_fmt(info.get('step'))} of {_fmt(info.get('total_steps'))}; final training loss "
        f"{_fmt(info.get('final_loss'))}; tokens seen: {_fmt(info.get('tokens'))}",
        f"- status: {info.get('status', 'n/a')}" + (f" ({info['stop_reason']})" if info.get("stop_reason") else ""),
        "", "## Use it", "",
        "With PEFT (the run's `tokenizer/` holds the chat template it was trained with):", "",
        "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "from peft import PeftModel",
        f"base = AutoModelForCausalLM.from_pretrained({json.dumps(base)})",
        "model = PeftModel.from_pretrained(base, \"adapter\")",
        "tokenizer = AutoTokenizer.from_pretrained(\"tokenizer\")", "```", "",
    ]
    if problems:
        lines += ["With vLLM: not as is. " + "; ".join(problems) + ".", ""]
    else:
        lines += ["With vLLM:", "", "```bash",
                  f"vllm serve {base} --enable-lora --max-lora-rank {max(8, adapter_config.get('r', 8))} "
                  f"--lora-modules {name}=adapter", "```", ""]
    lines += ["With tunery (from the run folder):", "", "```bash", "tunery chat RUN_FOLDER",
              "tunery merge RUN_FOLDER --out merged    # plain HF model, no PEFT needed",
              "tunery export RUN_FOLDER --format ollama --out ollama", "```", ""]
    return "\n".join(lines)


def write_adapter_card(run_dir: str | Path, name: str | None = None) -> Path | None:
    """Write `adapter/README.md` for a finished adapter run; None when the run has no adapter. Only the
    command that writes the run calls this (train, combine): other commands only read run folders."""
    run = RunFolder(Path(run_dir))
    if not (run.adapter / "adapter_config.json").is_file():
        return None
    path = run.adapter / "README.md"
    write_text_atomic(path, card_text(run, name))
    return path
