"""Optional dependencies live behind one helper so that a missing one says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from tunery.errors import TuneryError


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise an error naming the tunery extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pip_name = package or module
        raise TuneryError(
            f"this feature needs the optional package '{pip_name}'",
            why=str(exc),
            fix=f"pip install 'tunery[{extra}]'  (or: pip install {pip_name})",
        ) from exc
