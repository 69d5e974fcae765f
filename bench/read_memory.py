"""Peak memory of reading a large file of raw-text records, before and after the streaming readers.

    python bench/read_memory.py                      # ~200 MB JSONL and the same rows as Parquet
    python bench/read_memory.py --mb 50 --out /tmp/r.json

Writes a JSONL file of ``{"text": ...}`` records (about 2,000 characters of words each, seeded) and a
Parquet file of the same rows, then reads each in a fresh process with the code of ``--baseline`` (a
commit, extracted with `git archive`: the readers that load the whole file) and with this tree's code.
Each process imports everything first, then reads; the figure is the peak resident set (VmHWM) and the
resident set just before reading (VmRSS), so the difference is what reading cost. Two stages are
measured: `read_records` (the reader alone) and `load_file` (the reader plus conversion to examples,
what `tunery train` and `tunery data check` do). Results go to bench/results/read_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = "facc3f1"  # main before the streaming readers

CHILD = r"""
import json, sys, time
import pyarrow.parquet  # imported before measuring: both trees use it the same way
from tunery.data import readers
from tunery.data.dataset import load_file

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0  # kB -> MiB

stage, path = sys.argv[1], sys.argv[2]
before = status("VmRSS")
started = time.perf_counter()
if stage == "read_records":
    records, problems = readers.read_records(path)
    count = len(records)
else:
    examples, problems, _ = load_file(path)
    count = len(examples)
seconds = time.perf_counter() - started
print(json.dumps({"records": count, "problems": len(problems), "rss_before_mib": round(before, 1),
                  "peak_mib": round(status("VmHWM"), 1), "seconds": round(seconds, 2)}))
"""


def write_corpus(folder: Path, megabytes: int, seed: int = 0) -> tuple[Path, Path, int]:
    """A JSONL file of about ``megabytes`` MB of text records and a Parquet file of the same rows."""
    import pyarrow
    import pyarrow.parquet as parquet

    rng = random.Random(seed)
    vocabulary = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
                  for _ in range(5000)]
    jsonl, table = folder / "corpus.jsonl", folder / "corpus.parquet"
    rows, size, batch = 0, 0, []
    with open(jsonl, "w", encoding="utf-8") as out:
        writer = None
        while size < megabytes * 1_000_000:
            text = " ".join(rng.choices(vocabulary, k=330))
            line = json.dumps({"text": text}) + "\n"
            out.write(line)
            size += len(line)
            rows += 1
            batch.append({"text": text})
            if len(batch) == 5000:
                chunk = pyarrow.Table.from_pylist(batch)
                writer = writer or parquet.ParquetWriter(table, chunk.schema)
                writer.write_table(chunk)
                batch = []
        if batch:
            chunk = pyarrow.Table.from_pylist(batch)
            writer = writer or parquet.ParquetWriter(table, chunk.schema)
            writer.write_table(chunk)
        writer.close()
    return jsonl, table, rows


def baseline_tree(folder: Path, commit: str) -> Path:
    """The ``src`` folder of ``commit``, extracted into ``folder``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "src"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder / "src"


def measure(src: Path, stage: str, path: Path) -> dict:
    env = os.environ | {"PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", CHILD, stage, str(path)], env=env, check=True,
                          capture_output=True, text=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["read_cost_mib"] = round(figures["peak_mib"] - figures["rss_before_mib"], 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the JSONL file in MB")
    parser.add_argument("--baseline", default=BASELINE, help="commit whose readers are 'before'")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "read_memory.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunery-read-memory-") as work:
        work = Path(work)
        started = time.perf_counter()
        jsonl, table, rows = write_corpus(work, args.mb)
        print(f"wrote {rows} records: {jsonl.stat().st_size / 1e6:.0f} MB JSONL, "
              f"{table.stat().st_size / 1e6:.0f} MB Parquet ({time.perf_counter() - started:.0f} s)")
        trees = {"before": baseline_tree(work, args.baseline), "after": REPO / "src"}
        results = []
        for path in (jsonl, table):
            for stage in ("read_records", "load_file"):
                for label, src in trees.items():
                    figures = measure(src, stage, path)
                    row = {"file": path.suffix[1:], "stage": stage, "code": label, **figures}
                    results.append(row)
                    print(json.dumps(row))
        report = {
            "what": "peak resident memory of reading one file of raw-text records, each stage in a fresh process",
            "command": "python bench/read_memory.py " + " ".join(sys.argv[1:]),
            "baseline_commit": args.baseline,
            "jsonl_bytes": jsonl.stat().st_size, "parquet_bytes": table.stat().st_size, "records": rows,
            "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "rows": results,
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
