"""The chat pane: one prompt answered by several runs and their base model, side by side.

Models are loaded with `tunery.inference.load_for_inference` (the run's adapter on its base, with the
run's own tokenizer and chat template) and kept in a small cache, so the second question costs only
generation. One lock serialises generation: two models decoding at once on a CPU only slow each other.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path

from tunery.errors import TuneryError
from tunery.runfolder import read_run_info
from tunery.runlist import find_run


class ModelCache:
    """(model, tokenizer) by target (a run folder path or a base model spec), least recently used out."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._models: OrderedDict[str, tuple] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a model was read from disk (tests check the cache works)

    def get(self, target: str):
        from tunery.inference import load_for_inference

        with self._lock:
            if target in self._models:
                self._models.move_to_end(target)
                return self._models[target]
            pair = load_for_inference(target)
            self.loads += 1
            self._models[target] = pair
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
            return pair

    def loaded(self) -> list[str]:
        return list(self._models)


def chat_targets(runs_dir: Path, names: list[str], with_base: bool) -> list[tuple[str, str]]:
    """(label, target) for each named run, then each distinct base model of those runs."""
    targets, bases = [], []
    for name in names:
        root = find_run(runs_dir, name)
        targets.append((root.name, str(root)))
        base = read_run_info(root)["base_model"]
        if base not in bases:
            bases.append(base)
    if with_base:
        targets += [(f"base: {Path(b).name or b}", b) for b in bases]
    return targets


def answer_side_by_side(cache: ModelCache, targets: list[tuple[str, str]], prompt: str,
                        system: str | None = None, max_new_tokens: int = 64, server=None,
                        served: list[str] = ()) -> list[dict]:
    """Each target's answer to the same conversation (greedy, so the columns are comparable), then each
    of the `served` models of `server` (a `tunery.studio.served.Server`)."""
    from tunery.inference import generate_batch

    conversation = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}]
    if served and server is None:
        raise TuneryError("no server to ask: start the studio with --serve URL")
    answers = []
    for label, target in targets:
        model, tokenizer = cache.get(target)
        started = time.monotonic()
        text = generate_batch(model, tokenizer, [conversation], max_new_tokens=max_new_tokens)[0]
        answers.append({"label": label, "target": target, "answer": text,
                        "seconds": round(time.monotonic() - started, 3)})
    answers += [server.answer(model, conversation, max_new_tokens) for model in served]
    return answers
