"""Which guard against forgetting a run trained with, read from its config.yaml, and the label
`tunery eval` puts on its row and forgetting entry ("with guard: replay self 20%, KL 0.1").

Guards: `data.replay` (None, "self" or a file of general examples mixed into training) with its
share `data.replay_share`, and `training.kl_to_base` (None or the weight of a KL penalty towards the
base model's predictions). The config is read as plain YAML rather than through the typed schema: a
run folder written by another tunery version may hold keys this one does not know, and a label must
never stop an evaluation.
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
    return {"replay": replay, "replay_share": share, "kl_to_base": kl}


def guard_label(guard: dict | None) -> str:
    """"replay self 20%, KL 0.1" (the parts that are on); "" without a guard."""
    if not guard:
        return ""
    parts = []
    if guard.get("replay"):
        share = guard.get("replay_share")
        parts.append(f"replay {guard['replay']}" + (f" {share:.0%}" if share is not None else ""))
    if guard.get("kl_to_base") is not None:
        parts.append(f"KL {guard['kl_to_base']:g}")
    return ", ".join(parts)


def run_guard(run: str | Path) -> dict | None:
    """The guard a run folder trained with (see `guard_of`), from its config.yaml; None without one."""
    from tunery.config.load import read_yaml
    from tunery.runfolder import RunFolder

    path = RunFolder(Path(run)).config
    if not path.is_file():
        return None
    return guard_of(read_yaml(path))
