"""From per-example scores to the figures of a report: intervals, the best system, paired tests,
disagreements and the forgetting summary. Pure functions of plain dicts, tested without a model."""

from __future__ import annotations

from tunery.eval.stats import bootstrap_ci, compare_paired

OWN = "own"  # the column of records' own graders (all of a record's graders must pass)

# Cheapest first: when two systems are statistically tied, the cheaper one is the one to recommend.
COST_ORDER = {"zero-shot": 0, "few-shot": 1, "retrieval": 2, "run-retrieval": 2}


def cost_rank(system: dict) -> tuple[int, int]:
    """(tuned?, prompting cost): prompting < retrieval < fine-tuning < fine-tuning + retrieval."""
    return int(system["tuned"]), COST_ORDER.get(system["prompting"], 3)


def column_scores(per_example: list[dict], label: str) -> list[float]:
    """The scores of one column over the examples that have it."""
    return [row["scores"][label] for row in per_example if row["scores"].get(label) is not None]


def summarize(row: dict, labels: list[str], seed: int = 0) -> dict:
    """Add to a system's row: an interval per grader column, latency and token figures."""
    per = row["per_example"]
    row["scores"] = {label: bootstrap_ci(column_scores(per, label), seed=seed).to_json() for label in labels}
    seconds = sum(e["seconds"] for e in per)
    tokens = sum(e["tokens"] for e in per)
    row["latency_s"] = seconds / len(per) if per else None
    row["tokens_generated"] = tokens
    row["tokens_per_answer"] = tokens / len(per) if per else None
    row["tokens_per_s"] = tokens / seconds if seconds > 0 else None
    return row


def best_and_comparisons(rows: list[dict], primary: str, seed: int = 0) -> tuple[dict | None, list[dict]]:
    """The row with the highest primary mean (ties: the cheaper system) and the paired test of it
    against every other row on the same examples."""
    scored = [r for r in rows if r["scores"][primary]["n"] > 0]
    if not scored:
        return None, []
    best = max(scored, key=lambda r: (r["scores"][primary]["mean"], [-x for x in cost_rank(r["system"])]))
    ours = column_scores(best["per_example"], primary)
    comparisons = []
    for row in scored:
        if row is best:
            continue
        test = compare_paired(ours, column_scores(row["per_example"], primary), seed=seed)
        comparisons.append({"a": best["system"]["name"], "b": row["system"]["name"], **test})
    return best, comparisons


def disagreements(tuned: dict, base: dict, items: list, primary: str, limit: int = 8) -> list[dict]:
    """Examples where the tuned and base rows score differently on the primary column, side by side."""
    out = []
    for item, t, b in zip(items, tuned["per_example"], base["per_example"]):
        ts, bs = t["scores"].get(primary), b["scores"].get(primary)
        if ts is None or bs is None or ts == bs:
            continue
        out.append({"id": item.id, "prompt": item.prompt[-1]["content"], "reference": item.reference,
                    "tuned": t["answer"], "base": b["answer"], "tuned_score": ts, "base_score": bs})
    out.sort(key=lambda d: d["base_score"] - d["tuned_score"])  # tuned wins first, then losses
    return out[:limit]


def probe_kind(item) -> str:
    """The ability a probe item tests (its record's `kind`); "all" for items without one (a user's
    own probe file), which are then not split."""
    kind = item.record.get("kind") if isinstance(getattr(item, "record", None), dict) else None
    return str(kind) if kind else "all"


def _compare_before_after(before: list[float], after: list[float], lost: int, gained: int, seed: int) -> dict:
    return {"n": len(before), "before": bootstrap_ci(before, seed=seed).to_json(),
            "after": bootstrap_ci(after, seed=seed).to_json(), "test": compare_paired(after, before, seed=seed),
            "lost": lost, "gained": gained}


def forgetting_by_kind(items: list, before: list[float], after: list[float], seed: int = 0) -> dict[str, dict]:
    """Per kind of probe item: before/after means with intervals, the paired test, items lost and
    gained; empty when the items carry no kind (there is nothing to split)."""
    kinds = [probe_kind(item) for item in items]
    if set(kinds) == {"all"}:
        return {}
    out = {}
    for kind in dict.fromkeys(kinds):
        pairs = [(b, a) for k, b, a in zip(kinds, before, after) if k == kind]
        b, a = [p[0] for p in pairs], [p[1] for p in pairs]
        lost = sum(1 for x, y in pairs if y < x)
        out[kind] = _compare_before_after(b, a, lost, sum(1 for x, y in pairs if y > x), seed)
    return out


def forgetting_summary(before: dict, after: dict, items: list, seed: int = 0) -> dict:
    """Probe score before (base) and after (tuned), their paired test, and the items that changed;
    the same per kind of item under `by_kind`."""
    b, a = column_scores(before["per_example"], OWN), column_scores(after["per_example"], OWN)
    changed = [
        {"id": item.id, "kind": probe_kind(item), "prompt": item.prompt[-1]["content"], "before": x["answer"],
         "after": y["answer"], "before_score": x["scores"][OWN], "after_score": y["scores"][OWN]}
        for item, x, y in zip(items, before["per_example"], after["per_example"])
        if x["scores"][OWN] != y["scores"][OWN]
    ]
    lost = sum(1 for c in changed if c["after_score"] < c["before_score"])
    return {
        **_compare_before_after(b, a, lost, sum(1 for c in changed if c["after_score"] > c["before_score"]), seed),
        "n": len(items),
        "by_kind": forgetting_by_kind(items, b, a, seed),
        "changed": changed,
        "before_loss": before.get("loss"),
        "after_loss": after.get("loss"),
    }


def significant_drops(forgetting: dict) -> list[str]:
    """Where a run's probe fell significantly: "all" for the whole probe, then each kind that did."""
    def fell(entry: dict) -> bool:
        return bool(entry["test"]["significant"] and entry["test"]["diff"] < 0)

    found = ["all"] if fell(forgetting) else []
    return found + [kind for kind, entry in (forgetting.get("by_kind") or {}).items() if fell(entry)]
