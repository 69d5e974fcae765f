"""`--log-requests FILE`: every answered exchange, and feedback on it, appended as JSON lines.

An exchange line is a chat record as `tunery data check` reads it (`messages`, the answer last) with
what the server knew besides: id, time, model, latency, finish reason, usage and sampling settings.
A feedback line (`"type": "feedback"`) names the exchange's id. `tunery data from-log` turns the file
into a training set (serve/fromlog.py).

Each line goes out in one write on a file opened for appending, so lines from one server never
interleave and a crash can at most leave a torn last line, which from-log skips and counts.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path

KNOWN_IDS = 100_000  # exchanges feedback can refer to (the most recent ones)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RequestLog:
    """An append-only JSONL file of exchanges and feedback."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._lock = threading.Lock()
        self._ids: OrderedDict[str, str] = OrderedDict()  # response id -> model

    def exchange(self, record: dict) -> None:
        self._write({"type": "exchange", "time": now_iso(), **record})
        self._ids[record["id"]] = record.get("model", "")
        while len(self._ids) > KNOWN_IDS:
            self._ids.popitem(last=False)

    def knows(self, response_id: str) -> bool:
        return response_id in self._ids

    def feedback(self, record: dict) -> None:
        self._write({"type": "feedback", "time": now_iso(), **record})

    def _write(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            os.write(self._fd, line)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
