"""The one honest sentence: which approach the evidence favours, with the figures behind it.

Rule: take the best system on the primary grader and test it against every other on the same
examples. When it beats them all significantly, it is favoured. When a cheaper system (prompting <
retrieval < fine-tuning < fine-tuning with retrieval) cannot be told apart from it and scores within
`PRACTICAL` of it, the cheaper one is favoured: paying more for no measurable gain is not what the
evidence says. When the cheaper one scores clearly lower but the sample is too small to call the
difference significant, the sentence leans to the best and says that more examples are needed. A
significant loss on the forgetting probe is added as the cost it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunery.eval.aggregate import cost_rank, significant_drops

if TYPE_CHECKING:
    from tunery.eval.evaluate import EvalOptions

APPROACH = {
    (False, "zero-shot"): "prompting (zero-shot)",
    (False, "few-shot"): "prompting with examples (few-shot)",
    (False, "retrieval"): "retrieval-augmented prompting",
    (True, "zero-shot"): "fine-tuning",
    (True, "retrieval"): "fine-tuning plus retrieval (both)",
}


def approach(system: dict) -> str:
    return APPROACH.get((system["tuned"], system["prompting"]), system["name"])


def figure(row: dict, primary: str) -> str:
    """``name 62% (95% CI 41-80%)``."""
    s = row["scores"][primary]
    return f"{row['system']['name']} {s['mean']:.0%} (95% CI {s['low']:.0%}-{s['high']:.0%})"


def _p(test: dict) -> str:
    name = "McNemar" if test["test"] == "mcnemar_exact" else "paired bootstrap"
    return f"{name} p={test['p']:.2g}"


PRACTICAL = 0.05  # score difference small enough to call two systems equal in practice


def recommendation(result: dict) -> tuple[str, dict | None, dict | None, dict | None]:
    """(verdict, favoured row, best row, the deciding test): verdict is one of none, only, clear,
    cheaper (a cheaper system is as good) or lean (best by its score, not yet significant)."""
    rows = {r["system"]["name"]: r for r in result["systems"]}
    best = rows.get(result.get("best"))
    if best is None:
        return "none", None, None, None
    if not result["comparisons"]:
        return "only", best, best, None
    primary = result["primary"]
    tests = {c["b"]: c for c in result["comparisons"]}
    cheaper = [rows[name] for name, c in tests.items()
               if not c["significant"] and cost_rank(rows[name]["system"]) < cost_rank(best["system"])]
    if not cheaper:
        closest = min(result["comparisons"], key=lambda c: c["diff"])
        return ("lean" if not closest["significant"] else "clear"), best, best, closest
    close = [r for r in cheaper if best["scores"][primary]["mean"] - r["scores"][primary]["mean"] <= PRACTICAL]
    if close:
        chosen = min(close, key=lambda r: cost_rank(r["system"]))
        return "cheaper", chosen, best, tests[chosen["system"]["name"]]
    rival = max(cheaper, key=lambda r: r["scores"][primary]["mean"])
    return "lean", best, best, tests[rival["system"]["name"]]


# The guards against forgetting, as the recipe that did best in docs/forgetting.md (routing kept its
# task score and the probe on two seeds at 1.21x and 1.27x plain's training time; the quickstart on one of two).
GUARDS = ("data.replay: self (replay_share 0.15, replay_mode extend, replay_weight 4, replay_answer_tokens 16: "
          "docs/forgetting.md) or training.kl_to_base")


def forgetting_clause(forgetting: dict | None) -> str:
    """"; but it cost general ability: ..." when the run's probe fell significantly overall or in a kind
    of item, naming where and the guards to try; "" otherwise."""
    if not forgetting:
        return ""
    drops = significant_drops(forgetting)
    if not drops:
        return ""
    kinds = [k for k in drops if k != "all"]
    by_kind = forgetting.get("by_kind") or {}
    where = ", ".join(f"{k} {by_kind[k]['before']['mean']:.0%} to {by_kind[k]['after']['mean']:.0%} "
                      f"({_p(by_kind[k]['test'])})" for k in kinds)
    if "all" in drops:
        clause = (f"; but it cost general ability: the probe fell from {forgetting['before']['mean']:.0%} to "
                  f"{forgetting['after']['mean']:.0%} ({_p(forgetting['test'])})")
        clause += f", most in {where}" if where else ""
    else:
        clause = f"; but it cost general ability in {where} on the probe"
    guarded = forgetting.get("guard_label")
    if guarded:
        return clause + f", even with its guard ({guarded}): raise the replay share or weight, or the KL weight"
    return clause + f"; to keep it, train with {GUARDS}"


def _forgetting_clause(result: dict, chosen: dict) -> str:
    if not chosen["system"]["tuned"]:
        return ""
    return forgetting_clause(result.get("forgetting", {}).get(chosen["system"]["model"]))


def summary_sentence(result: dict) -> str:
    """Which approach the evidence favours, in one sentence with its figures."""
    primary, n = result["primary"], result["n_examples"]
    verdict, chosen, best, test = recommendation(result)
    if verdict == "none":
        return "No system could be scored, so the evidence favours nothing yet."
    rows = {r["system"]["name"]: r for r in result["systems"]}
    if best["scores"][primary]["mean"] == 0:
        return (f"No approach passed any of the {n} examples on {primary} ({len(rows)} systems tried), so the "
                "evidence favours none of them yet: check the graders against a few answers, or train longer.")
    if verdict == "only":
        sentence = f"Only one system was scored: {figure(best, primary)} {primary} on {n} examples"
    elif verdict == "cheaper":
        sentence = (f"The evidence favours {approach(chosen['system'])}: {figure(chosen, primary)} {primary} "
                    f"on {n} examples is within {PRACTICAL:.0%} of the best, {figure(best, primary)}, "
                    f"with no significant difference ({_p(test)}), and it costs less")
    elif verdict == "clear":
        sentence = (f"The evidence favours {approach(best['system'])}: {figure(best, primary)} {primary} on "
                    f"{n} examples, significantly above the next best, {figure(rows[test['b']], primary)} "
                    f"({_p(test)})")
    else:
        sentence = (f"The evidence leans to {approach(best['system'])}: {figure(best, primary)} {primary} on "
                    f"{n} examples against {figure(rows[test['b']], primary)}, but the difference is not "
                    f"significant ({_p(test)}); evaluate more examples to be sure")
    if not any(r["system"]["tuned"] for r in result["systems"]) and best["scores"][primary]["mean"] < 0.9:
        sentence += (f"; {1 - best['scores'][primary]['mean']:.0%} of answers still miss, so fine-tuning is "
                     "worth trying if that is too many")
    return sentence + _forgetting_clause(result, chosen) + "."


@dataclass
class AdviseOptions:
    """Everything `tunery advise` can be told; `evaluation` holds the options it shares with `tunery eval`."""

    data: str
    train: list[str]
    model: str
    run: str | None
    holdout: float
    limit: int
    evaluation: EvalOptions


def split_for_advice(data: str, train: list[str], holdout: float, limit: int, seed: int):
    """(evaluation items, example pool, pool files) for `tunery advise`.

    With training files, `data` is all evaluation (its first `limit` examples) and the files are the
    pool. With `data` alone, a seeded `holdout` share of it (at most `limit`) is evaluated and the rest
    is the pool that few-shot and retrieval draw from, so no example is both asked and shown.
    """
    import random

    from tunery.errors import TuneryError
    from tunery.eval.items import EvalItem, as_dicts, load_conversations, read_eval_items, split_example

    if train:
        return read_eval_items(data, limit=limit), [e for f in train for e in load_conversations(f)], train
    examples = load_conversations(data)
    if len(examples) < 4:
        raise TuneryError(f"{data} has {len(examples)} examples; advice needs at least 4 (some to show, some to ask)",
                          fix="add examples, or pass --train FILE with the examples to draw from")
    count = max(1, min(limit, round(holdout * len(examples)), len(examples) - 1))
    held = set(random.Random(seed).sample(range(len(examples)), count))
    items = []
    for i in sorted(held):
        prompt, reference = split_example(examples[i])
        items.append(EvalItem(examples[i].location, as_dicts(prompt), reference.content, examples[i]))
    return items, [e for i, e in enumerate(examples) if i not in held], [data]
