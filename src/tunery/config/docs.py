"""Render the config reference (`docs/config.md`) from the schema, so docs and code cannot drift."""

from __future__ import annotations

import json
import types
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tunery.config.schema import TrainConfig

HEADER = """# Configuration reference

Generated from `src/tunery/config/schema.py` by `python scripts/gen_config_docs.py`; do not edit by hand
(a test fails when this file is stale).

A run is configured by a YAML file plus dotted overrides on the command line:

```bash
tunery train examples/quickstart/config.yaml training.lr=1e-4 lora.rank=8
```

Unknown keys are errors with a suggestion, values are type-checked, and the resolved config is printed
with where each value came from and saved as `config.yaml` in the run folder.
"""


def type_name(annotation) -> str:
    """A short readable name for a field's type."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a if isinstance(a, str) else json.dumps(a)}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        parts = [type_name(a) for a in typing.get_args(annotation) if a is not type(None)]
        optional = type(None) in typing.get_args(annotation)
        return " or ".join(parts) + (" (or empty)" if optional else "")
    if origin in (list, tuple):
        args = ", ".join(type_name(a) for a in typing.get_args(annotation))
        return f"{origin.__name__}[{args}]"
    return getattr(annotation, "__name__", str(annotation))


def default_text(info) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
        if isinstance(value, BaseModel):
            return ""
    else:
        value = info.default
    if value is PydanticUndefined:
        return "required"
    return "empty" if value is None else f"`{json.dumps(value)}`"


def section_rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            continue
        help_text = (info.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {type_name(info.annotation)} | {default_text(info)} | {help_text} |")
        inner = [a for a in typing.get_args(info.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if inner:  # an optional section (`data.retrieval`): its keys follow it
            rows += section_rows(inner[0], f"{prefix}{name}.")
    return rows


def render_config_docs() -> str:
    """The whole markdown reference."""
    out = [HEADER, "## Top level", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    out += section_rows(TrainConfig, "")
    for name, info in TrainConfig.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += ["", f"## `{name}`", "", (sub.__doc__ or "").strip(), "",
                    "| key | type | default | meaning |", "|---|---|---|---|"]
            out += section_rows(sub, f"{name}.")
    return "\n".join(out) + "\n"
