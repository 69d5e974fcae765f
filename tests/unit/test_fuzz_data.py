"""A small run of the malformed-data fuzz (bench/fuzz_data.py): every bad record of every kind caught on
its line with its kind, in JSONL, JSON, CSV and Parquet, no crash, nothing flagged on a good record."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunery.cli.main import app

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "fuzz_data.py"


def load_fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_small_fuzz_catches_everything_on_its_line(tmp_path, smol_tokenizer):
    pytest.importorskip("pyarrow")
    fuzz = load_fuzz()
    corpus = fuzz.build_corpus(tmp_path, per_kind=2, goods=30, files_per_container=1, seed=7)
    kinds = Counter(corpus.fuzz_kind.values())
    assert len(kinds) == len(fuzz.KINDS) >= 15 and len(corpus.expected) >= 150
    result = CliRunner().invoke(
        app, ["data", "check", *corpus.files, "--json", "--max-length", str(fuzz.MAX_LENGTH)]
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    scored = fuzz.score(corpus, result.exit_code, result.stdout)
    assert scored["crashes"] == 0
    assert scored["missed_by_kind"] == {} and scored["false_positive_examples"] == []
    assert scored["caught"] == scored["bad_records"] == len(corpus.expected)
