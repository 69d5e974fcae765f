"""What is measured per system: the loss of the reference answers given each prompt, and generated
answers with their token counts and timing."""

from __future__ import annotations

import math
import time

import torch

from tunery.config import defaults
from tunery.data.messages import Example, Message


@torch.inference_mode()
def answer_loss(model, tokenizer, prompts: list[list[dict]], references: list[str],
                max_length: int = defaults.MAX_LENGTH, batch_size: int = defaults.EVAL_BATCH_SIZE) -> dict:
    """Mean loss per reference token (and perplexity) of each reference given its prompt.

    Each conversation is rendered with the chat template and only the last assistant turn (the
    reference, with its end-of-turn token) is scored: the "trained tokens" of an evaluation. The
    same prompts as generation are used, so few-shot and retrieval rows get the loss with their shots.
    """
    from tunery.data.render import render_example
    from tunery.models.forward import mean_loss

    rows = []
    for prompt, reference in zip(prompts, references):
        messages = [Message(m["role"], m["content"]) for m in prompt] + [Message("assistant", reference)]
        rows.append(render_example(Example("eval", 0, messages=messages), tokenizer, "last", max_length))
    was_training = model.training
    model.eval()
    loss, count = mean_loss(model, rows, tokenizer.pad_token_id, batch_size, packed=False)
    model.train(was_training)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)) if count else math.nan, "tokens": count}


def generate_timed(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int,
                   temperature: float = 0.0, seed: int = 0, batch_size: int = 8, constraint=None) -> list[dict]:
    """Per prompt: the answer text, tokens generated, and seconds (its batch's wall time divided by
    the batch size: with batched generation that is the cost per answer, not a user's wait)."""
    import sys

    from tqdm import tqdm

    from tunery.inference import generate_ids

    out = []
    # A bar on a terminal only: logs and captured output stay clean.
    bar = tqdm(total=len(prompts), desc="answering", unit="ans", leave=False, file=sys.stderr,
               disable=not sys.stderr.isatty())
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        began = time.perf_counter()
        # One call per batch so each batch is timed alone; the seed differs per batch so sampled
        # answers do not repeat the same random stream, and the run stays reproducible.
        extra = {"constraint": constraint} if constraint is not None else {}
        ids = generate_ids(model, tokenizer, chunk, max_new_tokens, temperature, seed + start, batch_size, **extra)
        share = (time.perf_counter() - began) / len(chunk)
        for row in ids:
            out.append({"answer": tokenizer.decode(row, skip_special_tokens=True).strip(),
                        "tokens": len(row), "seconds": share})
        bar.update(len(chunk))
    bar.close()
    return out
