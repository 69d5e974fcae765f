"""Through the real command line: no command writes outside the folder the user named, deletes a folder
that tunery did not make, writes into the run it reads, or records the author's absolute paths."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adapter_helpers import make_adapter_run, write_base
from cli_helpers import run_tunery, write_chat_jsonl

MARKER = ".tunery"


@pytest.fixture()
def project(tmp_path, tiny_model_dir):
    proj = tmp_path / "proj"
    proj.mkdir()
    write_chat_jsonl(proj / "train.jsonl", 8)
    (proj / "run.yaml").write_text(
        f"base_model: {tiny_model_dir}\n"
        "data: {train: [train.jsonl], max_length: 48}\n"
        "lora: {rank: 2, alpha: 4}\n"
        "training: {max_steps: 2, batch_size: 2, threads: 1}\n"
    )
    return proj


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` with a hash of its bytes: what a command must leave unchanged."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(proc, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_a_run_name_cannot_leave_output_dir(project):
    victim = project.parent / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me")
    (project / "named.yaml").write_text((project / "run.yaml").read_text() + "output: {name: ../victim}\n")
    before = tree(project.parent)
    for name in ("../../escape", "../victim", str(victim), "."):
        proc = run_tunery("train", "run.yaml", f"output.name={name}", "--overwrite", cwd=project, check=False)
        refused(proc, "output.name", "one plain folder name", repr(name))
    refused(run_tunery("train", "named.yaml", "--overwrite", cwd=project, check=False), "'../victim'")
    assert tree(project.parent) == before
    assert sorted(p.name for p in project.parent.iterdir()) == ["proj", "victim"]


def test_train_refuses_a_folder_it_did_not_make_and_overwrites_only_its_own(project):
    mine = project / "runs" / "mine"
    (mine / "adapter").mkdir(parents=True)
    (mine / "config.yaml").write_text("my own notes\n")
    (mine / "adapter" / "weights.bin").write_bytes(b"precious")
    before = tree(mine)
    for flags in ([], ["--resume"], ["--overwrite"]):
        proc = run_tunery("train", "run.yaml", "output.name=mine", *flags, cwd=project, check=False)
        refused(proc, "runs/mine", "tunery did not write")
    assert tree(mine) == before

    empty = project / "runs" / "empty"
    empty.mkdir()
    run_tunery("train", "run.yaml", "output.name=empty", "--overwrite", cwd=project)
    assert json.loads((empty / MARKER).read_text())["made_by"] == "train"
    assert json.loads((empty / "run.json").read_text())["status"] == "finished"
    (empty / "eval.json").write_text("{}")  # a file a later command left in the run
    run_tunery("train", "run.yaml", "output.name=empty", "--overwrite", cwd=project)  # its own run: replaced
    assert not (empty / "eval.json").exists() and (empty / MARKER).is_file()


@pytest.fixture()
def adapter_run(tmp_path, smol_tokenizer):
    base = write_base(tmp_path / "base", smol_tokenizer)
    run, _ = make_adapter_run(tmp_path, smol_tokenizer, base, name="a")
    other, _ = make_adapter_run(tmp_path, smol_tokenizer, base, name="b", seed=8)
    return run, other


def test_merge_and_combine_out_may_replace_only_their_own_output(adapter_run, tmp_path):
    run, other = adapter_run
    outer = tmp_path / "outer"
    (outer / "inner").mkdir(parents=True)
    (outer / "keep.txt").write_text("keep")
    before = tree(outer)
    refused(run_tunery("merge", str(run), "--out", "..", "--overwrite", cwd=outer / "inner", check=False),
            "--out")
    refused(run_tunery("merge", str(run), "--out", ".", cwd=outer / "inner", check=False), "--out")
    refused(run_tunery("combine", str(run), str(other), "--out", "..", "--overwrite", cwd=outer / "inner",
                       check=False), "--out")
    assert tree(outer) == before and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))== []
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    for command in (["merge", str(run)], ["combine", str(run), str(other)], ["export", str(run), "--format", "hf"]):
        proc = run_tunery(*command, "--out", str(foreign), "--overwrite", cwd=tmp_path, check=False)
        refused(proc, "tunery did not write")
    assert tree(foreign) == {"notes.txt": hashlib.sha256(b"keep").hexdigest()}

    merged = tmp_path / "merged"
    run_tunery("merge", str(run), "--out", str(merged), cwd=tmp_path)
    assert json.loads((merged / MARKER).read_text())["made_by"] == "merge"
    refused(run_tunery("combine", str(run), str(other), "--out", str(merged), "--overwrite", cwd=tmp_path,
                       check=False), "tunery merge")  # another command's output is not combine's to replace
    run_tunery("merge", str(run), "--out", str(merged), "--dtype", "bfloat16", "--overwrite", cwd=tmp_path)
    assert json.loads((merged / "merge.json").read_text())["dtype"] == "bfloat16"


def test_export_and_merge_write_nothing_into_the_run(adapter_run, tmp_path):
    from tunery.export.exporter import export_run
    from tunery.export.merge import merge_run

    run, _ = adapter_run
    (run / "adapter" / "README.md").unlink(missing_ok=True)  # a run without a card: none is added
    before = tree(run)
    export_run(run, "hf", tmp_path / "hf", log=lambda _: None)
    merge_run(run, tmp_path / "merged", log=lambda _: None)
    assert tree(run) == before


def can_mount() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return shutil.which("unshare") is not None and probe.returncode == 0


@pytest.mark.skipif(not can_mount(), reason="needs mount namespaces (unshare -m) for a read-only bind mount")
def test_export_of_a_read_only_run_folder(adapter_run, tmp_path):
    run, _ = adapter_run
    command = (f"mount --bind {run} {run} && mount -o remount,bind,ro {run} && touch {run}/x 2>/dev/null; "
               f"test ! -e {run}/x && {sys.executable} -m tunery.cli.main export {run} --format gguf "
               f"--type f32 --out {tmp_path / 'gguf'}")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and (tmp_path / "gguf" / "verify.json").is_file()


def test_shared_files_record_no_absolute_paths_and_the_run_moves(tmp_path, tiny_model_dir):
    root = tmp_path / "author"
    shutil.copytree(tiny_model_dir, root / "models" / "tiny")
    proj = root / "proj"
    proj.mkdir()
    write_chat_jsonl(proj / "train.jsonl", 8)
    (proj / "run.yaml").write_text("base_model: ../models/tiny\ndata: {train: [train.jsonl], max_length: 48}\n"
                                   "lora: {rank: 2, alpha: 4}\ntraining: {max_steps: 2, batch_size: 2, threads: 1}\n")
    run_tunery("train", "run.yaml", "output.name=r", cwd=proj)
    run_tunery("merge", "runs/r", "--out", "merged", cwd=proj)
    run = proj / "runs" / "r"
    assert json.loads((run / "run.json").read_text())["base_model"] == "../../../models/tiny"
    merge_record = json.loads((proj / "merged" / "merge.json").read_text())
    assert merge_record["base_model"] == "../../models/tiny" and merge_record["source_run"] == "../runs/r"
    for shared in (run / "run.json", run / "adapter" / "README.md", proj / "merged" / "merge.json"):
        text = shared.read_text()
        assert str(tmp_path) not in text and (len(str(Path.home())) < 2 or str(Path.home()) not in text), shared
    moved = tmp_path / "elsewhere"
    root.rename(moved)
    out = run_tunery("generate", "runs/r", "--prompt", "Hi", "--max-new-tokens", "2", "--json",
                     cwd=moved / "proj")
    assert json.loads(out.stdout)
