"""How a `reward_model:RUN` grader scores: the reward run loaded once, each answer rendered after its
prompt with the run's chat template, `BATCH` answers a packed forward pass, sigmoid of the head's output.

Importing this module installs `score_answers` into `tunery.graders.reward_model` (the graders layer
cannot load models itself); the method registry and `tunery eval` import it.

The prompt comes from the record the answer replies to: its `prompt` (a string, or messages ending on a
user turn) or its conversation (`messages`, ShareGPT `conversations`, Alpaca, prompt/completion) up to
the last user turn. A caller that passes no record cannot be served: the reward of an answer without
its question is not the reward the model was trained to give.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from tunery.errors import TuneryError
from tunery.graders import reward_model

BATCH = 8  # answers per forward pass
CONVERSATIONS = ("messages", "sharegpt", "alpaca", "prompt_completion")


def load_reward_run(run_dir: Path, dtype: str = "float32"):
    """(model, tokenizer) of a finished reward run: the base as a one-output sequence classifier with
    the run's adapter (LoRA; the head is saved with it), or the run's full `model/`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunery.inference import _unfinished, read_run_info
    from tunery.models.load import DTYPES
    from tunery.runfolder import RunFolder
    from tunery.trainers.methods.reward import load_reward_base

    info, folder = read_run_info(run_dir), RunFolder(run_dir)
    full = info.get("adapter") == "full"
    weights = folder.model if full else folder.adapter
    if not (weights / ("config.json" if full else "adapter_config.json")).is_file():
        raise _unfinished(run_dir, info, weights)
    tokenizer = AutoTokenizer.from_pretrained(folder.tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if full:
        model = AutoModelForSequenceClassification.from_pretrained(weights, dtype=DTYPES[dtype])
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        from peft import PeftModel

        base = load_reward_base(info["base_model"], dtype, tokenizer.pad_token_id, seed=0)
        model = PeftModel.from_pretrained(base, str(weights))  # the trained head replaces the seeded one
    return model.eval(), tokenizer


def score_answers(grader: reward_model.RewardModelGrader, predictions: Sequence[str],
                  records: Sequence[Mapping[str, Any] | None]) -> list[float]:
    """sigmoid(reward) of each answer, `BATCH` answers per packed forward pass."""
    import torch

    from tunery.data.batching import make_sequence_batch
    from tunery.data.messages import Example, Message
    from tunery.data.render import render_example
    from tunery.trainers.methods.reward import rewards_of

    if grader.loaded is None:
        grader.loaded = load_reward_run(grader.run)
    model, tokenizer = grader.loaded
    rows = [render_example(Example("grader", i + 1, messages=prompt_of(record, grader.run) +
                                   [Message("assistant", prediction)]), tokenizer, "last")
            for i, (prediction, record) in enumerate(zip(predictions, records))]
    scores: list[float] = []
    for start in range(0, len(rows), BATCH):
        batch = make_sequence_batch(rows[start:start + BATCH], tokenizer.pad_token_id, packed=True)
        with torch.no_grad():
            scores += torch.sigmoid(rewards_of(model, batch)).tolist()
    return scores


def prompt_of(record: Mapping[str, Any] | None, run: Path) -> list:
    """The messages an answer replies to: the record's prompt, or its conversation up to the last user turn."""
    from tunery.data.formats import detect_format, to_example
    from tunery.data.preference import to_prompt

    if record is None:
        raise TuneryError(f"grader reward_model:{run} needs the prompt each answer replies to",
                          why="it was called without the answer's record",
                          fix="score through tunery eval or training, which pass each record")
    prompt, problems = None, []
    ends_on_user = isinstance(record.get("messages"), list) and record["messages"] \
        and isinstance(record["messages"][-1], dict) and record["messages"][-1].get("role") == "user"
    if record.get("prompt") is not None or ends_on_user:  # prompt/completion, pairs, RL prompts
        key = "prompt" if record.get("prompt") is not None else "messages"
        example, problems = to_prompt({key: record[key]}, "record", 0)
        prompt = None if example is None else example.prompt
    elif detect_format(dict(record)) in CONVERSATIONS:  # a conversation: up to its last user turn
        converted, problems = to_example(dict(record), detect_format(dict(record)), "record", 0)
        users = [i for i, m in enumerate(converted.messages) if m.role == "user"] if converted else []
        prompt = converted.messages[:users[-1] + 1] if users else None
    if prompt is None:
        why = "; ".join(p.reason for p in problems) or f"it has none of the fields a prompt is read from: {sorted(record)}"
        raise TuneryError(f"grader reward_model:{run} found no prompt in a record", why=why,
                          fix="give records a 'prompt' or a conversation ('messages') with a user turn")
    return prompt


reward_model.install(score_answers)
