"""`tunery data from-log`: a server's request log (serve/reqlog.py) turned into a chat training set.

Each exchange becomes `{"messages": [...conversation, the answer]}`, after these filters, in order:

- broken lines (a torn last line after a crash) are skipped;
- `--model` keeps the named models, `--since` / `--until` a time window (UTC; a bare date covers
  the whole day);
- answers that were cut by `max_tokens`, ended with an error, or are empty are dropped: training on
  them teaches a model to ramble or to stop mid-sentence;
- feedback: the last feedback line for an id wins; a `correction` replaces the answer (and counts as
  good); `--feedback` keeps `good` (rated good or corrected), `not-bad` (the default: everything not
  rated bad), `bad` (to review them) or `any`;
- exchanges holding strings that look like secrets (API keys, tokens, private keys, passwords) are
  dropped whole, not redacted, so a key can never reach a training set or a model's weights;
- exact duplicates (the same conversation and answer) are kept once.

The output is written atomically and is read as it is by `tunery data check` and `tunery train`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

from tunery.errors import TuneryError
from tunery.runfolder import write_text_atomic

FEEDBACK_CHOICES = ("good", "not-bad", "bad", "any")

# What secrets look like in text people paste into a prompt. Dropping a harmless record costs little;
# keeping a live key in a training set can leak it through the model.
SECRET_PATTERNS = {
    "openai_key": r"\bsk-(?:proj-|live-|test-)?[A-Za-z0-9_-]{20,}",
    "aws_access_key": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "github_token": r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{30,})",
    "slack_token": r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
    "google_api_key": r"\bAIza[0-9A-Za-z_-]{35}",
    "stripe_key": r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
    "private_key": r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----",
    "jwt": r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    "bearer_token": r"\bBearer\s+[A-Za-z0-9._~+/-]{20,}=*",
    "password_assignment": r"(?i)\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token)\b\s*[:=]\s*\S{6,}",
}
_SECRETS = [(name, re.compile(pattern)) for name, pattern in SECRET_PATTERNS.items()]


@dataclass
class FromLogOptions:
    models: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    feedback: str = "not-bad"


@dataclass
class FromLogReport:
    lines: int = 0
    exchanges: int = 0
    written: int = 0
    dropped: Counter = field(default_factory=Counter)
    out: str = ""

    def to_json(self) -> dict:
        return {"lines": self.lines, "exchanges": self.exchanges, "written": self.written,
                "dropped": dict(sorted(self.dropped.items())), "out": self.out}

    def format_text(self) -> str:
        lines = [f"{self.exchanges} exchanges in {self.lines} lines; {self.written} written to {self.out}"]
        lines += [f"  dropped {count}: {reason}" for reason, count in sorted(self.dropped.items())]
        return "\n".join(lines)


def parse_when(text: str, end: bool = False) -> datetime:
    """An ISO date or date-time as UTC; a bare date means its first (or, with `end`, its last) moment."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime.combine(day + timedelta(days=1) if end else day, time(), timezone.utc)
            return moment - timedelta(microseconds=1) if end else moment
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TuneryError(f"'{text}' is not a date", fix="use YYYY-MM-DD or an ISO date-time such as "
                          "2026-11-28T14:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def secret_in(texts: list[str]) -> str | None:
    """The kind of the first secret-looking string in `texts`, or None."""
    for text in texts:
        for name, pattern in _SECRETS:
            if pattern.search(text):
                return name
    return None


def read_log(path: Path, report: FromLogReport) -> tuple[list[dict], dict[str, dict]]:
    """(exchanges in file order, the last feedback per id); broken lines are counted and skipped."""
    if not path.is_file():
        raise TuneryError(f"request log not found: {path}", fix="start the server with --log-requests FILE")
    exchanges, feedback = [], {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            report.lines += 1
            try:
                record = json.loads(line)
            except ValueError:
                report.dropped["unreadable line"] += 1
                continue
            if not isinstance(record, dict):
                report.dropped["unreadable line"] += 1
            elif record.get("type") == "feedback" and isinstance(record.get("id"), str):
                feedback[record["id"]] = record
            elif record.get("type") == "exchange":
                exchanges.append(record)
            else:
                report.dropped["unreadable line"] += 1
    report.exchanges = len(exchanges)
    return exchanges, feedback


def _when(record: dict) -> datetime | None:
    try:
        return parse_when(str(record.get("time", "")))
    except TuneryError:
        return None


def _messages(record: dict) -> list[dict] | None:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
               for m in messages):
        return None
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _why_dropped(record: dict, note: dict | None, options: FromLogOptions) -> str | None:
    """The reason to leave an exchange out, before its content is looked at (None: keep it)."""
    if options.models and record.get("model") not in options.models:
        return "other model"
    when = _when(record)
    if (options.since or options.until) and when is None:
        return "no readable time"
    if options.since and when < options.since:
        return "before --since"
    if options.until and when > options.until:
        return "after --until"
    corrected = bool(note and isinstance(note.get("correction"), str) and note["correction"].strip())
    if not corrected and record.get("finish_reason") != "stop":
        return f"answer {'cut by max_tokens' if record.get('finish_reason') == 'length' else 'did not end'}"
    rating = "good" if corrected else (note or {}).get("rating")
    wanted = {"good": rating == "good", "not-bad": rating != "bad", "bad": rating == "bad", "any": True}
    if not wanted[options.feedback]:
        return f"feedback is not {options.feedback}"
    return None


def _example(record: dict, note: dict | None, options: FromLogOptions) -> tuple[list[dict] | None, str | None]:
    """(the training conversation of an exchange, None) or (None, why it is left out)."""
    reason = _why_dropped(record, note, options)
    if reason is not None:
        return None, reason
    messages = _messages(record)
    if messages is None:
        return None, "no readable messages"
    correction = (note or {}).get("correction")
    if isinstance(correction, str) and correction.strip():
        messages[-1] = {"role": "assistant", "content": correction}
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        return None, "empty answer"
    kind = secret_in([m["content"] for m in messages])
    if kind:
        return None, f"looks like a secret ({kind})"
    return messages, None


def convert_log(path: Path, out: Path, options: FromLogOptions) -> FromLogReport:
    """Write the training set of `path` to `out`; returns the counts of what was kept and dropped."""
    if options.feedback not in FEEDBACK_CHOICES:
        raise TuneryError(f"unknown --feedback '{options.feedback}'", fix=f"use one of {', '.join(FEEDBACK_CHOICES)}")
    report = FromLogReport(out=str(out))
    exchanges, feedback = read_log(Path(path), report)
    seen: set[str] = set()
    rows = []
    for record in exchanges:
        messages, reason = _example(record, feedback.get(record.get("id")), options)
        key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        if reason is None and key in seen:
            reason = "duplicate"
        if reason is not None:
            report.dropped[reason] += 1
            continue
        seen.add(key)
        rows.append(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, "".join(rows))
    report.written = len(rows)
    return report
