"""Checks of what a fault left on disk, for bench/faults.py: every output that looks complete must be
complete, no temporaries may remain, no saved tensor may hold NaN.

Also a command line, for checks inside a mount namespace whose small disk (tmpfs) vanishes with it:
    python bench/fault_checks.py run|merge|export|equal PATH [REFERENCE_RUN]
prints one JSON object: {"problems": [...], ...}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TEMP_PREFIXES = (".tmp-", ".old-")
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def leftovers(folder: Path) -> list[str]:
    """Temporaries of interrupted writes anywhere under `folder` (and `folder` itself)."""
    if not folder.exists():
        return []
    found = [p for p in [folder, *folder.rglob("*")] if p.name.startswith(TEMP_PREFIXES)]
    return [f"leftover {p}" for p in found]


def tensors_problem(path: Path) -> str | None:
    """A safetensors file that does not load, or holds NaN/inf."""
    import torch
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 (any reader error means a damaged file)
        return f"{path} does not load: {exc}"
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    return f"{path} holds NaN/inf in {bad[0]}" if bad else None


def json_problem(path: Path, lines: bool = False) -> str | None:
    try:
        text = path.read_text()
        for line in (text.splitlines() if lines else [text]):
            if line.strip():
                json.loads(line)
    except (OSError, ValueError) as exc:
        return f"{path} is not complete JSON: {exc}"
    return None


def _present(*problems) -> list[str]:
    return [p for p in problems if p]


def check_run(run: Path) -> list[str]:
    """A run folder after a fault: what exists must be whole."""
    if not run.exists():
        return []
    problems = leftovers(run)
    for name in ("run.json", ".tunery"):
        if (run / name).exists():
            problems += _present(json_problem(run / name))
    if (run / "metrics.jsonl").exists():
        text = (run / "metrics.jsonl").read_text()
        if text and not text.endswith("\n"):
            problems.append("metrics.jsonl ends with an incomplete line")
        problems += _present(json_problem(run / "metrics.jsonl", lines=True))
    for folder in sorted((run / "checkpoints").glob("step-*")):
        if not (folder / "COMPLETE").is_file():
            problems.append(f"{folder} has no COMPLETE marker")
            continue
        problems += _present(*(tensors_problem(folder / n) for n in ("trainable.safetensors", "optimizer.safetensors")),
                             json_problem(folder / "state.json"))
    if (run / "adapter").exists():
        problems += _present(json_problem(run / "adapter" / "adapter_config.json"),
                             tensors_problem(run / "adapter" / "adapter_model.safetensors"))
    if (run / "tokenizer").exists():
        problems += _present(json_problem(run / "tokenizer" / "tokenizer.json"),
                             json_problem(run / "tokenizer" / "tokenizer_config.json"))
    if (run / "loss.png").exists():
        data = (run / "loss.png").read_bytes()
        if not (data.startswith(PNG_START) and data.endswith(PNG_END)):
            problems.append("loss.png is not a whole PNG")
    for cache in (run / "cache").glob("*.safetensors"):
        problems += _present(tensors_problem(cache))
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    if info.get("status") == "finished" and not (run / "adapter").exists():
        problems.append("run.json says finished but adapter/ is missing")
    return problems


def check_merge(out: Path) -> list[str]:
    problems = leftovers(out.parent)
    if out.exists():
        problems += _present(json_problem(out / ".tunery"), json_problem(out / "merge.json"),
                             json_problem(out / "config.json"), json_problem(out / "tokenizer.json"),
                             tensors_problem(out / "model.safetensors"))
    return problems


def check_export(out: Path) -> list[str]:
    from gguf import GGUFReader

    problems = leftovers(out)
    for path in sorted(out.glob("*.gguf")):
        try:
            if len(GGUFReader(path).tensors) == 0:
                problems.append(f"{path} holds no tensors")
        except Exception as exc:  # noqa: BLE001 (a truncated file fails in many ways)
            problems.append(f"{path} does not parse: {exc}")
    if (out / "verify.json").exists():
        problems += _present(json_problem(out / "verify.json"))
    return problems


def nan_files(folder: Path) -> list[str]:
    """Every saved tensor file under `folder` that holds NaN/inf (or does not load)."""
    return _present(*(tensors_problem(p) for p in sorted(folder.rglob("*.safetensors"))))


def same_adapter(run: Path, reference: Path) -> bool:
    """Final adapters bitwise equal (every tensor, same names)."""
    import torch
    from safetensors.torch import load_file

    path = "adapter/adapter_model.safetensors"
    if not (run / path).is_file():
        return False
    got, expected = load_file(str(run / path)), load_file(str(reference / path))
    return got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


def train_steps(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    return [json.loads(line)["step"] for line in lines if line.strip() and json.loads(line)["kind"] == "train"]


def describe(kind: str, path: Path, reference: Path | None = None) -> dict:
    """The verdict the command line prints."""
    if kind == "run":
        info = json.loads((path / "run.json").read_text()) if (path / "run.json").is_file() else {}
        return {"problems": check_run(path), "status": info.get("status")}
    if kind == "merge":
        record = json.loads((path / "merge.json").read_text()) if (path / "merge.json").is_file() else {}
        return {"problems": check_merge(path), "dtype": record.get("dtype")}
    if kind == "export":
        return {"problems": check_export(path), "files": sorted(p.name for p in path.glob("*"))}
    if kind == "equal":
        info = json.loads((path / "run.json").read_text()) if (path / "run.json").is_file() else {}
        return {"problems": check_run(path), "equal": same_adapter(path, reference), "status": info.get("status"),
                "steps": train_steps(path)}
    raise SystemExit(f"unknown check {kind}")


if __name__ == "__main__":
    ref = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    print(json.dumps(describe(sys.argv[1], Path(sys.argv[2]), ref)))
