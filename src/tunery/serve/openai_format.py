"""Answers in OpenAI's shapes: chat.completion and text_completion objects, their streamed chunks
(server-sent events), usage counts and log-probabilities."""

from __future__ import annotations

import json

from tunery.serve.sampling import TokenLogprob


def sse(payload: dict | str) -> str:
    """One server-sent event: `data: <json>` and a blank line (`[DONE]` ends a stream)."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def token_text(tokenizer, token: int) -> str:
    return tokenizer.decode([token], skip_special_tokens=False)


def _entry(tokenizer, token: int, logprob: float) -> dict:
    text = token_text(tokenizer, token)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokenizer, entries: list[TokenLogprob]) -> dict:
    """`choices[i].logprobs` of a chat answer: one entry per token with its top alternatives."""
    content = []
    for e in entries:
        item = _entry(tokenizer, e.token, e.logprob)
        item["top_logprobs"] = [_entry(tokenizer, t, lp) for t, lp in e.top]
        content.append(item)
    return {"content": content, "refusal": None}


def completion_logprobs(tokenizer, entries: list[TokenLogprob], offset: int = 0) -> dict:
    """`choices[i].logprobs` of a text completion (the legacy shape: parallel lists)."""
    tokens = [token_text(tokenizer, e.token) for e in entries]
    offsets, at = [], offset
    for text in tokens:
        offsets.append(at)
        at += len(text)
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{token_text(tokenizer, t): lp for t, lp in e.top} for e in entries],
            "text_offset": offsets}


def chat_response(job, tokenizer, want_logprobs: bool) -> dict:
    choices = []
    for c in job.choices:
        choices.append({"index": c.index, "message": {"role": "assistant", "content": c.text, "refusal": None},
                        "logprobs": chat_logprobs(tokenizer, c.logprobs) if want_logprobs else None,
                        "finish_reason": c.finish_reason})
    return {"id": job.id, "object": "chat.completion", "created": job.created, "model": job.model,
            "choices": choices, "usage": usage(job.prompt_tokens, job.completion_tokens),
            "system_fingerprint": None}


def completion_response(job, tokenizer, want_logprobs: bool) -> dict:
    choices = [{"index": c.index, "text": c.text, "finish_reason": c.finish_reason,
                "logprobs": completion_logprobs(tokenizer, c.logprobs) if want_logprobs else None}
               for c in job.choices]
    return {"id": job.id, "object": "text_completion", "created": job.created, "model": job.model,
            "choices": choices, "usage": usage(job.prompt_tokens, job.completion_tokens),
            "system_fingerprint": None}


def chat_chunk(job, choices: list[dict], with_usage: bool = False) -> dict:
    chunk = {"id": job.id, "object": "chat.completion.chunk", "created": job.created, "model": job.model,
             "system_fingerprint": None, "choices": choices}
    if with_usage:
        chunk["usage"] = None
    return chunk


def chat_delta(index: int, content: str | None = None, role: bool = False, finish_reason: str | None = None,
               logprobs: dict | None = None) -> dict:
    delta = {"role": "assistant"} if role else {}
    if content is not None:
        delta["content"] = content
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def completion_chunk(job, index: int, text: str, finish_reason: str | None, logprobs: dict | None) -> dict:
    return {"id": job.id, "object": "text_completion", "created": job.created, "model": job.model,
            "system_fingerprint": None,
            "choices": [{"index": index, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}]}


def usage_chunk(job, obj: str) -> dict:
    """The last chunk when `stream_options.include_usage` is set: no choices, the request's usage."""
    return {"id": job.id, "object": obj, "created": job.created, "model": job.model, "system_fingerprint": None,
            "choices": [], "usage": usage(job.prompt_tokens, job.completion_tokens)}


def error_event(message: str, code: str | None, type: str = "server_error") -> dict:
    return {"error": {"message": message, "type": type, "param": None, "code": code}}
