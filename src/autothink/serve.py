"""A minimal OpenAI-compatible server over any `autothink.llm.Backend`.

    POST /v1/chat/completions   non-streaming; messages, n, temperature, top_p, max_tokens
                                (or max_completion_tokens), stop, seed, thinking or
                                chat_template_kwargs.thinking ("auto" | "on" | "off")
    GET  /v1/models
    GET  /health

Responses follow OpenAI's schema; each choice also carries `completion_tokens` (not in OpenAI's
schema; `HTTPBackend` uses it for exact per-sample token counts). Errors are OpenAI-style
`{"error": {"message", "type", "param", "code"}}` with status 400 (bad request), 404 (unknown
model) or 500. One generation runs at a time (`Generator`); the request schema, the generation
step and the response builder are separate so streaming, queue bounds and batching can replace
one piece each.
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from autothink.llm import Backend, BackendError, Completion, SamplingParams

DEFAULT_MAX_TOKENS = 512
MAX_N = 128


# -- request schema ---------------------------------------------------------------------------
class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_dict(self) -> dict:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


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
    chat_template_kwargs: dict[str, Any] | None = None
    stream: bool | None = False

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
            unknown = sorted(set(value) - {"thinking"})
            if unknown:
                raise ValueError(f"only 'thinking' is supported in chat_template_kwargs, got {unknown}")
            if value["thinking"] not in (None, "auto", "on", "off"):
                raise ValueError(f"thinking must be 'auto', 'on' or 'off', got {value['thinking']!r}")
        return value

    def conversation(self) -> list[dict]:
        return [m.as_dict() for m in self.messages]

    def thinking_mode(self) -> str | None:
        from_kwargs = (self.chat_template_kwargs or {}).get("thinking")
        if self.thinking and from_kwargs and self.thinking != from_kwargs:
            raise ValueError(f"thinking={self.thinking!r} contradicts chat_template_kwargs.thinking={from_kwargs!r}")
        return self.thinking or from_kwargs

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


# -- errors -----------------------------------------------------------------------------------
class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type, param


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None):
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": type, "param": param, "code": status}}
    )


def _describe_validation(err: RequestValidationError) -> tuple[str, str | None]:
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


# -- generation -------------------------------------------------------------------------------
class Generator:
    """Runs `Backend.generate` in a worker thread, one generation at a time."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._lock = threading.Lock()

    def _run(self, conversations, params, thinking):
        with self._lock:
            return self.backend.generate(conversations, params, thinking=thinking)

    async def generate(self, conversation: list[dict], params: SamplingParams, thinking: str | None) -> list[Completion]:
        return (await run_in_threadpool(self._run, [conversation], params, thinking))[0]


def completion_response(model: str, completions: list[Completion]) -> dict:
    prompt_tokens = max((c.prompt_tokens for c in completions), default=0)
    completion_tokens = sum(c.tokens for c in completions)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason,
                "logprobs": None,
                "completion_tokens": c.tokens,
            }
            for i, c in enumerate(completions)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


@dataclass
class ServerStats:
    """Request counters (per path), requests in flight and the most ever in flight at once."""

    requests: Counter = field(default_factory=Counter)
    in_flight: int = 0
    peak_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


# -- app --------------------------------------------------------------------------------------
def create_app(backend: Backend, model_name: str | None = None, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> FastAPI:
    """The FastAPI app serving `backend` as model `model_name` (default: `backend.name`).

    `app.state.stats` is a `ServerStats`.
    """
    name = model_name or backend.name
    app = FastAPI(title="autothink", docs_url=None, redoc_url=None)
    app.state.stats = stats = ServerStats()
    app.state.generator = generator = Generator(backend)

    @app.middleware("http")
    async def count(request: Request, call_next):
        with stats._lock:
            stats.requests[request.url.path] += 1
            stats.in_flight += 1
            stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        try:
            return await call_next(request)
        finally:
            with stats._lock:
                stats.in_flight -= 1

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, err: RequestValidationError):
        message, param = _describe_validation(err)
        return error_response(400, message, param=param)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, err: APIError):
        return error_response(err.status, err.message, err.type, err.param)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, err: StarletteHTTPException):
        return error_response(err.status_code, str(err.detail), "not_found_error" if err.status_code == 404 else "invalid_request_error")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "autothink"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        if body.stream:
            raise APIError(400, "stream=true is not supported yet", param="stream")
        if body.model and body.model != name:
            raise APIError(404, f"model {body.model!r} not found; this server serves {name!r}", "not_found_error", "model")
        try:
            params = body.sampling_params(default_max_tokens)
            thinking = body.thinking_mode()
        except ValueError as err:
            raise APIError(400, str(err)) from None
        try:
            completions = await generator.generate(body.conversation(), params, thinking)
        except (ValueError, TypeError) as err:  # e.g. thinking on a model without the AutoThink template
            raise APIError(400, str(err)) from None
        except BackendError as err:
            raise APIError(502, str(err), "backend_error") from None
        except Exception as err:  # noqa: BLE001 - the client gets the reason, the server keeps running
            raise APIError(500, f"generation failed: {type(err).__name__}: {err}", "server_error") from None
        return completion_response(name, completions)

    return app


def serve(backend: Backend, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **app_options) -> None:
    """Serve `backend` until interrupted (Ctrl+C)."""
    import uvicorn

    uvicorn.run(create_app(backend, **app_options), host=host, port=port, log_level=log_level)


@contextlib.contextmanager
def running_server(app_or_backend: FastAPI | Backend, host: str = "127.0.0.1", port: int = 0,
                   startup_timeout_s: float = 30.0) -> Iterator[str]:
    """Run a server in a background thread; yield its base URL (`http://host:port`, no `/v1`).

    `port=0` picks a free port. Waits until `/health` answers; on exit the server finishes the
    requests in flight and stops.
    """
    import uvicorn

    app = app_or_backend if isinstance(app_or_backend, FastAPI) else create_app(app_or_backend)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    url = f"http://{host}:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="autothink-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {url} did not become healthy within {startup_timeout_s:g} s")
            time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()

