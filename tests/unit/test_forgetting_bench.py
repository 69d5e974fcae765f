"""bench/forgetting.py keeps every row of earlier calls: a setting measured again replaces its row in
place, new settings are added after their task's rows, and the results file is written atomically."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "forgetting.py"


def _bench():
    spec = importlib.util.spec_from_file_location("forgetting_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(task, setting, score):
    return {"task": task, "setting": setting, "score": score}


def test_new_rows_are_added_after_their_task_and_old_rows_are_kept():
    bench = _bench()
    old = [row("quickstart", "base", 0), row("quickstart", "plain", 95), row("routing", "base", 0),
           row("routing", "plain", 100)]
    new = [row("quickstart", "base", 0), row("quickstart", "replay20x", 93), row("routing", "plain", 99)]
    rows = bench.merged(old, new)
    assert [(r["task"], r["setting"], r["score"]) for r in rows] == [
        ("quickstart", "base", 0), ("quickstart", "plain", 95), ("quickstart", "replay20x", 93),
        ("routing", "base", 0), ("routing", "plain", 99)]
    assert bench.merged([], new) == new  # a first call keeps its own order
    assert [r["setting"] for r in bench.merged(old, [row("arithmetic", "plain", 21)])][-1] == "plain"


def test_the_results_file_is_replaced_whole(tmp_path):
    bench = _bench()
    out = tmp_path / "forgetting.json"
    bench.write_json_atomic(out, {"rows": [row("routing", "plain", 100)]})
    assert json.loads(out.read_text()) == {"rows": [row("routing", "plain", 100)]}
    assert [p.name for p in tmp_path.iterdir()] == ["forgetting.json"]  # no temporary file left behind


def test_the_extend_settings_ask_for_replay_on_top_of_the_task_steps():
    settings = _bench().SETTINGS
    assert "data.replay_mode=extend" in settings["replay20x"] and "data.replay_share=0.2" in settings["replay20x"]
    assert "training.kl_to_base=1.0" in settings["replay20x-kl1"] and "lora.rank=4" in settings["rank4-replay20x"]


def test_rows_without_tokens_get_them_from_their_run_folders(tmp_path):
    bench = _bench()
    for name, tokens in [("routing-plain", 1000), ("routing-replay25", 1160)]:
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "run.json").write_text(json.dumps({"tokens": tokens}))
    rows = [row("routing", "base", 0), {"run": "runs/routing-replay25", **row("routing", "replay25", 88)},
            {"run": "runs/routing-gone", **row("routing", "gone", 1)}]
    bench.with_tokens(rows, tmp_path)
    assert rows[1]["tokens"] == 1160 and rows[1]["tokens_ratio"] == 1.16
    assert "tokens" not in rows[0] and "tokens_ratio" not in rows[2]  # the base, and a run folder no longer there


def test_a_scale_setting_copies_the_plain_run_with_its_lora_update_scaled(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    bench = _bench()
    plain = tmp_path / "runs" / "routing-plain"
    (plain / "adapter").mkdir(parents=True)
    (plain / "checkpoints" / "step-0000030").mkdir(parents=True)
    a, b = torch.randn(4, 8), torch.randn(8, 4)
    save_file({"x.lora_A.weight": a, "x.lora_B.weight": b}, str(plain / "adapter" / "adapter_model.safetensors"))
    (plain / "run.json").write_text(json.dumps({"total_steps": 30, "tokens": 1000}))
    (plain / "metrics.jsonl").write_text(json.dumps({"kind": "train", "elapsed_s": 59.0}) + "\n")
    from tunery.errors import TuneryError
    from tunery.runfolder import write_marker

    write_marker(plain, "train")
    foreign = tmp_path / "runs" / "routing-plain-scale0.5"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(TuneryError, match="tunery did not write"):
        bench.train("routing", "plain-scale0.5", tmp_path)
    assert (foreign / "notes.txt").read_text() == "mine"  # a folder tunery did not make is left as it was
    bench.train("routing", "plain-scale0.25", tmp_path)
    got = bench.train("routing", "plain-scale0.25", tmp_path)  # again: its own earlier copy is replaced
    scaled = load_file(str(tmp_path / "runs" / "routing-plain-scale0.25" / "adapter" / "adapter_model.safetensors"))
    assert torch.equal(scaled["x.lora_A.weight"], a) and torch.equal(scaled["x.lora_B.weight"], b * 0.25)
    assert not (tmp_path / "runs" / "routing-plain-scale0.25" / "checkpoints").exists()
    assert (got["train_s"], got["tokens"], got["run"]) == (59.0, 1000, "runs/routing-plain-scale0.25")
    torch.testing.assert_close(load_file(str(plain / "adapter" / "adapter_model.safetensors"))["x.lora_B.weight"], b)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [  # nothing half-written left behind
        "routing-plain", "routing-plain-scale0.25", "routing-plain-scale0.5"]


def test_the_plan_table_gives_each_setting_against_its_task_first_row():
    bench = _bench()
    rows = [{"task": "routing", "setting": "plain", "steps": 30, "data_tokens": 14314, "model_tokens": 7384},
            {"task": "routing", "setting": "replay20x-w4-a16", "steps": 38, "data_tokens": 18013,
             "model_tokens": 10576}]
    lines = bench.plan_table(rows).splitlines()
    assert lines[0].split() == ["task", "setting", "steps", "data", "tokens", "model", "tokens", "data", "x", "plain",
                                "model", "x", "plain"]
    assert lines[1].split() == ["routing", "plain", "30", "14,314", "7,384", "1.00", "1.00"]
    assert lines[2].split() == ["routing", "replay20x-w4-a16", "38", "18,013", "10,576", "1.26", "1.43"]
    assert "data.replay_answer_tokens=32" in bench.SETTINGS["replay15x-w4-a32"]
