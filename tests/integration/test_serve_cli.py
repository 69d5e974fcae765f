"""`tunery serve` and `tunery data from-log` as a user runs them: subprocesses, signals, and the request
log turned into a training set that `tunery data check` and `tunery train` take as it is."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time

import httpx
import openai
import pytest

from cli_helpers import run_tunery
from serve_helpers import CHAT, make_runs, server_process

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "nights": {"type": "integer", "minimum": 1, "maximum": 9}},
          "required": ["name", "nights"], "additionalProperties": False}
JSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "booking", "schema": SCHEMA}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smol_tokenizer):
    return make_runs(tmp_path_factory.mktemp("cli"), smol_tokenizer)


def stream_answer(url: str, max_tokens: int, started: list | None = None) -> dict:
    """Read one streamed chat answer to its end: its text, finish reason, error and whether [DONE] came."""
    body = {"model": "alpha", "messages": CHAT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    result = {"text": "", "finish": None, "error": None, "done": False}
    counted = False
    with httpx.Client(timeout=120) as http, http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                result["done"] = True
                continue
            event = json.loads(line[6:])
            if "error" in event:
                result["error"] = event["error"]
                continue
            choice = event["choices"][0]
            result["text"] += choice["delta"].get("content") or ""
            if result["text"] and started is not None and not counted:
                started.append(True)  # this stream is answering: it is in flight
                counted = True
            result["finish"] = choice["finish_reason"] or result["finish"]
    return result


def refused(url: str, seconds: float = 10.0) -> bool:
    """True once a new connection is refused (bounded wait)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/v1/models", timeout=2)
        except httpx.ConnectError:
            return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


def test_a_public_address_without_a_key_is_refused(runs, tmp_path):
    _, (alpha, _) = runs
    proc = run_tunery("serve", str(alpha), "--host", "0.0.0.0", cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode == 2
    assert "refusing to serve on 0.0.0.0 without an API key" in proc.stderr


def test_engine_vllm_without_vllm_says_why(runs, tmp_path):
    _, (alpha, _) = runs
    proc = run_tunery("serve", str(alpha), "--engine", "vllm", cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode == 2
    assert "needs vLLM, which is not installed here" in proc.stderr and "CUDA" in proc.stderr


def test_sigterm_under_load_finishes_in_flight_requests_and_exits_0(runs, tmp_path):
    _, (alpha, beta) = runs
    with server_process([str(alpha), str(beta), "--shutdown-timeout", "60", "--max-tokens", "40"], tmp_path) as (url, proc):
        started: list = []
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(stream_answer, url, 40, started) for _ in range(4)]
            deadline = time.monotonic() + 60
            # every request in flight (answering), none still waiting to be accepted: on a loaded
            # machine a request the server has not accepted yet is refused at SIGTERM, rightly
            while len(started) < len(futures) and time.monotonic() < deadline:
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            assert refused(url)  # the listening socket closes at once ...
            answers = [f.result(timeout=120) for f in futures]
        assert proc.wait(90) == 0  # ... and the process exits 0 once they are done
    assert all(a["done"] and a["error"] is None and a["finish"] in ("stop", "length") for a in answers)
    assert len({a["text"] for a in answers}) == 1  # the same greedy answer, finished in full
    assert "tunery serve: stopped" in "".join(proc.log)


def test_sigterm_past_the_bound_ends_the_rest_with_a_clear_error(runs, tmp_path):
    _, (alpha, _) = runs
    args = [str(alpha), "--shutdown-timeout", "1", "--max-tokens", "2000", "--max-batch", "1"]
    with server_process(args, tmp_path) as (url, proc):
        started: list = []
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(stream_answer, url, 2000, started) for _ in range(3)]
            deadline = time.monotonic() + 60
            while not started and time.monotonic() < deadline:
                time.sleep(0.01)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            answers = [f.result(timeout=120) for f in futures]
        assert proc.wait(60) == 0
        assert time.monotonic() - sent < 30  # the bound held (1 s, plus the time to unwind)
    errors = [a["error"] for a in answers if a["error"]]
    assert errors, answers
    assert all(e["code"] == "server_shutdown" and "shutting down" in e["message"] for e in errors)


def test_the_request_log_round_trips_into_tunery_train(runs, tmp_path):
    base, (alpha, _) = runs
    log = tmp_path / "requests.jsonl"
    with server_process([str(alpha), "--log-requests", str(log), "--max-tokens", "96"], tmp_path) as (url, proc):
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)

        def ask(text: str, **options) -> str:
            options = {"response_format": JSON_FORMAT, "max_tokens": 96} | options
            answer = api.chat.completions.create(model="alpha", temperature=0,
                                                 messages=[{"role": "user", "content": text}], **options)
            return answer.id

        kept = [ask(f"{name} needs a room for {n} nights.") for name, n in [("Ana", 2), ("Ben", 3), ("Cy", 4)]]
        ask("Ana needs a room for 2 nights.")  # the same exchange again: a duplicate
        bad = ask("Dee needs a room for 5 nights.")
        corrected = ask("Eli needs a room for 6 nights.", max_tokens=3, response_format=None)  # cut short
        ask("My key is sk-proj-abcdefghijklmnopqrstuvwxyz0123 please book 2 nights")
        ask("Fay needs a room for 7 nights.", max_tokens=3, response_format=None)  # cut, not corrected
        for rating in ({"id": kept[0], "rating": "good"}, {"id": bad, "rating": "bad"},
                       {"id": corrected, "correction": '{"name": "Eli", "nights": 6}'}):
            assert httpx.post(f"{url}/v1/feedback", json=rating, timeout=30).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    out = tmp_path / "review.jsonl"
    report = json.loads(run_tunery("data", "from-log", str(log), "--out", str(out), "--json", cwd=tmp_path).stdout)
    assert report["exchanges"] == 8 and report["written"] == 4
    assert report["dropped"] == {"answer cut by max_tokens": 1, "duplicate": 1, "feedback is not not-bad": 1,
                                 "looks like a secret (openai_key)": 1}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[-1]["messages"][-1] == {"role": "assistant", "content": '{"name": "Eli", "nights": 6}'}
    assert all(json.loads(r["messages"][-1]["content"]) for r in rows)  # every answer is JSON
    good = json.loads(run_tunery("data", "from-log", str(log), "--out", str(tmp_path / "good.jsonl"),
                                 "--feedback", "good", "--json", cwd=tmp_path).stdout)
    assert good["written"] == 2  # rated good, and corrected
    run_tunery("data", "check", str(out), "--model", str(base), cwd=tmp_path)
    config = tmp_path / "from-log.yaml"
    config.write_text(f"base_model: {base}\noutput: {{dir: {tmp_path / 'runs'}, name: from-log}}\n"
                      f"data: {{train: [{out}], val_split: 0.0, max_length: 128}}\n"
                      "lora: {rank: 4, alpha: 8, dropout: 0.0}\n"
                      "training: {max_steps: 2, batch_size: 2, lr: 1.0e-3, threads: 1}\n")
    run_tunery("train", str(config), cwd=tmp_path, timeout=600)
    info = json.loads((tmp_path / "runs" / "from-log" / "run.json").read_text())
    assert info["status"] == "finished" and info["train_examples"] == 4
