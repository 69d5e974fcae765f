"""Atomic writes: temp, fsync, rename, fsync the parent; the previous output survives until the new one is in.

`disk` records, in order, every fsync (by path) and rename, so a test can check that each output was
on disk under its temporary name before it was renamed into place."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tunery import atomic


@pytest.fixture()
def disk(monkeypatch):
    events: list[tuple[str, str, str]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), ""))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        events.append(("rename", str(Path(src).resolve()), str(Path(dst).resolve())))

    def rename(src, dst, *args, **kwargs):
        real_rename(src, dst, *args, **kwargs)
        events.append(("rename", str(Path(src).resolve()), str(Path(dst).resolve())))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    return events


def written_atomically(events, target: Path) -> bool:
    """True when `target` got its content by a rename, every file under the renamed source was fsynced
    before that rename, and the parent folder was fsynced after it."""
    target = target.resolve()
    renames = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(target)]
    if not renames:
        return False
    at = renames[-1]
    source = events[at][1]
    synced = {e[1] for e in events[:at] if e[0] == "fsync"}
    files = [str(target / p.relative_to(target)).replace(str(target), source, 1)
             for p in ([target] if target.is_file() else target.rglob("*")) if p.is_file()]
    after = {e[1] for e in events[at:] if e[0] == "fsync"}
    return all(f in synced for f in files) and str(target.parent) in after


def test_files_and_folders_are_written_through_a_temporary_and_fsynced(tmp_path, disk):
    atomic.write_text_atomic(tmp_path / "a.json", "{}\n")
    with atomic.atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "x.bin").write_bytes(b"1" * 100)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "y.txt").write_text("y")
    assert written_atomically(disk, tmp_path / "a.json")
    assert written_atomically(disk, tmp_path / "folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "folder"]


def test_a_failed_write_removes_its_temporary_and_keeps_the_previous_output(tmp_path):
    atomic.write_text_atomic(tmp_path / "a.txt", "old")
    with atomic.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "w").write_text("old")
    for failing in ("file", "dir"):
        with pytest.raises(OSError):
            if failing == "file":
                with atomic.atomic_file(tmp_path / "a.txt") as tmp:
                    tmp.write_text("half")
                    raise OSError(28, "No space left on device")
            else:
                with atomic.atomic_dir(tmp_path / "out") as tmp:
                    (tmp / "w").write_text("half")
                    raise OSError(28, "No space left on device")
    assert (tmp_path / "a.txt").read_text() == "old" and (tmp_path / "out" / "w").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "out"]


def test_the_previous_folder_survives_a_failure_between_the_two_renames(tmp_path, monkeypatch):
    with atomic.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "w").write_text("old")
    real_replace = os.replace

    def failing(src, dst):
        if Path(src).name.startswith(atomic.TMP_PREFIX):
            raise OSError(5, "I/O error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        with atomic.atomic_dir(tmp_path / "out") as tmp:
            (tmp / "w").write_text("new")
    assert (tmp_path / "out" / "w").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_crash_between_the_two_renames_is_recovered(tmp_path):
    (tmp_path / ".old-out").mkdir()
    (tmp_path / ".old-out" / "w").write_text("old")
    (tmp_path / ".tmp-out").mkdir()  # the new one, not renamed in when the process died
    assert atomic.remove_leftovers(tmp_path) == [tmp_path / ".tmp-out"]
    assert (tmp_path / "out" / "w").read_text() == "old"


def test_final_save_and_summary_are_on_disk_before_the_run_says_finished(smol_tokenizer, tmp_path, disk):
    from loop_helpers import make_loop, synthetic_rows, tiny_config
    from tunery.runfolder import RunFolder
    from tunery.trainers import loop as training_loop
    from tunery.trainers.final_save import save_final
    from tunery.trainers.summary import write_summary

    loop = make_loop(smol_tokenizer, tiny_config(max_steps=2), synthetic_rows(6))
    run = RunFolder(tmp_path / "run")
    training_loop.train(loop, run, training_loop.LoopState(), lambda: False)
    save_final(loop.model, smol_tokenizer, run, "lora")
    info = run.update_info(status="finished", step=2)
    write_summary(run, info)
    for target in (run.adapter, run.tokenizer, run.summary, run.plot, run.info):
        assert written_atomically(disk, target), target
    finished = max(i for i, e in enumerate(disk) if e[0] == "rename" and e[2] == str(run.info.resolve()))
    adapter_in = max(i for i, e in enumerate(disk) if e[0] == "rename" and e[2] == str(run.adapter.resolve()))
    assert adapter_in < finished
    assert not [p for p in run.root.rglob("*") if p.name.startswith((".tmp-", ".old-"))]


def test_gguf_file_is_written_atomically(tmp_path, disk):
    from adapter_helpers import tiny_bpe_tokenizer
    from conftest import make_tiny_model
    from tunery.export.gguf_vocab import read_vocab
    from tunery.export.gguf_writer import write_gguf

    tok = tiny_bpe_tokenizer("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    model = make_tiny_model(len(tok))
    path = tmp_path / "m.gguf"
    write_gguf(model, read_vocab(tok, model.config.vocab_size, tok.chat_template), path, "f32")
    assert written_atomically(disk, path) and path.stat().st_size > 1000


def test_compare_html_is_written_atomically(smol_tokenizer, tmp_path, disk):
    from adapter_helpers import make_adapter_run, write_base
    from tunery.cli.evaluation import run_compare

    base = write_base(tmp_path / "base", smol_tokenizer)
    a, _ = make_adapter_run(tmp_path, smol_tokenizer, base, name="a")
    b, _ = make_adapter_run(tmp_path, smol_tokenizer, base, name="b", rank=8)
    run_compare([a, b], as_json=True, html=tmp_path / "cmp.html")
    assert written_atomically(disk, tmp_path / "cmp.html")


def test_a_failed_merge_keeps_the_previous_merge(smol_tokenizer, tmp_path, monkeypatch):
    from adapter_helpers import make_adapter_run, write_base
    from tunery.export.merge import merge_run

    base = write_base(tmp_path / "base", smol_tokenizer)
    run, _ = make_adapter_run(tmp_path, smol_tokenizer, base)
    out = tmp_path / "merged"
    merge_run(run, out, log=lambda _: None)
    before = (out / "model.safetensors").read_bytes()
    real_replace, real_rename = os.replace, os.rename

    def dies_on_the_new_one(real):
        def move(src, dst):
            if Path(dst).resolve() == out.resolve() and Path(src).name.startswith(".tmp-"):
                raise OSError(28, "No space left on device")
            return real(src, dst)
        return move

    monkeypatch.setattr(os, "replace", dies_on_the_new_one(real_replace))
    monkeypatch.setattr(os, "rename", dies_on_the_new_one(real_rename))
    with pytest.raises(Exception):
        merge_run(run, out, dtype="bfloat16", overwrite=True, log=lambda _: None)
    assert (out / "model.safetensors").read_bytes() == before
    assert json.loads((out / "merge.json").read_text())["dtype"] == "float32"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_checkpoints_use_the_same_helper(tmp_path, disk):
    from tunery.trainers import checkpoint as ckpt

    weights = {"w": torch.ones(3)}
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))])
    folder = ckpt.save_checkpoint(tmp_path / "checkpoints", 1, weights, opt, {"step": 1})
    assert written_atomically(disk, folder) and (folder / ckpt.COMPLETE).is_file()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [folder.name]


def test_finished_is_the_last_write_and_a_run_killed_in_its_summary_resumes_to_finished(tmp_path, tiny_model_dir,
                                                                                         monkeypatch):
    """run.json says "finished" only after summary.md, loss.png and the adapter card are written: a run
    killed among those files is not "finished" (which --resume would skip, leaving their temporaries),
    and --resume completes it."""
    from cli_helpers import write_chat_jsonl
    from tunery.config.load import validate
    from tunery.runfolder import RunFolder
    from tunery.trainers import run as train_run

    write_chat_jsonl(tmp_path / "train.jsonl", 8)
    cfg = validate({"base_model": str(tiny_model_dir), "data": {"train": [str(tmp_path / "train.jsonl")], "max_length": 64},
                    "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
                    "training": {"max_steps": 2, "batch_size": 2, "save_every": 1, "threads": 1}})
    real = train_run.write_summary

    def killed(run, info):
        raise KeyboardInterrupt  # the process dies while the summary is written

    monkeypatch.setattr(train_run, "write_summary", killed)
    with pytest.raises(KeyboardInterrupt):
        train_run.run_training(cfg, tmp_path / "run", log=lambda _: None)
    assert RunFolder(tmp_path / "run").read_info()["status"] == "running"
    monkeypatch.setattr(train_run, "write_summary", real)
    info = train_run.run_training(cfg, tmp_path / "run", resume=True, log=lambda _: None)
    assert info["status"] == "finished" and info["step"] == 2
    assert RunFolder(tmp_path / "run").summary.is_file()
