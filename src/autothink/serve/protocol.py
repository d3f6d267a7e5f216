"""The wire format of `autothink serve`: OpenAI's chat completion request (the subset served),
OpenAI-style errors, and the response bodies (`chat.completion`, stream chunks, usage)."""
from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autothink.format import forced_prefix, parse
from autothink.inference.backend import BackendError, Completion, SamplingParams
from autothink.inference.respond import Reply, split_reasoning
from autothink.tasks.tool_calls import TOOL_CALL, split_tool_calls

DEFAULT_MAX_TOKENS = 512
MAX_N = 128
MAX_STOP = 16  # stop strings per request (OpenAI allows 4)
MAX_STOP_CHARS = 256
# Accepted in chat_template_kwargs: ours, Qwen3's switch and vLLM's budget name.
TEMPLATE_KWARGS = ("thinking", "thinking_budget", "enable_thinking", "thinking_token_budget")
# Request fields of OpenAI's API this server cannot honour: a clear 400, never a silent 200 that ignores them.
UNSUPPORTED = {
    "functions": "legacy function calling (use tools)", "function_call": "legacy function calling (use tool_choice)",
    "response_format": "structured output (response_format)",
    "logprobs": "log-probabilities", "top_logprobs": "log-probabilities", "logit_bias": "logit_bias",
    "audio": "audio output", "prediction": "predicted outputs", "web_search_options": "web search",
}
StrictInt = Annotated[int, Field(strict=True)]
MAX_TOOLS = 128  # tools per request
MAX_TOOLS_CHARS = 64 * 1024  # their schemas as JSON


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


class CalledFunction(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field(max_length=MAX_TOOLS_CHARS)  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    id: str = Field(min_length=1, max_length=128)
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    """A request message: OpenAI's roles, an assistant's `tool_calls`, a tool result's `tool_call_id`."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _shape(self):
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content (only an assistant's tool calls may stand alone)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

    def as_dict(self) -> dict:
        content = self.content if isinstance(self.content, str) or self.content is None else "".join(
            p.text for p in self.content)
        message = {"role": "system" if self.role == "developer" else self.role, "content": content or ""}
        if self.tool_calls:
            message["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.role == "tool":
            message["tool_call_id"] = self.tool_call_id
            if self.name:
                message["name"] = self.name
        return message


class FunctionSchema(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolSchema(BaseModel):
    type: Literal["function"]
    function: FunctionSchema


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
    tools: list[ToolSchema] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = Field(None, strict=True)

    @field_validator("tools")
    @classmethod
    def _tools(cls, value):
        if value and len(json.dumps([t.model_dump(exclude_none=True) for t in value])) > MAX_TOOLS_CHARS:
            raise ValueError(f"the tool schemas are longer than {MAX_TOOLS_CHARS} characters of JSON")
        if value and len({t.function.name for t in value}) < len(value):
            raise ValueError("tool names must be unique")
        return value

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

    def tool_schemas(self) -> list[dict] | None:
        """The tools shown to the model: none without tools or with `tool_choice: none` (the model cannot call
        what it is not shown). Raises ValueError for a choice the server cannot force."""
        choice = self.tool_choice
        if choice not in (None, "auto", "none"):
            raise ValueError(f"tool_choice={json.dumps(choice)} is not supported: the model decides whether to call "
                             "a tool ('auto') or is shown none ('none')")
        if not self.tools or choice == "none":
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools]

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
                        prefix: str | None = None, tools: bool = False) -> dict:
    """A `chat.completion` object for the replies of one request (completions for a continuation); with
    `tools`, the `<tool_call>` blocks of the answer become `message.tool_calls` (finish_reason "tool_calls")."""
    choices, reasoning_total = [], 0
    for i, r in enumerate(results):
        finish_reason = r.finish_reason
        if isinstance(r, Reply):
            reasoning, content = split_reasoning(r.text)
            message = {"role": "assistant", "content": content, "reasoning": reasoning or None,
                       "reasoning_content": reasoning or None}
            extra = reply_fields(r, requested)
            reasoning_total += r.reasoning_tokens
        else:
            message = {"role": "assistant", "content": r.text}
            extra = completion_fields(r, prefix or "")
        if tools:
            text, calls = split_tool_calls(message["content"])
            if calls:
                message.update(content=text or None, tool_calls=calls)
                finish_reason = "tool_calls"
        choices.append({"index": i, "message": message, "finish_reason": finish_reason, "logprobs": None, **extra})
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


class ToolCallStream:
    r"""A stream's content with its `<tool_call>` blocks held back: text before the first block passes at once
    (a piece that may start the tag waits for the next), the rest is split into calls at the end.

    >>> s = ToolCallStream()
    >>> s.feed("Running it.\n<tool"), s.feed('_call>\n{"name": "f", "arguments": {}}\n</tool_call>')
    ('Running it.\n', '')
    >>> s.finish()[1][0]["function"]["name"]
    'f'
    """

    def __init__(self):
        self.buffer, self.holding = "", False

    def feed(self, text: str) -> str:
        self.buffer += text
        if self.holding:
            return ""
        at = self.buffer.find(TOOL_CALL)
        if at >= 0:
            out, self.buffer, self.holding = self.buffer[:at], self.buffer[at:], True
            return out
        keep = next((k for k in range(min(len(TOOL_CALL) - 1, len(self.buffer)), 0, -1)
                     if TOOL_CALL.startswith(self.buffer[-k:])), 0)
        out, self.buffer = self.buffer[:len(self.buffer) - keep], self.buffer[len(self.buffer) - keep:]
        return out

    def finish(self) -> tuple[str, list[dict]]:
        """(content still held, tool calls)."""
        if not self.holding:
            return self.buffer, []
        text, calls = split_tool_calls(self.buffer)
        return text, calls
