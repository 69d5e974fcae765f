"""`tunery eval` on preference pairs: on held-out pairs, does a model rank the chosen answer first?

When the data file holds preference pairs (any form `tunery.data.preference` reads), every target is
scored on every pair, and each system's figures get a 95% bootstrap interval:

- a policy (a run trained with sft, dpo, orpo or kto, or a base model) scores an answer by its
  log-probability given the prompt (summed over the answer's tokens and its end-of-turn token, as DPO
  does). Its **preference accuracy** is the share of pairs whose DPO implicit reward margin is
  positive: `[log p(chosen) - log p_ref(chosen)] - [log p(rejected) - log p_ref(rejected)] > 0`, with
  the run's base model as the reference (for a LoRA run the adapter switched off, as in training).
  A base model is its own reference: its margin is 0 on every pair, a tie, which counts one half, so
  its preference accuracy is 50% by construction, the level of a model that learnt nothing. Next to
  it: **log-prob accuracy** `log p(chosen) > log p(rejected)` (which answer the model itself finds
  likelier: what a base model "prefers") and the same on the mean log-prob per token.
- a reward run (`method: reward`) scores an answer by its reward; its preference accuracy is the
  share of pairs with `r(chosen) > r(rejected)`.

Each run is tested against its base on the same pairs (exact McNemar / sign test): its preference
accuracy against the base's (50%, so against chance), and, for a policy, its log-prob accuracy against
the base's; a reward model's accuracy also against the base's log-prob accuracy (does the reward model
rank pairs better than the base model's likelihood does?).

One model is loaded at a time, and the base model's log-probs are computed once: a LoRA run scores the
pairs with its adapter switched off (its reference) before the base row is made, and the base row and
every full-weight run whose pairs render to the same tokens reuse them.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from tunery import __version__
from tunery.errors import TuneryError
from tunery.eval.stats import bootstrap_ci, compare_paired, mcnemar_exact

COLUMNS = ("accuracy", "logp_accuracy", "mean_logp_accuracy")
COLUMN_TEXT = {"accuracy": "preference accuracy", "logp_accuracy": "log-prob accuracy",
               "mean_logp_accuracy": "mean log-prob accuracy"}


def is_pairs_file(path: str) -> bool:
    """True when the file's first record is a preference pair (it names `chosen` or `preferred_output`)."""
    from tunery.data.preference import PAIR_KEYS
    from tunery.data.readers import read_records

    if not Path(path).is_file():
        return False
    records, _ = read_records(str(path))
    first = next((record for _, record in records if isinstance(record, dict)), None)
    return first is not None and any(key in first for key in PAIR_KEYS)


def read_pairs(path: str, limit: int | None = None) -> list:
    """The pairs of a file, every bad record listed in one error; the first `limit` when given."""
    from tunery.data.preference import load_records
    from tunery.data.problems import raise_if_errors

    pairs, problems = load_records([path], "pairs")
    raise_if_errors(problems, what=str(path))
    pairs = pairs[:limit] if limit is not None else pairs
    if not pairs:
        raise TuneryError(f"{path} holds no preference pair")
    return pairs


def render_pairs(pairs: list, tokenizer, max_length: int) -> tuple[list, list[str]]:
    """Each pair rendered as in training (prompt + answer, the answer's tokens scored); warnings for
    pairs whose answers were cut at `max_length` (scored on what is left)."""
    from tunery.data.preference import render_pair

    rows, warnings = [], []
    for pair in pairs:
        row = render_pair(pair, tokenizer, max_length)
        if not (row.chosen.num_trained and row.rejected.num_trained):
            raise TuneryError(f"{pair.location}: an answer lies wholly beyond max_length {max_length}",
                              fix="raise --max-length")
        if row.chosen.answer_cut or row.rejected.answer_cut:
            warnings.append(f"{pair.location}: an answer was cut at max_length {max_length}")
        rows.append(row)
    return rows, warnings


def _batches(rows: list, pad_id: int, batch_size: int):
    from tunery.config.defaults import LOSS_PASS_TOKENS
    from tunery.data.batching import bounded_batches, make_sequence_batch

    for batch in bounded_batches(rows, batch_size, LOSS_PASS_TOKENS, padded=False,
                                 size_of=lambda row: len(row.chosen.ids) + len(row.rejected.ids)):
        sides = [side for row in batch for side in (row.chosen, row.rejected)]
        yield make_sequence_batch(sides, pad_id, packed=True)


@torch.no_grad()
def answer_logps(model, rows: list, pad_id: int, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs [n, 2], answer token counts [n, 2]) of (chosen, rejected) of every pair."""
    from tunery.models.forward import sequence_logps

    sums, counts = [], []
    for batch in _batches(rows, pad_id, batch_size):
        s, c = sequence_logps(model, batch)
        sums.append(s.double().cpu().view(-1, 2))
        counts.append(c.double().cpu().view(-1, 2))
    return torch.cat(sums), torch.cat(counts)


@torch.no_grad()
def answer_rewards(model, rows: list, pad_id: int, batch_size: int = 8) -> torch.Tensor:
    """Rewards [n, 2] of (chosen, rejected) of every pair, from a reward model's scalar head."""
    from tunery.trainers.methods.reward import rewards_of

    return torch.cat([rewards_of(model, batch).double().cpu().view(-1, 2)
                      for batch in _batches(rows, pad_id, batch_size)])


def ranks(first: torch.Tensor, second: torch.Tensor) -> list[float]:
    """1 where first > second, 0 where lower, 1/2 on a tie."""
    return [1.0 if a > b else 0.0 if a < b else 0.5 for a, b in zip(first.tolist(), second.tolist())]


def policy_scores(logps: torch.Tensor, counts: torch.Tensor, ref: torch.Tensor) -> dict[str, list[float]]:
    """Per pair: preference accuracy (implicit reward margin against `ref`), log-prob accuracy on the
    sums and on the means per token."""
    log_ratio = logps - ref
    means = logps / counts.clamp(min=1)
    return {"accuracy": ranks(log_ratio[:, 0], log_ratio[:, 1]),
            "logp_accuracy": ranks(logps[:, 0], logps[:, 1]),
            "mean_logp_accuracy": ranks(means[:, 0], means[:, 1])}


def _per_pair(pairs: list, columns: dict[str, list[float]], values: dict[str, torch.Tensor]) -> list[dict]:
    out = []
    for i, pair in enumerate(pairs):
        entry = {"id": pair.location, "scores": {name: scores[i] for name, scores in columns.items()}}
        for name, tensor in values.items():
            entry[f"{name}_chosen"], entry[f"{name}_rejected"] = (round(float(v), 6) for v in tensor[i])
        out.append(entry)
    return out


def system_row(name: str, model: str, kind: str, pairs: list, columns: dict[str, list[float]],
               values: dict[str, torch.Tensor], seed: int, **extra) -> dict:
    """One row of the table: figures with intervals, mean margins, and the per-pair detail."""
    scores = {c: bootstrap_ci(columns[c], seed=seed).to_json() for c in COLUMNS if c in columns}
    row = {"system": {"name": name, "model": model, "kind": kind, **extra}, "scores": scores}
    for value, tensor in values.items():
        if value != "tokens":
            row[f"mean_{value}_margin"] = float((tensor[:, 0] - tensor[:, 1]).mean())
    row["per_example"] = _per_pair(pairs, columns, values)
    return row


@dataclass
class PairTarget:
    """What is scored: a base model, a policy run (its base the reference) or a reward run."""

    key: str  # a run folder or a base-model spec
    name: str  # the row's name in the table
    kind: str  # base | policy | reward
    base: str  # the base model (itself for a base)
    method: str | None = None
    adapter: str | None = None


def plan_targets(targets: list[str]) -> list[PairTarget]:
    """Bases first (each run's, and those named), then the runs, in the order given."""
    from tunery.eval.targets import split_targets

    runs, bases = split_targets(targets)
    runs = [(str(Path(target).expanduser()), info) for target, info in runs]
    planned = [PairTarget(b, "base" if len(bases) == 1 else f"base ({b})", "base", b) for b in bases]
    for path, info in runs:
        method = info.get("method", "sft")
        name = f"tuned ({method})" if len(runs) == 1 else f"tuned ({method}, {path})"
        planned.append(PairTarget(path, name, "reward" if method == "reward" else "policy", info["base_model"],
                                  method, info.get("adapter", "lora")))
    return planned


def score_base(target: PairTarget, pairs: list, opts, log, known: dict | None = None) -> tuple[dict, dict]:
    """The base row, and what other rows reuse: {"ids": the rendered rows' ids, "logps", "counts"}. When a
    LoRA run has already scored the same token rows with its adapter switched off (`known`), those are
    the base model's log-probs and the base is not loaded again."""
    from tunery.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(target.key)
    rows, warnings = render_pairs(pairs, tokenizer, opts.max_length)
    if known is not None and known["ids"] == _ids(rows):
        logps, counts = known["logps"], known["counts"]
    else:
        logps, counts = answer_logps(load_model(target.key), rows, tokenizer.pad_token_id, opts.batch_size)
        gc.collect()
    columns = policy_scores(logps, counts, logps)
    row = system_row(target.name, target.key, "base", pairs, columns, {"logp": logps, "tokens": counts}, opts.seed)
    return row | {"warnings": warnings}, {"ids": _ids(rows), "logps": logps, "counts": counts}


def _ids(rows: list) -> list:
    return [(tuple(r.chosen.ids), tuple(r.rejected.ids)) for r in rows]


def score_policy(target: PairTarget, pairs: list, reference: dict | None, opts, log) -> tuple[dict, dict | None]:
    """A policy run's row: its log-probs and the reference's (the adapter switched off, or the base's
    reused), and, for a LoRA run, the base model's log-probs it measured (its adapter off) for the base row."""
    from tunery.inference import load_run
    from tunery.models.load import load_model
    from tunery.trainers.methods.preference import reference_mode

    model, tokenizer = load_run(Path(target.key))
    rows, warnings = render_pairs(pairs, tokenizer, opts.max_length)
    logps, counts = answer_logps(model, rows, tokenizer.pad_token_id, opts.batch_size)
    shared = None
    if hasattr(model, "disable_adapter"):  # the reference DPO trained against: the adapter switched off
        with reference_mode(model):
            ref, _ = answer_logps(model, rows, tokenizer.pad_token_id, opts.batch_size)
        source = "adapter off"
        if target.adapter == "lora":  # a 4-bit base (QLoRA) is not the base model in its own dtype
            shared = {"ids": _ids(rows), "logps": ref, "counts": counts}
    elif reference is not None and _ids(rows) == reference["ids"]:
        ref, source = reference["logps"], "base model"
    else:  # full weights, and the base not scored on these tokens yet: score them with the base
        del model
        gc.collect()
        log(f"scoring the reference ({target.base}) on the run's tokens")
        ref, _ = answer_logps(load_model(target.base), rows, tokenizer.pad_token_id, opts.batch_size)
        source = "base model"
    columns = policy_scores(logps, counts, ref)
    values = {"logp": logps, "ref_logp": ref, "log_ratio": logps - ref, "tokens": counts}
    row = system_row(target.name, target.key, "policy", pairs, columns, values, opts.seed, method=target.method,
                     reference=f"{target.base} ({source})")
    return row | {"warnings": warnings}, shared


def score_reward(target: PairTarget, pairs: list, opts, log) -> dict:
    """A reward run's row: the reward of each answer, accuracy r(chosen) > r(rejected)."""
    from tunery.trainers.reward_grader import load_reward_run

    model, tokenizer = load_reward_run(Path(target.key))
    rows, warnings = render_pairs(pairs, tokenizer, opts.max_length)
    rewards = answer_rewards(model, rows, tokenizer.pad_token_id, opts.batch_size)
    columns = {"accuracy": ranks(rewards[:, 0], rewards[:, 1])}
    return system_row(target.name, target.key, "reward", pairs, columns, {"reward": rewards}, opts.seed,
                      method="reward") | {"warnings": warnings}


def _column(row: dict, column: str) -> list[float]:
    return [e["scores"][column] for e in row["per_example"]]


def paired_test(run: dict, run_column: str, base: dict, base_column: str, seed: int) -> dict:
    """The run's column against the base's on the same pairs: the difference with its bootstrap
    interval, and the exact McNemar test on the pairs where they disagree (a sign test when one side
    has ties of 1/2: the base's preference accuracy)."""
    a, b = _column(run, run_column), _column(base, base_column)
    test = compare_paired(a, b, seed=seed)
    if test["test"] != "mcnemar_exact":  # ternary scores: the sign test is McNemar's exact test on them
        p, wins_a, wins_b = mcnemar_exact(a, b)
        test |= {"test": "sign_exact", "p": p, "wins_a": wins_a, "wins_b": wins_b, "significant": bool(p < 0.05)}
    return {"a": run["system"]["name"], "a_column": run_column, "b": base["system"]["name"],
            "b_column": base_column, **test}


def comparisons(rows: list[dict], targets: list[PairTarget], seed: int) -> list[dict]:
    """Every run against its base: preference accuracy vs the base's, log-prob accuracy vs the base's
    (a policy) or the reward model's accuracy vs the base's log-prob accuracy."""
    by_key = {t.key: row for t, row in zip(targets, rows)}
    out = []
    for target, row in zip(targets, rows):
        if target.kind == "base" or target.base not in by_key:
            continue
        base = by_key[target.base]
        second = "logp_accuracy" if target.kind == "policy" else "accuracy"
        out.append(paired_test(row, "accuracy", base, "accuracy", seed))
        out.append(paired_test(row, second, base, "logp_accuracy", seed))
    return out


def _scoring_order(target: PairTarget) -> int:
    """LoRA runs first: with the adapter off they score the pairs under the base model, which the base
    rows and full runs then reuse instead of loading and scoring the base again; reward runs last."""
    if target.kind == "policy" and target.adapter == "lora":
        return 0
    return {"base": 1, "policy": 2, "reward": 3}[target.kind]


def evaluate_pairs(targets: list[str], data: str, opts, log: Callable[[str], None] = print) -> dict:
    """Score base models, policy runs and reward runs on the preference pairs of `data`; the eval.json
    dict (`kind: "pairs"`)."""
    if not targets:
        raise TuneryError("name at least one run folder or base model to evaluate")
    started = time.monotonic()
    pairs = read_pairs(data, opts.limit)
    planned = plan_targets(targets)
    scored, known, warnings = {}, {}, []
    for target in sorted(planned, key=_scoring_order):
        log(f"scoring {len(pairs)} pairs: {target.name} ({target.key})")
        if target.kind == "base":
            row, known[target.key] = score_base(target, pairs, opts, log, known.get(target.key))
        elif target.kind == "policy":
            row, shared = score_policy(target, pairs, known.get(target.base), opts, log)
            if shared is not None:
                known.setdefault(target.base, shared)
        else:
            row = score_reward(target, pairs, opts, log)
        warnings += [w for w in row.pop("warnings") if w not in warnings]
        scored[target.key] = row
        gc.collect()
    rows = [scored[t.key] for t in planned]  # bases first in the table
    tests = comparisons(rows, planned, opts.seed)
    result = {"tunery_version": __version__, "kind": "pairs", "data": str(data), "n_examples": len(pairs),
              "targets": [t.key for t in planned if t.kind != "base"], "columns": list(COLUMNS),
              "max_length": opts.max_length, "systems": rows, "comparisons": tests}
    if len(pairs) < 30:
        warnings.append(f"only {len(pairs)} pairs: intervals are wide and small differences cannot be told apart")
    result["warnings"] = warnings
    result["summary"] = summary_sentence(result)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def _pct(interval: dict) -> str:
    return f"{interval['mean']:.0%} (95% CI {interval['low']:.0%}-{interval['high']:.0%})"


def summary_sentence(result: dict) -> str:
    """One sentence per run: its preference accuracy, the base's log-prob accuracy, and whether the
    run ranks the held-out pairs significantly better than chance."""
    rows = {r["system"]["name"]: r for r in result["systems"]}
    parts = []
    for test in result["comparisons"]:
        if test["a_column"] != "accuracy" or test["b_column"] != "accuracy":
            continue
        run, base = rows[test["a"]], rows[test["b"]]
        verdict = "significantly above chance" if test["significant"] and test["diff"] > 0 else \
            "not significantly above chance"
        parts.append(f"{test['a']} ranks the chosen answer first on {_pct(run['scores']['accuracy'])} of "
                     f"{result['n_examples']} pairs, {verdict} (sign test p={test['p']:.2g}); the base model's "
                     f"own likelihood prefers it on {_pct(base['scores']['logp_accuracy'])}.")
    if not parts:
        base = result["systems"][0]
        parts.append(f"{base['system']['name']}'s likelihood prefers the chosen answer on "
                     f"{_pct(base['scores']['logp_accuracy'])} of {result['n_examples']} pairs.")
    return " ".join(parts)


def format_pairs_table(result: dict) -> str:
    """The table as plain text: one line per system, each column with its interval."""
    width = max(len("system"), *(len(r["system"]["name"]) for r in result["systems"]))
    head = f"{'system':<{width}}  " + "  ".join(f"{COLUMN_TEXT[c]:>24}" for c in COLUMNS)
    lines = [head + f"  {'mean margin':>11}", "-" * (len(head) + 13)]
    for row in result["systems"]:
        cells = []
        for column in COLUMNS:
            s = row["scores"].get(column)
            cells.append((f"{s['mean']:6.1%} [{s['low']:5.1%}, {s['high']:5.1%}]" if s else "n/a").rjust(24))
        margin = row.get("mean_log_ratio_margin", row.get("mean_reward_margin", row.get("mean_logp_margin")))
        lines.append(f"{row['system']['name']:<{width}}  " + "  ".join(cells) + f"  {_num(margin):>11}")
    return "\n".join(lines)


def _num(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.3f}"


def format_pairs_details(result: dict) -> str:
    """The tests of each run against its base, the warnings and the summary."""
    lines = [f"({result['n_examples']} pairs from {result['data']}; 95% bootstrap intervals; a base model is "
             "its own reference, so its preference accuracy is 50% by construction; mean margin: the implicit "
             "reward's log-ratio margin of a policy run, the reward margin of a reward run, log p(chosen) - "
             "log p(rejected) of a base)"]
    for c in result["comparisons"]:
        verdict = "significant" if c["significant"] else "not significant"
        lines.append(f"{c['a']} {COLUMN_TEXT[c['a_column']]} vs {c['b']} {COLUMN_TEXT[c['b_column']]}: "
                     f"{c['diff']:+.1%} [{c['diff_low']:+.1%}, {c['diff_high']:+.1%}], {c['test']} "
                     f"p={c['p']:.3g} ({verdict})")
    lines += [f"warning: {w}" for w in result["warnings"]]
    lines += ["", result["summary"]]
    return "\n".join(lines)
