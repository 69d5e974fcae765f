"""The systems compared on the same examples: the tuned model and the cheaper alternatives.

- zero-shot: the evaluation prompt as it is;
- few-shot: the same k training examples (drawn once with a seed) before every prompt;
- retrieval: for each prompt, the k training examples most similar to it (BM25 by default), the most
  similar one placed last, nearest the question;
- the tuned model, zero-shot, and optionally with retrieval too ("both").
Shots are in-context turns (user, assistant) between the prompt's system message and its question.
A training example identical to the evaluated one is never used as its shot: that would hand the
model the answer and measure the leak, not the method (`leakage.py` reports such overlap).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tunery.data.messages import Example
from tunery.data.retrieval import insert_turns
from tunery.errors import TuneryError
from tunery.eval.items import EvalItem, as_dicts, prompt_text, shot_messages

BASELINES = ("zero", "few", "rag", "tuned+rag")
RUN_RETRIEVAL = "run-retrieval"  # a run trained with data.retrieval, answering with its own saved index
DEFAULT_BASELINES = ("zero", "few", "rag")


@dataclass(frozen=True)
class System:
    """One row of the comparison table: a model and a way of prompting it."""

    name: str
    model: str  # a run folder or a base model spec (the key of the loaded model)
    tuned: bool
    prompting: str  # zero-shot | few-shot | retrieval
    k: int = 0
    retrieval: str | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "model": self.model, "tuned": self.tuned,
                "prompting": self.prompting, "k": self.k, "retrieval": self.retrieval}


def with_shots(prompt: list[dict], shots: list[Example]) -> list[dict]:
    """`prompt` with each shot's turns inserted after its leading system messages."""
    return insert_turns(prompt, [m for shot in shots for m in as_dicts(shot_messages(shot))])


def fixed_shots(pool: list[Example], k: int, seed: int) -> list[int]:
    """k pool indices drawn once with `seed` (the few-shot examples every prompt gets)."""
    return random.Random(seed).sample(range(len(pool)), min(k, len(pool)))


def _duplicates(item: EvalItem, pool: list[Example]) -> set[int]:
    key = item.example.key()
    return {i for i, e in enumerate(pool) if e.key() == key}


def prompts_for(system: System, items: list[EvalItem], pool: list[Example], retriever=None,
                seed: int = 0) -> tuple[list[list[dict]], list[list[int]]]:
    """The prompt of every item under `system`, and the pool indices used as shots for each."""
    if system.prompting == "zero-shot":
        return [item.prompt for item in items], [[] for _ in items]
    if not pool:
        raise TuneryError(f"'{system.name}' needs training examples to put in the prompt",
                          fix="evaluate a run folder (its training files are used) or pass --train FILE")
    prompts, used = [], []
    drawn = fixed_shots(pool, system.k + len(items), seed) if system.prompting == "few-shot" else []
    for item in items:
        skip = _duplicates(item, pool)
        if system.prompting == "few-shot":
            chosen = [i for i in drawn if i not in skip][: system.k]
        elif system.prompting == "retrieval":
            if retriever is None:
                raise ValueError("retrieval prompting needs a retriever")
            chosen = retriever.top_k(prompt_text(item.example), system.k, exclude=skip)[::-1]
        else:
            raise ValueError(f"unknown prompting '{system.prompting}'")
        prompts.append(with_shots(item.prompt, [pool[i] for i in chosen]))
        used.append(chosen)
    return prompts, used


def plan_systems(runs: list[str], bases: list[str], baselines: tuple[str, ...], k: int,
                 retrieval: str, has_pool: bool, indexed: dict | None = None) -> list[System]:
    """The rows to evaluate: each run (tuned), then each base model with the chosen baselines.

    Without training examples only zero-shot rows are possible; the caller says why in the report.
    A run in `indexed` ({run: (method, k)}, trained with data.retrieval) answers first as it was trained,
    with its own index, then without retrieval.
    """
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise TuneryError(f"unknown baseline(s): {', '.join(sorted(unknown))}",
                          fix=f"choose among {', '.join(BASELINES)}")
    systems = []
    for run in runs:
        name = f"tuned ({_short(run)})" if len(runs) > 1 else "tuned"
        if run in (indexed or {}):
            method, run_k = indexed[run]
            systems.append(System(f"{name}, retrieval-trained ({method}, k={run_k})", run, True, RUN_RETRIEVAL,
                                  run_k, method))
            name += " without retrieval"
        systems.append(System(name, run, True, "zero-shot"))
        if "tuned+rag" in baselines and has_pool:
            systems.append(System(_both(run, len(runs), k, retrieval), run, True, "retrieval", k, retrieval))
    for base in bases:
        label = "base" if len(bases) == 1 else f"base ({_short(base)})"
        if "zero" in baselines or not has_pool:
            systems.append(System(f"{label} zero-shot", base, False, "zero-shot"))
        if "few" in baselines and has_pool:
            systems.append(System(f"{label} few-shot (k={k})", base, False, "few-shot", k))
        if "rag" in baselines and has_pool:
            systems.append(System(f"{label} retrieval ({retrieval}, k={k})", base, False, "retrieval", k, retrieval))
    return systems


def _short(target: str) -> str:
    return target.rstrip("/").rsplit("/", 1)[-1]


def _both(run: str, runs: int, k: int, retrieval: str) -> str:
    name = "tuned" if runs == 1 else f"tuned ({_short(run)})"
    return f"{name} + retrieval ({retrieval}, k={k})"
