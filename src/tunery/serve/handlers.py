"""What the two completion routes do: check a request against the model and the server's limits, turn
it into sequences for the engine, and answer whole or as a stream of server-sent events."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from tunery.serve.engine import Sequence
from tunery.grammar import GrammarError
from tunery.serve.jobs import Disconnected, Job
from tunery.serve.openai_format import (chat_chunk, chat_delta, chat_logprobs, chat_response, completion_chunk,
                                        completion_logprobs, completion_response, error_event, sse, usage_chunk)
from tunery.serve.protocol import ApiError, ChatRequest, CompletionRequest
from tunery.serve.sampling import SamplingParams, make_generator
from tunery.serve.scheduler import Draining, QueueFull
from tunery.serve.text import TextStream

COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass
class Limits:
    max_prompt_tokens: int = 2048
    max_tokens: int = 512
    retry_after: int = 1


def find_model(state, name: str):
    model = state.registry.get(name)
    if model is None:
        known = ", ".join(sorted(m.name for m in state.registry.listed()))
        raise ApiError(404, f"the model '{name}' does not exist; this server serves: {known}",
                       param="model", code="model_not_found")
    return model


def chat_prompt(model, request: ChatRequest) -> tuple[list[dict], list[int]]:
    """(the conversation as plain messages, its token ids by the model's own chat template)."""
    from jinja2 import TemplateError

    from tunery.inference import prompt_ids

    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in request.messages]
    if not model.tokenizer.chat_template:
        raise ApiError(400, f"the model '{model.name}' has no chat template; use /v1/completions", param="model")
    try:
        return messages, prompt_ids(model.tokenizer, messages)
    except (TemplateError, ValueError, TypeError, KeyError, IndexError) as exc:  # the template's own checks
        raise ApiError(400, f"the chat template of '{model.name}' cannot render these messages: "
                       f"{str(exc)[:300]}", param="messages") from None


def text_prompts(model, request: CompletionRequest) -> list[list[int]]:
    vocab = len(model.tokenizer)
    prompts = []
    for prompt in request.prompts():
        if isinstance(prompt, str):
            ids = model.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        else:
            if max(prompt) >= vocab:
                raise ApiError(400, f"token id {max(prompt)} is outside the vocabulary ({vocab} tokens)",
                               param="prompt")
            ids = list(prompt)
        if not ids:
            raise ApiError(400, "the prompt is empty", param="prompt")
        prompts.append(ids)
    return prompts


def token_budget(state, model, prompt_len: int, asked: int | None, default: int | None) -> int:
    """max_tokens for this request after the server's limits and the model's context length."""
    limits: Limits = state.limits
    context = min(model.max_context, limits.max_prompt_tokens + limits.max_tokens)
    if prompt_len > limits.max_prompt_tokens or prompt_len >= model.max_context:
        raise ApiError(400, f"the prompt has {prompt_len} tokens; this server takes at most "
                       f"{min(limits.max_prompt_tokens, model.max_context - 1)} for '{model.name}'",
                       param="messages", code="context_length_exceeded")
    if asked is not None and asked > limits.max_tokens:
        raise ApiError(400, f"max_tokens is {asked}; this server allows at most {limits.max_tokens}",
                       param="max_tokens")
    room = context - prompt_len
    if asked is not None and asked > room:
        raise ApiError(400, f"the prompt ({prompt_len} tokens) plus max_tokens ({asked}) exceeds the "
                       f"{context}-token context of '{model.name}'", param="max_tokens",
                       code="context_length_exceeded")
    return asked if asked is not None else min(default or limits.max_tokens, limits.max_tokens, room)


async def compiled_grammar(model, response_format):
    spec = response_format.normalised() if response_format is not None else None
    if spec is None:
        return None
    try:
        return await asyncio.to_thread(model.grammar().compile, spec)
    except GrammarError as exc:
        raise ApiError(400, f"response_format cannot be enforced: {exc}", param="response_format") from None


def start_job(state, model, prefix: str, prompts: list[list[int]], n: int, params: SamplingParams,
              grammar) -> Job:
    """Queue n sequences per prompt; 429 with Retry-After when the queue is full, 503 when draining."""
    job = Job(prefix, model.name, len(prompts) * n, sum(len(p) for p in prompts))
    for p, prompt in enumerate(prompts):
        for i in range(n):
            seed = None if params.seed is None else params.seed + i
            job.sequences.append(Sequence(
                prompt=prompt, params=params, adapter=model.adapter, stop_ids=frozenset(model.stop_ids),
                text=TextStream(model.tokenizer, params.stop), emit=job.sink, index=p * n + i,
                generator=None if params.greedy else make_generator(seed),
                matcher=model.grammar().matcher(grammar) if grammar is not None else None))
    try:
        state.scheduler.submit(model.engine, job.sequences)
    except QueueFull:
        state.metrics.rejected.labels(reason="queue_full").inc()
        raise ApiError(429, f"the server is busy ({state.scheduler.queued} requests waiting); retry later",
                       type="rate_limit_error", code="rate_limit_exceeded",
                       headers={"Retry-After": str(state.limits.retry_after)}) from None
    except Draining:
        raise ApiError(503, "the server is shutting down", type="server_error", code="server_shutdown") from None
    state.metrics.prompt_tokens.labels(model=model.name).inc(job.prompt_tokens)
    return job


def sampling(request, max_tokens: int, logprobs: int | None) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=1.0 if request.temperature is None else request.temperature,
                          top_p=1.0 if request.top_p is None else request.top_p, seed=request.seed,
                          stop=request.stop_strings(), logprobs=logprobs)


def finish(state, job: Job, model, route: str, record: dict | None) -> None:
    """Figures and the request log once every choice has ended."""
    state.metrics.completion_tokens.labels(model=model.name).inc(job.completion_tokens)
    end = job.finished or time.monotonic()
    state.metrics.latency.labels(route=route).observe(end - job.started)
    if job.first_token is not None:
        state.metrics.ttft.labels(route=route).observe(job.first_token - job.started)
    if state.log is not None and record is not None and job.error is None:
        state.log.exchange({"id": job.id, "model": model.name, "endpoint": route, **record,
                            "finish_reason": job.choices[0].finish_reason,
                            "latency_s": round(end - job.started, 4),
                            "usage": {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens}})


JOB_ERRORS = {"model_removed": (404, "invalid_request_error"), "server_shutdown": (503, "server_error"),
              "engine_error": (500, "server_error")}


def raise_job_error(job: Job) -> None:
    if job.error is not None:
        status, kind = JOB_ERRORS.get(job.error_code, (500, "server_error"))
        raise ApiError(status, job.error, type=kind, code=job.error_code)


async def wait_whole(job: Job, request) -> None:
    try:
        await job.wait(request.is_disconnected)
    except asyncio.CancelledError:
        job.cancel()
        raise
    except Disconnected:
        raise ApiError(400, "the client went away before the answer was ready") from None
    raise_job_error(job)


# -- the two routes ---------------------------------------------------------------------------------

async def chat_completion(state, request, body: ChatRequest):
    from fastapi.responses import JSONResponse

    model = find_model(state, body.model)
    messages, prompt = chat_prompt(model, body)
    max_tokens = token_budget(state, model, len(prompt), body.token_limit(), None)
    params = sampling(body, max_tokens, body.logprob_count())
    grammar = await compiled_grammar(model, body.response_format)
    job = start_job(state, model, "chatcmpl", [prompt], body.n or 1, params, grammar)
    record = {"messages": messages, "params": _params_record(params, body.response_format)}
    if body.stream:
        return _event_stream(_chat_events(state, job, model, record, params, _wants_usage(body)))
    await wait_whole(job, request)
    answer = chat_response(job, model.tokenizer, params.logprobs is not None)
    record["messages"] = messages + [{"role": "assistant", "content": job.choices[0].text}]
    if len(job.choices) > 1:
        record["choices"] = [c.text for c in job.choices]
    finish(state, job, model, "chat", record)
    return JSONResponse(answer)


def _wants_usage(body) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def _event_stream(events):
    """A streamed answer: server-sent events, never cached by a proxy."""
    from fastapi.responses import StreamingResponse

    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def text_completion(state, request, body: CompletionRequest):
    from fastapi.responses import JSONResponse

    model = find_model(state, body.model)
    prompts = text_prompts(model, body)
    max_tokens = min(token_budget(state, model, len(p), body.max_tokens, COMPLETION_DEFAULT_TOKENS) for p in prompts)
    params = sampling(body, max_tokens, body.logprobs)
    grammar = await compiled_grammar(model, body.response_format)
    job = start_job(state, model, "cmpl", prompts, body.n or 1, params, grammar)
    record = {"prompt": [model.tokenizer.decode(p) for p in prompts], "params": _params_record(params, None)}
    if body.stream:
        return _event_stream(_completion_events(state, job, model, record, params, _wants_usage(body)))
    await wait_whole(job, request)
    answer = completion_response(job, model.tokenizer, params.logprobs is not None)
    finish(state, job, model, "completions", record | {"completion": [c.text for c in job.choices]})
    return JSONResponse(answer)


def _params_record(params: SamplingParams, response_format) -> dict:
    return {"max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
            "seed": params.seed, "stop": list(params.stop),
            "response_format": response_format.type if response_format is not None else None}


async def _chat_events(state, job: Job, model, record: dict, params: SamplingParams, with_usage: bool):
    try:
        for i in range(len(job.choices)):
            yield sse(chat_chunk(job, [chat_delta(i, content="", role=True)]))
        while not job.done:
            delta = await job.next()
            if delta.error:
                job.cancel()
                yield sse(error_event(delta.error, delta.error_code))
                return
            logprobs = chat_logprobs(model.tokenizer, delta.logprobs) if params.logprobs is not None else None
            if delta.text or delta.logprobs:
                yield sse(chat_chunk(job, [chat_delta(delta.index, content=delta.text, logprobs=logprobs)]))
            if delta.finish_reason:
                yield sse(chat_chunk(job, [chat_delta(delta.index, finish_reason=delta.finish_reason)]))
        if with_usage:
            yield sse(usage_chunk(job, "chat.completion.chunk"))
        yield sse("[DONE]")
        record["messages"] = record["messages"] + [{"role": "assistant", "content": job.choices[0].text}]
        finish(state, job, model, "chat", record)
    finally:
        if not job.done:
            job.cancel()


async def _completion_events(state, job: Job, model, record: dict, params: SamplingParams, with_usage: bool):
    try:
        offsets = [0] * len(job.choices)
        while not job.done:
            delta = await job.next()
            if delta.error:
                job.cancel()
                yield sse(error_event(delta.error, delta.error_code))
                return
            logprobs = None
            if params.logprobs is not None:
                logprobs = completion_logprobs(model.tokenizer, delta.logprobs, offsets[delta.index])
            offsets[delta.index] += len(delta.text)
            if delta.text or delta.logprobs or delta.finish_reason:
                yield sse(completion_chunk(job, delta.index, delta.text, delta.finish_reason, logprobs))
        if with_usage:
            yield sse(usage_chunk(job, "text_completion"))
        yield sse("[DONE]")
        finish(state, job, model, "completions", record | {"completion": [c.text for c in job.choices]})
    finally:
        if not job.done:
            job.cancel()
