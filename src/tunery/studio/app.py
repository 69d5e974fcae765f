"""The studio's HTTP application: a JSON API over the run folders and the static page that uses it.

Every route reads the run folders afresh (they are small files), so runs trained elsewhere, by `tunery
train` in a terminal, show up and update just like the ones the studio starts.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path

from tunery.errors import TuneryError
from tunery.runfolder import RunFolder
from tunery.runlist import find_run, list_runs, summarize
from tunery.studio.chat import ModelCache, answer_side_by_side, chat_targets
from tunery.studio.jobs import Jobs
from tunery.studio.served import Server

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "tunery_studio_token"


def create_app(runs_dir: str | Path, token: str | None = None, jobs: Jobs | None = None,
               cache: ModelCache | None = None, server: Server | None = None):
    """The FastAPI app over `runs_dir`. With `token`, every request must carry it (header `Authorization:
    Bearer TOKEN`, the cookie set by opening `/?token=TOKEN`, or `?token=` itself). With `server`, the
    chat pane can ask that server's models too."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles

    runs_dir = Path(runs_dir)
    app = FastAPI(title="tunery studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.jobs = jobs or Jobs(runs_dir)
    app.state.cache = cache or ModelCache()
    app.state.runs_dir = runs_dir

    @app.middleware("http")
    async def check_token(request: Request, call_next):
        if token is None:
            if not _loopback_host(request.headers.get("host", "")):
                # Without a token the studio serves this machine only; a page of another site whose name
                # was pointed at 127.0.0.1 (DNS rebinding) sends its own name here and is refused.
                return JSONResponse({"error": "this studio answers requests to 127.0.0.1 or localhost only "
                                     "(start it with --token to serve other names)"}, status_code=403)
            return await call_next(request)
        given = _given_token(request)
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"error": "this studio needs its token: open /?token=TOKEN, or send "
                                 "'Authorization: Bearer TOKEN'"}, status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):  # remember it, so the page's own requests carry it
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(TuneryError)
    async def tunery_error(_request, exc: TuneryError):
        return JSONResponse({"error": exc.render()}, status_code=400)

    @app.get("/")
    def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_run_routes(app, runs_dir)
    _add_action_routes(app, runs_dir, server)
    return app


def _add_run_routes(app, runs_dir: Path) -> None:
    """Read-only routes: the run list, a run, its metrics and eval report, and comparisons."""
    from fastapi import Query
    from fastapi.responses import FileResponse, JSONResponse

    @app.get("/api/runs")
    def runs():
        listed = [_with_job(r.to_json(), app.state.jobs) for r in list_runs(runs_dir)]
        return {"runs_dir": str(runs_dir), "runs": listed}

    @app.get("/api/runs/{name}")
    def run(name: str):
        if _starting(app.state.jobs, runs_dir, name):  # started here, no folder yet: loading the model
            job = app.state.jobs.get(name)
            return {"summary": {"name": name, "status": "starting", "step": None, "total_steps": None},
                    "info": {}, "config": {}, "eval": None, "has_report": False, "job": job.to_json(),
                    "log": app.state.jobs.log_tail(name)}
        root = _run_root(runs_dir, name)
        job = app.state.jobs.get(root.name)
        return {"summary": _with_job(summarize(root).to_json(), app.state.jobs), "info": RunFolder(root).read_info(),
                "config": _plain_config(root), "eval": eval_table(root),
                "has_report": (root / "report.html").is_file(), "job": job.to_json() if job else None,
                "log": app.state.jobs.log_tail(root.name)}

    @app.get("/api/runs/{name}/metrics")
    def metrics(name: str, since: int = Query(0, ge=0)):
        if _starting(app.state.jobs, runs_dir, name):
            return {"total": 0, "records": []}
        records = RunFolder(_run_root(runs_dir, name)).read_metrics()
        return {"total": len(records), "records": records[since:]}

    @app.get("/runs/{name}/report")
    def report(name: str):
        path = _run_root(runs_dir, name) / "report.html"
        if not path.is_file():
            return JSONResponse({"error": f"{name} has no eval report yet: run `tunery eval {path.parent} "
                                 "--data HELDOUT.jsonl` to make one"}, status_code=404)
        return FileResponse(path, media_type="text/html")

    @app.get("/api/compare")
    def compare(runs: list[str] = Query(...)):
        from tunery.eval.compare import compare_runs

        roots = [_run_root(runs_dir, name) for name in runs]
        if len(roots) < 2:
            raise TuneryError("compare needs two or more runs")
        table = compare_runs([str(r) for r in roots])
        return {"names": [r.name for r in roots], "rows": table["rows"],
                "metrics": {r.name: RunFolder(r).read_metrics() for r in roots},
                "eval": {r.name: eval_table(r) for r in roots}}



def _add_action_routes(app, runs_dir: Path, server: Server | None) -> None:
    """Routes that do something: check and start a run from the form, stop, resume, chat."""
    from fastapi import Body

    @app.get("/api/schema")
    def schema():
        from tunery.config.schema import TrainConfig

        return TrainConfig.model_json_schema()

    @app.post("/api/check")
    def check(values: dict = Body(...), extra: list[str] = Body([])):
        from tunery.studio.jobs import check_config

        config = check_config(values, extra, runs_dir)
        return {"ok": True, "name": config.output.name, "config": config.model_dump(mode="json")}

    @app.post("/api/train")
    def train(values: dict = Body(...), extra: list[str] = Body([])):
        return app.state.jobs.start(values, extra).to_json()

    @app.post("/api/runs/{name}/stop")
    def stop(name: str):
        return {"name": name, "signalled": app.state.jobs.stop(_run_root(runs_dir, name).name)}

    @app.post("/api/runs/{name}/resume")
    def resume(name: str):
        return app.state.jobs.resume(_run_root(runs_dir, name).name).to_json()

    @app.get("/api/jobs")
    def jobs_list():
        return {"jobs": app.state.jobs.listed()}

    @app.get("/api/served")
    def served_models():
        return {"url": server.url if server else None, "models": server.models() if server else []}

    @app.post("/api/chat")
    def chat(prompt: str = Body(...), runs: list[str] = Body([]), base: bool = Body(True),
             system: str | None = Body(None), max_new_tokens: int = Body(64, ge=1, le=1024),
             served: list[str] = Body([])):
        if not runs and not served:
            raise TuneryError("choose at least one run (or served model) to chat with")
        targets = chat_targets(runs_dir, [_run_root(runs_dir, n).name for n in runs], base)
        return {"answers": answer_side_by_side(app.state.cache, targets, prompt, system, max_new_tokens,
                                               server, served)}


def _loopback_host(host_header: str) -> bool:
    name = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    return name.strip("[]").lower() in ("127.0.0.1", "localhost", "::1")


def _given_token(request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.query_params.get("token") or request.cookies.get(COOKIE)


def _with_job(summary: dict, jobs: Jobs) -> dict:
    """A run the studio started that ended before describing itself (a data error while loading, say)
    has only its folder: it failed, and the last line of its output says why."""
    job = jobs.get(summary["name"])
    summary["studio_job"] = job is not None and job.returncode() is None
    if summary["status"] == "starting" and job is not None and job.returncode() not in (None, 0):
        lines = [line for line in jobs.log_tail(summary["name"]).splitlines() if line.strip()]
        summary["status"] = "failed"
        summary["error"] = next((line for line in reversed(lines) if line.startswith("error:")),
                                lines[-1] if lines else f"exit code {job.returncode()}")
    return summary


def _starting(jobs: Jobs, runs_dir: Path, name: str) -> bool:
    return jobs.get(name) is not None and not (runs_dir / name).exists()


def _run_root(runs_dir: Path, name: str) -> Path:
    """A run directly under runs_dir: names with a path separator or a leading dot are not runs."""
    if "/" in name or "\\" in name or name.startswith("."):
        raise TuneryError(f"'{name}' is not a run name")
    if not (runs_dir / name).exists():
        raise TuneryError(f"no run named '{name}' in {runs_dir}")
    return find_run(runs_dir, str(runs_dir / name))


def _plain_config(root: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load(RunFolder(root).config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def eval_table(root: Path) -> dict | None:
    """The run's eval.json in brief: each system's mean score per grader, answer loss and best."""
    try:
        result = json.loads((root / "eval.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    systems = [{"name": row["system"]["name"],
                "scores": {g: row.get("scores", {}).get(g, {}).get("mean") for g in result.get("graders", [])},
                "loss": (row.get("loss") or {}).get("loss")} for row in result.get("systems", [])]
    return {"graders": result.get("graders", []), "primary": result.get("primary"), "best": result.get("best"),
            "n_examples": result.get("n_examples"), "systems": systems}
