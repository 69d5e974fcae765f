"""Rope scaling in a GGUF: what llama.cpp can express, written with the `gguf` package's own keys.

llama.cpp knows four rope scaling types (`gguf.RopeScalingType`: none, linear, yarn, longrope) plus
per-pair frequency factors; tunery writes each Hugging Face type as follows.

- `llama3` (Llama 3.1/3.2) has no llama.cpp type: it stretches the slow rotary wavelengths (Meta's
  definition, transformers' `_compute_llama3_parameters`): with base inverse frequencies
  theta_i = base^(-2i/d), wavelength w_i = 2 pi / theta_i, the config's factor, low_freq_factor,
  high_freq_factor and original context L: w_i < L / high (fast pairs) unchanged; w_i > L / low (slow
  pairs) theta_i / factor; between, s = (L / w_i - low) / (high - low), theta_i * ((1 - s) / factor + s).
  llama.cpp divides each pair's base frequency by the matching entry of `rope_freqs.weight`, so the
  file stores theta_i / scaled theta_i, the tensor llama.cpp's own converter writes.
- `linear` (position interpolation; Gemma 3 4B+ global layers): `rope.scaling.type linear` and
  `rope.scaling.factor`; llama.cpp multiplies every position by 1 / factor, as transformers divides
  the inverse frequencies. Gemma 3 keeps it per layer kind: only `full_attention` may be scaled, since
  llama.cpp runs Gemma 3's sliding layers unscaled whatever the file says.
- `yarn` (Qwen2.5/Qwen3 long context): type yarn, factor and `rope.scaling.original_context_length`.
  llama.cpp then blends interpolated and extrapolated frequencies over the same correction range as
  transformers (beta_fast 32, beta_slow 1, rounded outwards) and scales attention by 0.1 ln(factor) + 1.
  llama.cpp reads no beta, attention-factor or mscale keys for these architectures (its loader, in the
  0.4.42 llama-cpp-cffi and the 0.3.36 llama-cpp-python builds alike), so a config that sets them to
  other values, or `truncate: false`, is refused rather than written to be run differently.
- `longrope` (Phi-3-mini-128k, Phi-3.5, Phi-4-mini): the `long_factor` and `short_factor` lists as
  `rope_factors_long` / `rope_factors_short` tensors (one divisor per rotary pair), the original context
  and `rope.scaling.attn_factor`, the cos/sin multiplier transformers computes (the config's
  `attention_factor`, else sqrt(1 + ln(s) / ln(original)) with s = factor or context / original).
  llama.cpp picks the long factors when the context it is given (`n_ctx`) exceeds the original
  context, transformers when the sequence does: they agree on a sequence longer than the original
  context, and on shorter ones when llama.cpp's context is not larger than the original.
- `dynamic` (dynamic NTK) is refused: llama.cpp has no such type (none of its four changes the base
  frequency with the sequence length), so a file could only run it unscaled past the trained context.
"""

from __future__ import annotations

import math

import numpy as np

from tunery.errors import TuneryError

# Rope type -> the GGUF architectures it is written for, each read back by llama.cpp in the tests
# (tests/unit/test_export_rope.py, test_export_rope_types.py).
SUPPORTED_SCALING = {
    "llama3": ("LLAMA",),
    "linear": ("LLAMA", "QWEN2", "QWEN3", "GEMMA3"),
    "yarn": ("LLAMA", "QWEN2", "QWEN3"),
    "longrope": ("PHI3",),
}
NEVER = {
    "dynamic": "llama.cpp has no dynamic NTK scaling (its rope scaling types are none, linear, yarn and "
               "longrope; none changes the base frequency with the sequence length), so the file would "
               "run unscaled past the trained context",
}
YARN_DEFAULTS = {"beta_fast": 32.0, "beta_slow": 1.0}


def rope_scaling_of(config) -> dict | None:
    """The config's rope scaling parameters, or None when it rotates at the base frequencies.

    transformers 5 keeps them in `rope_parameters` (with the base under `rope_type: default`); older
    configs in `rope_scaling` with `type` or `rope_type`. Gemma 3 keeps one dict per layer kind, and
    its 4B+ models scale the global layers ('linear'): any scaled kind counts, named under `layers`."""
    for attribute in ("rope_parameters", "rope_scaling"):
        params = getattr(config, attribute, None)
        if not isinstance(params, dict):
            continue
        nested = [(k, v) for k, v in params.items() if isinstance(v, dict)]
        for layers, candidate in nested or [(None, params)]:
            kind = candidate.get("rope_type", candidate.get("type", "default"))
            if kind not in ("default", None):
                return dict(candidate, rope_type=kind, layers=layers)
    return None


def original_context(config, scaling: dict) -> int:
    """The context the model was pretrained for (Phi-3 keeps it outside the rope parameters)."""
    return int(scaling.get("original_max_position_embeddings")
               or getattr(config, "original_max_position_embeddings", None) or config.max_position_embeddings)


def _refuse(config, kind: str, why: str) -> TuneryError:
    return TuneryError(f"rope scaling '{kind}' is not supported by tunery's GGUF writer for '{config.model_type}'",
                       why=why, fix="export with --format hf (transformers runs every rope type)")


def check_rope_scaling(config, arch: str) -> None:
    """An error for rope scaling the writer cannot express for this architecture."""
    scaling = rope_scaling_of(config)
    if scaling is None:
        return
    kind = scaling["rope_type"]
    if kind in NEVER:
        raise _refuse(config, kind, NEVER[kind])
    supported = "; ".join(f"{k} on {', '.join(a.lower() for a in archs)}" for k, archs in SUPPORTED_SCALING.items())
    if arch not in SUPPORTED_SCALING.get(kind, ()):
        raise _refuse(config, kind, f"supported (type on GGUF architectures): {supported}")
    if scaling["layers"] not in (None, "full_attention"):
        raise _refuse(config, kind, "llama.cpp runs Gemma 3's sliding-window layers unscaled; only the "
                                    "full_attention layers' rope can be scaled")
    if kind == "yarn":
        _check_yarn(config, scaling)
    if kind == "longrope":
        _check_longrope(config, scaling)


def _check_yarn(config, scaling: dict) -> None:
    differs = [f"{k}={scaling[k]}" for k, default in YARN_DEFAULTS.items()
               if scaling.get(k) is not None and float(scaling[k]) != default]
    differs += [f"{k}={scaling[k]}" for k in ("attention_factor", "mscale", "mscale_all_dim")
                if scaling.get(k) is not None]
    if scaling.get("truncate") is False:
        differs.append("truncate=False")
    if differs:
        raise _refuse(config, "yarn", f"llama.cpp reads none of {', '.join(differs)} for this architecture "
                                      "(it uses beta_fast 32, beta_slow 1, attention 0.1 ln(factor) + 1, a "
                                      "rounded correction range), so it would run a different model")


def _check_longrope(config, scaling: dict) -> None:
    pairs = _rotary_pairs(config)
    for key in ("long_factor", "short_factor"):
        values = scaling.get(key)
        if not isinstance(values, (list, tuple)) or len(values) != pairs:
            raise _refuse(config, "longrope", f"{key} must list one factor per rotary pair ({pairs}); "
                                              f"found {len(values) if isinstance(values, (list, tuple)) else values}")


def _rotary_pairs(config) -> int:
    from tunery.export.gguf_families import partial_rotary_factor

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(partial_rotary_factor(config) * head_dim) // 2


def yarn_factor(config, scaling: dict) -> float:
    """YaRN's factor; transformers takes context / original context when the config gives none."""
    factor = scaling.get("factor")
    return float(factor) if factor is not None else config.max_position_embeddings / original_context(config, scaling)


def longrope_attention_factor(config, scaling: dict) -> float:
    """The cos/sin multiplier of longrope, as transformers' `_compute_longrope_parameters` computes it."""
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    original = original_context(config, scaling)
    factor = scaling.get("factor")
    factor = float(factor) if factor is not None else config.max_position_embeddings / original
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


def write_rope_scaling(writer, config) -> None:
    """The `rope.scaling.*` metadata llama.cpp reads for the config's rope type (none for llama3, whose
    scaling is the `rope_freqs` tensor)."""
    import gguf

    scaling = rope_scaling_of(config)
    if scaling is None or scaling["rope_type"] == "llama3":
        return
    kind = scaling["rope_type"]
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(yarn_factor(config, scaling))
        writer.add_rope_scaling_orig_ctx_len(original_context(config, scaling))
    elif kind == "longrope":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        writer.add_rope_scaling_orig_ctx_len(original_context(config, scaling))
        writer.add_rope_scaling_attn_factors(longrope_attention_factor(config, scaling))


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
    """The `rope_freqs.weight` values for a `llama3`-scaled config, or None for any other."""
    scaling = rope_scaling_of(config)
    if scaling is None or scaling["rope_type"] != "llama3":
        return None
    return llama3_rope_factors(base, rotary_dim, float(scaling["factor"]), float(scaling["low_freq_factor"]),
                               float(scaling["high_freq_factor"]), original_context(config, scaling))


def rope_tensors(config, base: float, rotary_dim: int) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 values) of the per-pair frequency divisors the config's scaling needs."""
    import gguf

    def name(tensor) -> str:
        return gguf.TENSOR_NAMES[tensor] + ".weight"

    factors = rope_freqs_tensor(config, base, rotary_dim)
    if factors is not None:
        return [(name(gguf.MODEL_TENSOR.ROPE_FREQS), factors)]
    scaling = rope_scaling_of(config)
    if scaling is not None and scaling["rope_type"] == "longrope":
        return [(name(gguf.MODEL_TENSOR.ROPE_FACTORS_LONG), np.asarray(scaling["long_factor"], np.float32)),
                (name(gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT), np.asarray(scaling["short_factor"], np.float32))]
    return []
