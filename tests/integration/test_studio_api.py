"""The studio's JSON API through FastAPI's TestClient: run list, run page, live metrics, compare, eval
report, schema and form checks with the CLI's own errors, the token, chat side by side against direct
generation, and a run started, stopped with SIGTERM (it checkpoints) and resumed to the end."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from cli_helpers import run_tunery
from studio_helpers import EVAL, make_studio_runs, tiny_form, wait_for
from tunery.errors import TuneryError
from tunery.inference import generate_batch, load_for_inference
from tunery.studio.app import create_app
from tunery.studio.server import check_studio_bind

LOCAL = "http://127.0.0.1:7860"  # the studio answers loopback names only, unless it has a token


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, tiny_model_dir):
    return make_studio_runs(tmp_path_factory.mktemp("studio"), tiny_model_dir)


@pytest.fixture(scope="module")
def client(runs_dir):
    app = create_app(runs_dir)
    with TestClient(app, base_url=LOCAL) as client:
        yield client
    app.state.jobs.shutdown()


def test_run_list_and_run_page(client, runs_dir):
    listed = client.get("/api/runs").json()
    by_name = {r["name"]: r for r in listed["runs"]}
    assert set(by_name) == {"alpha", "beta"}
    assert by_name["alpha"]["status"] == "finished" and by_name["alpha"]["best_val_loss"] == 1.0
    assert by_name["alpha"]["eval_best"] == "tuned: exact 0.750" and by_name["beta"]["eval_best"] is None
    assert by_name["alpha"]["data"] == ["train.jsonl"]
    page = client.get("/api/runs/alpha").json()
    assert page["summary"]["step"] == 8 and page["has_report"] and page["config"]["lora"]["rank"] == 4
    assert page["eval"]["systems"][0] == {"name": "tuned", "scores": {"exact": 0.75, "json": 1.0}, "loss": 0.42}
    metrics = client.get("/api/runs/alpha/metrics").json()
    assert metrics["total"] == 14 and metrics["records"][0] == {"kind": "train", "step": 1, "loss": 1.8}
    assert metrics["records"][-1] == {"kind": "grader", "step": 8, "exact": 0.5, "best": True}
    later = client.get("/api/runs/alpha/metrics?since=10").json()["records"]
    assert later == metrics["records"][10:] and len(later) == 4
    assert client.get("/").status_code == 200 and "tunery studio" in client.get("/").text
    assert "lineChart" in client.get("/static/chart.js").text


def test_unknown_and_foreign_names_are_refused(client, runs_dir):
    (runs_dir / "notes").mkdir(exist_ok=True)
    assert client.get("/api/runs/notes").status_code == 400
    assert "not a tunery run folder" in client.get("/api/runs/notes").json()["error"]
    assert "no run named 'zeta'" in client.get("/api/runs/zeta").json()["error"]
    assert client.get("/api/runs/..%2Fetc").status_code in (400, 404)
    assert client.get("/api/runs/.studio").status_code == 400


def test_eval_report_and_compare(client):
    report = client.get("/runs/alpha/report")
    assert report.status_code == 200 and "eval report of alpha" in report.text
    missing = client.get("/runs/beta/report")
    assert missing.status_code == 404 and "tunery eval" in missing.json()["error"]
    table = client.get("/api/compare?runs=alpha&runs=beta").json()
    assert table["names"] == ["alpha", "beta"]
    differing = {r["key"]: r["values"] for r in table["rows"] if r["section"] == "config" and r["differs"]}
    assert differing["training.lr"] == [0.001, 0.005] and "output.name" in differing
    assert "lora.rank" not in differing
    assert [m["loss"] for m in table["metrics"]["beta"] if m["kind"] == "train"][:2] == [0.9, 0.8]
    assert table["eval"]["alpha"]["best"] == EVAL["best"] and table["eval"]["beta"] is None
    assert "two or more" in client.get("/api/compare?runs=alpha").json()["error"]


def test_schema_and_form_checks_give_the_cli_errors(client, tiny_model_dir, tmp_path):
    schema = client.get("/api/schema").json()
    assert schema["properties"]["training"]["$ref"] == "#/$defs/TrainingSection"
    assert schema["$defs"]["TrainingSection"]["properties"]["lr"]["description"].startswith("Peak learning rate")
    form = tiny_form(tmp_path, tiny_model_dir, "checked", steps=2)
    ok = client.post("/api/check", json={"values": form}).json()
    assert ok["ok"] and ok["name"] == "checked" and ok["config"]["training"]["max_steps"] == 2
    typo = client.post("/api/check", json={"values": form, "extra": ["training.learning_rate=1e-4"]})
    assert typo.status_code == 400
    assert "unknown key 'training.learning_rate' (command line): did you mean training.lr?" in typo.json()["error"]
    bad = client.post("/api/check", json={"values": {**form, "training.lr": "-1"}}).json()["error"]
    assert "training.lr: Input should be greater than 0 (got -1)" in bad
    elsewhere = client.post("/api/check", json={"values": {**form, "output.dir": "/tmp/x"}}).json()["error"]
    assert "output.dir cannot be set here" in elsewhere
    nameless = client.post("/api/check", json={"values": {**form, "output.name": ""}}).json()["error"]
    assert "needs a name" in nameless
    taken = client.post("/api/train", json={"values": {**form, "output.name": "alpha"}}).json()["error"]
    assert "a run named 'alpha' already exists" in taken


def test_other_host_names_are_refused_without_a_token(runs_dir):
    """DNS rebinding: a page of another site whose name points at 127.0.0.1 sends that name."""
    with TestClient(create_app(runs_dir), base_url="http://evil.example:7860") as other:
        refused = other.get("/api/runs")
        assert refused.status_code == 403 and "127.0.0.1 or localhost only" in refused.json()["error"]
        assert other.post("/api/check", json={"values": {}}).status_code == 403
    for name in ("http://localhost:7860", "http://127.0.0.1", "http://[::1]:7860"):
        with TestClient(create_app(runs_dir), base_url=name) as local:
            assert local.get("/api/runs").status_code == 200, name
    with TestClient(create_app(runs_dir, token="s3cret"), base_url="http://studio.lan:7860") as named:
        assert named.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_token_is_checked_on_every_request(runs_dir):
    with TestClient(create_app(runs_dir, token="s3cret"), base_url=LOCAL) as guarded:
        for path in ("/", "/api/runs", "/static/app.js", "/runs/alpha/report"):
            assert guarded.get(path).status_code == 401, path
        assert guarded.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert guarded.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert guarded.get("/?token=s3cret").status_code == 200  # sets the cookie the page's requests carry
        assert guarded.get("/api/runs").status_code == 200
        guarded.cookies.clear()
        assert guarded.post("/api/chat", json={"prompt": "hi", "runs": ["alpha"]}).status_code == 401
    with pytest.raises(TuneryError, match="without a token"):
        check_studio_bind("0.0.0.0", None)
    check_studio_bind("0.0.0.0", "s3cret")
    check_studio_bind("127.0.0.1", None)
    check_studio_bind("localhost", None)
    refused = run_tunery("studio", "--host", "0.0.0.0", "--runs", str(runs_dir), cwd=runs_dir, check=False)
    assert refused.returncode == 2 and "refusing to open the studio on 0.0.0.0 without a token" in refused.stderr


def test_chat_side_by_side_matches_direct_generation(client, runs_dir, tiny_model_dir):
    prompt = "Ana Costa needs a room in Lima for 3 nights."
    reply = client.post("/api/chat", json={"prompt": prompt, "runs": ["alpha", "beta"], "max_new_tokens": 8})
    answers = reply.json()["answers"]
    assert [a["label"] for a in answers] == ["alpha", "beta", f"base: {tiny_model_dir.name}"]
    for a, target in zip(answers, [runs_dir / "alpha", runs_dir / "beta", tiny_model_dir]):
        model, tok = load_for_inference(str(target))
        expected = generate_batch(model, tok, [[{"role": "user", "content": prompt}]], max_new_tokens=8)[0]
        assert a["answer"] == expected, a["label"]
    assert answers[0]["answer"] != answers[1]["answer"]  # two different adapters answer differently
    cache = client.app.state.cache
    assert cache.loads == 3
    again = client.post("/api/chat", json={"prompt": prompt, "runs": ["beta"], "base": False, "max_new_tokens": 8})
    assert again.json()["answers"][0]["answer"] == answers[1]["answer"] and cache.loads == 3  # kept loaded


def test_start_stop_with_sigterm_and_resume(client, runs_dir, tiny_model_dir, tmp_path):
    form = tiny_form(tmp_path, tiny_model_dir, "live", steps=400, save_every=1)
    job = client.post("/api/train", json={"values": form}).json()
    assert job["alive"] and job["command"][-2:] == ["train", str(runs_dir.resolve() / ".studio" / "live.yaml")]
    # loading takes seconds before the run folder exists: the page says "starting" meanwhile
    assert client.get("/api/runs/live").json()["summary"]["status"] == "starting"
    assert client.get("/api/runs/live/metrics").json() == {"total": 0, "records": []}
    metrics = lambda: client.get("/api/runs/live/metrics").json()["total"] if (runs_dir / "live" / "run.json").exists() else 0
    wait_for(lambda: metrics() >= 3, what="three metrics lines")
    assert client.get("/api/runs/live").json()["summary"]["status"] == "running"
    stopped = client.post("/api/runs/live/stop").json()
    assert stopped["signalled"] == job["pid"]
    jobs = client.app.state.jobs
    assert jobs.get("live").process.wait(120) == 143  # the trainer's exit code after a SIGTERM
    page = client.get("/api/runs/live").json()
    assert page["summary"]["status"] == "interrupted" and "checkpoint written" in page["log"]
    step = page["summary"]["step"]
    assert 0 < step < 400 and any((runs_dir / "live" / "checkpoints").iterdir())
    resumed = client.post("/api/runs/live/resume").json()
    assert resumed["command"][-1] == "--resume"
    assert jobs.get("live").process.wait(300) == 0, client.get("/api/runs/live").json()["log"]
    done = client.get("/api/runs/live").json()
    assert done["summary"]["status"] == "finished" and done["summary"]["step"] == 400
    assert "resumed from" in (runs_dir / ".studio" / "live.log").read_text()  # the page shows the tail
    steps = [r["step"] for r in client.get("/api/runs/live/metrics").json()["records"] if r["kind"] == "train"]
    assert steps == list(range(1, 401))  # the resumed run rewrote nothing twice


def test_a_run_that_fails_while_loading_shows_why(client, runs_dir, tiny_model_dir, tmp_path):
    form = tiny_form(tmp_path, tiny_model_dir, "broken", steps=2)
    (tmp_path / "broken-train.jsonl").write_text("this is not JSON\n")
    assert client.post("/api/train", json={"values": form}).json()["alive"]  # the data is read after the start
    assert client.app.state.jobs.get("broken").process.wait(120) == 2
    listed = {r["name"]: r for r in client.get("/api/runs").json()["runs"]}
    assert listed["broken"]["status"] == "failed", listed["broken"]
    assert listed["broken"]["error"].startswith("error:")
    assert client.get("/api/runs/broken").json()["summary"]["status"] == "failed"


def test_a_running_servers_models_join_the_chat(runs_dir):
    """`tunery studio --serve URL`: the server's models are listed and answer beside the runs, with the
    same greedy answer the studio's own copy of the run gives."""
    from serve_helpers import running_server
    from tunery.studio.served import Server

    with running_server([f"alpha={runs_dir / 'alpha'}"], max_tokens=16) as (url, _state):
        with TestClient(create_app(runs_dir, server=Server(url)), base_url=LOCAL) as studio:
            served = studio.get("/api/served").json()
            assert served["url"] == url and "alpha" in served["models"]
            prompt = "Ana Costa needs a room in Lima for 3 nights."
            answers = studio.post("/api/chat", json={"prompt": prompt, "runs": ["alpha"], "base": False,
                                                     "served": ["alpha"], "max_new_tokens": 8}).json()["answers"]
            assert [a["label"] for a in answers] == ["alpha", "served: alpha"]
            assert answers[0]["answer"] == answers[1]["answer"]
            missing = studio.post("/api/chat", json={"prompt": "hi", "served": ["nope"]})
            assert missing.status_code == 400 and "answered 404" in missing.json()["error"]
    with TestClient(create_app(runs_dir), base_url=LOCAL) as alone:
        assert alone.get("/api/served").json() == {"url": None, "models": []}
        assert "start the studio with --serve" in alone.post("/api/chat", json={"prompt": "hi", "served": ["a"]}).json()["error"]
