"""The wire format of `autothink serve`: OpenAI's chat completion request (the subset served),
OpenAI-style errors, and the response bodies (`chat.completion`, stream chunks, usage)."""
from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from autothink.format import forced_prefix, parse
from autothink.inference.backend import BackendError, Completion, SamplingParams
from autothink.inference.respond import Reply, split_reasoning

DEFAULT_MAX_TOKENS = 512
MAX_N = 128
MAX_STOP = 16  # stop strings per request (OpenAI allows 4)
MAX_STOP_CHARS = 256
# Accepted in chat_template_kwargs: ours, Qwen3's switch and vLLM's budget name.
TEMPLATE_KWARGS = ("thinking", "thinking_budget", "enable_thinking", "thinking_token_budget")
# Request fields of OpenAI's API this server cannot honour: a clear 400, never a silent 200 that ignores them.
UNSUPPORTED = {
    "tools": "tool calling", "tool_choice": "tool calling", "functions": "function calling",
    "function_call": "function calling", "response_format": "structured output (response_format)",
    "logprobs": "log-probabilities", "top_logprobs": "log-probabilities", "logit_bias": "logit_bias",
    "audio": "audio output", "prediction": "predicted outputs", "web_search_options": "web search",
}
StrictInt = Annotated[int, Field(strict=True)]


def _thinking(value) -> str | None:
    """A thinking control as "auto" / "on" / "off": booleans (DeepSeek-V3.1's `thinking: true`) map to on/off."""
    if value is None or value in ("auto", "on", "off"):
        return value
    if isinstance(value, bool):
        return "on" if value else "off"
    raise ValueError(f"thinking must be 'auto', 'on', 'off' or a boolean, got {value!r}")


def _budget(value, name: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


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
    include_usage: bool = Field(False, strict=True)


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat completion request that the server implements.

    Unknown fields are ignored (as OpenAI clients send many optional ones) except the features
    listed in `UNSUPPORTED`, which get a 400; a null value means the default. Numbers and
    booleans are not coerced: `"8"` or `true` for `max_tokens` is a 400.
    """

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    n: StrictInt | None = Field(None, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: StrictInt | None = None
    thinking: Literal["auto", "on", "off"] | bool | None = None
    thinking_budget: StrictInt | None = Field(None, ge=1)
    thinking_token_budget: StrictInt | None = Field(None, ge=1)  # vLLM's name
    chat_template_kwargs: dict[str, Any] | None = None
    stream: bool | None = Field(False, strict=True)
    stream_options: StreamOptions | None = None
    continue_final_message: bool = Field(False, strict=True)
    add_generation_prompt: bool = Field(True, strict=True)

    @field_validator("temperature", "top_p", mode="before")
    @classmethod
    def _number(cls, value):
        if isinstance(value, bool) or (value is not None and not isinstance(value, (int, float))):
            raise ValueError(f"expected a number, got {value!r}")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value):
        values = [value] if isinstance(value, str) else value or []
        if any(not s for s in values):
            raise ValueError("stop strings must be non-empty")
        if len(values) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in values):
            raise ValueError(f"at most {MAX_STOP} stop strings of at most {MAX_STOP_CHARS} characters")
        return value

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_kwargs(cls, value):
        if value:
            unknown = sorted(set(value) - set(TEMPLATE_KWARGS))
            if unknown:
                raise ValueError(f"only {list(TEMPLATE_KWARGS)} are supported in chat_template_kwargs, got {unknown}")
            _thinking(value.get("thinking"))
            if value.get("enable_thinking") is not None and not isinstance(value["enable_thinking"], bool):
                raise ValueError(f"enable_thinking must be a boolean, got {value['enable_thinking']!r}")
            for name in ("thinking_budget", "thinking_token_budget"):
                _budget(value.get(name), name)
        return value

    def refused(self) -> tuple[str, str] | None:
        """(field, feature) of the first request field the server cannot honour, or None."""
        extra = self.model_extra or {}
        for name, feature in UNSUPPORTED.items():
            if extra.get(name) not in (None, False, [], {}):
                return name, feature
        for name in ("presence_penalty", "frequency_penalty"):
            if extra.get(name) not in (None, 0, 0.0):
                return name, name.replace("_", " ")
        return None

    def conversation(self) -> list[dict]:
        return [m.as_dict() for m in self.messages]

    def _merged(self, names: tuple[str, ...], normalize) -> object:
        """The one value the request gives under any of `names` (top level or chat_template_kwargs)."""
        kwargs = self.chat_template_kwargs or {}
        given = {}
        for name in names:
            for where, value in ((name, getattr(self, name, None)), (f"chat_template_kwargs.{name}", kwargs.get(name))):
                if value is not None:
                    given[where] = normalize(value)
        if len(set(given.values())) > 1:
            (a, x), (b, y) = list(given.items())[:2]
            raise ValueError(f"{a}={x!r} contradicts {b}={y!r}")
        return next(iter(given.values()), None)

    def thinking_mode(self) -> str | None:
        return self._merged(("thinking", "enable_thinking"), _thinking)

    def thinking_budget_tokens(self) -> int | None:
        return self._merged(("thinking_budget", "thinking_token_budget"), lambda v: _budget(v, "thinking_budget"))

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

    def asked_max_tokens(self) -> bool:
        return (self.max_completion_tokens or self.max_tokens) is not None


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
        "raw_content": reply.text.removeprefix(forced_prefix(requested or "auto")),  # the whole reply after its
        # own judge; after the forced prefix when the reply starts with it (`--forced_judge empty`)
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
            message = {"role": "assistant", "content": content, "reasoning": reasoning or None,
                       "reasoning_content": reasoning or None}
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
