"""The run folder: one self-describing directory that every later command takes as its input.

```
runs/<name>/
  config.yaml      the resolved config          run.json     base model, adapter kind, status, figures
  metrics.jsonl    one JSON line per log/eval    checkpoints/ step-N/ (resumable)
  adapter/ (LoRA, PEFT format) or model/ (full)  tokenizer/   with the chat template used in training
  summary.md, loss.png
```
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from tunery.config.load import read_yaml, validate
from tunery.config.schema import TrainConfig


@dataclass(frozen=True)
class RunFolder:
    root: Path
    writable: bool = True  # False on the non-zero ranks of a multi-process run

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def info(self) -> Path:
        return self.root / "run.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def summary(self) -> Path:
        return self.root / "summary.md"

    @property
    def plot(self) -> Path:
        return self.root / "loss.png"

    def read_config(self) -> TrainConfig | None:
        """The run's resolved config (config.yaml), typed and validated; None when there is none.

        The one reader of a run's config: every command that needs a setting of a run asks here."""
        if not self.config.is_file():
            return None
        return validate(read_yaml(self.config))

    def read_info(self) -> dict:
        return json.loads(self.info.read_text()) if self.info.is_file() else {}

    def update_info(self, **fields) -> dict:
        """Merge `fields` into run.json, written atomically."""
        info = self.read_info() | fields
        write_text_atomic(self.info, json.dumps(info, indent=2, sort_keys=True) + "\n")
        return info

    def append_metrics(self, record: dict) -> None:
        """Append one JSON line; non-finite numbers are written as null (JSON has no NaN)."""
        if not self.writable:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.metrics, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(clean) + "\n")

    def read_metrics(self) -> list[dict]:
        if not self.metrics.is_file():
            return []
        lines = self.metrics.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def truncate_metrics(self, last_step: int) -> None:
        """Drop lines after `last_step`: a resumed run rewrites them, so the file never holds both."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= last_step]
        write_text_atomic(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def is_run_folder(path: str | Path) -> bool:
    return (Path(path) / "run.json").is_file()
