"""Build a `TrainConfig` from a YAML file and `key=value` overrides, remembering where each value came from.

Errors name the key, say why the value is wrong, and suggest the closest known key for a typo.
"""

from __future__ import annotations

import typing

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunery.config.schema import TrainConfig
from tunery.errors import TuneryError

PATH_KEYS = ("data.train", "data.validation", "eval.data")
ONE_PATH_KEYS = {"data.replay": ("self",), "eval.json_schema": ()}  # a single path, unless it is one of these words


@dataclass
class ResolvedConfig:
    """The validated config plus, for each dotted key, where its value came from."""

    config: TrainConfig
    sources: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def source_of(self, key: str) -> str:
        return self.sources.get(key, "default")


def known_keys(model: type[BaseModel] = TrainConfig, prefix: str = "") -> list[str]:
    """Every dotted key the schema accepts, sections included (`lora`, `lora.rank`, ...)."""
    keys: list[str] = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        sub = info.annotation
        optional = [a for a in typing.get_args(sub) if a is not type(None)]
        if len(optional) == 1:  # an optional section (`data.retrieval`): its keys are known too
            sub = optional[0]
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys.extend(known_keys(sub, prefix=f"{dotted}."))
    return keys


# The names other fine-tuning tools give the same settings (transformers' TrainingArguments, PEFT's
# LoraConfig, TRL's SFTConfig): someone coming from them gets the key they mean, which the nearest
# spelling is not ("training.learning_rate" is closest to training.early_stopping_patience).
FAMILIAR_NAMES = {
    "learning_rate": "training.lr", "num_train_epochs": "training.epochs",
    "per_device_train_batch_size": "training.batch_size", "train_batch_size": "training.batch_size",
    "gradient_accumulation_steps": "training.grad_accum", "lr_scheduler_type": "training.scheduler",
    "logging_steps": "training.log_every", "eval_steps": "training.eval_every",
    "save_steps": "training.save_every", "save_total_limit": "training.keep_checkpoints",
    "max_seq_length": "data.max_length", "r": "lora.rank", "lora_r": "lora.rank", "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout", "use_dora": "lora.dora", "use_rslora": "lora.rslora",
    "output_dir": "output.dir", "model_name_or_path": "base_model",
}


def suggest(key: str) -> str | None:
    """The key meant by a mistyped or foreign one: a familiar name from another tool, else the closest
    known key, matching the full key or its last part."""
    if key.rsplit(".", 1)[-1] in FAMILIAR_NAMES:
        return FAMILIAR_NAMES[key.rsplit(".", 1)[-1]]
    keys = known_keys()
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if close:
        return close[0]
    leaf = key.rsplit(".", 1)[-1]
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in keys}
    close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
    return by_leaf[close[0]] if close else None


def parse_override(text: str) -> tuple[str, Any]:
    """`training.lr=1e-4` -> ("training.lr", 1e-4). Values are read as YAML scalars or lists."""
    if "=" not in text:
        raise TuneryError(
            f"override '{text}' has no '='",
            fix="write overrides as key=value, e.g. training.lr=1e-4",
        )
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads "1e-4" as a string; pydantic turns numeric strings into numbers where the
    # schema asks for one, so nothing more is needed here.
    return key.strip(), value


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, prefix=f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _check_keys(flat: dict[str, Any], origin: str) -> None:
    known = set(known_keys())
    problems = []
    for key in flat:
        if key not in known:
            hint = suggest(key)
            problems.append(
                f"unknown key '{key}' ({origin})" + (f": did you mean {hint}?" if hint else "")
            )
    if problems:
        raise TuneryError(
            "the config has keys tunery does not know:\n  " + "\n  ".join(problems),
            fix="see docs/config.md for every key",
        )


def _resolve_paths(value: Any, base: Path) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [str((base / str(p)).resolve()) if not Path(str(p)).is_absolute() else str(p) for p in items]


def read_yaml(path: Path) -> dict:
    """Load a YAML mapping with the safe loader, with a clear error for anything else."""
    if not path.is_file():
        raise TuneryError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise TuneryError(f"{path} is not valid YAML", why=str(exc)) from exc
    if not isinstance(data, dict):
        raise TuneryError(f"{path} must hold a mapping of keys, not a {type(data).__name__}")
    return data


def load_config(path: str | Path | None, overrides: list[str] = ()) -> ResolvedConfig:
    """Read the YAML file (if any), apply dotted overrides, validate, and record each value's source."""
    data: dict = {}
    sources: dict[str, str] = {}
    cfg_path = Path(path).resolve() if path is not None else None
    if cfg_path is not None:
        data = read_yaml(cfg_path)
        flat = _flatten(data)
        _check_keys(flat, origin=cfg_path.name)
        for key in PATH_KEYS:
            if key in flat and flat[key] is not None:
                _set_dotted(data, key, _resolve_paths(flat[key], cfg_path.parent))
        for key, words in ONE_PATH_KEYS.items():
            if isinstance(flat.get(key), str) and flat[key] not in words:
                _set_dotted(data, key, _resolve_paths(flat[key], cfg_path.parent)[0])
        sources.update({key: cfg_path.name for key in flat})
    for text in overrides:
        key, value = parse_override(text)
        _check_keys({key: value}, origin="command line")
        if key in PATH_KEYS and value is not None:
            value = _resolve_paths(value, Path.cwd())
        if key in ONE_PATH_KEYS and isinstance(value, str) and value not in ONE_PATH_KEYS[key]:
            value = _resolve_paths(value, Path.cwd())[0]
        _set_dotted(data, key, value)
        sources[key] = "command line"
        if isinstance(value, dict):  # a whole section ("data.retrieval={k: 3}"): the keys it names
            sources.update({f"{key}.{sub}": "command line" for sub in _flatten(value)})
    if cfg_path is not None and "output.name" not in sources:
        _set_dotted(data, "output.name", cfg_path.stem)
        sources["output.name"] = "config file name"
    return ResolvedConfig(config=validate(data), sources=sources, path=cfg_path)


def validate(data: dict) -> TrainConfig:
    """Validate raw data into a `TrainConfig`, turning pydantic's errors into one readable list."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(config)"
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{key}: {err['msg']}{shown}")
        raise TuneryError(
            "the config is not valid:\n  " + "\n  ".join(lines),
            fix="see docs/config.md for each key's type and allowed values",
        ) from None


def to_yaml(config: TrainConfig) -> str:
    """The resolved config as YAML (what the run folder stores and `--resume` reads back)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def describe(resolved: ResolvedConfig) -> list[tuple[str, Any, str]]:
    """(key, value, source) for every leaf key, for printing the resolved config."""
    flat = _flatten(resolved.config.model_dump(mode="json"))
    return [(key, value, resolved.source_of(key)) for key, value in flat.items()]
