"""`autothink serve` over real HTTP on localhost with the `openai` client: the reasoning/content split,
forced modes, budgets, usage, SSE streaming (scripted backend for exact texts, the tiny model for
LocalBackend's token-by-token stream), the bounded queue and batching, bad requests, draining."""
import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import uvicorn

from autothink.inference.backend import Backend, BackendError
from autothink.inference.local import LocalBackend
from autothink.inference.respond import ControlOptions
from autothink.serve.app import DrainingServer, create_app, running_server
from helpers import varied_tiny
from scripted import SCRIPT, Scripted

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Q = [{"role": "user", "content": "Solve 3x = 36."}]


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30)


def post(url: str, body: bytes | dict, path="/v1/chat/completions"):
    """(status, headers, raw body) of a raw POST."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read().decode()


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def scripted():
    app = create_app(Scripted())
    with running_server(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def tiny(tokenizer):
    """(url, app, backend) of a server over a tiny AutoThink model with an untied random head; a forced mode
    is the template's prefix (this model never closes a judge of its own)."""
    model, tok = varied_tiny(tokenizer, autothink=True)
    backend = LocalBackend(model, tok, name="tiny")
    app = create_app(backend, controls=ControlOptions(forced_judge="empty"))
    with running_server(app) as url:
        yield url, app, backend


def collect(stream):
    """(reasoning, content, chunks, finish chunk choice, usage) of an openai chat stream."""
    reasoning, content, chunks, finish, usage = "", "", [], None, None
    for chunk in stream:
        chunks.append(chunk)
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
            content += choice.delta.content or ""
            if choice.finish_reason is not None:
                finish = choice
    return reasoning, content, chunks, finish, usage


# -- replies: split, modes, budget, usage -----------------------------------------------------
EXPECTED = {  # request extras -> (reasoning_content, content, thinking, mode, completion, reasoning tokens)
    "auto": ({}, "Two steps of algebra. \n\n3 x = 36 so x = 36 / 3 = 12 ", "x = 12 ", "auto", "on", 26, 16),
    # a forced mode follows the model's own judge: 4 judge tokens + </judge>, then the forced segments
    "off": ({"thinking": "off"}, "Two steps of algebra. ", "x = 12 ", "off", "off", 9, 4),
    "on+budget": ({"chat_template_kwargs": {"thinking": "on", "thinking_budget": 3}},
                  "Two steps of algebra. \n\n3 x = ", "x = 12 ", "on", "on", 12, 7),
    "budget": ({"thinking_budget": 5}, "Two steps of algebra. \n\n3 x = 36 so ", "x = 12 ", "auto", "on", 17, 9),
}


@pytest.mark.parametrize("case", EXPECTED)
def test_reply_split_modes_budget_and_usage(scripted, case):
    url, _ = scripted
    extra, reasoning, content, thinking, mode, completion_tokens, reasoning_tokens = EXPECTED[case]
    r = client(url).chat.completions.create(model="scripted", messages=Q, temperature=0, max_tokens=64,
                                            extra_body=extra)
    choice = r.choices[0]
    assert choice.message.content == content and choice.message.reasoning_content == reasoning
    assert (choice.thinking, choice.thinking_mode, choice.finish_reason) == (thinking, mode, "stop")
    assert r.usage.completion_tokens == completion_tokens == choice.completion_tokens
    assert r.usage.completion_tokens_details.reasoning_tokens == reasoning_tokens
    assert r.usage.prompt_tokens == 4 and r.usage.total_tokens == 4 + completion_tokens
    if case == "auto":
        assert choice.raw_content == SCRIPT


def test_directives_are_the_models_unless_the_server_forces_them_and_n_replies(scripted):
    ask = dict(model="scripted", n=3, max_tokens=64, messages=[{"role": "user", "content": "3x = 36? DO NOT THINK"}])
    r = client(scripted[0]).chat.completions.create(**ask)
    assert [(c.thinking, c.thinking_mode) for c in r.choices] == [("auto", "on")] * 3  # this model ignores it
    with running_server(create_app(Scripted(), controls=ControlOptions(force_directives=True))) as url:
        r = client(url).chat.completions.create(**ask)
    assert [(c.index, c.thinking, c.thinking_mode, c.message.content) for c in r.choices] == [
        (i, "off", "off", "x = 12 ") for i in range(3)]
    assert r.usage.completion_tokens == 27 and r.usage.completion_tokens_details.reasoning_tokens == 12


@pytest.mark.parametrize("case", EXPECTED)
def test_stream_equals_the_reply(scripted, case):
    url, _ = scripted
    extra, reasoning, content, thinking, mode, completion_tokens, reasoning_tokens = EXPECTED[case]
    stream = client(url).chat.completions.create(model="scripted", messages=Q, temperature=0, max_tokens=64,
                                                 stream=True, stream_options={"include_usage": True}, extra_body=extra)
    got_reasoning, got_content, chunks, finish, usage = collect(stream)
    assert (got_reasoning or None, got_content) == (reasoning, content)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert len({c.id for c in chunks}) == 1
    pieces = [c for c in chunks[1:] if c.choices and c.choices[0].finish_reason is None]
    assert len(pieces) >= 3  # token by token, not one piece at the end
    assert (finish.finish_reason, finish.thinking, finish.thinking_mode) == ("stop", thinking, mode)
    assert usage.completion_tokens == completion_tokens and usage.prompt_tokens == 4
    assert usage.completion_tokens_details.reasoning_tokens == reasoning_tokens
    assert chunks[-1].choices == []  # the usage chunk comes last


def test_sse_wire_format(scripted):
    url, _ = scripted
    status, headers, body = post(url, {"messages": Q, "stream": True, "thinking": "off"})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [line for line in body.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert "".join(p["choices"][0]["delta"].get("content", "") for p in payloads) == "x = 12 "
    assert not any("usage" in p for p in payloads)  # only with stream_options.include_usage


def test_stream_of_the_local_backend_is_incremental(tiny):
    url, _, _ = tiny
    c = client(url)
    kw = {"model": "tiny", "messages": Q, "temperature": 0, "max_tokens": 40,
          "extra_body": {"thinking": "on", "thinking_budget": 3}}
    reply = c.chat.completions.create(**kw)
    stream = c.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    reasoning, content, chunks, finish, usage = collect(stream)
    message = reply.choices[0].message
    assert (reasoning, content) == (message.reasoning_content, message.content)
    assert len(chunks) >= 20 and finish.finish_reason == reply.choices[0].finish_reason == "length"
    assert usage.completion_tokens == reply.usage.completion_tokens == 40
    assert usage.completion_tokens_details.reasoning_tokens == reply.usage.completion_tokens_details.reasoning_tokens
    # The first piece arrives long before the last one.
    start = time.monotonic()
    stream = c.chat.completions.create(model="tiny", messages=Q, temperature=0, max_tokens=300, stream=True,
                                       extra_body={"thinking": "off"})
    arrivals = [time.monotonic() - start for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert len(arrivals) > 100 and arrivals[0] < arrivals[-1] / 3


def test_a_client_leaving_a_stream_stops_generation(tiny):
    url, app, _ = tiny
    stream = client(url).chat.completions.create(model="tiny", messages=Q, max_tokens=1500, stream=True)
    for _, _chunk in zip(range(5), stream):
        pass
    stream.close()
    scheduler = app.state.scheduler
    wait_for(lambda: scheduler.running == 0, timeout=5)  # 1500 tokens would take much longer


def test_response_schema(tiny):
    url, _, _ = tiny
    status, _, raw = post(url, {"model": "tiny", "messages": Q, "n": 3, "max_tokens": 5, "seed": 1})
    body = json.loads(raw)
    assert status == 200
    assert body["object"] == "chat.completion" and body["model"] == "tiny" and body["id"].startswith("chatcmpl-")
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(c["message"]["role"] == "assistant" and c["finish_reason"] == "length" for c in body["choices"])
    assert len({c["message"]["content"] for c in body["choices"]}) == 3  # sampled, not copied
    usage = body["usage"]
    assert usage["completion_tokens"] == 15 and usage["prompt_tokens"] > 10
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


# -- bad requests -----------------------------------------------------------------------------
X = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    "body, needle",
    [
        (b'{"messages": [', "malformed JSON"),
        (b"not json at all", "malformed JSON"),
        ({"temperature": 0.5}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": X, "temperature": -1}, "temperature"),
        ({"messages": X, "top_p": 0}, "top_p"),
        ({"messages": X, "n": 0}, "n"),
        ({"messages": X, "max_tokens": 0}, "max_tokens"),
        ({"messages": X, "stop": [""]}, "stop"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user"}]}, "content"),
        ({"messages": X, "thinking": "maybe"}, "thinking"),
        ({"messages": X, "chat_template_kwargs": {"foo": 1}}, "chat_template_kwargs"),
        ({"messages": X, "thinking_budget": 0}, "thinking_budget"),
        ({"messages": X, "chat_template_kwargs": {"thinking_budget": "lots"}}, "thinking_budget must be an integer"),
        ({"messages": X, "thinking": "on", "chat_template_kwargs": {"thinking": "off"}}, "contradicts"),
        ({"messages": X, "thinking_budget": 3, "chat_template_kwargs": {"thinking_budget": 4}}, "contradicts"),
        ({"messages": X, "stream": True, "n": 2}, "n=1"),
        ({"messages": X, "stream": "yes please"}, "stream"),
        ({"messages": X, "continue_final_message": True, "add_generation_prompt": False}, "final assistant message"),
        ({"messages": X + [{"role": "assistant", "content": "a"}], "continue_final_message": True},
         "add_generation_prompt=false"),
        ({"messages": X + [{"role": "assistant", "content": "a"}], "continue_final_message": True,
          "add_generation_prompt": False, "thinking_budget": 4}, "do not apply"),
        # coerced types are refused
        ({"messages": X, "max_tokens": "8"}, "max_tokens"),
        ({"messages": X, "max_tokens": True}, "max_tokens"),
        ({"messages": X, "n": 2.0}, "n"),
        ({"messages": X, "temperature": True}, "temperature"),
        ({"messages": X, "stream": 1}, "stream"),
        # bounded: stop strings
        ({"messages": X, "stop": ["x"] * 17}, "at most 16 stop strings"),
        ({"messages": X, "stop": "x" * 257}, "at most 16 stop strings of at most 256 characters"),
        # what the server cannot honour is said, not ignored
        ({"messages": X, "functions": [{"name": "f"}]}, "legacy function calling"),
        ({"messages": X, "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": X, "logprobs": True}, "log-probabilities"),
        ({"messages": X, "presence_penalty": 0.5}, "presence penalty"),
        ({"messages": X, "n": 1000}, "n"),
        # today's thinking switches, checked like ours
        ({"messages": X, "chat_template_kwargs": {"enable_thinking": "no"}}, "enable_thinking must be a boolean"),
        ({"messages": X, "thinking": True, "chat_template_kwargs": {"enable_thinking": False}}, "contradicts"),
        ({"messages": X, "thinking_token_budget": 0}, "thinking_token_budget"),
    ],
)
def test_bad_requests_get_400_with_a_message(scripted, body, needle):
    url, _ = scripted
    status, _, payload = post(url, body)
    assert status == 400
    error = json.loads(payload)["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error" and error["code"] == 400


def test_unknown_model_and_paths(scripted):
    url, _ = scripted
    with pytest.raises(openai.NotFoundError, match="model 'nope' not found"):
        client(url).chat.completions.create(model="nope", messages=Q)
    assert get(url + "/v1/nothing")[0] == 404
    assert get(url + "/v1/models")[1]["data"][0]["id"] == "scripted"
    status, health = get(url + "/health")
    assert status == 200 and health["status"] == "ok" and health["model"] == "scripted"


class Failing(Backend):
    name = "failing"

    def __init__(self, err):
        self.err = err

    def _generate(self, conversations, params, thinking):
        raise self.err


@pytest.mark.parametrize("err, status, kind", [
    (ValueError("the chat template does not use `thinking`"), 400, "invalid_request_error"),
    (BackendError("upstream timed out"), 502, "backend_error"),
    (RuntimeError("out of memory"), 500, "server_error"),
])
def test_generation_errors_reach_the_client(err, status, kind):
    with running_server(create_app(Failing(err))) as url:
        code, _, payload = post(url, {"messages": Q})
        assert code == status and json.loads(payload)["error"]["type"] == kind
        assert str(err) in json.loads(payload)["error"]["message"]
        code, _, body = post(url, {"messages": Q, "stream": True})  # headers were sent: an error event
        events = [e for e in body.split("\n\n") if e]
        assert code == 200 and events[-1] == "data: [DONE]"
        assert json.loads(events[-2][6:])["error"]["code"] == status
        assert get(url + "/health")[0] == 200  # the server lives on


# -- queue bound, batching, draining ----------------------------------------------------------
def test_100_concurrent_requests_429_only_past_the_bound():
    gate = threading.Event()
    app = create_app(Scripted(gate=gate), max_queue=10)
    scheduler = app.state.scheduler
    with running_server(app) as url:
        c = client(url)

        def ask(i):
            try:
                return c.chat.completions.create(model="scripted", seed=i, max_tokens=64,
                                                 messages=[{"role": "user", "content": f"q{i}"}])
            except openai.APIStatusError as err:
                return err

        with ThreadPoolExecutor(100) as pool:
            futures = [pool.submit(ask, i) for i in range(100)]
            wait_for(lambda: sum(f.done() for f in futures) == 89)  # the rejections come back at once
            assert (len(scheduler.queue), scheduler.running) == (10, 1)
            gate.set()
            results = [f.result() for f in futures]
    ok = [r for r in results if not isinstance(r, Exception)]
    rejected = [r for r in results if isinstance(r, Exception)]
    assert len(ok) == 11 and all(r.choices[0].message.content == "x = 12 " for r in ok)
    assert len(rejected) == 89 and all(isinstance(r, openai.RateLimitError) and r.status_code == 429 for r in rejected)
    assert all("max_queue=10" in r.message and int(r.response.headers["Retry-After"]) >= 1 for r in rejected)
    assert app.state.stats.requests["/v1/chat/completions"] == 100


def test_alike_queued_requests_run_as_one_batch():
    gate = threading.Event()
    backend = Scripted(gate=gate)
    app = create_app(backend, max_batch=3)
    scheduler = app.state.scheduler
    prompts = ["first", "a b", "a b c", "a b c d", "a b c d e", "s1", "s2"]
    with running_server(app) as url:
        c = client(url)

        def ask(i):
            seed = {"seed": i} if prompts[i].startswith("s") else {}
            return c.chat.completions.create(model="scripted", max_tokens=64, messages=[{"role": "user", "content":
                                             prompts[i]}], **seed)

        with ThreadPoolExecutor(7) as pool:
            first = pool.submit(ask, 0)
            wait_for(lambda: scheduler.running == 1)
            rest = [pool.submit(ask, i) for i in range(1, 7)]
            wait_for(lambda: len(scheduler.queue) == 6)
            gate.set()
            results = [first.result()] + [f.result() for f in rest]
    assert [r.usage.prompt_tokens for r in results] == [1, 2, 3, 4, 5, 1, 1]  # each request got its own reply
    assert sorted(len(call[0]) for call in backend.calls) == [1, 1, 1, 1, 3]  # 4 alike: a batch of 3, then 1
    assert scheduler.batches == {1: 4, 3: 1}  # seeded requests never share a batch


def test_draining_finishes_admitted_requests_and_refuses_new_ones():
    gate = threading.Event()
    app = create_app(Scripted(gate=gate))
    scheduler = app.state.scheduler
    server = running_server(app)
    url = server.__enter__()
    c = client(url)
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(c.chat.completions.create, model="scripted", messages=Q, max_tokens=64)
        wait_for(lambda: scheduler.running == 1)
        queued = pool.submit(lambda: collect(c.chat.completions.create(model="scripted", messages=Q, stream=True,
                                                                       max_tokens=64)))
        wait_for(lambda: len(scheduler.queue) == 1)
        stopper = pool.submit(server.__exit__, None, None, None)
        wait_for(lambda: scheduler.draining)
        with pytest.raises(openai.APIStatusError, match="shutting down") as refused:
            c.chat.completions.create(model="scripted", messages=Q)
        assert refused.value.status_code == 503
        assert get(url + "/health") == (503, {"status": "draining", "model": "scripted"})
        gate.set()
        assert running.result().choices[0].message.content == "x = 12 "
        assert queued.result()[1] == "x = 12 "
        stopper.result(timeout=30)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/health", timeout=2)


def test_sigterm_drains_the_served_app():
    """`serve` runs `DrainingServer`: the first SIGTERM drains, then uvicorn shuts down."""
    gate = threading.Event()
    app = create_app(Scripted(gate=gate))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = DrainingServer(uvicorn.Config(app, log_level="warning"), app.state.scheduler, grace_s=20)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(client(url).chat.completions.create, model="scripted", messages=Q, max_tokens=64)
        wait_for(lambda: app.state.scheduler.running == 1)
        server.handle_exit(signal.SIGTERM, None)
        assert post(url, {"messages": Q})[0] == 503 and not server.should_exit
        gate.set()
        assert running.result().choices[0].finish_reason == "stop"
    thread.join(timeout=20)
    assert not thread.is_alive()
    sock.close()


@pytest.mark.parametrize("extra, mode", [
    ({"chat_template_kwargs": {"enable_thinking": False}}, "off"),  # Qwen3
    ({"chat_template_kwargs": {"enable_thinking": True}}, "on"),
    ({"thinking": False}, "off"),  # DeepSeek-V3.1
    ({"chat_template_kwargs": {"thinking": True}}, "on"),
])
def test_todays_thinking_switches(scripted, extra, mode):
    url, _ = scripted
    status, _, payload = post(url, {"messages": X, "max_tokens": 64, **extra})
    choice = json.loads(payload)["choices"][0]
    assert status == 200 and choice["thinking"] == mode and choice["thinking_mode"] == mode


def test_thinking_token_budget_is_vllms_name_for_the_budget(scripted):
    url, _ = scripted
    status, _, payload = post(url, {"messages": X, "max_tokens": 64, "thinking": "on", "thinking_token_budget": 2})
    assert status == 200 and json.loads(payload)["choices"][0]["message"]["reasoning"] is not None


def test_reasoning_goes_out_under_both_names(scripted):
    url, _ = scripted
    reply = client(url).chat.completions.create(model="scripted", messages=X, max_tokens=64,
                                                extra_body={"thinking": "on"})
    message = reply.choices[0].message
    assert message.reasoning and message.reasoning == message.reasoning_content
    chunks = list(client(url).chat.completions.create(model="scripted", messages=X, max_tokens=64, stream=True,
                                                      extra_body={"thinking": "on"}))
    deltas = [c.choices[0].delta for c in chunks if c.choices and getattr(c.choices[0].delta, "reasoning", None)]
    assert deltas and all(d.reasoning == d.reasoning_content for d in deltas)


def test_the_context_bounds_every_request(tiny):
    url, _, backend = tiny
    context = backend.context_length
    status, _, payload = post(url, {"messages": Q, "max_tokens": context})
    assert status == 400 and "context is 2048 tokens" in json.loads(payload)["error"]["message"]
    long = [{"role": "user", "content": "word " * (context + 10)}]
    status, _, payload = post(url, {"messages": long, "max_tokens": 1})
    assert status == 400 and "the prompt is" in json.loads(payload)["error"]["message"]
    # with no max_tokens the default is cut to what fits
    near = [{"role": "user", "content": "word " * (context - 40)}]
    status, _, payload = post(url, {"messages": near, "temperature": 0})
    body = json.loads(payload)
    assert status == 200 and body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] <= context


def test_a_client_that_leaves_a_non_streaming_request_stops_its_job(tiny):
    url, app, _ = tiny
    scheduler = app.state.scheduler
    body = json.dumps({"messages": Q, "max_tokens": 1500, "temperature": 1.0}).encode()
    parts = urllib.parse.urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    wait_for(lambda: scheduler.running == 1)
    sock.close()  # the client goes away
    wait_for(lambda: scheduler.running == 0, timeout=10)  # 1500 tokens would take much longer


def test_api_key_and_served_model_name(tokenizer):
    model, tok = varied_tiny(tokenizer, autothink=True)
    app = create_app(LocalBackend(model, tok, name="tiny"), model_name="my-model", api_key="s3cret")
    with running_server(app) as url:
        with pytest.raises(openai.AuthenticationError):
            client(url).models.list()
        authed = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0, timeout=30)
        assert [m.id for m in authed.models.list().data] == ["my-model"]
        assert authed.chat.completions.create(model="my-model", messages=Q, max_tokens=2).choices
        assert get(url + "/health")[0] == 200  # the health check needs no key


def test_shutdown_honours_the_grace_period_with_a_job_that_never_ends(tokenizer, capfd):
    """A generation that would run for minutes: past the grace period it is stopped, its client gets a 503,
    and the server is gone a moment later, without tracebacks."""
    model, tok = varied_tiny(tokenizer, autothink=True)
    app = create_app(LocalBackend(model, tok, name="tiny"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = DrainingServer(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5),
                            app.state.scheduler, grace_s=1)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started)
    with ThreadPoolExecutor(1) as pool:
        never = pool.submit(post, url, {"messages": Q, "max_tokens": 2000, "temperature": 1.0})
        wait_for(lambda: app.state.scheduler.running == 1)
        start = time.monotonic()
        server.handle_exit(signal.SIGTERM, None)
        status, _, payload = never.result(timeout=30)
    thread.join(timeout=30)
    assert not thread.is_alive() and time.monotonic() - start < 15  # 1 s of grace, not the 2000 tokens
    assert status == 503 and "shut down" in json.loads(payload)["error"]["message"]
    sock.close()
    assert "CancelledError" not in capfd.readouterr().err
