"""`tunery eval` on raw text: how well each model predicts held-out domain text, before and after
continued pre-training, and what the tuning cost on the general-ability probe.

A file whose records are raw text (`{"text": ...}`) is scored here instead of answered. Every document
is split into the windows training uses (`tunery.data.windows`, `--max-length` tokens each), and each
model's loss is summed over every token after a document's first. The figure is the loss per token
over all documents (and its perplexity, exp of it), with a 95% bootstrap interval that resamples whole
documents; a run is tested against its base on the same documents (paired bootstrap of the loss
difference). The forgetting probe of the main evaluation (`--probe`) is answered by each base and run.
"""

from __future__ import annotations

import gc
import math
import time
from pathlib import Path
from typing import Callable

import torch

from tunery import __version__
from tunery.errors import TuneryError
from tunery.eval.stats import bootstrap_ratio, paired_ratio_difference


def is_text_file(path: str) -> bool:
    """True when the file's first record is raw text (it has `text` and no conversation)."""
    from tunery.data.formats import detect_format
    from tunery.data.readers import read_records

    if not Path(path).is_file():
        return False
    records, _ = read_records(str(path))
    first = next((record for _, record in records if isinstance(record, dict)), None)
    return first is not None and detect_format(first) == "text"


def read_texts(path: str, limit: int | None = None) -> list:
    """The documents of a raw-text file (every bad record listed in one error); the first `limit`."""
    from tunery.data.dataset import load_examples
    from tunery.data.problems import raise_if_errors

    examples, problems = load_examples([path], "text")
    raise_if_errors(problems, what=str(path))
    examples = examples[:limit] if limit is not None else examples
    if not examples:
        raise TuneryError(f"{path} holds no text")
    return examples


@torch.no_grad()
def document_losses(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 8
                    ) -> tuple[list[float], list[int]]:
    """(summed loss, scored tokens) of each document, over the windows training would cut it into."""
    from tunery.config.defaults import LOSS_PASS_TOKENS
    from tunery.data.batching import bounded_batches, make_sequence_batch
    from tunery.data.render import Rendered, render_texts
    from tunery.data.windows import split_windows
    from tunery.models.forward import sequence_logps

    windows, owner = [], []
    for doc, (ids, trained) in enumerate(render_texts(texts, tokenizer)):
        for window in split_windows(Rendered(ids, trained, False, False), max_length, 0):
            windows.append(window)
            owner.append(doc)
    losses, counts = [0.0] * len(texts), [0] * len(texts)
    was_training = model.training
    model.eval()
    for batch in bounded_batches(list(range(len(windows))), batch_size, LOSS_PASS_TOKENS, padded=False,
                                 size_of=lambda i: len(windows[i].ids)):
        sums, n = sequence_logps(model, make_sequence_batch([windows[i] for i in batch], tokenizer.pad_token_id,
                                                            packed=True))
        for doc, s, c in zip([owner[i] for i in batch], sums.tolist(), n.tolist()):
            losses[doc] -= s
            counts[doc] += int(c)
    model.train(was_training)
    return losses, counts


def _targets(targets: list[str]) -> list[tuple[str, str, bool, str]]:
    """(key, name, is a run, its base) for each base (first) and run, in the order given."""
    from tunery.eval.targets import split_targets

    runs, bases = split_targets(targets)
    planned = [(b, "base" if len(bases) == 1 else f"base ({b})", False, b) for b in bases]
    return planned + [(r, "tuned" if len(runs) == 1 else f"tuned ({r})", True, info["base_model"]) for r, info in runs]


def _row(key: str, name: str, tuned: bool, losses: list[float], counts: list[int], seed: int) -> dict:
    interval = bootstrap_ratio(losses, counts, seed=seed)
    return {"system": {"name": name, "model": key, "tuned": tuned}, "loss": interval.mean,
            "loss_low": interval.low, "loss_high": interval.high, "ppl": math.exp(min(interval.mean, 50.0)),
            "ppl_low": math.exp(min(interval.low, 50.0)), "ppl_high": math.exp(min(interval.high, 50.0)),
            "tokens": sum(counts), "per_document": [{"loss": l, "tokens": c} for l, c in zip(losses, counts)]}


def _comparison(run: dict, base: dict, seed: int) -> dict:
    per_run = [d["loss"] for d in run["per_document"]]
    per_base = [d["loss"] for d in base["per_document"]]
    p, diff = paired_ratio_difference(per_run, per_base, [d["tokens"] for d in base["per_document"]], seed=seed)
    return {"a": run["system"]["name"], "b": base["system"]["name"], "diff": diff.mean, "diff_low": diff.low,
            "diff_high": diff.high, "n": diff.n, "test": "paired_bootstrap", "p": p, "significant": bool(p < 0.05),
            "ppl_ratio": math.exp(min(diff.mean, 50.0))}


def evaluate_text(targets: list[str], data: str, opts, log: Callable[[str], None] = print) -> dict:
    """Loss per token and perplexity of each base and run on the documents of `data`, each run tested
    against its base, and the forgetting probe; the eval.json dict (`kind: "text"`)."""
    from tunery.eval import aggregate
    from tunery.eval.baselines import System
    from tunery.eval.evaluate import _probe_items, run_system
    from tunery.eval.guards import guard_label, run_guard
    from tunery.graders import Failures
    from tunery.inference import load_for_inference

    if not targets:
        raise TuneryError("name at least one run folder or base model to evaluate")
    started = time.monotonic()
    docs = read_texts(data, opts.limit)
    texts = [d.text or "" for d in docs]
    planned, probe_items = _targets(targets), _probe_items(opts)
    rows, probes, failures = {}, {}, Failures(log)
    for key, name, tuned, _ in planned:
        log(f"scoring {len(docs)} documents: {name} ({key})")
        model, tokenizer = load_for_inference(key)
        losses, counts = document_losses(model, tokenizer, texts, opts.max_length, opts.batch_size)
        rows[key] = _row(key, name, tuned, losses, counts, opts.seed)
        if probe_items:
            log(f"forgetting probe ({len(probe_items)} items) on {key}")
            probes[key] = run_system(System("probe", key, tuned, "zero-shot"), model, tokenizer, probe_items, [],
                                     [], None, opts, opts.probe_max_new_tokens, failures, probe=True)
        del model
        gc.collect()
    result = {"tunery_version": __version__, "kind": "text", "data": str(data), "n_examples": len(docs),
              "targets": [key for key, _, tuned, _ in planned if tuned], "max_length": opts.max_length,
              "systems": [rows[key] for key, *_ in planned], "comparisons": [], "forgetting": {}}
    for key, _, tuned, base in planned:
        if tuned:
            result["comparisons"].append(_comparison(rows[key], rows[base], opts.seed))
            if key in probes and base in probes:
                summary = aggregate.forgetting_summary(probes[base], probes[key], probe_items, opts.seed)
                guard = run_guard(key)
                result["forgetting"][key] = {"probe": opts.probe, **summary, "guard": guard,
                                             "guard_label": guard_label(guard)}
    result["warnings"] = [f"only {len(docs)} documents: intervals are wide"] if len(docs) < 20 else []
    result["summary"] = summary_sentence(result)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def summary_sentence(result: dict) -> str:
    """One sentence: each run's held-out perplexity against its base's, and the probe before and after."""
    by_name = {row["system"]["name"]: row for row in result["systems"]}
    parts = []
    for test in result["comparisons"]:
        run, base = by_name[test["a"]], by_name[test["b"]]
        verdict = ("lower" if test["diff"] < 0 else "higher") if test["significant"] else "not different (p >= 0.05)"
        parts.append(f"{test['a']}: held-out perplexity {run['ppl']:.2f} against {base['ppl']:.2f} for the base, "
                     f"{verdict} (loss per token {test['diff']:+.4f} [{test['diff_low']:+.4f}, {test['diff_high']:+.4f}], "
                     f"{_p(test['p'])})")
    for run, f in result["forgetting"].items():
        change = "a significant change" if f["test"]["significant"] else "not a significant change"
        parts.append(f"{run}: the general-ability probe went from {f['before']['mean']:.0%} to {f['after']['mean']:.0%}"
                     f" ({f['lost']} items lost, {f['gained']} gained; {change}, {_p(f['test']['p'])})")
    return "; ".join(parts) + "." if parts else "No run was evaluated: perplexity of the base only."


def _p(p: float) -> str:
    """p as printed: a bootstrap p of 0 only says it is below what its resamples can show."""
    from tunery.eval.stats import RESAMPLES

    return f"p={p:.3g}" if p > 0 else f"p<{2 / RESAMPLES:g}"


def format_text_table(result: dict) -> str:
    """The printed table: one line per system."""
    lines = [f"{'system':<24} {'loss/token':>10} {'95% CI':>17} {'perplexity':>10} {'95% CI':>17} {'tokens':>8}"]
    for row in result["systems"]:
        lines.append(f"{row['system']['name']:<24} {row['loss']:>10.4f} {row['loss_low']:>8.4f}-{row['loss_high']:<8.4f} "
                     f"{row['ppl']:>10.2f} {row['ppl_low']:>8.2f}-{row['ppl_high']:<8.2f} {row['tokens']:>8}")
    return "\n".join(lines + ["", result["summary"]])
