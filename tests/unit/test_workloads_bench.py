"""bench/workloads.py's held-out comparison over seeds: each row's losses by seed, their mean and range,
and tunery's mean against TRL's, as printed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench():
    sys.path.insert(0, str(BENCH))  # workloads imports its sibling scripts
    try:
        spec = importlib.util.spec_from_file_location("workloads_bench", BENCH / "workloads.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_held_out_losses_over_seeds_are_summarised_and_printed():
    bench = _bench()
    summary = bench.summarize({"trl-best": {0: 0.004, 42: 0.002}, "tunery": {42: 0.0045, 0: 0.0015}})
    assert summary["trl-best"]["mean"] == pytest.approx(0.003) and summary["tunery"]["mean"] == pytest.approx(0.003)
    assert (summary["tunery"]["min"], summary["tunery"]["max"]) == (0.0015, 0.0045)
    assert summary["mean_change"] == pytest.approx(0.0)
    assert bench.seeds_lines("short", summary) == [
        "short: trl-best held-out over 2 seeds: mean 0.0030, range 0.0020-0.0040 (0: 0.0040, 42: 0.0020)",
        "short: tunery held-out over 2 seeds: mean 0.0030, range 0.0015-0.0045 (42: 0.0045, 0: 0.0015)",
        "short: tunery's mean held-out loss against TRL's: +0.0%"]


def test_the_timed_run_seed_is_the_workload_config_s(tmp_path):
    bench = _bench()
    files = bench.prepare("short", tmp_path / "short")
    assert bench.seed_of(files) == 42  # the quickstart's config
    assert bench.seed_of(dict(files, overrides=[*files["overrides"], "training.seed=7"])) == 7


def test_a_seed_a_row_was_timed_at_is_not_trained_again(tmp_path, monkeypatch):
    bench = _bench()
    trained = []

    def run(row):
        def fake(*args):
            seed = args[3] if row == "trl-best" else int(args[0]["overrides"][-1].split("=")[1])
            trained.append((row, seed))
            return {"adapter": f"{row}-{seed}"}
        return fake

    monkeypatch.setattr(bench, "run_trl", run("trl-best"))
    monkeypatch.setattr(bench, "run_tunery", run("tunery"))
    monkeypatch.setattr(bench, "seed_of", lambda files: 42)
    monkeypatch.setattr(bench, "heldout_loss", lambda adapter, heldout, length: {"trl-best-1": 0.002,
                        "tunery-0": 0.004, "tunery-1": 0.003}[adapter])
    files = {"overrides": [], "heldout": tmp_path / "h.jsonl"}
    timed = [{"heldout_loss": 0.004}, {"heldout_loss": 0.005}]
    summary = bench.heldout_over_seeds("short", files, tmp_path, timed, [0, 1])
    assert trained == [("tunery", 0), ("trl-best", 1), ("tunery", 1)]  # TRL's timed run is its seed 0
    assert summary["trl-best"]["by_seed"] == {0: 0.004, 1: 0.002}
    assert summary["tunery"]["by_seed"] == {42: 0.005, 0: 0.004, 1: 0.003}
