"""4-bit bases for QLoRA through bitsandbytes (imported lazily; the `qlora` extra).

Backend choice, measured on this project's CPU machines: bitsandbytes 0.50.2 from PyPI runs NF4
`Linear4bit` forward and backward on an AVX2 CPU (and on CUDA, where it came from), so one code path
serves both. transformers' `BitsAndBytesConfig` does the loading: it quantizes each linear layer of
the blocks as it reads the fp32 checkpoint and keeps the embeddings and the output head in full
precision. Quantizing costs time at load (about 40 s for the 135M embedded model on 2 cores, against
about 1 s for fp32), and buys memory: 167 MB of weights instead of 538 MB.

The run's QLoRA settings live in its config (`lora.qlora_*`), which is saved in the run folder, so a
later command (chat, merge, export) rebuilds exactly the 4-bit base the adapter was trained on.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunery._deps import require
from tunery.config.schema import LoraSection, TrainConfig
from tunery.errors import TuneryError
from tunery.models.load import DTYPES, load_model, resolve_model_source
from tunery.runfolder import RunFolder


def bnb_config(lora: LoraSection):
    """transformers' BitsAndBytesConfig for the run's QLoRA settings."""
    require("bitsandbytes", extra="qlora")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=lora.qlora_quant_type,
        bnb_4bit_use_double_quant=lora.qlora_double_quant,
        bnb_4bit_compute_dtype=DTYPES[lora.qlora_compute_dtype],
    )


def load_quantized(spec: str, lora: LoraSection):
    """The causal LM of `spec` with the linear layers of its blocks in 4 bits, in eval mode."""
    from transformers import AutoModelForCausalLM

    source = resolve_model_source(spec)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, quantization_config=bnb_config(lora), dtype=torch.float32, device_map=device
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise TuneryError(
            f"could not load '{spec}' in 4 bits",
            why=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            fix="check that bitsandbytes supports this machine (pip install 'tunery[qlora]'), "
            "or train with adapter: lora",
        ) from exc
    keep_one_layout(model)
    model.eval()
    return model


def keep_one_layout(model) -> None:
    """Keep every 4-bit layer in bitsandbytes' standard layout on every CPU.

    On CPUs with AVX512-BF16, bitsandbytes repacks a layer's weight in place the first time it runs
    in eval mode without gradients (a validation pass, generation), and stores its scales in bf16
    from then on: the model's function changes with the CPU it runs on, and layers narrower than a
    quantization block fail to repack. One layout everywhere keeps runs, merges and resumes the same."""
    for module in model.modules():
        if is_4bit(module) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_for_training(cfg: TrainConfig):
    """The base model a run trains on: 4-bit for `adapter: qlora`, else `load_model` in `cfg.dtype`."""
    if cfg.adapter == "qlora":
        return load_quantized(cfg.base_model, cfg.lora)
    return load_model(cfg.base_model, cfg.dtype)


def run_lora_section(run_root: str | Path | None) -> LoraSection:
    """The `lora:` section a run was trained with (defaults when the run has no config.yaml)."""
    config = RunFolder(Path(run_root)).read_config() if run_root else None
    return config.lora if config is not None else LoraSection()


def load_base_for_run(info: dict, run_root: str | Path | None = None, dtype: str = "float32"):
    """The base model of a finished run as it was during training: 4-bit for QLoRA runs."""
    if info.get("adapter") == "qlora":
        return load_quantized(info["base_model"], run_lora_section(run_root))
    return load_model(info["base_model"], dtype)


def is_4bit(module) -> bool:
    """True for a bitsandbytes 4-bit linear layer (without importing bitsandbytes when unused).

    PEFT's wrapper around such a layer is also called Linear4bit; the module check keeps it out."""
    kind = type(module)
    return kind.__name__ == "Linear4bit" and kind.__module__.startswith("bitsandbytes")


def dequantize_weight(module) -> torch.Tensor:
    """The float32 matrix that a 4-bit linear layer multiplies by (its NF4 codes times their scales)."""
    functional = require("bitsandbytes.functional", extra="qlora", package="bitsandbytes")
    weight = module.weight
    return functional.dequantize_4bit(weight.data, weight.quant_state).float().reshape(
        module.out_features, module.in_features
    )


def dequantized_base(info: dict, quantized) -> torch.nn.Module:
    """A full-precision model whose 4-bit layers hold the dequantized weights of `quantized`.

    Merging a QLoRA adapter into these weights (not the original fp32 ones) reproduces the model the
    adapter was trained with; merging into the original weights would add a quantization error the
    adapter never saw, and merging into the 4-bit weights would re-quantize the update away.
    """
    full = load_model(info["base_model"], "float32")
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if is_4bit(module):
                full.get_submodule(name).weight.copy_(dequantize_weight(module).to(full.device))
    return full


def count_4bit_layers(model) -> int:
    """How many linear layers of `model` are stored in 4 bits."""
    return sum(1 for module in model.modules() if is_4bit(module))
