"""A few tries of each fault of `make faults` (bench/faults.py), through the real command line: kill -9
inside a metrics append and a checkpoint write, SIGTERM, a full disk during train, merge and export,
NaN in a loss, a gradient and a weight."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_suite():
    spec = importlib.util.spec_from_file_location("fault_suite", REPO / "bench" / "faults.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


faults = load_suite()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return faults.setup(tmp_path_factory.mktemp("faults"))


@pytest.mark.parametrize("index", [4, 5])  # KILL_POINTS[4]: metrics-append (a torn line), [5]: swap (twice)
def test_kill_9_inside_a_write_then_resume_is_bitwise_equal(bench, index):
    result = faults.try_kill(bench, index, seed=0)
    assert result["point"] == faults.KILL_POINTS[index]
    assert result["killed"] is True and result["swap_killed"] is (index == 5), result
    assert result["resumed"] and result["equal"] and result["steps_once"], result
    assert result["problems"] == [], result


def test_sigterm_ends_with_a_complete_checkpoint_and_143(bench):
    result = faults.try_term(bench, 0, seed=0)
    assert result["missed"] is False, result
    # 143, or 0 when the signal landed after the run had finished (the process was only exiting)
    assert result["code"] == 143 or (result["code"] == 0 and result["status"] == "finished"), result
    assert result["complete"] and result["status"] in ("stopped", "finished") and result["problems"] == [], result


@pytest.mark.parametrize("index", [3, 4, 5])  # train, merge, export, through the ENOSPC hook
def test_a_full_disk_is_a_clear_error_and_leaves_no_half_output(bench, index, monkeypatch):
    monkeypatch.setattr(bench, "can_mount", False)
    result = faults.try_disk(bench, index, seed=0)
    assert result["mode"] == "hook" and result["hit"] and result["clear"], result
    assert result["problems"] == [], result
    if result["command"] == "train":
        assert result["status"] == "failed" and result["resumed"] and result["equal"], result
    if result["command"] == "merge":
        assert result["kept"], result


@pytest.mark.parametrize("index", [0, 2])  # loss, weight (a gradient takes the loss's path; make faults has all)
def test_nan_gets_the_documented_reaction_and_is_never_saved(bench, index):
    result = faults.try_nan(bench, index, seed=0)
    assert result["expected"], result
    assert result["nan_files"] == [] and result["problems"] == [], result
