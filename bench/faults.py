"""Fault injection on the real command line (`make faults`): kill -9, SIGTERM, a full disk and NaN, each
repeated at seeded random moments, with a table of what happened.

Every try runs `tunery` in a subprocess on the tiny random-weight model of tests/conftest.py (with a
small byte-level BPE vocabulary, so that GGUF verification takes seconds), saved as a local model
folder. The faults:

- kill -9 at a random moment of `tunery train`: a random time, or exactly inside a write window
  (TUNERY_FAULT=kill:POINT:N, see tunery.faults: a checkpoint half written, a file or folder written
  but not renamed, a metrics line half appended, an old output renamed aside); sometimes a second kill
  inside the resumed run's swap; then `--resume` must finish bitwise equal to an uninterrupted run;
- SIGTERM at a random moment after the command has parsed its config: exit code 143 and a complete
  checkpoint at the step run.json reports;
- a full disk during train, merge and export: a real small tmpfs (in a mount namespace, when
  `unshare -m` works) of a random size, or TUNERY_FAULT=enospc:POINT:N; a clear error, no temporary
  left, every output that looks complete is complete (an earlier merge/export still whole), and a
  training run resumes bitwise equal once there is room again;
- NaN in a loss, a gradient or a weight (TUNERY_FAULT=nan:POINT:N): the documented reaction, and no
  saved file holds NaN.

    python bench/faults.py                       # the full suite (about 15-25 minutes on 2 cores)
    python bench/faults.py --kill 5 --term 5 --disk 6 --nan 3 --jobs 2    # a short one
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests"), str(REPO / "bench")]

import fault_checks as checks  # noqa: E402

STEPS = 10
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONFIG = """base_model: {model}
data: {{train: [{data}/train.jsonl], validation: [{data}/val.jsonl], max_length: 64}}
lora: {{rank: 4, alpha: 8, dropout: 0.1}}
training: {{max_steps: {steps}, batch_size: 2, lr: 1.0e-3, eval_every: 4, save_every: 2, keep_checkpoints: 2,
  threads: 1}}
"""
KILL_POINTS = ("time", "checkpoint", "atomic-dir", "atomic-file", "metrics-append", "swap")
DISK_POINTS = ("atomic-file", "atomic-dir", "metrics-append", "checkpoint", "swap")


@dataclass
class Bench:
    """What every try shares: the model, data, config, the uninterrupted reference and its figures."""

    work: Path
    config: Path
    reference: Path  # an uninterrupted run folder
    duration: float  # seconds of an uninterrupted `tunery train`
    after_config: float  # of which after the resolved config is printed
    visits: dict[str, dict[str, int]]  # per command, how often each fault point is reached
    sizes_kb: dict[str, int] = field(default_factory=dict)
    can_mount: bool = False

    def env(self, fault: str | None = None) -> dict:
        env = os.environ | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
        env.pop("TUNERY_FAULT", None)
        return env | ({"TUNERY_FAULT": fault} if fault else {})


def tunery_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunery.cli.main", *args]


def run(bench: Bench, *args: str, fault: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(tunery_cmd(*args), env=bench.env(fault), capture_output=True, text=True, timeout=timeout)


def counts_of(stderr: str) -> dict[str, int]:
    from tunery.faults import COUNTS_LINE

    line = next((l for l in stderr.splitlines() if l.startswith(COUNTS_LINE)), None)
    return json.loads(line[len(COUNTS_LINE):]) if line else {}


def can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


def du_kb(path: Path) -> int:
    return int(subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True).stdout.split()[0])


def setup(work: Path, steps: int = STEPS, exports: bool = True) -> Bench:
    """Model folder, data, config, the reference run (timed, fault points counted), and for the disk
    tries a reference merge and export whose sizes set the tmpfs sizes."""
    from adapter_helpers import tiny_bpe_tokenizer
    from cli_helpers import write_chat_jsonl
    from conftest import make_tiny_model

    work.mkdir(parents=True, exist_ok=True)
    model, data = work / "model", work / "data"
    tok = tiny_bpe_tokenizer(CHATML)
    make_tiny_model(len(tok)).save_pretrained(model)
    tok.save_pretrained(model)
    data.mkdir(exist_ok=True)
    write_chat_jsonl(data / "train.jsonl", 24)
    write_chat_jsonl(data / "val.jsonl", 6, offset=100)
    config = work / "run.yaml"
    config.write_text(CONFIG.format(model=model, data=data, steps=steps))
    bench = Bench(work, config, work / "runs" / "reference", 0.0, 0.0, {}, can_mount=can_mount())
    started = time.monotonic()
    proc = subprocess.Popen(tunery_cmd("train", str(config), f"output.dir={work / 'runs'}", "output.name=reference"),
                            env=bench.env("count:all:0"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    config_at = wait_for_line(proc, "config (value")
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"the reference run failed:\n{out}\n{err}")
    bench.duration = time.monotonic() - started
    bench.after_config = time.monotonic() - (config_at or started)
    bench.visits["train"] = counts_of(err)
    bench.sizes_kb["train"] = du_kb(bench.reference)
    if exports:
        for kind, args in (("merge", ["merge", str(bench.reference), "--out", str(work / "ref-merge")]),
                           ("merge-new", ["merge", str(bench.reference), "--out", str(work / "ref-merge-bf16"),
                                          "--dtype", "bfloat16", "--overwrite"]),
                           ("export", ["export", str(bench.reference), "--format", "gguf", "--type", "f32",
                                       "--out", str(work / "ref-export")])):
            if kind == "merge-new":  # over an earlier merge, as the tries do: the swap is counted too
                shutil.copytree(work / "ref-merge", work / "ref-merge-bf16", symlinks=True)
            done = run(bench, *args, fault="count:all:0")
            if done.returncode != 0:
                raise SystemExit(f"reference {kind} failed:\n{done.stderr}")
            bench.visits[kind] = counts_of(done.stderr)
        bench.sizes_kb |= {"merge": du_kb(work / "ref-merge"), "merge-new": du_kb(work / "ref-merge-bf16"),
                           "export": du_kb(work / "ref-export")}
    return bench


def wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 120) -> float | None:
    """Read stdout lines until one contains `text` (returns when, monotonic), keep draining after."""
    found = threading.Event()
    moment: list[float] = []

    def reader():
        for line in proc.stdout:
            if not found.is_set() and text in line:
                moment.append(time.monotonic())
                found.set()
        found.set()

    threading.Thread(target=reader, daemon=True).start()
    found.wait(timeout)
    return moment[0] if moment else None


# --- kill -9 ---------------------------------------------------------------------------------

def try_kill(bench: Bench, index: int, seed: int) -> dict:
    """Kill `tunery train` (by time or inside a write window), then resume to the end and compare with
    the uninterrupted run. `swap`: killed once with the final adapter in and the tokenizer not, and
    again while the resumed run has the old adapter renamed aside and the new one not yet in."""
    rng = random.Random(f"{seed}-kill-{index}")
    runs = bench.work / "kill" / str(index)
    args = ["train", str(bench.config), f"output.dir={runs}", "output.name=r", "--resume"]
    point = KILL_POINTS[index % len(KILL_POINTS)]
    visits = bench.visits["train"]
    fault = (None if point == "time" else f"kill:atomic-dir:{visits['atomic-dir']}" if point == "swap"
             else f"kill:{point}:{rng.randint(1, max(1, visits.get(point, 1)))}")
    proc = subprocess.Popen(tunery_cmd(*args), env=bench.env(fault), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if point == "time":
        try:
            proc.wait(timeout=rng.uniform(0.0, bench.duration))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=600)
    kills = [proc.returncode == -signal.SIGKILL]
    if point == "swap":
        again = run(bench, *args, fault="kill:swap:1")
        kills.append(again.returncode == -signal.SIGKILL)
    final = run(bench, *args)
    run_dir = runs / "r"
    result = {"point": point, "fault": fault, "killed": kills[0], "swap_killed": len(kills) > 1 and kills[1],
              "resumed": final.returncode == 0, "equal": checks.same_adapter(run_dir, bench.reference),
              "steps_once": checks.train_steps(run_dir) == list(range(1, STEPS + 1)),
              "problems": checks.check_run(run_dir), "error": final.stderr[-600:] if final.returncode else ""}
    shutil.rmtree(runs, ignore_errors=True)
    return result


# --- SIGTERM ---------------------------------------------------------------------------------

def try_term(bench: Bench, index: int, seed: int) -> dict:
    """SIGTERM at a random moment after the config is parsed: exit 143 and a complete checkpoint (or, when
    it lands after the run has finished, while the process exits, the run's own exit code 0)."""
    from tunery.trainers.checkpoint import latest_checkpoint, load_checkpoint

    rng = random.Random(f"{seed}-term-{index}")
    runs = bench.work / "term" / str(index)
    proc = subprocess.Popen(tunery_cmd("train", str(bench.config), f"output.dir={runs}", "output.name=r"),
                            env=bench.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    wait_for_line(proc, "config (value")
    time.sleep(rng.uniform(0.0, 0.95 * bench.after_config))
    missed = proc.poll() is not None
    if not missed:
        proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=600)
    run_dir = runs / "r"
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    latest = latest_checkpoint(run_dir / "checkpoints")
    complete = False
    if latest is not None and info.get("step") is not None:
        try:
            load_checkpoint(latest)
            complete = int(latest.name.split("-")[1]) == info["step"]
        except Exception:  # noqa: BLE001 (a checkpoint that does not load is not complete)
            complete = False
    result = {"missed": missed, "code": code, "status": info.get("status"), "step": info.get("step"),
              "checkpoint": latest.name if latest else None, "complete": complete,
              "problems": checks.check_run(run_dir)}
    shutil.rmtree(runs, ignore_errors=True)
    return result


# --- full disk -------------------------------------------------------------------------------

def _disk_plan(bench: Bench, command: str, rng: random.Random, tmpfs: bool) -> dict:
    """How this try fills the disk: a tmpfs size in KiB, or a fault point and visit."""
    if tmpfs:
        previous = {"train": 0, "merge": bench.sizes_kb["merge"], "export": bench.sizes_kb["export"]}[command]
        new = {"train": bench.sizes_kb["train"], "merge": bench.sizes_kb["merge-new"],
               "export": bench.sizes_kb["export"]}[command]
        return {"mode": "tmpfs", "size_kb": previous + rng.randint(8, max(9, int(0.8 * new)))}
    visits = bench.visits["train" if command == "train" else "merge-new" if command == "merge" else "export"]
    points = [p for p in DISK_POINTS if visits.get(p)]
    point = rng.choice(points)
    return {"mode": "hook", "fault": f"enospc:{point}:{rng.randint(1, visits[point])}"}


def _disk_script(bench: Bench, command: str, disk: Path, logs: Path) -> str:
    """Shell lines run on the (small) disk: prepare, the command, the checks, and for train a resume
    once there is room again. Outputs go to `logs`, outside the disk."""
    py, check = sys.executable, str(REPO / "bench" / "fault_checks.py")
    if command == "train":
        args = f"train {bench.config} output.dir={disk}/runs output.name=r"
        return "\n".join([
            f"{py} -m tunery.cli.main {args} >{logs}/out1 2>{logs}/err1; echo $? >{logs}/rc1",
            f"{py} {check} run {disk}/runs/r >{logs}/check1",
            "{grow}",
            f"{py} -m tunery.cli.main {args} --resume >{logs}/out2 2>{logs}/err2; echo $? >{logs}/rc2",
            f"{py} {check} equal {disk}/runs/r {bench.reference} >{logs}/check2"])
    if command == "merge":
        return "\n".join([
            f"cp -a {bench.work / 'ref-merge'} {disk}/merged",
            f"{py} -m tunery.cli.main merge {bench.reference} --out {disk}/merged --dtype bfloat16 --overwrite "
            f">{logs}/out1 2>{logs}/err1; echo $? >{logs}/rc1",
            f"{py} {check} merge {disk}/merged >{logs}/check1"])
    return "\n".join([
        f"cp -a {bench.work / 'ref-export'} {disk}/export",
        f"{py} -m tunery.cli.main export {bench.reference} --format gguf --type f32 --out {disk}/export "
        f">{logs}/out1 2>{logs}/err1; echo $? >{logs}/rc1",
        f"{py} {check} export {disk}/export >{logs}/check1"])


def try_disk(bench: Bench, index: int, seed: int) -> dict:
    """Fill the disk during train, merge or export (see the module docstring)."""
    rng = random.Random(f"{seed}-disk-{index}")
    command = ("train", "merge", "export")[index % 3]
    plan = _disk_plan(bench, command, rng, tmpfs=bench.can_mount and (index // 3) % 2 == 0)
    base = bench.work / "disk" / str(index)
    disk, logs = base / "disk", base / "logs"
    disk.mkdir(parents=True)
    logs.mkdir()
    script = _disk_script(bench, command, disk, logs)
    if plan["mode"] == "tmpfs":
        script = (f"mount -t tmpfs -o size={plan['size_kb']}k tmpfs {disk} || exit 97\n"
                  + script.replace("{grow}", f"mount -o remount,size=1g {disk}"))
        proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env=bench.env(), capture_output=True, text=True)
    else:
        lines = script.replace("{grow}", "").split("\n")
        first = " ".join(f"{k}={v}" for k, v in {"TUNERY_FAULT": plan["fault"]}.items())
        lines = [(f"{first} {line}" if "tunery.cli.main" in line and "--resume" not in line else line) for line in lines]
        proc = subprocess.run(["sh", "-c", "\n".join(lines)], env=bench.env(), capture_output=True, text=True)
    result = _disk_verdict(command, plan, logs, proc)
    shutil.rmtree(base, ignore_errors=True)
    return result


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _disk_verdict(command: str, plan: dict, logs: Path, proc) -> dict:
    rc = int(_read(logs / "rc1") or -1)
    err = _read(logs / "err1")
    first = json.loads(_read(logs / "check1") or '{"problems": ["no check ran"]}')
    result = {"command": command, **plan, "hit": rc != 0, "rc": rc, "clear": rc == 2 and "the disk is full" in err
              and "Traceback" not in err, "problems": first["problems"], "error": err[-400:] if rc not in (0, 2) else ""}
    if proc.returncode == 97:
        result["problems"] = ["the tmpfs could not be mounted"]
    if command == "train":
        second = json.loads(_read(logs / "check2") or '{"problems": ["no check ran"]}')
        result |= {"marked_failed": first.get("status") in ("failed", None), "status": first.get("status"),
                   "resumed": _read(logs / "rc2").strip() == "0", "equal": bool(second.get("equal")),
                   "problems": first["problems"] + second["problems"]}
    elif command == "merge":  # the earlier (float32) merge stays whole until the new (bfloat16) one is in
        result["kept"] = first.get("dtype") == ("float32" if rc != 0 else "bfloat16")
    return result


# --- NaN -------------------------------------------------------------------------------------

def try_nan(bench: Bench, index: int, seed: int) -> dict:
    """Poison a loss, a gradient or a weight at a random step; the run must react as documented."""
    rng = random.Random(f"{seed}-nan-{index}")
    point = ("loss", "grad", "weight")[index % 3]
    step = rng.randint(1, STEPS)
    runs = bench.work / "nan" / str(index)
    done = run(bench, "train", str(bench.config), f"output.dir={runs}", "output.name=r", fault=f"nan:{point}:{step}")
    run_dir = runs / "r"
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    text = done.stdout + done.stderr
    if point in ("loss", "grad"):  # one bad step: skipped, the run goes on and finishes
        expected = done.returncode == 0 and "update skipped" in text and info.get("status") == "finished"
    else:  # a NaN weight makes every later step NaN: stopped, or refused at the next save
        expected = done.returncode == 2 and ("steps in a row" in text or "refusing to save" in text) \
            and info.get("status") == "failed"
    result = {"point": point, "step": step, "code": done.returncode, "status": info.get("status"),
              "expected": expected, "nan_files": checks.nan_files(run_dir), "problems": checks.check_run(run_dir)}
    shutil.rmtree(runs, ignore_errors=True)
    return result


# --- the table -------------------------------------------------------------------------------

def count(results: list[dict], key: str, value=True) -> int:
    return sum(1 for r in results if r.get(key) == value)


def table(found: dict[str, list[dict]]) -> list[tuple[str, int, str]]:
    """(fault, tries, what happened) rows."""
    rows = []
    kill = found.get("kill", [])
    if kill:
        by_point = ", ".join(f"{p} {sum(1 for r in kill if r['point'] == p and r['killed'])}/"
                             f"{sum(1 for r in kill if r['point'] == p)}" for p in KILL_POINTS)
        rows.append(("kill -9 during `train`, then `--resume`", len(kill),
                     f"killed {count(kill, 'killed')} ({by_point}); killed again inside the resumed run's swap "
                     f"{count(kill, 'swap_killed')}; resumed {count(kill, 'resumed')}; bitwise equal to the "
                     f"uninterrupted run {count(kill, 'equal')}; could not resume {len(kill) - count(kill, 'resumed')}; "
                     f"a step logged twice {len(kill) - count(kill, 'steps_once')}; damaged outputs "
                     f"{sum(1 for r in kill if r['problems'])}"))
    term = found.get("term", [])
    if term:
        hit = [r for r in term if not r["missed"]]
        rows.append(("SIGTERM during `train`", len(term),
                     f"signal delivered {len(hit)}; exit code 143 {count(hit, 'code', 143)} (0 when it landed after the run "
                     f"had finished: {sum(1 for r in hit if r['code'] == 0 and r['status'] == 'finished')}; "
                     f"other {sum(1 for r in hit if r['code'] not in (0, 143))}); complete checkpoint "
                     f"at the reported step {count(hit, 'complete')}; status stopped {count(hit, 'status', 'stopped')}"
                     f" / finished {count(hit, 'status', 'finished')}; damaged outputs {sum(1 for r in term if r['problems'])}"))
    disk = found.get("disk", [])
    for command in ("train", "merge", "export"):
        part = [r for r in disk if r["command"] == command]
        if not part:
            continue
        hit = [r for r in part if r["hit"]]
        modes = f"tmpfs {sum(1 for r in part if r['mode'] == 'tmpfs')}, hook {sum(1 for r in part if r['mode'] == 'hook')}"
        text = (f"disk filled ({modes}); failed {len(hit)}; clear error {count(hit, 'clear')}; "
                f"half outputs or temporaries left {sum(1 for r in part if r['problems'])}")
        if command == "train":
            text += (f"; run.json failed {count(hit, 'status', 'failed')} (no run.json yet "
                     f"{count(hit, 'status', None)}); resumed with room "
                     f"{count(part, 'resumed')}, bitwise equal {count(part, 'equal')}")
        if command == "merge":
            text += f"; earlier merge whole (or the new one) {count(part, 'kept')}"
        rows.append((f"full disk during `{command}`", len(part), text))
    nan = found.get("nan", [])
    if nan:
        rows.append(("NaN in a loss / gradient / weight", len(nan),
                     f"documented reaction {count(nan, 'expected')} (loss, gradient: step skipped, run finished; "
                     f"weight: stopped or save refused); saved files with NaN {sum(len(r['nan_files']) for r in nan)}"))
    return rows


def print_table(rows, seconds: float) -> None:
    print("\n| fault | tries | result |\n|---|---|---|")
    for fault, tries, text in rows:
        print(f"| {fault} | {tries} | {text} |")
    print(f"\n({seconds / 60:.1f} min)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kill", type=int, default=50)
    parser.add_argument("--term", type=int, default=50)
    parser.add_argument("--disk", type=int, default=51)
    parser.add_argument("--nan", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="tries run side by side")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "faults.json")
    opts = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tunery-faults-") as folder:
        bench = setup(Path(folder), exports=opts.disk > 0)
        print(f"reference run: {bench.duration:.1f} s ({bench.after_config:.1f} s after the config); "
              f"fault points reached: {bench.visits}; sizes (KiB): {bench.sizes_kb}; "
              f"tmpfs disks: {'yes' if bench.can_mount else 'no (unshare -m refused): ENOSPC through the hook'}",
              flush=True)
        found: dict[str, list[dict]] = {}
        with ThreadPoolExecutor(opts.jobs) as pool:
            for name, fn, n in (("kill", try_kill, opts.kill), ("term", try_term, opts.term),
                                ("disk", try_disk, opts.disk), ("nan", try_nan, opts.nan)):
                found[name] = list(pool.map(lambda i, fn=fn: fn(bench, i, opts.seed), range(n)))
                print(f"{name}: {n} tries done ({(time.monotonic() - started) / 60:.1f} min)", flush=True)
    rows = table(found)
    print_table(rows, time.monotonic() - started)
    bad = [(k, r) for k, rs in found.items() for r in rs if r.get("problems") or r.get("nan_files") or r.get("error")]
    for kind, result in bad[:10]:
        print(f"{kind}: {json.dumps(result)[:800]}")
    opts.json.parent.mkdir(parents=True, exist_ok=True)
    opts.json.write_text(json.dumps({"seed": opts.seed, "seconds": round(time.monotonic() - started),
                                     "rows": rows, "tries": found}, indent=1) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
