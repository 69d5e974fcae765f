"""Write a run's LoRA adapter alone as a llama.cpp LoRA adapter GGUF (`--format gguf-lora`).

llama.cpp (and Ollama's `ADAPTER`, llama-server's `--lora`) apply such a file at load time over the
base model's GGUF, so one base file serves many small adapters. The layout is the one llama.cpp's
`convert_lora_to_gguf.py` writes and `llama_adapter_lora_init` reads:

- metadata `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha`, and the base's
  `general.architecture` (llama.cpp refuses an adapter of another architecture);
- per adapted linear layer, two tensors named after the base tensor: `<name>.lora_a` holding A
  (rank x in) and `<name>.lora_b` holding B (out x rank), as PEFT stores them;
- llama.cpp adds `alpha / rank * B @ A` (rank read from each B), so a layer whose PEFT scale differs
  from `lora_alpha / rank` (rsLoRA, alpha or rank patterns) gets that ratio folded into its B;
- the rows of B for attention queries and keys are interleaved exactly as the base's q/k weights are
  (`gguf_writer.interleave_rotary_rows`), so that B @ A lands on the rows it adapts.

What cannot be expressed raises a clear error: DoRA (a magnitude rescaling, not an additive update),
whole trained modules (`modules_to_save`) and LoRA on embeddings; `--format gguf` merges those.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tunery.atomic import atomic_file
from tunery.errors import TuneryError
from tunery.export import lora_math

ADAPTER_FILE_TYPES = ("f32", "f16")


def _unsupported(reason: str) -> TuneryError:
    return TuneryError(f"this adapter cannot be written as a llama.cpp LoRA GGUF: {reason}",
                       fix="export the merged model instead: tunery export RUN --format gguf")


def adapter_tensors(adapter: dict[str, torch.Tensor], config: dict, model_config,
                    gguf_arch) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) of every lora_a / lora_b tensor, scales folded to `lora_alpha / rank`."""
    import gguf

    from tunery.export.gguf_families import family_of
    from tunery.export.gguf_writer import interleave_rotary_rows

    factors, whole = lora_math.split_adapter(adapter)
    if whole:
        raise _unsupported(f"it saves whole modules ({', '.join(sorted(whole))}), which a LoRA file has no place for")
    if config.get("fan_in_fan_out"):
        raise _unsupported("fan_in_fan_out layers (Conv1D-style weights)")
    names = gguf.get_tensor_name_map(gguf_arch, model_config.num_hidden_layers)
    alpha = float(config["lora_alpha"])
    interleave = family_of(model_config).rotary_interleave
    out = []
    for module, parts in sorted(factors.items()):
        if "magnitude" in parts:
            raise _unsupported("DoRA layers (a magnitude rescaling, not an added B @ A)")
        name = names.get_name(f"{module}.weight", try_suffixes=(".weight",))
        if name is None or "A" not in parts or "B" not in parts:
            raise _unsupported(f"no GGUF tensor for the adapted module '{module}'")
        a, b = parts["A"].float(), parts["B"].float()
        rank = a.shape[0]
        # llama.cpp multiplies by alpha / rank; PEFT by lora_scale: fold the ratio into B.
        b = b * (lora_math.lora_scale(module, rank, config) * rank / alpha)
        if interleave and name.endswith("attn_q.weight"):
            b = interleave_rotary_rows(b, model_config.num_attention_heads)
        elif interleave and name.endswith("attn_k.weight"):
            b = interleave_rotary_rows(b, model_config.num_key_value_heads)
        out.append((f"{name}.lora_a", a.contiguous().numpy()))
        out.append((f"{name}.lora_b", b.contiguous().numpy()))
    if not out:
        raise _unsupported("it holds no LoRA factors")
    return out


def write_lora_gguf(adapter: dict[str, torch.Tensor], config: dict, model_config, path: Path,
                    file_type: str = "f16", name: str = "adapter") -> Path:
    """Write the adapter as a llama.cpp LoRA GGUF at `path`, atomically; returns `path`."""
    import gguf

    from tunery.export.gguf_writer import _check_supported, gguf_arch_of, write_out

    if file_type not in ADAPTER_FILE_TYPES:
        raise TuneryError(f"a LoRA GGUF is written as {' or '.join(ADAPTER_FILE_TYPES)}, not '{file_type}'",
                          why="the factors are small; llama.cpp adds them to the (possibly quantized) base "
                              "at full precision", fix="use --type f16 (the default) or f32")
    _check_supported(model_config)
    arch = gguf_arch_of(model_config)
    tensors = adapter_tensors(adapter, config, model_config, arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
        try:
            writer.add_name(name)
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
            writer.add_file_type(gguf.LlamaFileType.ALL_F32 if file_type == "f32" else gguf.LlamaFileType.MOSTLY_F16)
            for tensor_name, array in tensors:
                writer.add_tensor(tensor_name, array.astype(np.float32 if file_type == "f32" else np.float16))
            write_out(writer)
        finally:
            writer.close()
    return path


def merged_from_file(path: Path, base_state: dict[str, torch.Tensor], model_config) -> dict[str, torch.Tensor]:
    """W + alpha / rank * B @ A for every adapted weight, read back from the written file with the
    `gguf` reader (q/k rows put back in Hugging Face order): a check of the file that needs no llama.cpp.
    Returns {hf weight name: merged tensor}."""
    import gguf

    from tunery.export.gguf_families import family_of
    from tunery.export.gguf_writer import gguf_arch_of

    reader = gguf.GGUFReader(str(path))
    alpha = float(reader.fields[gguf.Keys.Adapter.LORA_ALPHA].contents())
    by_name = {t.name: np.array(t.data, dtype=np.float32).reshape(list(reversed([int(x) for x in t.shape])))
               for t in reader.tensors}
    names = gguf.get_tensor_name_map(gguf_arch_of(model_config), model_config.num_hidden_layers)
    gguf_of = {names.get_name(k, try_suffixes=(".weight",)): k for k in base_state if k.endswith(".weight")}
    merged = {}
    for tensor_name, a in by_name.items():
        if not tensor_name.endswith(".lora_a"):
            continue
        base_name = tensor_name[: -len(".lora_a")]
        b = torch.from_numpy(by_name[f"{base_name}.lora_b"])
        delta = (alpha / b.shape[1]) * (b @ torch.from_numpy(a))
        heads = {"attn_q.weight": model_config.num_attention_heads, "attn_k.weight": model_config.num_key_value_heads}
        for suffix, n_heads in heads.items():
            if family_of(model_config).rotary_interleave and base_name.endswith(suffix):
                delta = deinterleave_rotary_rows(delta, n_heads)
        hf_name = gguf_of[base_name]
        merged[hf_name] = base_state[hf_name].float() + delta
    return merged


def deinterleave_rotary_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of `interleave_rotary_rows`: [x0, y0, x1, y1, ...] back to [first half | second half]."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
