"""Two-stage training: a finished run as the next run's `base_model` (CPT on domain text, then SFT)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunery.config.load import validate
from tunery.errors import TuneryError
from tunery.inference import load_run
from tunery.models import from_run
from tunery.models.load import load_model, resolve_model_source
from tunery.trainers.run import prepare, run_training

QUIET = dict(log=lambda _text: None)
IDS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46]])


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def config(base: str, method: str, train: str, seed: int = 3, adapter: str = "lora"):
    return validate({"base_model": base, "method": method, "adapter": adapter,
                     "data": {"train": [train], "max_length": 48},
                     "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
                     "training": {"batch_size": 2, "max_steps": 3, "warmup_ratio": 0.0, "lr": 5e-2,
                                  "preflight": False, "seed": seed}})


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def cpt_run(tmp_path, model_dir, seed=3, name="cpt", adapter="lora") -> Path:
    corpus = write_jsonl(tmp_path / "domain.jsonl", [{"text": f"The valve {i} opens at {10 * i} bar."} for i in range(8)])
    run_training(config(str(model_dir), "cpt", corpus, seed, adapter), tmp_path / "runs" / name, **QUIET)
    return tmp_path / "runs" / name


def test_a_lora_run_is_merged_once_into_a_cached_model_folder(tmp_path, tiny_model_dir, cache, monkeypatch):
    run = cpt_run(tmp_path, tiny_model_dir)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    folder = Path(resolve_model_source(str(run)))
    assert folder.parent == cache / "models" and folder.name.startswith("run-cpt-")
    assert (folder / "config.json").is_file() and (folder / "TUNERY_READY").is_file()
    tuned, _ = load_run(run)
    merged = load_model(str(run))
    torch.testing.assert_close(logits(merged), logits(tuned), rtol=1e-4, atol=1e-4)
    assert (logits(merged) - logits(load_model(str(tiny_model_dir)))).abs().max() > 1e-3  # CPT moved it
    monkeypatch.setattr(from_run, "_merge", lambda *a: pytest.fail("merged twice"))
    assert resolve_model_source(str(run)) == str(folder)  # the second use reads the cache
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # the run folder is only read


def test_sft_on_top_of_cpt_starts_from_the_cpt_weights(tmp_path, tiny_model_dir, cache):
    run = cpt_run(tmp_path, tiny_model_dir)
    chat = write_jsonl(tmp_path / "task.jsonl", [{"messages": [{"role": "user", "content": f"Valve {i}?"},
                                                               {"role": "assistant", "content": f"{10 * i} bar."}]}
                                                 for i in range(6)])
    stage2 = config(str(run), "sft", chat)
    s = prepare(stage2, **QUIET)
    tuned, _ = load_run(run)
    torch.testing.assert_close(logits(s.model.eval()), logits(tuned), rtol=1e-4, atol=1e-4)  # LoRA B = 0
    run_training(stage2, tmp_path / "runs" / "sft", **QUIET)
    info = json.loads((tmp_path / "runs" / "sft" / "run.json").read_text())
    assert info["base_model"] == "../cpt"  # recorded relative to the run: the pair of folders moves together
    final, _ = load_run(tmp_path / "runs" / "sft")
    assert (logits(final) - logits(tuned)).abs().max() > 1e-3


def test_retraining_the_first_stage_gives_a_new_merge(tmp_path, tiny_model_dir, cache):
    first = resolve_model_source(str(cpt_run(tmp_path, tiny_model_dir, seed=3, name="a")))
    second = resolve_model_source(str(cpt_run(tmp_path, tiny_model_dir, seed=4, name="a-again")))
    assert first != second
    import shutil

    shutil.rmtree(tmp_path / "runs" / "a")
    shutil.copytree(tmp_path / "runs" / "a-again", tmp_path / "runs" / "a")  # the same name, new weights
    assert resolve_model_source(str(tmp_path / "runs" / "a")).rsplit("-", 1)[1] == second.rsplit("-", 1)[1]


def test_an_unfinished_run_is_refused_with_the_way_on(tmp_path, tiny_model_dir, cache):
    run = tmp_path / "runs" / "half"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"base_model": str(tiny_model_dir), "adapter": "lora",
                                              "status": "interrupted"}))
    with pytest.raises(TuneryError, match=r"has no final weights yet \(adapter/ is missing; run status: interrupted\)") as info:
        resolve_model_source(str(run))
    assert "--resume" in info.value.fix
    (run / "run.json").write_text(json.dumps({"base_model": str(tiny_model_dir), "adapter": "qlora"}))
    with pytest.raises(TuneryError, match="QLoRA run") as info:
        resolve_model_source(str(run))
    assert "tunery merge" in info.value.fix
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())


def test_a_full_fine_tuning_run_serves_its_own_model_folder(tmp_path, tiny_model_dir, cache):
    run = cpt_run(tmp_path, tiny_model_dir, adapter="full")
    assert resolve_model_source(str(run)) == str(run / "model")
