"""Datasets: reading files, converting every format to one `Example` type, rendering with loss masks,
linting and previewing.

The trainer needs only `build_datasets`; the CLI uses `check_files` and `preview_examples`.
"""

from tunery.data.dataset import build_datasets, load_examples
from tunery.data.lint import LintReport, check_files
from tunery.data.messages import Example, Message
from tunery.data.preview import preview_examples
from tunery.data.problems import Problem
from tunery.data.render import CHATML_TEMPLATE, Rendered, render_example

__all__ = [
    "CHATML_TEMPLATE",
    "Example",
    "LintReport",
    "Message",
    "Problem",
    "Rendered",
    "build_datasets",
    "check_files",
    "load_examples",
    "preview_examples",
    "render_example",
]
