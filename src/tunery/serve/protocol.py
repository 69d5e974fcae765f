"""The requests the server takes, typed and strict, and the errors it answers with.

Request bodies are validated by pydantic in strict mode: a string where a number belongs, an unknown
field or a value out of range is a 400 with an OpenAI-style error body that names the field, never a
500. Fields of OpenAI's API that tunery does not implement (tools, logit_bias, penalties ...) are
refused by name rather than ignored, so a client never gets something other than it asked for.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_STOP = 4
MAX_N = 8
MAX_TOP_LOGPROBS = 20


class ApiError(Exception):
    """An answer other than 200: status, message, and OpenAI's error type, param and code."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class JsonSchemaSpec(Strict):
    name: str = Field(min_length=1, max_length=64)
    schema_: dict | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    def normalised(self) -> dict | None:
        """None for plain text, else {"type": ..., "schema": ...} for the grammar compiler."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        if self.json_schema is None:
            raise ApiError(400, "response_format of type json_schema needs a json_schema object",
                           param="response_format.json_schema")
        return {"type": "json_schema", "schema": self.json_schema.schema_ or {}}


class StreamOptions(Strict):
    include_usage: bool | None = None


Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Seed = Annotated[int, Field(ge=-(2**63), lt=2**63)]
Stop = Union[str, Annotated[list[str], Field(max_length=MAX_STOP)]]
PositiveInt = Annotated[int, Field(ge=1)]
Zero = Annotated[float, Field(ge=0.0, le=0.0)]  # accepted only at the value that means "off"


class Common(Strict):
    """Fields both completion routes share."""

    model: str = Field(min_length=1)
    max_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    seed: Seed | None = None
    stop: Stop | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: Zero | None = None
    frequency_penalty: Zero | None = None

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatRequest(Common):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    response_format: ResponseFormat | None = None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def logprob_count(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(Common):
    prompt: Union[str, TokenIds, Annotated[list[str], Field(min_length=1)], Annotated[list[TokenIds], Field(min_length=1)]]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: Literal[False] | None = None
    best_of: Literal[1] | None = None
    suffix: None = None
    response_format: ResponseFormat | None = None

    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [p]
        return list(p)


class FeedbackRequest(Strict):
    id: str = Field(min_length=1, max_length=200)
    rating: Literal["good", "bad"] | None = None
    correction: str | None = None
    comment: str | None = Field(default=None, max_length=10_000)


class AddModelRequest(Strict):
    path: str = Field(min_length=1)
    name: str | None = Field(default=None, min_length=1, max_length=200)


def parse(kind: type[Strict], raw: bytes) -> Strict:
    """A request body as `kind`, or an ApiError(400) that says which field is wrong and why."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, or nesting deeper than Python recurses
        raise ApiError(400, f"the request body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    try:
        return kind.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply") from None


def validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"] if not _union_tag(part)) or None
    if first["type"] == "extra_forbidden":
        message = f"unrecognized request argument supplied: {where} (tunery does not support it)"
    elif first["type"] == "missing":
        message = f"missing required parameter: {where}"
    elif where in ("presence_penalty", "frequency_penalty"):
        message = f"{where} is not supported by tunery (only 0)"
    else:
        message = f"invalid value for {where}: {first['msg']}"
    return ApiError(400, message, param=where)


TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _union_tag(part) -> bool:
    """pydantic names the member of a union it tried ('str', 'list[TextPart]'); those are not fields."""
    return isinstance(part, str) and ("[" in part or part in TYPE_TAGS)
