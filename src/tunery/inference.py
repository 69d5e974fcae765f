"""Load a run folder (or a base model) and answer conversations with it.

A run folder names its base model, adapter kind and tokenizer, so `load_for_inference` needs only its
path. `generate_batch` renders each conversation with the tokenizer's own chat template, left-pads a
batch (so every row's next token sits in the last column) and stops each row at the end-of-turn token.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunery.config.defaults import GENERATE_TOKENS
from tunery.data.batching import bounded_batches
from tunery.data.chat_template import cut_at_stop, prompt_ids  # noqa: F401 (re-exported)
from tunery.errors import TuneryError
from tunery.models.load import DTYPES, load_model, load_tokenizer
from tunery.runfolder import RunFolder, is_run_folder, read_run_info  # noqa: F401 (read_run_info re-exported)
from tunery.runfolder import unfinished_error as _unfinished
from tunery.shared_prefix import left_pad, shared_prefix  # noqa: F401 (left_pad re-exported)


def load_run(run_dir: Path, dtype: str = "float32"):
    """(model, tokenizer) of a finished run folder: LoRA adapter on its base model, or full weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = read_run_info(run_dir)
    folder = RunFolder(run_dir)
    adapter = info.get("adapter", "lora")
    if adapter not in ("lora", "qlora", "full"):
        raise TuneryError(f"{folder.info} names an unknown adapter kind '{adapter}'")
    is_adapter = adapter in ("lora", "qlora")
    weights = folder.adapter if is_adapter else folder.model
    marker = "adapter_config.json" if is_adapter else "config.json"
    if not (weights / marker).is_file():
        raise _unfinished(run_dir, info, weights)
    tok_dir = folder.tokenizer
    if not tok_dir.is_dir():
        raise TuneryError(
            f"{run_dir} has weights but no tokenizer/ folder",
            why="the run folder is incomplete (copied in part?)",
            fix="copy the whole run folder, or re-run training with --resume",
        )
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if is_adapter:
        from peft import PeftModel

        from tunery.models.quant import load_base_for_run

        base = load_base_for_run(info, run_dir, dtype)  # 4-bit for QLoRA, as in training
        from tunery.models.lean_lora import lean_lora

        model = PeftModel.from_pretrained(base, str(weights))
        lean_lora(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=DTYPES[dtype])
    model.eval()
    return model, tokenizer


def load_for_inference(target: str | Path, dtype: str = "float32"):
    """(model, tokenizer) for a run folder or a base-model spec (alias, folder, .gguf, hub id)."""
    if dtype not in DTYPES:
        raise TuneryError(f"unknown dtype '{dtype}'", fix=f"use one of {', '.join(DTYPES)}")
    if is_run_folder(Path(target).expanduser()):
        return load_run(Path(target).expanduser(), dtype)
    return load_model(str(target), dtype), load_tokenizer(str(target))


def answer_setup(target: str | Path):
    """(retrieval index, constraint) a run folder answers with (`data.retrieval`, `eval.choices` /
    `eval.json_schema` of its training), each None when unset; (None, None) for a base model."""
    if not is_run_folder(Path(target).expanduser()):
        return None, None
    from tunery.constrain import load_constraint
    from tunery.data.retrieval_aug import load_index

    folder = Path(target).expanduser()
    return load_index(folder), load_constraint(folder)


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Ids that end an answer: eos, the model's configured eos ids, and the template's end-of-turn token.

    The end-of-turn token is found by rendering a one-turn conversation and taking the first special
    token after the assistant header; many templates (ChatML, Llama 3, Gemma) end turns with a token
    that is not the tokenizer's eos, and generation would otherwise run on into a new turn.
    """
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, list) else [configured])
    if tokenizer.chat_template:
        ids.update(_end_of_turn(tokenizer))
    return sorted(ids)


def _end_of_turn(tokenizer) -> list[int]:
    user = [{"role": "user", "content": "hi"}]
    head = prompt_ids(tokenizer, user)
    full = tokenizer.apply_chat_template(
        user + [{"role": "assistant", "content": "ok"}], tokenize=True, return_dict=True
    )["input_ids"]
    if list(full[: len(head)]) != head:
        return []  # the template renders the last turn differently; rely on eos alone
    special = set(tokenizer.all_special_ids) | {
        i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special
    }
    return [i for i in full[len(head) :] if i in special][:1]


def _generation_config(tokenizer, stop_ids, max_new_tokens: int, temperature: float):
    from transformers import GenerationConfig

    # An explicit config replaces the model's own: a checkpoint's sampling defaults (top_p, temperature)
    # must not turn "greedy" into sampling, nor warn about unused settings.
    sampling = temperature > 0
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_ids,
        use_cache=True,
    )


@torch.inference_mode()
def generate_ids(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 8,
    streamer=None,
    constraint=None,
    share_prefix: bool = True,
) -> list[list[int]]:
    """The answer token ids of each conversation, cut before the first stop token, in input order.

    Greedy when temperature is 0, else sampling seeded by `seed` (the same seed gives the same answers).
    `streamer` (e.g. transformers' TextStreamer) prints tokens as they come and needs one conversation.
    `constraint` (`tunery.constrain.Constraint`) limits answers to its choices or JSON schema.
    `share_prefix`: the tokens every prompt starts with (system prompt, few-shot examples) are computed
    once for the whole call (`tunery.shared_prefix`), not once per row.
    """
    if streamer is not None and len(conversations) != 1:
        raise ValueError("a streamer can follow one conversation at a time")
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be at least 1")
    stop_ids = stop_token_ids(tokenizer, model)
    config = _generation_config(tokenizer, stop_ids, max_new_tokens, temperature)
    rows = [prompt_ids(tokenizer, conv) for conv in conversations]
    device = next(model.parameters()).device
    answers: list[list[int]] = []
    prefix = shared_prefix(model, rows, device) if share_prefix and batch_size > 1 else None
    # fork_rng keeps the caller's global RNG untouched while making sampling repeatable per call.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for batch in bounded_batches(rows, batch_size, GENERATE_TOKENS, padded=True,
                                     size_of=lambda row: len(row) + max_new_tokens):
            if prefix is not None and len(batch) > 1:
                ids, mask, extra = prefix.batch(batch, tokenizer.pad_token_id)
            else:
                (ids, mask), extra = left_pad(batch, tokenizer.pad_token_id), {}
            if constraint is not None:
                from transformers import LogitsProcessorList

                extra["logits_processor"] = LogitsProcessorList(
                    [constraint.processor(tokenizer, stop_ids, ids.shape[1])])
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                streamer=streamer,
                **extra,
            )
            answers.extend(cut_at_stop(row, stop_ids) for row in out[:, ids.shape[1] :].tolist())
    return answers


def generate_batch(model, tokenizer, conversations: list[list[dict]], *args, **options) -> list[str]:
    """Answer each conversation (the options of `generate_ids`); returns the decoded answers without
    special tokens and with surrounding whitespace stripped."""
    rows = generate_ids(model, tokenizer, conversations, *args, **options)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]
