"""Run names, run-folder markers and guards, torn metrics lines, portable paths, a damaged token cache."""

from __future__ import annotations

import json

import pytest

from tunery.config.load import load_config, validate
from tunery.errors import TuneryError
from tunery.runfolder import RunFolder


def config_with_name(name):
    return {"data": {"train": ["t.jsonl"]}, "output": {"name": name}}


@pytest.mark.parametrize("name", ["../../escape", "../victim", "a/b", ".", "..", "/abs/run", "", "a\\b"])
def test_a_run_name_is_one_plain_path_component(name):
    with pytest.raises(TuneryError) as caught:
        validate(config_with_name(name))
    text = str(caught.value)
    assert "output.name" in text and "one plain folder name" in text and repr(name) in text


def test_overrides_get_the_same_check(tmp_path):
    (tmp_path / "c.yaml").write_text("data: {train: [t.jsonl]}\n")
    with pytest.raises(TuneryError, match=r"output.name.*one plain folder name.*'\.\./x'"):
        load_config(tmp_path / "c.yaml", ["output.name=../x"])
    assert validate(config_with_name("my-run_2.v1")).output.name == "my-run_2.v1"


def test_a_torn_last_metrics_line_is_dropped_and_said(tmp_path):
    run = RunFolder(tmp_path)
    lines = [json.dumps({"kind": "train", "step": s, "loss": 1.0 / s}) for s in (1, 2, 3)]
    run.metrics.write_text("\n".join(lines) + "\n" + '{"kind": "train", "step": 4, "lo')
    said = []
    run.truncate_metrics(2, log=said.append)
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    assert run.metrics.read_text().endswith("\n")
    assert len(said) == 1 and "incomplete last line" in said[0] and "metrics.jsonl" in said[0]


def test_a_damaged_line_in_the_middle_is_a_clear_error(tmp_path):
    run = RunFolder(tmp_path)
    run.metrics.write_text('{"step": 1}\n{"step": 2, broken\n{"step": 3}\n')
    with pytest.raises(TuneryError, match="metrics.jsonl line 2"):
        run.read_metrics()


def test_appended_lines_after_a_torn_one_stay_readable(tmp_path):
    run = RunFolder(tmp_path)
    run.metrics.write_text('{"step": 1}\n{"step": 2, "lo')
    run.append_metrics({"step": 2, "loss": 0.5})
    assert run.read_metrics() == [{"step": 1}, {"step": 2, "loss": 0.5}]


def test_portable_paths_are_relative_to_the_folder_that_records_them(tmp_path):
    from tunery.runfolder import portable_path, resolve_portable

    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    run = tmp_path / "proj" / "runs" / "r"
    run.mkdir(parents=True)
    assert portable_path(str(model), run) == "../../../models/tiny"
    assert portable_path("smollm2-135m-instruct", run) == "smollm2-135m-instruct"
    assert portable_path("HuggingFaceTB/SmolLM2-135M", run) == "HuggingFaceTB/SmolLM2-135M"
    inside = run / "base"
    inside.mkdir()
    assert portable_path(str(inside), run) == "./base"
    assert resolve_portable("../../../models/tiny", run) == str(model)
    assert resolve_portable("HuggingFaceTB/SmolLM2-135M", run) == "HuggingFaceTB/SmolLM2-135M"


def test_loading_resolves_a_relative_base_model_against_the_run(tmp_path, monkeypatch):
    from tunery.inference import read_run_info

    (tmp_path / "tiny").mkdir()
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"base_model": "../../tiny", "adapter": "lora"}))
    monkeypatch.chdir(run / "..")  # from anywhere else
    assert read_run_info(run)["base_model"] == str(tmp_path / "tiny")


def test_a_damaged_token_cache_is_rebuilt_not_fatal(tmp_path):
    from tunery.data import token_cache
    from tunery.data.render import Datasets, Rendered

    rows = [Rendered([1, 2, 3], [False, True, True], False, False)]
    token_cache.save(tmp_path, "k", Datasets(rows, rows, ["w"], []))
    assert token_cache.load(tmp_path, "k").warnings == ["w"]
    weights = tmp_path / "k.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])  # cut short, as a crash on an old version could
    assert token_cache.load(tmp_path, "k") is None
    (tmp_path / "k.json").write_text("{not json")
    assert token_cache.load(tmp_path, "k") is None


def test_run_folder_marker_and_guard(tmp_path):
    from tunery.runfolder import check_run_target, create_run_folder, made_by

    root = tmp_path / "runs" / "a"
    check_run_target(root, resume=False, overwrite=False)  # absent: fine
    create_run_folder(root, "train")
    assert made_by(root) == "train"
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    for resume, overwrite in ((False, False), (True, False), (False, True)):
        with pytest.raises(TuneryError, match="tunery did not write"):
            check_run_target(foreign, resume=resume, overwrite=overwrite)
    assert (foreign / "notes.txt").read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    check_run_target(empty, resume=False, overwrite=True)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(TuneryError, match="not a folder"):
        check_run_target(a_file, resume=False, overwrite=True)
