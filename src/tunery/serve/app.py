"""The FastAPI application: OpenAI's routes, plus health, metrics, feedback and model admin.

```
GET  /health                  200 while serving (no key needed)      GET /metrics   Prometheus text
GET  /v1/models[/NAME]        the served models                      POST /v1/feedback   rate an answer
POST /v1/chat/completions     chat, streamed or whole                POST /v1/completions   plain text
POST /v1/admin/models         serve another run {"path", "name"?}   DELETE /v1/admin/models/NAME
```
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations (Request) at
# definition time, from the function's own scope.
import asyncio
from dataclasses import dataclass

from tunery.errors import TuneryError
from tunery.serve.handlers import Limits, chat_completion, text_completion
from tunery.serve.http import CountRequests, KeyCheck, install_error_handlers, read_body
from tunery.serve.metrics import Metrics
from tunery.serve.protocol import AddModelRequest, ApiError, ChatRequest, CompletionRequest, FeedbackRequest, parse
from tunery.serve.registry import Registry
from tunery.serve.reqlog import RequestLog
from tunery.serve.scheduler import Scheduler


@dataclass
class ServerState:
    """Everything the routes share."""

    registry: Registry
    scheduler: Scheduler
    metrics: Metrics
    limits: Limits
    api_key: str | None = None
    log: RequestLog | None = None
    base: str | None = None  # the base LoRA runs added at run time are put on (--base)


def model_card(model) -> dict:
    return {"id": model.name, "object": "model", "created": model.created, "owned_by": "tunery",
            "root": model.source, "parent": model.parent, "max_model_len": model.max_context}


def build_app(state: ServerState):
    """The ASGI application of a server whose registry, scheduler and metrics are ready."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    app = FastAPI(title="tunery serve", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)

    @app.get("/health")
    async def health():
        status = "draining" if state.scheduler.draining else "ok"
        return JSONResponse({"status": status, "models": len(state.registry.listed())},
                            status_code=503 if state.scheduler.draining else 200)

    @app.get("/metrics")
    async def metrics():
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(m) for m in state.registry.listed()]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str):
        model = state.registry.get(name)
        if model is None:
            raise ApiError(404, f"the model '{name}' does not exist", param="model", code="model_not_found")
        return model_card(model)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await chat_completion(state, request, parse(ChatRequest, await read_body(request)))

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await text_completion(state, request, parse(CompletionRequest, await read_body(request)))

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        body = parse(FeedbackRequest, await read_body(request))
        return record_feedback(state, body)

    @app.post("/v1/admin/models")
    async def add_model(request: Request):
        admin_allowed(state)
        body = parse(AddModelRequest, await read_body(request))
        added = await add_run(state, body.path, body.name)
        return {"object": "list", "data": [model_card(m) for m in added]}

    @app.delete("/v1/admin/models/{name:path}")
    async def remove_model(name: str):
        admin_allowed(state)
        await on_engine_thread(state, lambda: _remove(state, name))
        return {"id": name, "object": "model", "deleted": True}

    return CountRequests(KeyCheck(app, state.api_key), state.metrics)


def admin_allowed(state: ServerState) -> None:
    if state.api_key is None:
        raise ApiError(403, "model admin needs the server to run with an API key (--api-key)",
                       type="permission_error", code="admin_disabled")


def record_feedback(state: ServerState, body: FeedbackRequest) -> dict:
    if state.log is None:
        raise ApiError(400, "feedback is kept in the request log: start the server with --log-requests FILE")
    if body.rating is None and body.correction is None and body.comment is None:
        raise ApiError(400, "send a rating (good | bad), a correction or a comment", param="rating")
    if not state.log.knows(body.id):
        raise ApiError(404, f"no logged answer has the id '{body.id}'", param="id", code="not_found")
    state.log.feedback(body.model_dump(exclude_none=True))
    return {"id": body.id, "object": "feedback", "recorded": True}


async def on_engine_thread(state: ServerState, task):
    """Run `task` between two engine steps; library errors become 4xx answers."""
    try:
        return await asyncio.wrap_future(state.scheduler.call(task))
    except KeyError as exc:
        raise ApiError(404, f"the model {exc} does not exist", code="model_not_found") from None
    except TuneryError as exc:
        raise ApiError(409, exc.render(), code="conflict") from None


async def add_run(state: ServerState, path: str, name: str | None) -> list:
    """Read a run (or base) off the event loop, then serve it between two steps."""
    try:
        prepared = await asyncio.to_thread(state.registry.prepare, path, name, state.base)
    except TuneryError as exc:
        raise ApiError(400, exc.render(), param="path") from None
    except OSError as exc:
        raise ApiError(400, f"cannot read {path}: {exc}", param="path") from None
    return await on_engine_thread(state, lambda: state.registry.install(prepared))


def _remove(state: ServerState, name: str) -> None:
    state.registry.remove(name)
