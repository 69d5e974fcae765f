"""What the trials of a sweep vary: grid axes from the command line, and the Optuna search space of the
config's `sweep.params`, both checked against the config schema before any trial starts."""

from __future__ import annotations

import itertools
import json
from typing import Any

import yaml

from tunery.config.load import known_keys, suggest
from tunery.config.schema import SweepParam
from tunery.errors import TuneryError


def check_key(key: str, where: str) -> None:
    """A swept key must be a leaf of the config schema; a typo gets the "did you mean" of the config."""
    if key not in known_keys():
        hint = suggest(key)
        raise TuneryError(f"unknown key '{key}' ({where})" + (f": did you mean {hint}?" if hint else ""),
                          fix="see docs/config.md for every key")
    if key.startswith(("output.", "sweep.")) or key in ("output", "sweep"):
        raise TuneryError(f"{where}: {key} cannot vary between trials",
                          why="the sweep names each trial's run folder and runs the search itself")


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """`training.lr=1e-4,2e-4` -> ("training.lr", [0.0001, 0.0002]). Each value is read as YAML (so
    `1e-4` is a number, `true` a boolean); a value in brackets is one list value: `lora.target_modules=[q_proj,v_proj]`."""
    if "=" not in text:
        raise TuneryError(f"grid axis '{text}' has no '='", fix="write axes as key=v1,v2, e.g. lora.rank=8,16")
    key, raw = (part.strip() for part in text.split("=", 1))
    check_key(key, "--grid")
    pieces = [raw] if raw.startswith("[") else [p.strip() for p in raw.split(",")]
    if not raw or any(p == "" for p in pieces):
        raise TuneryError(f"grid axis '{text}' has an empty value", fix="write axes as key=v1,v2")
    values = [_scalar(p) for p in pieces]
    if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
        raise TuneryError(f"grid axis '{text}' repeats a value")
    return key, values


def _scalar(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as text; a number is what the user means
        try:
            return float(value)
        except ValueError:
            return value
    return value


def grid_points(axes: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the last axis changing fastest."""
    keys = [key for key, _ in axes]
    if len(set(keys)) != len(keys):
        raise TuneryError("a key appears in two --grid axes", fix="give each key once, e.g. lora.rank=8,16")
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values for _, values in axes))]


def as_override(key: str, value: Any) -> str:
    """`key=value` as `tunery train` reads it back (YAML)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return f"{key}={text}"


def check_space(params: list[SweepParam], first: list[dict]) -> None:
    """The search space of `--search optuna`: known keys, each once, and `sweep.first` inside it."""
    if not params:
        raise TuneryError("--search optuna needs a search space: sweep.params in the config is empty",
                          fix="add e.g. sweep: {params: [{key: training.lr, low: 1.0e-5, high: 1.0e-3, log: true}]}")
    keys = [p.key for p in params]
    for key in keys:
        check_key(key, "sweep.params")
    if len(set(keys)) != len(keys):
        raise TuneryError("sweep.params names a key twice")
    for values in first:
        extra = set(values) - set(keys)
        if extra:
            raise TuneryError(f"sweep.first sets {', '.join(sorted(extra))}, which sweep.params does not search",
                              fix="add them to sweep.params, or put fixed settings in the config")
        for param in params:
            if param.key in values and not inside(param, values[param.key]):
                raise TuneryError(f"sweep.first: {param.key}={values[param.key]} is outside its range in sweep.params")


def inside(param: SweepParam, value: Any) -> bool:
    if param.choices is not None:
        return value in param.choices
    return isinstance(value, (int, float)) and param.low <= value <= param.high


def distributions(params: list[SweepParam]) -> dict:
    """Optuna distributions of the search space."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    found = {}
    for p in params:
        if p.choices is not None:
            found[p.key] = CategoricalDistribution(p.choices)
        elif p.integer:
            found[p.key] = IntDistribution(int(p.low), int(p.high), log=p.log)
        else:
            found[p.key] = FloatDistribution(p.low, p.high, log=p.log)
    return found
