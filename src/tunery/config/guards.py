"""The guard against forgetting a config asks for, and its one label in words.

Guards: `data.replay` (None, "self" or a file of general examples mixed into training) with its share
`data.replay_share` and `data.replay_mode`, and `training.kl_to_base` (None or the weight of a KL penalty towards the base
model's predictions). Both work on a plain config dict, so that `tunery eval` can label a run folder
written by another tunery version (its config.yaml may hold keys this one does not know) and training
can label itself from its typed config: one label everywhere ("replay self 20%, KL to base 0.1";
"replay self 20% on top of the task's steps" with `replay_mode: extend`, and ", each conversation
weighed as one task example" after it with `replay_weight: example`, "as 4 task examples" with 4;
", answers cut at 32 tokens" with `replay_answer_tokens: 32`).
"""

from __future__ import annotations

from pathlib import Path


def _section(config: dict, name: str) -> dict:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def guard_of(config: dict) -> dict | None:
    """{"replay", "replay_share", "kl_to_base"} of a raw config dict; None when no guard is on."""
    data, training = _section(config, "data"), _section(config, "training")
    replay = data.get("replay")
    replay = str(replay) if replay not in (None, "", False) else None
    kl = _number(training.get("kl_to_base"))
    kl = kl if kl else None  # a weight of 0 is no guard
    if replay is None and kl is None:
        return None
    share = _number(data.get("replay_share")) if replay is not None else None
    guard = {"replay": replay, "replay_share": share, "kl_to_base": kl}
    if replay is not None and data.get("replay_mode") == "extend":
        guard["replay_mode"] = "extend"  # only when on: a share-mode run keeps the label it always had
    weight = data.get("replay_weight")
    if replay is not None and (weight == "example" or _number(weight)):
        guard["replay_weight"] = 1.0 if weight == "example" else _number(weight)  # a token-weighted run keeps its label
    cap = _number(data.get("replay_answer_tokens"))
    if replay is not None and cap:
        guard["replay_answer_tokens"] = int(cap)
    return guard


def _weight_words(examples: float | None) -> str:
    if examples is None:
        return ""
    return ", each conversation weighed as " + ("one task example" if examples == 1 else f"{examples:g} task examples")


def _cut_words(tokens: int | None) -> str:
    return f", answers cut at {tokens} tokens" if tokens else ""


def guard_label(guard: dict | None) -> str:
    """"replay self 20%, KL to base 0.1" (the parts that are on; a replay file by its name); "" without a guard."""
    if not guard:
        return ""
    parts = []
    if guard.get("replay"):
        share = guard.get("replay_share")
        source = "self" if guard["replay"] == "self" else Path(guard["replay"]).name
        parts.append(f"replay {source}" + (f" {share:.0%}" if share is not None else "")
                     + (" on top of the task's steps" if guard.get("replay_mode") == "extend" else "")
                     + _weight_words(guard.get("replay_weight"))
                     + _cut_words(guard.get("replay_answer_tokens")))
    if guard.get("kl_to_base") is not None:
        parts.append(f"KL to base {guard['kl_to_base']:g}")
    return ", ".join(parts)
