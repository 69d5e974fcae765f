"""Write the continued pre-training example: reference text of Python's standard library.

Each document is one standard-library module as reference text: its docstring, then every public
class (with its public methods) and function with its signature and docstring, written out by this
script with `inspect` from the Python that runs it (the text is the Python Software Foundation's,
under the PSF License 2.0, which allows redistribution). The style is narrow and repetitive (the way
a product manual, an API reference or a firm's internal notes are), which is what continued
pre-training is for: a model that reads it should predict unseen text of the same kind better.

The held-out documents are whole modules that no training document describes (every fifth module of
the sorted list), so held-out perplexity measures the domain, not memorised text. Module docs longer
than `MAX_CHARS` are cut at a line boundary to keep the example small enough for a few CPU-minutes.

    python examples/cpt/make_data.py          # writes train.jsonl and heldout.jsonl here
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import sys
from pathlib import Path

MODULES = sorted("""
abc argparse ast base64 bisect calendar cmd codecs collections colorsys configparser contextlib copy csv
dataclasses datetime decimal difflib dis enum filecmp fileinput fnmatch fractions ftplib functools getopt
gettext glob graphlib gzip hashlib heapq hmac html http.client imaplib inspect ipaddress itertools json
keyword linecache locale logging lzma mailbox mimetypes netrc numbers operator optparse os.path pathlib
pickle pkgutil platform plistlib poplib pprint profile pstats queue quopri random re reprlib sched secrets
selectors shelve shlex shutil smtplib socketserver statistics string stringprep struct subprocess
symtable tabnanny tarfile tempfile textwrap threading timeit token tokenize tomllib trace traceback
types typing unittest urllib.parse uuid warnings wave weakref zipapp zipfile zipimport zoneinfo
""".split())
HELD_OUT_EVERY = 5  # every fifth module is held out
MADE_WITH = (3, 11)  # the Python whose standard library wrote the shipped files (docstrings change between versions)
MAX_CHARS = 12_000


def clean(text: str | None) -> str:
    return inspect.cleandoc(text) if text else ""


ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+>")  # a default's repr naming where it lies in memory


def signature(obj) -> str:
    try:
        text = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"
    # the same bytes on every run and machine: no memory address, no path of the Python that runs it
    return ADDRESS.sub(">", text).replace(repr(sys.executable), "sys.executable")


def public(module, obj_type) -> list[tuple[str, object]]:
    """Public members of `module` of a kind, defined in it (not imported), in name order."""
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    found = []
    for name in sorted(set(names)):
        obj = getattr(module, name, None)
        if obj_type(obj) and getattr(obj, "__module__", None) == module.__name__ and clean(obj.__doc__):
            found.append((name, obj))
    return found


def describe_class(name: str, cls) -> list[str]:
    lines = [f"class {name}{signature(cls)}", clean(cls.__doc__)]
    for method_name, method in sorted(vars(cls).items()):
        if method_name.startswith("_") or not callable(method) or not clean(getattr(method, "__doc__", None)):
            continue
        lines += [f"{name}.{method_name}{signature(method)}", clean(method.__doc__)]
    return lines


def document(module_name: str) -> str:
    """The reference text of one module, cut at a line boundary under `MAX_CHARS`."""
    module = importlib.import_module(module_name)
    lines = [f"Module {module_name}", clean(module.__doc__)]
    for name, cls in public(module, inspect.isclass):
        lines += describe_class(name, cls)
    for name, fn in public(module, inspect.isfunction):
        lines += [f"{name}{signature(fn)}", clean(fn.__doc__)]
    text = "\n\n".join(part for part in lines if part)
    if len(text) > MAX_CHARS:
        text = text[:text.rfind("\n", 0, MAX_CHARS)]
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    train, heldout = [], []
    for i, name in enumerate(MODULES):
        record = {"text": document(name), "module": name}
        (heldout if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else train).append(record)
    for name, records in (("train", train), ("heldout", heldout)):
        path = args.out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        chars = sum(len(r["text"]) for r in records)
        print(f"wrote {path}: {len(records)} documents, {chars} characters (Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
