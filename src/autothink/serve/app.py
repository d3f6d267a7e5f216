"""An OpenAI-compatible server over any `autothink.llm.Backend`, with AutoThink mode control.

    POST /v1/chat/completions   messages, n, temperature, top_p, max_tokens (or
                                max_completion_tokens), stop, seed, stream (+ stream_options.
                                include_usage), thinking and thinking_budget (top level or in
                                chat_template_kwargs), continue_final_message (vLLM's)
    GET  /v1/models
    GET  /health                200 {"status": "ok"}, 503 {"status": "draining"} while shutting down

Replies come from `autothink.inference.respond` (stop at `</answer>`, forced modes, prompt
directives, thinking budget). In a choice, `message.reasoning_content` holds the judge and the
thinking, `message.content` the answer (a reply not in the AutoThink format is all content), as
do the deltas of a stream (`data: {chunk}` lines, then `data: [DONE]`). Beyond OpenAI's schema
each choice carries `thinking_mode` (the mode the reply is in: "on", "off" or null), `thinking`
(the control applied: "auto", or the mode forced by the request or a prompt directive),
`raw_content` (the generated text with its tags; `HTTPBackend` reads it), `completion_tokens`
and `stop_reason`; `usage.completion_tokens_details.reasoning_tokens` counts judge and think
tokens. With `continue_final_message=true` the final assistant message is continued as is (raw
generation, as vLLM does; `content` is the new text).

Requests wait in one bounded queue (`max_queue`; beyond it: 429 with Retry-After) and run on one
worker thread; queued requests with the same parameters and no seed run as one batch (at most
`max_batch` conversations). Errors are OpenAI-style `{"error": {"message", "type", "param",
"code"}}`: 400 (bad request), 404 (unknown model), 429 (queue full), 502 (backend failed), 503
(draining), 500. On shutdown the server drains: new requests get 503, queued and running ones
finish, then it stops.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import threading
import time
import urllib.request
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from autothink.format import forced_prefix, parse
from autothink.inference import (
    ReasoningSplitter,
    Reply,
    respond,
    respond_stream,
    split_reasoning,
)
from autothink.llm import Backend, BackendError, Completion, SamplingParams

DEFAULT_MAX_TOKENS = 512
DEFAULT_MAX_QUEUE = 128
DEFAULT_MAX_BATCH = 32
MAX_N = 128
TEMPLATE_KWARGS = ("thinking", "thinking_budget")


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


# -- errors -----------------------------------------------------------------------------------
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


def _as_api_error(err: BaseException) -> APIError:
    """The HTTP error for an exception raised while generating."""
    if isinstance(err, APIError):
        return err
    if isinstance(err, (ValueError, TypeError)):  # e.g. thinking on a model without the AutoThink template
        return APIError(400, str(err))
    if isinstance(err, BackendError):
        return APIError(502, str(err), "backend_error")
    return APIError(500, f"generation failed: {type(err).__name__}: {err}", "server_error")


# -- scheduling -------------------------------------------------------------------------------
@dataclass(eq=False)
class Job:
    """One admitted request. `prefix` is set for a continued final message (raw generation).

    Results reach the request's event loop: a non-streaming job resolves `future` with its
    replies (or completions); a streaming job puts text pieces and then its reply (or
    completion, or an exception) into `events`.
    """

    conversation: list[dict]
    params: SamplingParams
    thinking: str
    budget: int | None
    prefix: str | None
    stream: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future | None = None
    events: asyncio.Queue | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def batch_key(self) -> tuple | None:
        """Jobs with equal keys run as one batch; None: alone (streams, continuations, seeded
        sampling, whose results must not depend on other requests)."""
        if self.stream or self.prefix is not None or self.params.seed is not None:
            return None
        return (self.params, self.thinking, self.budget)

    def _soon(self, fn) -> None:
        """Run `fn` on the request's event loop (from the worker thread)."""
        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody is listening
            self.loop.call_soon_threadsafe(fn)

    def resolve(self, result) -> None:
        self._soon(lambda: self.future.done() or self.future.set_result(result))  # done: the client left

    def fail(self, err: BaseException) -> None:
        if self.stream:
            self.emit(err)
        else:
            self._soon(lambda: self.future.done() or self.future.set_exception(err))

    def emit(self, item) -> None:
        self._soon(lambda: self.events.put_nowait(item))


class Scheduler:
    """A bounded queue of jobs and one worker thread that runs them, batching alike jobs.

    Args:
        max_queue: most jobs waiting (not counting the batch running); more → 429.
        max_batch: most conversations run together in one `respond` call.
        directives: whether prompt directives force the mode under thinking="auto".
    """

    def __init__(self, backend: Backend, max_queue: int = DEFAULT_MAX_QUEUE, max_batch: int = DEFAULT_MAX_BATCH,
                 directives: bool = True):
        for name, value in (("max_queue", max_queue), ("max_batch", max_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.backend, self.max_queue, self.max_batch, self.directives = backend, max_queue, max_batch, directives
        self.queue: deque[Job] = deque()
        self.running = 0
        self.draining = False
        self.batches = Counter()  # batch size -> count, for observability and tests
        self._seconds_per_job = 1.0
        self._closed = False
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="autothink-serve-worker", daemon=True)
                self._worker.start()

    def submit(self, job: Job) -> None:
        """Queue `job`. Raises `APIError` 503 while draining, 429 when the queue is full."""
        with self._cond:
            if self.draining:
                raise APIError(503, "the server is shutting down; retry on another replica", "service_unavailable")
            if len(self.queue) >= self.max_queue:
                wait = min(60, max(1, math.ceil(self._seconds_per_job * len(self.queue))))
                raise APIError(429, f"too many requests: {len(self.queue)} are waiting (max_queue={self.max_queue}); "
                               f"retry in about {wait} s", "rate_limit_error", headers={"Retry-After": str(wait)})
            self.queue.append(job)
            self._cond.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Refuse new jobs and wait until the queued and running ones are done; False on timeout."""
        with self._cond:
            self.draining = True
            return self._cond.wait_for(lambda: not self.queue and not self.running, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Drain, then stop the worker."""
        self.drain(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout)

    def _take(self) -> list[Job] | None:
        with self._cond:
            self._cond.wait_for(lambda: self.queue or self._closed)
            if not self.queue:
                return None
            batch = [self.queue.popleft()]
            key = batch[0].batch_key()
            if key is not None:
                for job in [j for j in self.queue if j.batch_key() == key][: self.max_batch - 1]:
                    self.queue.remove(job)
                    batch.append(job)
            self.running = len(batch)
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            start = time.monotonic()
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self.batches[len(batch)] += 1
                    per_job = (time.monotonic() - start) / len(batch)
                    self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * per_job
                    self.running = 0
                    self._cond.notify_all()

    def _run(self, batch: list[Job]) -> None:
        first = batch[0]
        try:
            if first.stream:
                if not first.cancelled.is_set():  # its client may have left while it waited
                    self._stream(first)
            elif first.prefix is not None:
                first.resolve(self.backend.generate([first.conversation], first.params, prefix=first.prefix)[0])
            else:
                replies = respond(self.backend, [j.conversation for j in batch], first.params, first.thinking,
                                  first.budget, self.directives)
                for job, group in zip(batch, replies):
                    job.resolve(group)
        except Exception as err:  # noqa: BLE001 - each client gets the reason, the worker keeps running
            for job in batch:
                job.fail(err)

    def _stream(self, job: Job) -> None:
        if job.prefix is not None:
            items = self.backend.stream(job.conversation, job.params, prefix=job.prefix)
        else:
            items = respond_stream(self.backend, job.conversation, job.params, job.thinking, job.budget,
                                   self.directives)
        with contextlib.closing(items):
            for item in items:
                if job.cancelled.is_set():
                    return
                job.emit(item)


# -- responses --------------------------------------------------------------------------------
def _usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int | None) -> dict:
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    if reasoning_tokens is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return usage


def _reply_fields(reply: Reply, requested: str | None) -> dict:
    """The non-OpenAI fields of a choice for `reply` (`requested`: the request's thinking)."""
    return {
        "thinking_mode": reply.mode,
        "thinking": reply.thinking,
        "raw_content": reply.text[len(forced_prefix(requested or "auto")):],
        "completion_tokens": reply.completion_tokens,
        "stop_reason": reply.stop_reason,
    }


def _completion_fields(c: Completion, prefix: str) -> dict:
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
            extra = _reply_fields(r, requested)
            reasoning_total += r.reasoning_tokens
        else:
            message = {"role": "assistant", "content": r.text}
            extra = _completion_fields(r, prefix or "")
        choices.append({"index": i, "message": message, "finish_reason": r.finish_reason, "logprobs": None, **extra})
    prompt_tokens = max((r.prompt_tokens for r in results), default=0)
    completion_tokens = sum(c["completion_tokens"] for c in choices)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(prompt_tokens, completion_tokens, None if prefix is not None else reasoning_total),
    }


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def stream_events(job: Job, model: str, requested: str | None, include_usage: bool) -> AsyncIterator[str]:
    """The SSE lines of a streaming job: a role chunk, delta chunks, a finish chunk, [usage], [DONE]."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}

    def chunk(delta: dict, finish_reason: str | None = None, **extra) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason, **extra}
        return _sse({**base, "choices": [choice]})

    def deltas(reasoning: str, content: str) -> Iterator[str]:
        if reasoning or content:
            yield chunk({k: v for k, v in (("reasoning_content", reasoning), ("content", content)) if v})

    splitter = None if job.prefix is not None else ReasoningSplitter()
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            item = await job.events.get()
            if isinstance(item, BaseException):
                err = _as_api_error(item)
                yield _sse(error_body(err.status, err.message, err.type, err.param))
                break
            if isinstance(item, str):
                for line in deltas(*(splitter.feed(item) if splitter else ("", item))):
                    yield line
                continue
            if splitter:
                for line in deltas(*splitter.finish()):
                    yield line
            if isinstance(item, Reply):
                extra, reasoning = _reply_fields(item, requested), item.reasoning_tokens
            else:
                extra, reasoning = _completion_fields(item, job.prefix), None
            yield chunk({}, item.finish_reason, **extra)
            if include_usage:
                usage = _usage(item.prompt_tokens, extra["completion_tokens"], reasoning)
                yield _sse({**base, "choices": [], "usage": usage})
            break
        yield _sse("[DONE]")
    finally:
        job.cancelled.set()  # also when the client disconnects mid-stream: the worker stops


@dataclass
class ServerStats:
    """Request counters (per path), requests in flight and the most ever in flight at once."""

    requests: Counter = field(default_factory=Counter)
    in_flight: int = 0
    peak_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


# -- app --------------------------------------------------------------------------------------
def _job_for(body: ChatCompletionRequest, default_max_tokens: int) -> Job:
    """Validate a request into a job (raises `APIError` 400)."""
    try:
        params = body.sampling_params(default_max_tokens)
        thinking = body.thinking_mode()
        budget = body.thinking_budget_tokens()
    except ValueError as err:
        raise APIError(400, str(err)) from None
    if body.stream and params.n > 1:
        raise APIError(400, "stream=true supports n=1 only", param="n")
    conversation, prefix = body.conversation(), None
    if body.continue_final_message:
        if body.add_generation_prompt:
            raise APIError(400, "continue_final_message=true needs add_generation_prompt=false",
                           param="add_generation_prompt")
        if conversation[-1]["role"] != "assistant":
            raise APIError(400, "continue_final_message=true needs a final assistant message", param="messages")
        if thinking not in (None, "auto") or budget is not None:
            raise APIError(400, "a continued message fixes the mode itself: thinking and thinking_budget do not "
                           "apply", param="thinking")
        conversation, prefix = conversation[:-1], conversation[-1]["content"]
    return Job(conversation, params, thinking or "auto", budget, prefix, bool(body.stream),
               asyncio.get_running_loop())


def create_app(backend: Backend, model_name: str | None = None, default_max_tokens: int = DEFAULT_MAX_TOKENS,
               max_queue: int = DEFAULT_MAX_QUEUE, max_batch: int = DEFAULT_MAX_BATCH,
               directives: bool = True) -> FastAPI:
    """The FastAPI app serving `backend` as model `model_name` (default: `backend.name`).

    `app.state.stats` is a `ServerStats`, `app.state.scheduler` the `Scheduler` (its worker runs
    while the app is served).
    """
    name = model_name or backend.name
    scheduler = Scheduler(backend, max_queue=max_queue, max_batch=max_batch, directives=directives)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            await run_in_threadpool(scheduler.close, 30)

    app = FastAPI(title="autothink", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.stats = stats = ServerStats()
    app.state.scheduler = scheduler

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
        return error_response(err.status, err.message, err.type, err.param, err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, err: StarletteHTTPException):
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return error_response(err.status_code, str(err.detail), kind)

    @app.get("/health")
    async def health():
        if scheduler.draining:
            return JSONResponse(status_code=503, content={"status": "draining", "model": name})
        return {"status": "ok", "model": name, "queued": len(scheduler.queue), "running": scheduler.running}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "autothink"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        if body.model and body.model != name:
            raise APIError(404, f"model {body.model!r} not found; this server serves {name!r}", "not_found_error", "model")
        job = _job_for(body, default_max_tokens)
        requested = body.thinking_mode()
        if job.stream:
            job.events = asyncio.Queue()
            scheduler.submit(job)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream_events(job, name, requested, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        job.future = job.loop.create_future()
        scheduler.submit(job)
        try:
            results = await job.future
        except Exception as err:  # noqa: BLE001 - mapped to the HTTP error
            raise _as_api_error(err) from None
        return completion_response(name, results, requested, job.prefix)

    return app


class DrainingServer(uvicorn.Server):
    """uvicorn's server, whose first Ctrl+C / SIGTERM drains `scheduler` (for up to `grace_s`)
    before uvicorn's own shutdown; a second signal skips the wait, a third forces the exit."""

    def __init__(self, config: uvicorn.Config, scheduler: Scheduler, grace_s: float):
        super().__init__(config)
        self.scheduler, self.grace_s = scheduler, grace_s
        self.drainer: threading.Thread | None = None

    def handle_exit(self, sig, frame) -> None:
        if self.drainer is not None:
            super().handle_exit(sig, frame)
            return
        self._captured_signals.append(sig)  # uvicorn re-raises it after shutdown, as for its own exits
        self.drainer = threading.Thread(target=self._drain_then_exit, name="autothink-drain", daemon=True)
        self.drainer.start()

    def _drain_then_exit(self) -> None:
        self.scheduler.drain(self.grace_s)
        self.should_exit = True


def serve(backend: Backend, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          grace_s: float = 60.0, **app_options) -> None:
    """Serve `backend` until interrupted; the first Ctrl+C (or SIGTERM) drains for up to `grace_s`.

    `app_options` go to `create_app` (`max_queue`, `max_batch`, `default_max_tokens`, ...).
    """
    app = create_app(backend, **app_options)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=grace_s)
    DrainingServer(config, app.state.scheduler, grace_s).run()


@contextlib.contextmanager
def running_server(app_or_backend: FastAPI | Backend, host: str = "127.0.0.1", port: int = 0,
                   startup_timeout_s: float = 30.0, grace_s: float = 30.0) -> Iterator[str]:
    """Run a server in a background thread; yield its base URL (`http://host:port`, no `/v1`).

    `port=0` picks a free port. Waits until `/health` answers; on exit the server drains (new
    requests get 503; queued and running ones finish, for up to `grace_s`) and stops.
    """
    app = app_or_backend if isinstance(app_or_backend, FastAPI) else create_app(app_or_backend)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    url = f"http://{host}:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=grace_s))
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
        scheduler = getattr(app.state, "scheduler", None)
        if scheduler is not None:
            scheduler.drain(grace_s)
        server.should_exit = True
        thread.join(timeout=grace_s + 5)
        sock.close()
