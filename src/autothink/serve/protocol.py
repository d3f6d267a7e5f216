"""The wire format of `autothink serve`: OpenAI's chat completion request (the subset served),
OpenAI-style errors, and the response bodies (`chat.completion`, stream chunks, usage)."""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from autothink.format import forced_prefix, parse
from autothink.inference.backend import BackendError, Completion, SamplingParams
from autothink.inference.respond import Reply, split_reasoning

DEFAULT_MAX_TOKENS = 512
MAX_N = 128
TEMPLATE_KWARGS = ("thinking", "thinking_budget")



class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_dict(self) -> dict:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat completion request that the server implements.

    Unknown fields are ignored (as OpenAI clients send many optional ones); a null value means
    the default.
    """

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    n: int | None = Field(None, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    thinking: Literal["auto", "on", "off"] | None = None
    thinking_budget: int | None = Field(None, ge=1)
    chat_template_kwargs: dict[str, Any] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    continue_final_message: bool = False
    add_generation_prompt: bool = True

    @field_validator("stop")
    @classmethod
    def _stop(cls, value):
        values = [value] if isinstance(value, str) else value or []
        if any(not s for s in values):
            raise ValueError("stop strings must be non-empty")
        return value

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_kwargs(cls, value):
        if value:
            unknown = sorted(set(value) - set(TEMPLATE_KWARGS))
            if unknown:
                raise ValueError(f"only {list(TEMPLATE_KWARGS)} are supported in chat_template_kwargs, got {unknown}")
            if value.get("thinking") not in (None, "auto", "on", "off"):
                raise ValueError(f"thinking must be 'auto', 'on' or 'off', got {value['thinking']!r}")
            budget = value.get("thinking_budget")
            if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
                raise ValueError(f"thinking_budget must be an integer >= 1, got {budget!r}")
        return value

    def conversation(self) -> list[dict]:
        return [m.as_dict() for m in self.messages]

    def _merged(self, name: str):
        top, inner = getattr(self, name), (self.chat_template_kwargs or {}).get(name)
        if top is not None and inner is not None and top != inner:
            raise ValueError(f"{name}={top!r} contradicts chat_template_kwargs.{name}={inner!r}")
        return top if top is not None else inner

    def thinking_mode(self) -> str | None:
        return self._merged("thinking")

    def thinking_budget_tokens(self) -> int | None:
        return self._merged("thinking_budget")

    def sampling_params(self, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            n=self.n or 1,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            max_tokens=self.max_completion_tokens or self.max_tokens or default_max_tokens,
            stop=stop,
            seed=self.seed,
        )


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.headers = status, message, type, param, headers


def error_body(status: int, message: str, type: str = "invalid_request_error", param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": status}}


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   headers: dict[str, str] | None = None):
    return JSONResponse(status_code=status, content=error_body(status, message, type, param), headers=headers)


def describe_validation(err: RequestValidationError) -> tuple[str, str | None]:
    parts, param = [], None
    for e in err.errors():
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        if e.get("type") == "json_invalid":
            parts.append(f"malformed JSON body: {e.get('ctx', {}).get('error', e.get('msg'))}")
            continue
        where = ".".join(loc) or "body"
        param = param or where
        parts.append(f"{where}: {e.get('msg')}")
    return "; ".join(parts) or "invalid request", param


def as_api_error(err: BaseException) -> APIError:
    """The HTTP error for an exception raised while generating."""
    if isinstance(err, APIError):
        return err
    if isinstance(err, (ValueError, TypeError)):  # e.g. thinking on a model without the AutoThink template
        return APIError(400, str(err))
    if isinstance(err, BackendError):
        return APIError(502, str(err), "backend_error")
    return APIError(500, f"generation failed: {type(err).__name__}: {err}", "server_error")


def usage_body(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int | None) -> dict:
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    if reasoning_tokens is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return usage


def reply_fields(reply: Reply, requested: str | None) -> dict:
    """The non-OpenAI fields of a choice for `reply` (`requested`: the request's thinking)."""
    return {
        "thinking_mode": reply.mode,
        "thinking": reply.thinking,
        "raw_content": reply.text[len(forced_prefix(requested or "auto")):],
        "completion_tokens": reply.completion_tokens,
        "stop_reason": reply.stop_reason,
    }


def completion_fields(c: Completion, prefix: str) -> dict:
    return {"thinking_mode": parse(prefix + c.text).mode, "thinking": None, "raw_content": c.text,
            "completion_tokens": c.tokens, "stop_reason": c.stop_reason}


def completion_response(model: str, results: list[Reply] | list[Completion], requested: str | None = None,
                        prefix: str | None = None) -> dict:
    """A `chat.completion` object for the replies of one request (completions for a continuation)."""
    choices, reasoning_total = [], 0
    for i, r in enumerate(results):
        if isinstance(r, Reply):
            reasoning, content = split_reasoning(r.text)
            message = {"role": "assistant", "content": content, "reasoning_content": reasoning or None}
            extra = reply_fields(r, requested)
            reasoning_total += r.reasoning_tokens
        else:
            message = {"role": "assistant", "content": r.text}
            extra = completion_fields(r, prefix or "")
        choices.append({"index": i, "message": message, "finish_reason": r.finish_reason, "logprobs": None, **extra})
    prompt_tokens = max((r.prompt_tokens for r in results), default=0)
    completion_tokens = sum(c["completion_tokens"] for c in choices)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage_body(prompt_tokens, completion_tokens, None if prefix is not None else reasoning_total),
    }


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"
