"""Write a Hugging Face causal LM as a GGUF file, with the `gguf` package (no llama.cpp).

Families: Llama, Mistral, Qwen2/2.5, Qwen3, Gemma 2, Gemma 3 (text) and Phi-3; what differs between
them is in `gguf_families.py`. What a GGUF must get right, and why each step is here (the q/k row
order applies to Llama and Mistral only):

- tensor names follow llama.cpp's scheme (`blk.N.attn_q.weight` ...), taken from the `gguf`
  package's own name map, so every reader finds them;
- the query and key projections are stored with the rows of each head interleaved (pairs of
  rotary dimensions side by side), because llama.cpp applies rotary embeddings to adjacent pairs
  while Hugging Face rotates the two halves of a head; readers undo this on load;
- 1-D tensors (norms) stay float32 in every file type, as llama.cpp expects;
- a tied output head is written once, as the embedding; an untied one as `output.weight`;
- rope scaling becomes what llama.cpp reads: Llama 3.1/3.2's `llama3` a `rope_freqs.weight` tensor,
  `linear` and `yarn` their `rope.scaling.*` keys, Phi-3's `longrope` its long/short factor tensors and
  attention factor; `dynamic` is refused (see `gguf_rope.py`);
- q8_0 stores blocks of 32 weights as int8 with one fp16 scale per block (8.5 bits per weight);
  the blocks run along each row, so every row length must be a multiple of 32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tunery.atomic import atomic_file
from tunery.errors import TuneryError
from tunery.export.gguf_families import family_of, partial_rotary_factor
from tunery.export.gguf_rope import check_rope_scaling, rope_tensors, write_rope_scaling
from tunery.export.gguf_vocab import Vocab, write_vocab

FILE_TYPES = ("f32", "f16", "q8_0")
Q8_BLOCK = 32


def interleave_rotary_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from [first half | second half] to [x0, y0, x1, y1, ...].

    Inverse of what GGUF readers do for Llama q/k weights. Shape is kept: (n_heads * head_dim, in).
    """
    rows = weight.shape[0]
    half = rows // n_heads // 2
    return weight.reshape(n_heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_arch_of(config):
    """The `gguf.MODEL_ARCH` a supported Hugging Face config is written as."""
    import gguf

    _check_supported(config)
    return gguf.MODEL_ARCH[family_of(config).arch]


def _check_supported(config) -> None:
    family = family_of(config)  # an unsupported family is an error that lists the supported ones
    check_rope_scaling(config, family.arch)  # what llama.cpp cannot express is refused (gguf_rope.py)
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise TuneryError("models with attention/MLP biases are not supported by tunery's GGUF writer",
                          fix="export with --format hf")


def _rope_theta(config) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:  # transformers 5 keeps it in rope_parameters (per layer kind for Gemma 3)
        params = getattr(config, "rope_parameters", None) or {}
        params = params.get("full_attention", params) if isinstance(params.get("full_attention"), dict) else params
        theta = params.get("rope_theta", 10000.0)
    return float(theta)


def _rotary_dim(config) -> int:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(partial_rotary_factor(config) * head_dim)


def write_hparams(writer, config, name: str, file_type: str) -> None:
    """The architecture metadata llama.cpp and transformers read back into a model config."""
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(_rotary_dim(config))
    if head_dim != config.hidden_size // config.num_attention_heads or getattr(config, "head_dim", None):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    write_rope_scaling(writer, config)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    kind = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[file_type]
    writer.add_file_type(kind)
    if file_type == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    family = family_of(config)
    if family.hparams is not None:
        family.hparams(writer, config)


def encode_tensor(array: np.ndarray, file_type: str):
    """(data, raw_dtype or None) of one tensor for `GGUFWriter.add_tensor` in `file_type`."""
    import gguf

    if array.ndim == 1 or file_type == "f32":
        return array.astype(np.float32), None
    if file_type == "f16":
        return array.astype(np.float16), None
    if array.shape[-1] % Q8_BLOCK:
        raise TuneryError(f"q8_0 needs rows of a multiple of {Q8_BLOCK} values; a tensor has {array.shape[-1]}",
                          fix="export as f16 or f32")
    qtype = gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(array.astype(np.float32), qtype), qtype


def gguf_tensors(model) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) of every tensor to write, q/k rows interleaved for rotary pairs."""
    import gguf

    config = model.config
    family = family_of(config)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[family.arch], config.num_hidden_layers)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    out = []
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # readers tie the head to token_embd when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue  # recomputed from rope_theta by every reader
            raise TuneryError(f"no GGUF name for tensor '{hf_name}'", fix="export with --format hf")
        weight = tensor.detach().float().cpu()
        if family.rotary_interleave and name.endswith("attn_q.weight"):
            weight = interleave_rotary_rows(weight, config.num_attention_heads)
        elif family.rotary_interleave and name.endswith("attn_k.weight"):
            weight = interleave_rotary_rows(weight, config.num_key_value_heads)
        elif family.norm_plus_one and name.endswith("norm.weight"):
            weight = weight + 1.0  # Gemma scales by (1 + w); llama.cpp by the stored weight
        out.append((name, weight.numpy()))
    # llama3's rope_freqs, longrope's long/short factors: llama.cpp divides each pair's frequency by these
    return out + rope_tensors(config, _rope_theta(config), _rotary_dim(config))


def write_gguf(model, vocab: Vocab, path: Path, file_type: str = "f16", name: str = "model",
               pre: str = "gpt-2") -> Path:
    """Write `model` (a causal LM of a supported family, in memory) and its vocabulary to `path`, atomically."""
    import gguf

    if file_type not in FILE_TYPES:
        raise TuneryError(f"unknown GGUF type '{file_type}'", fix=f"use one of {', '.join(FILE_TYPES)}")
    _check_supported(model.config)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:  # temp, fsync, rename: a reader never finds half a file
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf_arch_of(model.config)])
        try:
            write_hparams(writer, model.config, name, file_type)
            write_vocab(writer, vocab, pre)
            for tensor_name, array in gguf_tensors(model):
                data, raw = encode_tensor(array, file_type)
                writer.add_tensor(tensor_name, data, raw_dtype=raw)  # quantized: shape from bytes
            write_out(writer)
        finally:
            writer.close()
    return path


def write_out(writer) -> None:
    """Header, metadata, then tensors: the order a GGUF file is laid out in (the caller closes)."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
