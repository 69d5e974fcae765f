"""tunery serve at its edges: API keys on every route, a full queue, a client that leaves, models added
and removed while serving, feedback, and a fuzz of malformed requests that must never get a 5xx."""

from __future__ import annotations

import json
import random
import time

import httpx
import openai
import pytest

from serve_helpers import CHAT, make_runs, running_server
from tunery.inference import generate_ids, load_run

KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smol_tokenizer):
    return make_runs(tmp_path_factory.mktemp("edges"), smol_tokenizer, names=("alpha", "beta", "gamma"))


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def metric(url: str, name: str, key: str | None = None) -> float:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for line in httpx.get(f"{url}/metrics", headers=headers, timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture(scope="module")
def keyed(runs, tmp_path_factory):
    """A server with an API key, a request log and one run (alpha); beta and gamma are added by tests."""
    _, (alpha, _, _) = runs
    log = tmp_path_factory.mktemp("log") / "requests.jsonl"
    with running_server([str(alpha)], api_key=KEY, log_requests=log) as (url, state):
        yield url, state, log


ROUTES = [("GET", "/v1/models"), ("GET", "/v1/models/alpha"), ("GET", "/metrics"),
          ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/feedback"),
          ("POST", "/v1/admin/models"), ("DELETE", "/v1/admin/models/alpha"), ("GET", "/no/such/route")]


def test_every_route_but_health_needs_the_key(keyed):
    url, _, _ = keyed
    with httpx.Client(base_url=url, timeout=30) as http:
        for method, path in ROUTES:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                            {"Authorization": f"Bearer {KEY}x"}, {"X-Api-Key": KEY}):
                answer = http.request(method, path, headers=headers, json={})
                assert answer.status_code == 401, (method, path, headers)
                assert answer.json()["error"]["code"] == "invalid_api_key"
        assert http.get("/health").status_code == 200
        keyed_models = http.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        assert keyed_models.status_code == 200
        assert http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                         json={"model": "alpha", "messages": CHAT, "max_tokens": 2}).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        client(url, "wrong").models.list()
    assert [m.id for m in client(url, KEY).models.list()]


def test_the_routes_list_covers_the_app(keyed):
    from tunery.serve.app import build_app

    url, state, _ = keyed
    app = build_app(state).app.app  # CountRequests(KeyCheck(FastAPI))
    paths = {r.path.replace("{name:path}", "alpha") for r in app.routes}
    assert paths - {p for _, p in ROUTES} == {"/health"}


def test_models_are_added_and_removed_while_serving(keyed, runs):
    url, state, _ = keyed
    _, (_, beta, gamma) = runs
    auth = {"Authorization": f"Bearer {KEY}"}
    busy = client(url, KEY)
    with httpx.Client(base_url=url, timeout=120, headers=auth) as http:
        stream = http.stream("POST", "/v1/chat/completions", json={"model": "alpha", "messages": CHAT,
                                                                    "max_tokens": 48, "stream": True})
        with stream as running:  # alpha keeps decoding while beta is attached to the same base
            added = http.post("/v1/admin/models", json={"path": str(beta)})
            assert added.status_code == 200 and [m["id"] for m in added.json()["data"]] == ["beta"]
            text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                           for line in running.iter_lines() if line.startswith("data: {"))
        assert text
        renamed = http.post("/v1/admin/models", json={"path": str(gamma), "name": "g"})
        assert [m["id"] for m in renamed.json()["data"]] == ["g"]
        clash = http.post("/v1/admin/models", json={"path": str(gamma), "name": "g"})
        assert clash.status_code == 409 and "served already" in clash.json()["error"]["message"]
        missing = http.post("/v1/admin/models", json={"path": "/no/such/run"})
        assert missing.status_code == 400
    assert sorted(m.id for m in busy.models.list()) == ["alpha", "base", "beta", "g"]
    model, tokenizer = load_run(beta)
    expected = tokenizer.decode(generate_ids(model, tokenizer, [CHAT], max_new_tokens=12)[0], skip_special_tokens=True)
    answer = busy.chat.completions.create(model="beta", messages=CHAT, max_tokens=12, temperature=0)
    assert answer.choices[0].message.content == expected
    with httpx.Client(base_url=url, timeout=60, headers=auth) as http:
        assert http.delete("/v1/admin/models/g").json()["deleted"] is True
        assert http.delete("/v1/admin/models/g").status_code == 404
        assert http.delete("/v1/admin/models/base").status_code == 409  # runs still sit on it
    with pytest.raises(openai.NotFoundError):
        busy.chat.completions.create(model="g", messages=CHAT, max_tokens=2)
    assert busy.chat.completions.create(model="beta", messages=CHAT, max_tokens=12,
                                        temperature=0).choices[0].message.content == expected
    deadline = time.monotonic() + 10
    while len(state.registry._retired) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "run2" not in state.registry.get("beta").engine.model.peft_config  # g's adapter was freed


def test_feedback_needs_a_logged_id_and_is_logged(keyed):
    url, _, log = keyed
    answer = client(url, KEY).chat.completions.create(model="alpha", messages=CHAT, max_tokens=4, temperature=0)
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=url, timeout=30, headers=auth) as http:
        ok = http.post("/v1/feedback", json={"id": answer.id, "rating": "good", "comment": "fine"})
        assert ok.status_code == 200 and ok.json()["recorded"] is True
        assert http.post("/v1/feedback", json={"id": "chatcmpl-nope", "rating": "bad"}).status_code == 404
        assert http.post("/v1/feedback", json={"id": answer.id}).status_code == 400
        assert http.post("/v1/feedback", json={"id": answer.id, "rating": "meh"}).status_code == 400
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    exchange = next(r for r in lines if r.get("id") == answer.id and r["type"] == "exchange")
    assert exchange["messages"][-1] == {"role": "assistant", "content": answer.choices[0].message.content}
    assert exchange["model"] == "alpha" and exchange["finish_reason"] == answer.choices[0].finish_reason
    assert exchange["usage"]["completion_tokens"] == answer.usage.completion_tokens
    feedback = [r for r in lines if r["type"] == "feedback"]
    assert feedback[-1] == {"type": "feedback", "time": feedback[-1]["time"], "id": answer.id, "rating": "good",
                            "comment": "fine"}


def test_admin_routes_are_refused_without_a_configured_key(runs):
    _, (alpha, beta, _) = runs
    with running_server([str(alpha)]) as (url, _):
        answer = httpx.post(f"{url}/v1/admin/models", json={"path": str(beta)}, timeout=30)
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "admin_disabled"


@pytest.fixture(scope="module")
def narrow(runs):
    """One decoding slot and one queue place, long answers: the easiest server to fill."""
    _, (alpha, _, _) = runs
    with running_server([str(alpha)], max_batch=1, max_queue=1, max_tokens=400) as (url, state):
        yield url, state


def test_a_full_queue_answers_429_with_retry_after(narrow):
    url, _ = narrow
    body = {"model": "alpha", "messages": CHAT, "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.Client(base_url=url, timeout=120) as first, httpx.Client(base_url=url, timeout=120) as second:
        with first.stream("POST", "/v1/chat/completions", json=body) as running:
            lines = running.iter_lines()
            for _ in range(8):  # a few content chunks: it is decoding, so the one slot is taken
                next(lines)
            with second.stream("POST", "/v1/chat/completions", json=body) as queued:
                assert queued.status_code == 200  # waits in the one queue place
                refused = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
                assert refused.status_code == 429
                assert refused.headers["Retry-After"] == "1"
                assert refused.json()["error"]["code"] == "rate_limit_exceeded"
                with pytest.raises(openai.RateLimitError):
                    client(url).chat.completions.create(model="alpha", messages=CHAT, max_tokens=4)
    assert metric(url, 'tunery_rejected_total{reason="queue_full"}') == 2


def test_a_client_that_disconnects_frees_its_slot_at_the_next_step(narrow):
    url, state = narrow
    cancelled = metric(url, 'tunery_sequences_ended_total{reason="cancelled"}')
    body = {"model": "alpha", "messages": CHAT, "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            for _ in range(4):
                next(lines)
    deadline = time.monotonic() + 10
    while not state.scheduler.idle() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.scheduler.idle()
    assert metric(url, 'tunery_sequences_ended_total{reason="cancelled"}') == cancelled + 1
    answer = client(url).chat.completions.create(model="alpha", messages=CHAT, max_tokens=3)
    assert answer.choices[0].finish_reason in ("stop", "length")  # the slot is free again


# -- fuzz -----------------------------------------------------------------------------------------

VALID = {"/v1/chat/completions": {"model": "alpha", "messages": CHAT, "max_tokens": 2},
         "/v1/completions": {"model": "alpha", "prompt": "Hello", "max_tokens": 2},
         "/v1/feedback": {"id": "chatcmpl-0", "rating": "good"}}
WEIRD = [None, True, False, 0, -1, 1.5, 10**30, -(10**30), "", "x", "alpha", "\u0000", "\ud83d", "é" * 3000,
         [], [1], [None], {}, {"a": 1}, [[[]]], float("inf"), float("nan"), {"role": "user"}, [{"role": "user"}],
         [-5, 10**9], ["a", 1], {"type": "json_schema"}, {"type": "json_object"}, {"type": "text"},
         {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}},
         {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}},
         {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}, {"include_usage": "yes"},
         [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
         [{"role": "user", "content": "\ud83d\u0000"}], [{"role": "assistant", "content": "only me"}]]
FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "n",
          "logprobs", "top_logprobs", "stream", "stream_options", "response_format", "prompt", "user", "echo",
          "tools", "functions", "logit_bias", "best_of", "suffix", "presence_penalty", "id", "rating", "path",
          "correction", "comment"]
PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/feedback", "/v1/models", "/v1/models/x", "/metrics",
         "/health", "/v1/admin/models", "/v1", "/", "/v1/chat/completions/x"]


def malformed(rng: random.Random) -> tuple[str, str, bytes, dict]:
    """(method, path, body, headers): one of many ways a request can be wrong."""
    kind = rng.randrange(8)
    path = rng.choice(PATHS[:3]) if kind < 6 else rng.choice(PATHS)
    valid = VALID.get(path, VALID["/v1/chat/completions"])
    method = "POST" if kind < 6 else rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH"])
    headers = {"content-type": rng.choice(["application/json", "text/plain", "application/x-www-form-urlencoded"])}
    if kind == 0:  # bytes that are not JSON (or not UTF-8)
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    elif kind == 1:  # JSON that is not an object
        body = json.dumps(rng.choice([[], 1, "s", None, [valid]])).encode()
    elif kind in (2, 3):  # a valid request with one or two fields set to something strange
        changed = {rng.choice(list(valid) + FIELDS): rng.choice(WEIRD) for _ in range(kind - 1)}
        body = json.dumps(valid | changed, allow_nan=True).encode()
    elif kind == 4:  # messages that are wrong inside, or fields missing
        message = {rng.choice(["role", "content", "name", "x"]): rng.choice(WEIRD) for _ in range(rng.randrange(4))}
        body = json.dumps(rng.choice([valid | {"messages": [message] * rng.randrange(1, 3)},
                                      {k: v for k, v in valid.items() if rng.random() < 0.5}]), allow_nan=True)
        body = body.encode()
    elif kind == 5:  # truncated or deeply nested JSON
        text = json.dumps(valid | {"stop": ["a"]})
        body = (text[: rng.randrange(len(text))] if rng.random() < 0.5
                else ('{"model":' + "[" * rng.randrange(1000, 50000) + "]" * 3)).encode()
    else:  # any route, any method, random small body
        body = json.dumps({rng.choice(FIELDS): rng.choice(WEIRD)}, allow_nan=True).encode()
    return method, path, body, headers


def test_a_thousand_malformed_requests_never_get_a_5xx(runs):
    _, (alpha, _, _) = runs
    rng = random.Random(15)
    seen = {}
    with running_server([str(alpha)], max_tokens=8) as (url, _):
        with httpx.Client(base_url=url, timeout=60) as http:
            for _ in range(1200):
                method, path, body, headers = malformed(rng)
                answer = http.request(method, path, content=body, headers=headers)
                assert answer.status_code < 500, (method, path, body[:200], answer.text[:300])
                if answer.status_code >= 400:
                    error = answer.json()["error"]
                    assert error["message"] and "Traceback" not in error["message"]
                seen[answer.status_code] = seen.get(answer.status_code, 0) + 1
            assert http.get("/health").status_code == 200  # and it still serves
    assert sum(n for code, n in seen.items() if 400 <= code < 500) >= 1000


def test_each_run_is_rendered_with_its_own_chat_template_and_stops_at_its_end_token(runs, tmp_path, smol_tokenizer):
    import shutil

    from transformers import AutoTokenizer

    from tunery.inference import prompt_ids

    _, (alpha, _, _) = runs
    custom = tmp_path / "custom"
    shutil.copytree(alpha, custom)
    tokenizer = AutoTokenizer.from_pretrained(custom / "tokenizer")
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} says\n{{ m['content'] }}"
                               "<|endoftext|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant says\n"
                               "{% endif %}")
    tokenizer.save_pretrained(custom / "tokenizer")
    with running_server([str(alpha), str(custom)]) as (url, state):
        answers = {name: client(url).chat.completions.create(model=name, messages=CHAT, max_tokens=2)
                   for name in ("alpha", "custom")}
        assert answers["custom"].usage.prompt_tokens == len(prompt_ids(tokenizer, CHAT))
        assert answers["alpha"].usage.prompt_tokens == len(prompt_ids(smol_tokenizer, CHAT))
        assert answers["custom"].usage.prompt_tokens != answers["alpha"].usage.prompt_tokens
        end_of_turn = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        assert end_of_turn in state.registry.get("custom").stop_ids
        assert end_of_turn not in state.registry.get("alpha").stop_ids
