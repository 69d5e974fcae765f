"""The model families tunery's GGUF writer handles, and what differs between them.

Tensor names are not listed here: they come from the `gguf` package's own name map for each
architecture (`gguf.get_tensor_name_map`), the one llama.cpp's converter uses. What a family adds is
only what the map cannot say:

- `arch`: the `gguf.MODEL_ARCH` member llama.cpp runs the model as;
- `rotary_interleave`: Llama and Mistral rotate pairs of adjacent dimensions in llama.cpp but the two
  halves of a head in Hugging Face, so their q/k rows are reordered (`interleave_rotary_rows`); the
  others run llama.cpp's "NEOX" rotation, which is Hugging Face's, and are written as they are;
- `norm_plus_one`: Gemma's RMSNorm multiplies by (1 + w) and stores w; llama.cpp multiplies by the
  stored weight, so its converter stores 1 + w (transformers' reader subtracts it again);
- `hparams`: the family's own metadata (softcapping, sliding windows, head sizes, partial rotary).

Why our writer rather than llama.cpp's `convert_hf_to_gguf.py`: that script is not in any wheel (it
lives in llama.cpp's source tree, with its own pinned `gguf` and `transformers`), would need the model
saved to disk first, and converts a tokenizer by re-reading files; the writer here takes the merged
model in memory and writes the run's own tokenizer and chat template, and every family it accepts is
read back by llama.cpp and by transformers in the tests (tests/unit/test_export_families.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tunery.errors import TuneryError


@dataclass(frozen=True)
class Family:
    arch: str  # name of the gguf.MODEL_ARCH member
    rotary_interleave: bool = False
    norm_plus_one: bool = False
    hparams: Callable | None = None  # (writer, config) -> None: the family's extra metadata
    # Largest |logit diff| through llama.cpp for an f32 file, as a share of the largest logit: ggml
    # computes GELU (Gemma's activation) through an f16 lookup table, ~1e-3 on tiny random models.
    llama_cpp_f32_tolerance: float = 1e-5


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _gemma_attention_scale(config) -> None:
    # llama.cpp scales queries by 1/sqrt(head_dim) for these sizes and reads no query_pre_attn_scalar.
    scalar = getattr(config, "query_pre_attn_scalar", None)
    if scalar is not None and int(scalar) != _head_dim(config):
        raise TuneryError(f"query_pre_attn_scalar {scalar} differs from head_dim {_head_dim(config)}, which "
                          "llama.cpp cannot express for this model", fix="export with --format hf")


def _gemma2_hparams(writer, config) -> None:
    _gemma_attention_scale(config)
    if config.sliding_window is not None:
        writer.add_sliding_window(config.sliding_window)
    if config.attn_logit_softcapping is not None:
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
    if config.final_logit_softcapping is not None:
        writer.add_final_logit_softcapping(config.final_logit_softcapping)


def _gemma3_hparams(writer, config) -> None:
    _gemma_attention_scale(config)
    if config.sliding_window is not None:
        writer.add_sliding_window(config.sliding_window)
    if getattr(config, "final_logit_softcapping", None) is not None:
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:  # which layers attend within the window (llama.cpp's default is every 6th global)
        writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in layer_types])
    local = getattr(config, "rope_local_base_freq", None)
    params = getattr(config, "rope_parameters", None) or {}
    if local is None and isinstance(params.get("sliding_attention"), dict):
        local = params["sliding_attention"].get("rope_theta")
    if local is not None:
        writer.add_rope_freq_base_swa(float(local))


def partial_rotary_factor(config) -> float:
    """Share of each head that is rotated (Phi-3 variants rotate part of it); transformers 5 keeps it
    in rope_parameters."""
    factor = getattr(config, "partial_rotary_factor", None)
    if factor is None:
        factor = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor")
    return float(factor or 1.0)


def _phi3_hparams(writer, config) -> None:
    # llama.cpp's Phi-3 loader requires a window; without one the model attends to its whole context.
    writer.add_sliding_window(getattr(config, "sliding_window", None) or config.max_position_embeddings)


FAMILIES = {
    "llama": Family("LLAMA", rotary_interleave=True),
    "mistral": Family("LLAMA", rotary_interleave=True),
    "qwen2": Family("QWEN2"),
    "qwen3": Family("QWEN3"),
    "gemma2": Family("GEMMA2", norm_plus_one=True, hparams=_gemma2_hparams, llama_cpp_f32_tolerance=3e-3),
    "gemma3_text": Family("GEMMA3", norm_plus_one=True, hparams=_gemma3_hparams, llama_cpp_f32_tolerance=3e-3),
    "phi3": Family("PHI3", hparams=_phi3_hparams),
}
# Families whose GGUF transformers' own reader (`from_pretrained(gguf_file=...)`) loads back: all of
# the above in transformers 5 (its GGUF config mapping names llama, mistral, qwen2, qwen3, gemma2,
# gemma3 and phi3).
SUPPORTED = ", ".join(sorted(FAMILIES))


def family_of(config) -> Family:
    """The family of a Hugging Face config, or an error listing the supported ones."""
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise TuneryError(
            f"tunery's GGUF writer does not handle the model family '{config.model_type}'",
            why=f"supported families: {SUPPORTED}",
            fix="export with --format hf and convert that folder with llama.cpp's convert_hf_to_gguf.py",
        )
    return family
