"""Malformed-data fuzz for `tunery data check`: many kinds of bad records among good ones, in JSONL,
JSON, CSV and Parquet files, each bad record with the line and problem kind it must be reported at.

    python bench/fuzz_data.py                       # ~1,400 bad records of 24 kinds, then 200,000 valid ones timed
    python bench/fuzz_data.py --per-kind 10 --valid 0  # a quick run (what tests/unit/test_fuzz_data.py does)

It runs the real command (`tunery data check FILES --json`, in a subprocess) and prints how many bad
records were caught on the right line with the right kind, how many runs crashed (no JSON report, or an
exit code other than 0/1), how many findings landed on good records (false positives) and how many bad
records were missed; then the time `data check` takes on a file of valid records. Figures are written
to docs/reliability.md ("Malformed data") by hand.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MAX_LENGTH = 128  # tokens; the too_long records are longer, every good one is shorter
BAD = "⟦BADBYTE⟧"  # marks where a byte that is not UTF-8 goes (replaced after encoding)
WORDS = ("river team bakery bridge library garden engine council neighbour station violin train "
         "village museum project schedule bread history rules results corner report tools festival").split()
UNICODE = ["café", "東京", "naïve 🙂", "Ελλάδα", "a \"quoted\" word", "back\\slash", "tab\there", "<b>bold</b>",
           "x < y | z > w", "<|im_", "im_end|>"]


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def turn(role: str, content, **extra) -> dict:
    return {"role": role, "content": content, **extra}


@dataclass
class Payload:
    """One record as each container stores it: a JSONL line / JSON element (``json``), CSV or Parquet
    cells (``cells``), or a raw CSV row (``csv_raw``). None where the container cannot hold it."""

    json: str | None = None
    cells: dict | None = None
    csv_raw: str | None = None


def from_messages(messages, json_ok: bool = True, cells_ok: bool = True) -> Payload:
    return Payload(
        json.dumps({"messages": messages}, ensure_ascii=False) if json_ok else None,
        {"messages": json.dumps(messages, ensure_ascii=False)} if cells_ok else None,
    )


def good(rng: random.Random, serial: int) -> Payload:
    """A valid conversation, unique by ``serial``, sometimes with traps that must not be flagged."""
    question = f"{sentence(rng, rng.randint(3, 12))} {serial}?"
    if rng.random() < 0.3:
        question += " " + rng.choice(UNICODE)
    messages = [turn("user", question), turn("assistant", sentence(rng, rng.randint(1, 8)) + ".")]
    if rng.random() < 0.3:
        messages.insert(0, turn("system", "Answer briefly."))
    if rng.random() < 0.2:  # two turns, the first one not trained
        messages[-1]["weight"] = 0
        messages += [turn("user", f"And {serial}?"), turn("assistant", "Yes.", weight=1)]
    payload = from_messages(messages)
    trap = rng.random()
    if trap < 0.15:  # a carriage return where JSON allows whitespace: not a line end
        payload.json = payload.json.replace(', "content"', ',\r "content"', 1)
    elif trap < 0.3:  # a JSON cell spread over several lines of a quoted CSV cell
        payload.cells = {"messages": json.dumps(messages, ensure_ascii=False, indent=1)}
    return payload


def _convo(rng, serial) -> list[dict]:
    return [turn("user", f"{sentence(rng, 4)} {serial}?"), turn("assistant", f"{sentence(rng, 3)}.")]


# Each kind: (the problem kind tunery must report, a function of (rng, serial) giving the payload).
def _invalid_json(rng, s):  # balanced, so a JSON array can step over it
    text = '[{"role": "user", "content": "q %d"},]' % s
    return Payload('{"messages": %s}' % text, {"messages": text})


def _deep(rng, s):
    text = "[" * 1000 + "]" * 1000
    return Payload('{"messages": %s}' % text, {"messages": text})


def _huge_number(rng, s):
    convo = _convo(rng, s)
    text = json.dumps(convo)[:-1] + ', {"role": "user", "content": "x", "weight": ' + "7" * 5000 + "}]"
    return Payload('{"messages": %s}' % text, {"messages": text})


def _bad_byte(rng, s):
    convo = _convo(rng, s)
    convo[0]["content"] += f" caf{BAD}"
    payload = from_messages(convo, cells_ok=False)
    row = io.StringIO()
    csv.writer(row, lineterminator="\n").writerow([json.dumps(convo, ensure_ascii=False), "", ""])
    payload.csv_raw = row.getvalue()
    return payload


def _lone_surrogate(rng, s):
    convo = _convo(rng, s)
    text = json.dumps(convo).replace('?"', '? \\udc80"', 1)
    return Payload('{"messages": %s}' % text, {"messages": text})


def _control_char(rng, s):
    text = json.dumps(_convo(rng, s)).replace('?"', '?\x01"', 1)
    return Payload('{"messages": %s}' % text, {"messages": text})


def _not_an_object(rng, s):
    return Payload(json.dumps([f"user {s}", "assistant"]))


def _field(key, value):
    def make(rng, s):
        convo = _convo(rng, s)
        if value is _DROP:
            del convo[0][key]
        else:
            convo[0][key] = value
        return from_messages(convo)
    return make


_DROP = object()


def _messages_value(value):
    def make(rng, s):
        return Payload(json.dumps({"messages": value, "id": s}), {"messages": json.dumps(value)})
    return make


def _only(*roles):
    def make(rng, s):
        return from_messages([turn(role, f"{sentence(rng, 3)} {s}") for role in roles])
    return make


def _bad_weight(rng, s):
    convo = _convo(rng, s)
    convo[1]["weight"] = rng.choice(["0", 2, 0.5, True])
    return from_messages(convo)


def _unknown_format(rng, s):
    return Payload(json.dumps({"question": f"q {s}", "answer": "a"}))


def _mixed(rng, s):
    return Payload(json.dumps({"prompt": f"p {s}", "completion": "c"}),
                   {"messages": None, "prompt": f"p {s}", "completion": "c"})


def _control_token(rng, s):
    convo = _convo(rng, s)
    convo[0]["content"] += rng.choice([" <|im_end|>", " <|im_start|>assistant", " <|endoftext|>", " <file_sep>"])
    return from_messages(convo)


def _too_long(rng, s):
    convo = _convo(rng, s)
    convo[1]["content"] = sentence(rng, 2 * MAX_LENGTH)
    return from_messages(convo)


def _csv_cells(rng, s):
    row = io.StringIO()
    csv.writer(row, lineterminator="\n").writerow([json.dumps(_convo(rng, s)), "a", "b", "one too many"])
    return Payload(csv_raw=row.getvalue())


def _csv_cr(rng, s):
    return Payload(csv_raw=f"unquoted\rcell {s},,\n")


KINDS = {
    "invalid_json": ("invalid_json", _invalid_json),
    "nested_too_deep": ("nested_too_deep", _deep),
    "huge_number": ("invalid_json", _huge_number),
    "encoding": ("encoding", _bad_byte),
    "lone_surrogate": ("invalid_text", _lone_surrogate),
    "control_char": ("invalid_json", _control_char),
    "not_an_object": ("wrong_type", _not_an_object),
    "messages_not_list": ("wrong_type", _messages_value("hello")),
    "empty_conversation": ("empty_conversation", _messages_value([])),
    "unknown_role": ("unknown_role", _field("role", "robot")),
    "missing_role": ("missing_role", _field("role", _DROP)),
    "missing_content": ("missing_content", _field("content", _DROP)),
    "empty_content": ("empty_content", _field("content", "  ")),
    "content_not_string": ("wrong_type", _field("content", 42)),
    "weight_on_user": ("bad_weight", _field("weight", 1)),
    "bad_weight": ("bad_weight", _bad_weight),
    "no_assistant": ("no_assistant", _only("user")),
    "last_turn_not_assistant": ("last_turn_not_assistant", _only("user", "assistant", "user")),
    "unknown_format": ("unknown_format", _unknown_format),
    "mixed_formats": ("mixed_formats", _mixed),
    "special_token_in_content": ("special_token_in_content", _control_token),
    "too_long": ("too_long", _too_long),
    "csv_cell_count": ("invalid_csv", _csv_cells),
    "csv_carriage_return": ("invalid_csv", _csv_cr),
}


@dataclass
class Corpus:
    files: list[str] = field(default_factory=list)
    expected: dict[tuple[str, int], str] = field(default_factory=dict)  # (file, line) -> problem kind
    fuzz_kind: dict[tuple[str, int], str] = field(default_factory=dict)  # (file, line) -> fuzz kind
    good: set[tuple[str, int]] = field(default_factory=set)


def _records(rng: random.Random, container: str, per_kind: int, goods: int, serial: list[int], kinds):
    """Shuffled (fuzz kind or None, payload) pairs that this container can hold."""
    items = []
    for name in kinds:
        make = KINDS[name][1]
        for _ in range(per_kind):
            serial[0] += 1
            payload = make(rng, serial[0])
            holds = {"jsonl": payload.json, "json": payload.json,
                     "csv": payload.cells or payload.csv_raw, "parquet": payload.cells}[container]
            if holds is not None:
                items.append((name, payload))
    for _ in range(goods):
        serial[0] += 1
        items.append((None, good(rng, serial[0])))
    rng.shuffle(items)
    return items


def _write_lines(path: Path, items, container: str) -> list[int]:
    """Write a JSONL or JSON file; returns each item's line (JSON: its index + 1)."""
    texts = [payload.json for _, payload in items]
    if container == "jsonl":
        body = "\n".join(texts) + "\n"
    else:
        body = "[\n" + ",\n".join(texts) + "\n]\n"
    path.write_bytes(body.encode("utf-8", "surrogatepass").replace(BAD.encode(), b"\xff"))
    return list(range(1, len(items) + 1))


def _write_csv(path: Path, items) -> list[int]:
    rows, lines, line = ["messages,prompt,completion\n"], [], 2
    for _, payload in items:
        if payload.csv_raw is not None:
            text = payload.csv_raw
        else:
            out = io.StringIO()
            cells = payload.cells
            csv.writer(out, lineterminator="\n").writerow(
                [cells.get("messages") or "", cells.get("prompt") or "", cells.get("completion") or ""])
            text = out.getvalue()
        rows.append(text)
        lines.append(line)
        line += text.count("\n")
    path.write_bytes("".join(rows).encode("utf-8", "surrogatepass").replace(BAD.encode(), b"\xff"))
    return lines


def _write_parquet(path: Path, items) -> list[int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: [payload.cells.get(name) for _, payload in items]
               for name in ("messages", "prompt", "completion")}
    pq.write_table(pa.table({k: pa.array(v, type=pa.string()) for k, v in columns.items()}), str(path))
    return list(range(1, len(items) + 1))


def build_corpus(folder: Path, per_kind: int = 15, goods: int = 150, files_per_container: int = 4,
                 seed: int = 0, kinds=tuple(KINDS)) -> Corpus:
    """Write the fuzz files into ``folder``; each bad record appears with its expected (line, kind)."""
    rng, serial, corpus = random.Random(seed), [0], Corpus()
    for container in ("jsonl", "json", "csv", "parquet"):
        for number in range(files_per_container):
            items = _records(rng, container, per_kind, goods, serial, kinds)
            path = folder / f"fuzz-{number}.{container}"
            if container in ("jsonl", "json"):
                lines = _write_lines(path, items, container)
            elif container == "csv":
                lines = _write_csv(path, items)
            else:
                lines = _write_parquet(path, items)
            corpus.files.append(str(path))
            for (name, _), line in zip(items, lines):
                if name is None:
                    corpus.good.add((str(path), line))
                else:
                    corpus.expected[(str(path), line)] = KINDS[name][0]
                    corpus.fuzz_kind[(str(path), line)] = name
    return corpus


def run_check(files: list[str], extra: tuple[str, ...] = ()) -> tuple[int, str, str, float, float]:
    """`tunery data check FILES --json` in a subprocess: (exit code, stdout, stderr, wall seconds,
    CPU seconds of the command, all its threads; on a shared machine the wall time depends on the
    other jobs, the CPU time much less)."""
    command = [sys.executable, "-m", "tunery.cli.main", "data", "check", *files, "--json",
               "--max-length", str(MAX_LENGTH), *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.returncode, proc.stdout, proc.stderr, wall, cpu


def score(corpus: Corpus, code: int, stdout: str) -> dict:
    """Caught (right line, right kind), crashes, false positives (findings on good records, or errors
    no bad record explains), missed (bad records not reported at their line with their kind)."""
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        report = None
    if report is None or code not in (0, 1):
        return {"caught": 0, "crashes": 1, "false_positives": 0, "missed": len(corpus.expected),
                "bad_records": len(corpus.expected), "missed_by_kind": {}, "false_positive_examples": []}
    found = {(e["file"], e["line"], e["kind"]) for e in report["errors"]}
    caught = {key for key, kind in corpus.expected.items() if (*key, kind) in found}
    missed = [corpus.fuzz_kind[key] for key in corpus.expected if key not in caught]
    wrong = [e for e in report["errors"] if corpus.expected.get((e["file"], e["line"])) != e["kind"]]
    on_good = [w for w in report["warnings"] if (w["file"], w["line"]) in corpus.good]
    return {"caught": len(caught), "crashes": 0, "false_positives": len(wrong) + len(on_good),
            "missed": len(missed), "bad_records": len(corpus.expected),
            "missed_by_kind": dict(Counter(missed)), "false_positive_examples": (wrong + on_good)[:5]}


def write_valid(path: Path, count: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as out:
        for serial in range(count):
            out.write(good(rng, serial).json + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=15, help="bad records per kind and file")
    parser.add_argument("--good", type=int, default=150, help="good records per file")
    parser.add_argument("--files", type=int, default=4, help="files per container (JSONL, JSON, CSV, Parquet)")
    parser.add_argument("--valid", type=int, default=200_000, help="valid records to time (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", default="", help="fuzz kinds to leave out, comma-separated")
    args = parser.parse_args()
    kinds = [name for name in KINDS if name not in args.skip.split(",")]
    with tempfile.TemporaryDirectory(prefix="tunery-fuzz-") as tmp:
        folder = Path(tmp)
        corpus = build_corpus(folder, args.per_kind, args.good, args.files, args.seed, kinds)
        kinds = Counter(corpus.fuzz_kind.values())
        print(f"fuzz: {len(corpus.expected)} bad records of {len(kinds)} kinds and {len(corpus.good)} good "
              f"ones in {len(corpus.files)} files (JSONL, JSON, CSV, Parquet)")
        code, stdout, stderr, seconds, _ = run_check(corpus.files)
        result = score(corpus, code, stdout)
        print(f"caught on the right line: {result['caught']} / {result['bad_records']}")
        print(f"crashes: {result['crashes']}")
        print(f"false positives: {result['false_positives']}")
        print(f"missed: {result['missed']}")
        if result["crashes"]:
            print(stderr[-2000:])
        for what in ("missed_by_kind", "false_positive_examples"):
            if result[what]:
                print(f"  {what}: {result[what]}")
        print(f"(data check on the fuzz files: {seconds:.1f} s, exit code {code})")
        if args.valid:
            path = folder / "valid.jsonl"
            write_valid(path, args.valid)
            code, stdout, stderr, seconds, cpu = run_check([str(path)])
            ok = code == 0 and json.loads(stdout)["stats"]["train"]["examples"] == args.valid
            print(f"{args.valid} valid records: {seconds:.1f} s, {1000 * seconds / args.valid:.3f} ms a record "
                  f"(whole command, start-up included; CPU {cpu:.1f} s; load average "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {'OK' if ok else 'FAILED: ' + stderr[-500:]})")
    sys.exit(0 if result["crashes"] == result["false_positives"] == result["missed"] == 0 else 1)


if __name__ == "__main__":
    main()
