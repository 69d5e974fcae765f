"""``python:TARGET:FUNCTION``: a grader written by the user as a Python function.

TARGET is a module importable from ``sys.path`` (``my_pkg.graders``) or a ``.py`` file (loaded by its
path, relative to the working directory). The function is called as ``FUNCTION(completion, record)``
where ``record`` is the data record as read from its file (a dict; empty when there is none) and must
return a number from 0 to 1. A number outside that range, NaN or a non-number is an error, not clipped:
a function that returns a percentage (0-100) would otherwise score every answer 1 without a word.

Loading problems (no such file, module or function) are errors when the spec is parsed. An exception
raised by the function, or a bad return value, is a `GraderFailed` for that one record: it scores 0
there and `uses.Failures` reports it (once per grader, with the record's location).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import numbers
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from tunery.errors import TuneryError
from tunery.graders.base import GraderFailed, score_each

EXAMPLE = "python:my_graders.py:score or python:my_pkg.graders:score"


def _load_file(path: Path) -> Any:
    """The module in `path`, loaded under a name of its own (several files may be called graders.py)."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"tunery_user_grader_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickle look themselves up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise TuneryError(f"grader 'python': running {path} failed", why=f"{type(exc).__name__}: {exc}") from exc
    return module


def _load_module(target: str) -> Any:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        raise TuneryError(f"grader 'python': no module named '{target}'", why=str(exc),
                          fix=f"give a file path (python:./{target.replace('.', '/')}.py:FUNCTION) or put "
                              "its folder on PYTHONPATH") from exc


def load_function(arg: str | None) -> Callable[[str, Mapping[str, Any]], Any]:
    """The function named by ``TARGET:FUNCTION``."""
    target, sep, name = (arg or "").rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise TuneryError(f"grader 'python' needs TARGET:FUNCTION (got {arg!r})", fix=f"e.g. {EXAMPLE}")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise TuneryError(f"grader 'python': file not found: {target}",
                              fix="paths are relative to the working directory; give an absolute path in configs")
        module = _load_file(path)
    else:
        module = _load_module(target)
    function = getattr(module, name, None)
    if not callable(function):
        raise TuneryError(f"grader 'python': {target} has no function '{name}'",
                          fix=f"define def {name}(completion, record) -> float in {target}")
    return function


def checked_score(value: Any, label: str) -> float:
    """`value` as a score, or GraderFailed when it is not a number from 0 to 1."""
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, numbers.Real) or math.isnan(value):  # numbers.Real: numpy scalars too
        raise GraderFailed(f"{label} returned {value!r}, not a number from 0 to 1")
    if not 0.0 <= value <= 1.0:
        raise GraderFailed(f"{label} returned {value!r}, outside 0..1 (scores are not clipped: scale them)")
    return float(value)


class PythonFunction:
    """The prepared argument of a ``python`` grader: the user's function, called safely."""

    def __init__(self, arg: str | None):
        self.function = load_function(arg)
        self.label = f"python:{arg}"

    def score(self, prediction: str, reference: str | None = None, record: Mapping[str, Any] | None = None) -> float:
        try:
            value = self.function(prediction, dict(record) if record else {})
        except Exception as exc:  # the user's code: any error is theirs, reported per record
            raise GraderFailed(f"{self.label} raised {type(exc).__name__}: {exc}") from exc
        return checked_score(value, self.label)

    def score_many(self, predictions, references, records):
        return score_each(self, predictions, references, records)
