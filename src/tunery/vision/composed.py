"""The offline vision-language model `smollm2-135m-vision` (built in a later step)."""

from __future__ import annotations

ALIAS = "smollm2-135m-vision"


def resolve(spec: str) -> str | None:
    """The folder of the composed model when `spec` is its alias (built on first use), else None."""
    return None
