"""`reward_model:RUN`: a reward model trained with tunery (`method: reward`) as a grader.

The score of an answer is `sigmoid(r)`, where `r` is the run's reward of the answer given its prompt
(the conversation before it, read from the record), in (0, 1): 0.5 is a reward of 0, and the Bradley-
Terry model the reward was trained with reads `sigmoid(r_a - r_b)` as the chance that answer a is
preferred to answer b. The model (the base as a one-output sequence classifier with the run's adapter,
or the run's full model) is loaded on the first score and kept by the grader object; a spec is also
parsed only to validate a config, which must not load anything.

The prompt comes from the record the answer replies to: its `prompt` (a string, or messages ending on a
user turn) or its conversation (`messages`, ShareGPT `conversations`, Alpaca, prompt/completion) up to
the last user turn. A caller that passes no record cannot be served: the reward of an answer without
its question is not the reward the model was trained to give.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from tunery.errors import TuneryError

BATCH = 8  # answers per forward pass
CONVERSATIONS = ("messages", "sharegpt", "alpaca", "prompt_completion")


class RewardModelGrader:
    """Scores answers with a reward run; `score` / `score_many` take the record for the prompt."""

    def __init__(self, run: str):
        from tunery.inference import read_run_info
        from tunery.runfolder import is_run_folder

        path = Path(run).expanduser()
        if not is_run_folder(path):
            raise TuneryError(f"grader 'reward_model:{run}': {run} is not a run folder (no run.json)",
                              fix="name the folder of a run trained with method: reward, e.g. reward_model:runs/rm")
        method = read_run_info(path).get("method", "sft")
        if method != "reward":
            raise TuneryError(f"grader 'reward_model:{run}': the run was trained with method: {method}",
                              why="only a reward model (method: reward) gives a reward per answer",
                              fix="train one with method: reward on preference pairs, and name its run folder")
        self.run = path
        self._loaded = None  # (model, tokenizer) after the first score

    def model(self):
        """(model, tokenizer), loaded on the first call and kept."""
        if self._loaded is None:
            from tunery.eval.pairs import load_reward_run

            self._loaded = load_reward_run(self.run)
        return self._loaded

    def score(self, prediction: str, reference: str | None = None, record: Mapping[str, Any] | None = None) -> float:
        """sigmoid(reward) of one answer given the prompt of `record`."""
        return self.score_many([prediction], [reference], [record])[0]

    def score_many(self, predictions: Sequence[str], references: Sequence[str | None],
                   records: Sequence[Mapping[str, Any] | None]) -> list[float]:
        """sigmoid(reward) of each answer, `BATCH` answers per packed forward pass."""
        import torch

        from tunery.data.batching import make_sequence_batch
        from tunery.data.messages import Example, Message
        from tunery.data.render import render_example
        from tunery.trainers.methods.reward import rewards_of

        model, tokenizer = self.model()
        rows = [render_example(Example("grader", i + 1, messages=prompt_of(record, self.run) +
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


def prepare(kind: str, arg: str | None) -> RewardModelGrader:
    """The grader object of `reward_model:RUN` (checks the run now, loads the model on the first score)."""
    if not arg:
        raise TuneryError("grader 'reward_model' needs a run folder", fix="e.g. reward_model:runs/rm")
    return RewardModelGrader(arg)


def score_answer(prediction: str, reference: str | None, grader: RewardModelGrader) -> float:
    """The `Kind.score` of callers that pass no record (they cannot give the prompt: see `prompt_of`)."""
    return grader.score(prediction, reference, None)
