"""An OpenAI-compatible server over any `autothink.llm.Backend`, with AutoThink mode control.

    POST /v1/chat/completions   messages, n, temperature, top_p, max_tokens (or
                                max_completion_tokens), stop, seed, stream (+ stream_options.
                                include_usage), thinking and thinking_budget (top level or in
                                chat_template_kwargs), continue_final_message (vLLM's), tools
                                and tool_choice ("auto" or "none")
    GET  /v1/models
    GET  /health                200 {"status": "ok"}, 503 {"status": "draining"} while shutting down

Replies come from `autothink.inference.respond` (stop at `</answer>`, forced modes after the
model's own judge, thinking budget; `--force_directives`, `--forced_judge empty` and `--constrained`
apply to every request). In a choice, `message.reasoning` (and, under the name older vLLM and
DeepSeek clients read, `message.reasoning_content`) holds the judge and the
thinking, `message.content` the answer (a reply not in the AutoThink format is all content), as
do the deltas of a stream (`data: {chunk}` lines, then `data: [DONE]`). Beyond OpenAI's schema
each choice carries `thinking_mode` (the mode the reply is in: "on", "off" or null), `thinking`
(the control applied: "auto", or the mode forced by the request or, under `--force_directives`, a
prompt directive),
`raw_content` (the generated text with its tags; `HTTPBackend` reads it), `completion_tokens`
and `stop_reason`; `usage.completion_tokens_details.reasoning_tokens` counts judge and think
tokens. With `continue_final_message=true` the final assistant message is continued as is (raw
generation, as vLLM does; `content` is the new text).

Tools: the request's `tools` are rendered by the model's chat template (the Hermes `<tool_call>`
format `agent sft` trains; `autothink serve` gives a ChatML model without tool support that
template); the `<tool_call>` blocks of the answer come back as `message.tool_calls` (arguments as
JSON text) with `finish_reason: "tool_calls"`, a block that does not parse stays in `content`;
in a stream, text before the first block streams as usual and the calls arrive as one
`delta.tool_calls` chunk at the end. Assistant `tool_calls` and `tool` messages in the request
are rendered as the template renders them, so an agent framework drives the model turn by turn.
`tool_choice: "none"` shows no tools; "required" and a named function are a 400 (nothing forces
a call).

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
import dataclasses
import hmac
import os
import socket
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from autothink.format import install_chat_template
from autothink.inference.backend import Backend, SamplingParams
from autothink.inference.respond import ControlOptions, ReasoningSplitter, Reply
from autothink.inference.spec import make_backend
from autothink.inference.speculative import speculative_field
from autothink.serve.protocol import (
    DEFAULT_MAX_TOKENS,
    APIError,
    ChatCompletionRequest,
    ToolCallStream,
    as_api_error,
    completion_fields,
    completion_response,
    describe_validation,
    error_body,
    error_response,
    reply_fields,
    sse,
    usage_body,
)
from autothink.serve.scheduler import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_QUEUE,
    Job,
    Scheduler,
)
from autothink.tasks.tool_calls import ensure_tool_template


async def stream_events(job: Job, model: str, requested: str | None, include_usage: bool) -> AsyncIterator[str]:
    """The SSE lines of a streaming job: a role chunk, delta chunks, a finish chunk, [usage], [DONE]."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}

    def chunk(delta: dict, finish_reason: str | None = None, **extra) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason, **extra}
        return sse({**base, "choices": [choice]})

    calls = ToolCallStream() if job.tools else None

    def deltas(reasoning: str, content: str) -> Iterator[str]:
        content = calls.feed(content) if calls else content
        if reasoning or content:
            fields = (("reasoning", reasoning), ("reasoning_content", reasoning), ("content", content))
            yield chunk({k: v for k, v in fields if v})

    splitter = None if job.prefix is not None else ReasoningSplitter()
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            item = await job.events.get()
            if isinstance(item, BaseException):
                err = as_api_error(item)
                yield sse(error_body(err.status, err.message, err.type, err.param))
                break
            if isinstance(item, str):
                for line in deltas(*(splitter.feed(item) if splitter else ("", item))):
                    yield line
                continue
            if splitter:
                for line in deltas(*splitter.finish()):
                    yield line
            finish_reason = item.finish_reason
            if calls:
                text, tool_calls = calls.finish()
                if text:
                    yield chunk({"content": text})
                if tool_calls:
                    yield chunk({"tool_calls": [{"index": k, **c} for k, c in enumerate(tool_calls)]})
                    finish_reason = "tool_calls"
            if isinstance(item, Reply):
                extra, reasoning = reply_fields(item, requested), item.reasoning_tokens
            else:
                extra, reasoning = completion_fields(item, job.prefix), None
            yield chunk({}, finish_reason, **extra)
            if include_usage:
                usage = usage_body(item.prompt_tokens, extra["completion_tokens"], reasoning)
                yield sse({**base, "choices": [], "usage": usage})
            break
        yield sse("[DONE]")
    finally:
        job.cancelled.set()  # also when the client disconnects mid-stream: the worker stops


@dataclass
class ServeConfig(ControlOptions):
    """`autothink serve`: a model behind an OpenAI-compatible API (`/v1/chat/completions`, `/v1/models`, `/health`)."""

    model: str = field(default="smollm2-135m-instruct", metadata={"help": "embedded name, model dir or hub id"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8000, metadata={"help": "port to listen on"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, mps"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16, float16"})
    speculative: str = speculative_field()
    max_queue: int = field(default=DEFAULT_MAX_QUEUE, metadata={
        "help": "requests waiting at most; more get HTTP 429"})
    max_batch: int = field(default=DEFAULT_MAX_BATCH, metadata={
        "help": "alike queued requests run together, at most this many"})
    max_tokens: int = field(default=DEFAULT_MAX_TOKENS, metadata={"help": "default max_tokens of a request"})
    grace_seconds: float = field(default=60.0, metadata={
        "help": "on Ctrl+C / SIGTERM, how long to let queued and running requests finish (then they are stopped)"})
    served_model_name: str | None = field(default=None, metadata={
        "help": "the model name clients use (default: the model's directory or embedded name)"})
    api_key: str | None = field(default=None, metadata={
        "help": "require `Authorization: Bearer <key>` on /v1 requests (default: $AUTOTHINK_API_KEY, else none)"})


@dataclass
class ServerStats:
    """Request counters (per path), requests in flight and the most ever in flight at once."""

    requests: Counter = field(default_factory=Counter)
    in_flight: int = 0
    peak_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def _job_for(body: ChatCompletionRequest, default_max_tokens: int, backend: Backend, constrained: bool) -> Job:
    """Validate a request into a job (raises `APIError` 400): what it asks must be servable and bounded."""
    refused = body.refused()
    if refused:
        raise APIError(400, f"{refused[1]} is not supported by this server (field {refused[0]!r})", param=refused[0])
    try:
        params = dataclasses.replace(body.sampling_params(default_max_tokens), constrained=constrained)
        thinking = body.thinking_mode()
        budget = body.thinking_budget_tokens()
        tools = body.tool_schemas()
    except ValueError as err:
        raise APIError(400, str(err), param="tool_choice" if "tool_choice" in str(err) else None) from None
    if tools and not backend.supports_tools:
        raise APIError(400, f"this server's backend ({backend.name}) cannot show tools to its model", param="tools")
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
        if tools or conversation[-1].get("tool_calls"):
            raise APIError(400, "continue_final_message=true continues text: no tools, no final tool calls",
                           param="tools")
        conversation, prefix = conversation[:-1], conversation[-1]["content"]
    params = _within_context(backend, conversation, thinking or "auto", prefix, params, body.asked_max_tokens(),
                             tools)
    return Job(conversation, params, thinking or "auto", budget, prefix, bool(body.stream),
               asyncio.get_running_loop(), tools=tools)


def _within_context(backend: Backend, conversation: list[dict], thinking: str, prefix: str | None,
                    params: SamplingParams, asked: bool, tools: list[dict] | None = None) -> SamplingParams:
    """`params` with max_tokens fitting the model's context after the prompt (a default is lowered
    to fit; an explicit request that cannot fit is a 400, as OpenAI's API answers)."""
    context = backend.context_length
    if context is None:
        return params
    try:
        prompt = backend.prompt_tokens(conversation, None if prefix is not None else thinking, tools)
    except ValueError as err:  # the chat template cannot render these messages or tools
        raise APIError(400, str(err), param="messages") from None
    if prompt is None:
        return params
    prompt += len(prefix) if prefix else 0  # characters bound tokens from above
    if prompt >= context:
        raise APIError(400, f"the prompt is {prompt} tokens; this model's context is {context} tokens",
                       param="messages")
    room = context - prompt
    if params.max_tokens > room:
        if asked:
            raise APIError(400, f"this model's context is {context} tokens: {prompt} in the messages leave room for "
                           f"{room} completion tokens, not the {params.max_tokens} asked for", param="max_tokens")
        params = dataclasses.replace(params, max_tokens=room)
    return params


async def _cancel_when_gone(request: Request, job: Job, every_s: float = 0.2) -> None:
    while not job.future.done():
        if await request.is_disconnected():
            job.cancelled.set()
            return
        await asyncio.sleep(every_s)


def create_app(backend: Backend, model_name: str | None = None, default_max_tokens: int = DEFAULT_MAX_TOKENS,
               max_queue: int = DEFAULT_MAX_QUEUE, max_batch: int = DEFAULT_MAX_BATCH,
               controls: ControlOptions | None = None, api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving `backend` as model `model_name` (default: `backend.name`).

    With `api_key`, every `/v1/...` request must carry `Authorization: Bearer <api_key>` (else 401),
    as vLLM's `--api-key` does.

    `app.state.stats` is a `ServerStats`, `app.state.scheduler` the `Scheduler` (its worker runs
    while the app is served).
    """
    name = model_name or backend.name
    controls = controls or ControlOptions()
    if controls.constrained and not backend.supports_constrained:
        raise ValueError(f"--constrained needs a local model; {backend!r} cannot constrain decoding")
    scheduler = Scheduler(backend, max_queue=max_queue, max_batch=max_batch,
                          force_directives=controls.force_directives, forced_judge=controls.forced_judge)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.cancel_all()  # a drained server has nothing left; otherwise stop what remains now
            await run_in_threadpool(scheduler.close, 5)

    app = FastAPI(title="autothink", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.stats = stats = ServerStats()
    app.state.scheduler = scheduler

    @app.middleware("http")
    async def count(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/") and not hmac.compare_digest(
                request.headers.get("authorization", ""), f"Bearer {api_key}"):
            return error_response(401, "a valid API key is needed: Authorization: Bearer <key>",
                                  "authentication_error")
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
        message, param = describe_validation(err)
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
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        if body.model and body.model != name:
            raise APIError(404, f"model {body.model!r} not found; this server serves {name!r}", "not_found_error",
                           "model")
        job = _job_for(body, default_max_tokens, backend, controls.constrained)
        requested = body.thinking_mode()
        if job.stream:
            job.events = asyncio.Queue()
            scheduler.submit(job)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream_events(job, name, requested, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        job.future = job.loop.create_future()
        scheduler.submit(job)
        watch = asyncio.create_task(_cancel_when_gone(request, job))  # a client that leaves stops its job
        try:
            results = await job.future
        except Exception as err:  # noqa: BLE001 - mapped to the HTTP error
            raise as_api_error(err) from None
        finally:
            watch.cancel()
        return completion_response(name, results, requested, job.prefix, tools=bool(job.tools))

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
        if not self.scheduler.drain(self.grace_s):
            self.scheduler.cancel_all()  # the grace period is over: what still runs stops, its clients get 503
        self.should_exit = True


def serve(backend: Backend, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          grace_s: float = 60.0, **app_options) -> None:
    """Serve `backend` until interrupted; the first Ctrl+C (or SIGTERM) drains for up to `grace_s`.

    `app_options` go to `create_app` (`max_queue`, `max_batch`, `default_max_tokens`, ...).
    """
    app = create_app(backend, **app_options)
    # The drain has had the grace period already; uvicorn then only closes the (answered) connections.
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
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


def run_serve(config: ServeConfig) -> None:
    """Load `config.model` and serve it until interrupted."""
    backend = make_backend(config.model, device=config.device, dtype=config.dtype, speculative=config.speculative)
    install_chat_template(backend.tokenizer)
    try:
        ensure_tool_template(backend.tokenizer)  # a ChatML model without tool support gets the Hermes format
    except ValueError as err:
        print(f"serve: requests with tools will fail: {err}")
    serve(backend, host=config.host, port=config.port, grace_s=config.grace_seconds, max_queue=config.max_queue,
          max_batch=config.max_batch, default_max_tokens=config.max_tokens,
          controls=config,  # a ServeConfig is ControlOptions
          model_name=config.served_model_name, api_key=config.api_key or os.environ.get("AUTOTHINK_API_KEY"))
