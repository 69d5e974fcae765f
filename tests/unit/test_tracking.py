"""`tracking: [tensorboard, mlflow]`: the run's metrics, config and final figures read back with each
library's own reader (TensorBoard's EventAccumulator, MLflow's client on a local store); a missing extra
names the extra; a tracker that breaks mid-run never fails the run and is warned about once."""

from __future__ import annotations

import builtins
import sys

import pytest
import yaml

from cli_helpers import write_chat_jsonl
from tunery.config.load import validate
from tunery.errors import TuneryError
from tunery.runfolder import RunFolder
from tunery.trainers.run import run_training


def tiny_cfg(tmp_path, tiny_model_dir, **top):
    write_chat_jsonl(tmp_path / "train.jsonl", 8)
    write_chat_jsonl(tmp_path / "val.jsonl", 4, offset=50)
    return validate({
        "base_model": str(tiny_model_dir),
        "data": {"train": [str(tmp_path / "train.jsonl")], "validation": [str(tmp_path / "val.jsonl")],
                 "max_length": 64},
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": 4, "batch_size": 2, "lr": 1e-2, "warmup_ratio": 0.0, "eval_every": 2,
                     "threads": 1},
        "output": {"dir": str(tmp_path / "runs"), "name": "tracked"},
    } | top)


def test_tensorboard_and_mlflow_hold_the_metrics_config_and_final_figures(tmp_path, tiny_model_dir):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_cfg(tmp_path, tiny_model_dir, tracking=["tensorboard", "mlflow"])
    root = tmp_path / "runs" / "tracked"
    info = run_training(cfg, root, log=print)
    records = RunFolder(root).read_metrics()
    train = {r["step"]: r["loss"] for r in records if r["kind"] == "train"}
    evals = {r["step"]: r["val_loss"] for r in records if r["kind"] == "eval"}
    assert sorted(train) == [1, 2, 3, 4] and sorted(evals) == [2, 4]

    events = EventAccumulator(str(root / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tb_train = {e.step: e.value for e in events.Scalars("train/loss")}
    tb_eval = {e.step: e.value for e in events.Scalars("eval/val_loss")}
    assert tb_train == pytest.approx(train, rel=1e-6) and tb_eval == pytest.approx(evals, rel=1e-6)
    assert [e.value for e in events.Scalars("final/best_val_loss")] == pytest.approx([info["best_val_loss"]])
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "rank: 4" in config_text and "tracking:" in config_text

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("runs")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert history == pytest.approx(train, rel=1e-6)
    evals_ml = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval/val_loss")}
    assert evals_ml == pytest.approx(evals, rel=1e-6)
    assert run.data.metrics["final/best_val_loss"] == pytest.approx(info["best_val_loss"])
    assert run.data.params["lora.rank"] == "4" and run.data.params["training.lr"] == "0.01"
    artifact = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert yaml.safe_load(open(artifact))["lora"]["rank"] == 4


def test_a_missing_extra_is_an_error_that_names_it_before_loading(tmp_path, tiny_model_dir, monkeypatch):
    cfg = tiny_cfg(tmp_path, tiny_model_dir, tracking=["mlflow"])
    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError("No module named 'mlflow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "mlflow", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    monkeypatch.setattr("importlib.import_module", lambda name, *a: no_mlflow(name))
    with pytest.raises(TuneryError) as caught:
        run_training(cfg, tmp_path / "runs" / "tracked", log=print)
    assert "tunery[mlflow]" in caught.value.render()
    assert not (tmp_path / "runs" / "tracked" / "run.json").exists()  # said before any training


def test_a_tracker_that_breaks_mid_run_warns_once_and_the_run_finishes(tmp_path, tiny_model_dir, monkeypatch,
                                                                       capsys):
    from tunery.tracking import to_tensorboard

    calls = []

    def broken(self, record):
        calls.append(record["step"])
        if len(calls) >= 2:
            raise OSError("disk of the event files went away")

    monkeypatch.setattr(to_tensorboard.TensorBoardTracker, "metrics", broken)
    cfg = tiny_cfg(tmp_path, tiny_model_dir, tracking=["tensorboard"])
    info = run_training(cfg, tmp_path / "runs" / "tracked", log=print)
    assert info["status"] == "finished" and info["step"] == 4
    out = capsys.readouterr().out
    assert out.count("tensorboard tracking failed (OSError: disk of the event files went away)") == 1
    assert out.count("tracking writes failed in this run") == 1  # and one count at the end


def test_eval_figures_of_a_tracked_run_reach_both_trackers(tmp_path, tiny_model_dir):
    """What `tunery eval` sends (tracking.eval_report, called after eval.json is written)."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tunery.tracking.eval_report import track_eval

    cfg = tiny_cfg(tmp_path, tiny_model_dir, tracking=["tensorboard", "mlflow"])
    root = tmp_path / "runs" / "tracked"
    run_training(cfg, root, log=print)
    (tmp_path / "eval.json").write_text('{"n_examples": 3}')
    result = {"targets": [str(root)], "forgetting": {str(root): {"before": {"mean": 0.5}, "after": {"mean": 0.25}}},
              "systems": [{"system": {"name": "tracked"}, "scores": {"exact": {"mean": 0.75}}, "loss": {"loss": 1.5}},
                          {"system": {"name": "base zero-shot"}, "scores": {"exact": {"mean": 0.125}},
                           "loss": {"loss": 2.5}}]}
    said = []
    track_eval(result, tmp_path / "eval.json", said.append)
    assert said == [f"eval figures sent to tensorboard, mlflow of {root}"]

    events = EventAccumulator(str(root / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("eval_report/tracked/exact")] == [(4, 0.75)]
    assert [e.value for e in events.Scalars("eval_report/base_zero-shot/loss")] == [2.5]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("runs").experiment_id])
    assert run.data.metrics["eval_report/tracked/exact"] == 0.75
    assert run.data.metrics["eval_report/probe_after"] == 0.25
    assert "eval.json" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_a_stopped_and_resumed_run_continues_the_same_mlflow_run_and_tensorboard_curve(tmp_path, tiny_model_dir):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_cfg(tmp_path, tiny_model_dir, tracking=["tensorboard", "mlflow"])
    root = tmp_path / "runs" / "tracked"
    calls = []
    stopped = run_training(cfg, root, should_stop=lambda: len(calls.append(1) or calls) >= 2, log=print)
    assert (stopped["status"], stopped["step"]) == ("stopped", 2)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("runs").experiment_id
    assert [r.info.status for r in client.search_runs([experiment])] == ["KILLED"]

    run_training(cfg, root, resume=True, log=print)
    (run,) = client.search_runs([experiment])  # the same MLflow run, now finished
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == [1, 2, 3, 4]
    events = EventAccumulator(str(root / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
