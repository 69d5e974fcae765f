"""Rope scaling in a GGUF: Llama 3.1/3.2's `llama3` frequency scaling as llama.cpp's `rope_freqs` tensor.

Llama 3.1 and 3.2 stretch the long rotary wavelengths to reach 128k tokens (Meta's definition,
transformers' `_compute_llama3_parameters`): with base inverse frequencies theta_i = base^(-2i/d),
wavelength w_i = 2 pi / theta_i, and the config's factor, low_freq_factor, high_freq_factor and
original_max_position_embeddings L,

- w_i < L / high_freq_factor (fast pairs): unchanged;
- w_i > L / low_freq_factor (slow pairs): theta_i / factor;
- between: interpolated, s = (L / w_i - low) / (high - low), theta_i * ((1 - s) / factor + s).

llama.cpp has no such rope type: it divides each pair's base frequency by the matching entry of a
`rope_freqs.weight` tensor (one per rotary pair), so the file stores theta_i / scaled theta_i, the
tensor llama.cpp's own converter writes. Other rope types (linear, dynamic, yarn, longrope) are
refused: each needs its own metadata and a test through both readers, which tunery does not have yet.
"""

from __future__ import annotations

import math

import numpy as np

from tunery.errors import TuneryError

SUPPORTED_SCALING = ("llama3",)


def rope_scaling_of(config) -> dict | None:
    """The config's rope scaling parameters, or None when it rotates at the base frequencies.

    transformers 5 keeps them in `rope_parameters` (with the base under `rope_type: default`); older
    configs in `rope_scaling` with `type` or `rope_type`. Gemma 3 keeps one dict per layer kind, and
    its 4B+ models scale the global layers ('linear'): any scaled kind counts."""
    for attribute in ("rope_parameters", "rope_scaling"):
        params = getattr(config, attribute, None)
        if not isinstance(params, dict):
            continue
        nested = [v for v in params.values() if isinstance(v, dict)]
        for candidate in nested or [params]:
            kind = candidate.get("rope_type", candidate.get("type", "default"))
            if kind not in ("default", None):
                return dict(candidate, rope_type=kind)
    return None


def check_rope_scaling(config, arch: str) -> None:
    """An error for rope scaling the writer cannot express for this architecture."""
    scaling = rope_scaling_of(config)
    if scaling is None:
        return
    kind = scaling["rope_type"]
    if kind not in SUPPORTED_SCALING or arch != "LLAMA":
        raise TuneryError(
            f"rope scaling '{kind}' is not supported by tunery's GGUF writer for '{config.model_type}'",
            why=f"supported: {', '.join(SUPPORTED_SCALING)} on Llama-architecture models (Llama 3.1/3.2)",
            fix="export with --format hf and convert that folder with llama.cpp's convert_hf_to_gguf.py")


def llama3_rope_factors(base: float, rotary_dim: int, factor: float, low_freq_factor: float,
                        high_freq_factor: float, original_max_positions: int) -> np.ndarray:
    """Per rotary pair, base inverse frequency / Llama 3 scaled inverse frequency (float32, d/2 values)."""
    low_wavelen = original_max_positions / low_freq_factor
    high_wavelen = original_max_positions / high_freq_factor
    factors = []
    for pair in range(rotary_dim // 2):
        wavelen = 2 * math.pi * base ** (2 * pair / rotary_dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (original_max_positions / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            factors.append(1.0 / ((1.0 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def rope_freqs_tensor(config, base: float, rotary_dim: int) -> np.ndarray | None:
    """The `rope_freqs.weight` values for `config`, or None when it has no rope scaling."""
    scaling = rope_scaling_of(config)
    if scaling is None:
        return None
    return llama3_rope_factors(base, rotary_dim, float(scaling["factor"]), float(scaling["low_freq_factor"]),
                               float(scaling["high_freq_factor"]),
                               int(scaling.get("original_max_position_embeddings") or config.max_position_embeddings))
