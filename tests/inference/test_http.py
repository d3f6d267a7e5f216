"""HTTPBackend against real HTTP servers on localhost: `autothink.serve` over a tiny model, and
scripted stdlib servers for retries and partial answers."""
import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from autothink.inference.backend import (
    Backend,
    BackendError,
    Completion,
    SamplingParams,
)
from autothink.inference.http import HTTPBackend
from autothink.inference.local import LocalBackend
from autothink.inference.respond import ControlOptions, respond
from autothink.serve import create_app, running_server
from helpers import varied_tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONVS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2? Answer with care."}],
    [{"role": "user", "content": "Tell me a story about a dragon who learned to count to ten."}],
]
GREEDY = SamplingParams(n=2, temperature=0, max_tokens=10)


@pytest.fixture(scope="module")
def local(tokenizer):
    """LocalBackend over a tiny AutoThink model with an untied random head (prompt-dependent output)."""
    model, tok = varied_tiny(tokenizer, autothink=True)
    return LocalBackend(model, tok, name="tiny")


@pytest.fixture(scope="module")
def server(local):
    """(base_url, app) of `autothink.serve` over the tiny model; stats are cumulative. Forced modes are the
    template's prefix (`--forced_judge empty`), so a forced request is one raw generation, as locally."""
    app = create_app(local, controls=ControlOptions(forced_judge="empty"))
    with running_server(app) as url:
        yield url, app


def chat_requests(app) -> int:
    return app.state.stats.requests["/v1/chat/completions"]


def post(url: str, body: bytes | dict, path="/v1/chat/completions"):
    """(status, parsed JSON) of a raw POST."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# -- against autothink.serve ------------------------------------------------------------------
def test_http_equals_local_greedy(server, local):
    url, app = server
    backend = HTTPBackend(url, max_retries=0)
    assert backend.name == "tiny"  # discovered from /v1/models
    for params in (GREEDY, SamplingParams(temperature=0, max_tokens=16, stop=("ing", "\n"))):
        expected = local.generate(CONVS, params)
        got = backend.generate(CONVS, params)
        assert got == expected  # texts, finish reasons, token counts
        assert len({g[0].text for g in got}) == len(CONVS)


def test_n_is_sent_in_one_request(server):
    url, app = server
    backend = HTTPBackend(url, model="tiny", max_retries=0)
    before = chat_requests(app)
    out = backend.generate(CONVS[:2], SamplingParams(n=4, temperature=1.0, max_tokens=6, seed=7))
    assert chat_requests(app) - before == 2
    assert [len(g) for g in out] == [4, 4]
    assert all(isinstance(c, Completion) and c.tokens == 6 and c.finish_reason == "length" for g in out for c in g)
    assert len({c.text for c in out[0]}) > 1
    # The seed reaches the server: the same request gives the same samples.
    assert backend.generate(CONVS[:2], SamplingParams(n=4, temperature=1.0, max_tokens=6, seed=7)) == out


def test_thinking_reaches_the_chat_template(server, local):
    url, _ = server
    backend = HTTPBackend(url, max_retries=0)
    params = SamplingParams(temperature=0, max_tokens=8)
    off = backend.generate(CONVS[:1], params, thinking="off")
    auto = backend.generate(CONVS[:1], params, thinking="auto")
    assert off == local.generate(CONVS[:1], params, thinking="off")
    assert off[0][0].prompt_tokens == auto[0][0].prompt_tokens + 4  # <judge></judge><think_off><answer>
    assert off[0][0].text != auto[0][0].text
    # The top-level `thinking` field is accepted too.
    status, body = post(url, {"messages": CONVS[0], "temperature": 0, "max_tokens": 8, "thinking": "off"})
    assert status == 200 and body["choices"][0]["message"]["content"] == off[0][0].text


def test_prefix_continues_the_reply_as_locally(server, local):
    """HTTPBackend sends the prefix as a continued final assistant message; the server continues it."""
    url, _ = server
    backend = HTTPBackend(url, max_retries=0)
    params = SamplingParams(temperature=0, max_tokens=8)
    for thinking, prefix in ((None, "Well, "), ("on", "first I note"), ("off", "4")):
        assert backend.generate(CONVS, params, thinking=thinking, prefix=prefix) == \
            local.generate(CONVS, params, thinking=thinking, prefix=prefix)


def test_stop_reason_crosses_http(server, local):
    url, _ = server
    free = local.generate(CONVS[:1], SamplingParams(temperature=0, max_tokens=12))[0][0]
    params = SamplingParams(temperature=0, max_tokens=12, stop=("qqq", free.text.split()[2]))
    got = HTTPBackend(url, max_retries=0).generate(CONVS[:1], params)
    assert got == local.generate(CONVS[:1], params) and got[0][0].stop_reason == params.stop[1]


@pytest.mark.parametrize("thinking, budget, judge", [("auto", 3, "model"), ("on", 4, "model"), ("on", 4, "empty"),
                                                     ("off", None, "model")])
def test_respond_over_http_equals_respond_in_process(server, local, thinking, budget, judge):
    """Staged replies over HTTP (the model's own judge, a thinking budget): each stage continues the reply
    through continue_final_message."""
    url, _ = server
    params = SamplingParams(temperature=0, max_tokens=16)
    convs = CONVS + [[{"role": "user", "content": "Think deeper: why is the sky blue?"}]]
    kw = dict(force_directives=True, forced_judge=judge)
    remote = respond(HTTPBackend(url, max_retries=0), convs, params, thinking, budget, **kw)
    here = respond(local, convs, params, thinking, budget, **kw)
    for (a,), (b,) in zip(remote, here):
        assert (a.text, a.completion_tokens, a.finish_reason, a.budget_hit, a.thinking) == \
            (b.text, b.completion_tokens, b.finish_reason, b.budget_hit, b.thinking)
    assert here[-1][0].thinking == ("on" if thinking == "auto" else thinking)  # the directive, under auto
    if judge == "empty":  # this random model never closes a judge of its own: only the prefill reaches the budget
        assert all(r[0].budget_hit for r in here)
    elif thinking != "auto":
        assert all(r[0].text.startswith("<judge>") for r in here)


def test_server_error_reaches_the_client(server):
    url, app = server
    before = chat_requests(app)
    with pytest.raises(BackendError, match=r"HTTP 404.*model 'nope' not found"):
        HTTPBackend(url, model="nope", max_retries=3).generate(CONVS[:1], GREEDY)
    assert chat_requests(app) - before == 1  # a 4xx is not retried


class Slow(Backend):
    """A backend that takes a while: concurrent HTTP requests pile up at the server."""

    name = "slow"

    def _generate(self, conversations, params, thinking):
        time.sleep(0.05)
        return [[Completion(f"{c[-1]['content']}#{i}", "stop", 1) for i in range(params.n)] for c in conversations]


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrency_limit(limit):
    app = create_app(Slow())
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(8)]
    with running_server(app) as url:
        app.state.stats.peak_in_flight = 0
        out = HTTPBackend(url, max_concurrency=limit, max_retries=0).generate(convs, SamplingParams(n=2))
    assert [g[1].text for g in out] == [f"q{i}#1" for i in range(8)]  # order kept
    assert app.state.stats.requests["/v1/chat/completions"] == 8
    assert app.state.stats.peak_in_flight == limit  # never more, and the limit is used


def test_cache(server, tmp_path):
    url, app = server
    cache = tmp_path / "cache"
    backend = HTTPBackend(url, model="tiny", max_retries=0, cache_dir=cache)
    params = SamplingParams(n=2, temperature=0.7, max_tokens=6, seed=3)
    before = chat_requests(app)
    first = backend.generate(CONVS, params)
    assert chat_requests(app) - before == 3
    files = sorted(cache.glob("*/*.json"))
    assert len(files) == 3 and all(f.parent.name == f.stem[:2] for f in files)
    # A rerun, even from a new backend object, makes no request and returns the same completions.
    again = HTTPBackend(url, model="tiny", max_retries=0, cache_dir=cache).generate(CONVS, params)
    assert again == first and chat_requests(app) - before == 3
    # Any different parameter misses the cache.
    for other in (SamplingParams(n=2, temperature=0.7, max_tokens=6, seed=4),
                  SamplingParams(n=2, temperature=0.7, max_tokens=5, seed=3)):
        count = chat_requests(app)
        backend.generate(CONVS[:1], other)
        assert chat_requests(app) - count == 1
    count = chat_requests(app)
    backend.generate(CONVS[:1], params, thinking="off")
    assert chat_requests(app) - count == 1
    # A corrupted entry is ignored, re-requested and rewritten.
    for f in files:
        f.write_text('{"request": {"trunc')
    count = chat_requests(app)
    assert backend.generate(CONVS, params) == first  # seeded, so the server repeats itself
    assert chat_requests(app) - count == 3
    assert all(json.loads(f.read_text())["completions"] for f in files)
    assert not list(cache.glob("*/.*"))  # no temporary files left behind


def test_unreachable_url_fails_fast_with_the_url():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    backend = HTTPBackend(url, model="m", max_retries=2, timeout_s=2, max_backoff_s=0.01)
    start = time.monotonic()
    with pytest.raises(BackendError, match=f"could not reach {url}/v1 after 2 retries"):
        backend.generate(CONVS[:1], GREEDY)
    assert time.monotonic() - start < 5
    with pytest.raises(BackendError, match=f"{url}/v1"):  # model discovery too
        _ = HTTPBackend(url, max_retries=0).name


# -- against scripted stdlib servers ----------------------------------------------------------
def completion_body(texts, prompt_tokens=5, completion_tokens=None):
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
            for i, t in enumerate(texts)
        ],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens or 2 * len(texts),
                  "total_tokens": prompt_tokens + (completion_tokens or 2 * len(texts))},
    }


@contextlib.contextmanager
def scripted_server(respond):
    """A stdlib HTTP server; `respond(i, body) -> (status, headers, payload)` for the i-th POST."""
    seen = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                seen.append(body)
                i = len(seen) - 1
            status, headers, payload = respond(i, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            for k, v in {**headers, "Content-Type": "application/json", "Content-Length": str(len(data))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_openai_retry_hook_exists():
    """Contract: HTTPBackend caps the openai client's backoff through this private method."""
    assert callable(getattr(openai.OpenAI, "_calculate_retry_timeout", None))


def test_retries_429_then_503_then_success():
    script = [
        (429, {"Retry-After": "0"}, {"error": {"message": "slow down"}}),
        (503, {}, {"error": {"message": "overloaded"}}),
        (200, {}, completion_body(["hello"])),
    ]
    with scripted_server(lambda i, body: script[i]) as (url, seen):
        backend = HTTPBackend(url, model="m", max_retries=3, max_backoff_s=0.01)
        out = backend.generate(CONVS[:1], SamplingParams(max_tokens=4))
    assert out == [[Completion("hello", "stop", 2, 5)]]
    assert len(seen) == 3
    assert seen[0]["messages"] == CONVS[0] and seen[0]["max_tokens"] == 4 and seen[0]["model"] == "m"


def test_backoff_is_capped():
    def respond(i, body):
        return (503, {}, {"error": {"message": "overloaded"}}) if i < 4 else (200, {}, completion_body(["ok"]))

    with scripted_server(respond) as (url, seen):
        start = time.monotonic()
        out = HTTPBackend(url, model="m", max_retries=4, max_backoff_s=0.01).generate(CONVS[:1], SamplingParams())
        elapsed = time.monotonic() - start
    assert out[0][0].text == "ok" and len(seen) == 5
    assert elapsed < 3  # openai's own backoff would sleep >= 0.375 + 0.75 + 1.5 + 3 s


def test_retry_after_is_capped():
    script = [(429, {"Retry-After": "30"}, {"error": {"message": "later"}}), (200, {}, completion_body(["ok"]))]
    with scripted_server(lambda i, body: script[i]) as (url, seen):
        start = time.monotonic()
        out = HTTPBackend(url, model="m", max_retries=1, max_backoff_s=0.2).generate(CONVS[:1], SamplingParams())
        elapsed = time.monotonic() - start
    assert out[0][0].text == "ok" and len(seen) == 2
    assert 0.15 < elapsed < 5  # waited for the cap, not the 30 s asked for


def test_persistent_500_gives_a_clear_error():
    with scripted_server(lambda i, body: (500, {}, {"error": {"message": "boom"}})) as (url, seen):
        backend = HTTPBackend(url, model="m", max_retries=2, max_backoff_s=0.01)
        with pytest.raises(BackendError, match=rf"{url}/v1 failed with HTTP 500 after 2 retries: boom"):
            backend.generate(CONVS[:1], SamplingParams())
    assert len(seen) == 3


def test_4xx_is_not_retried_and_shows_the_message():
    with scripted_server(lambda i, body: (400, {}, {"error": {"message": "max_tokens is too large"}})) as (url, seen):
        with pytest.raises(BackendError, match="HTTP 400.*max_tokens is too large"):
            HTTPBackend(url, model="m", max_retries=3).generate(CONVS[:1], SamplingParams())
    assert len(seen) == 1


def test_missing_choices_are_filled_with_more_requests():
    # The server answers one choice per request, whatever n asks for.
    def respond(i, body):
        return 200, {}, completion_body([f"r{i}"], completion_tokens=3)

    with scripted_server(respond) as (url, seen):
        out = HTTPBackend(url, model="m", max_retries=0).generate(CONVS[:1], SamplingParams(n=3, seed=10))
    assert [c.text for c in out[0]] == ["r0", "r1", "r2"]
    assert [c.tokens for c in out[0]] == [3, 3, 3]
    assert [(b["n"], b["seed"]) for b in seen] == [(3, 10), (2, 11), (1, 12)]


def test_thinking_is_sent_as_chat_template_kwargs():
    with scripted_server(lambda i, body: (200, {}, completion_body(["x"]))) as (url, seen):
        backend = HTTPBackend(url, model="m", max_retries=0)
        backend.generate(CONVS[:1], SamplingParams(stop=("\n",)), thinking="off")
        backend.generate(CONVS[:1], SamplingParams())
    assert seen[0]["chat_template_kwargs"] == {"thinking": "off"} and seen[0]["stop"] == ["\n"]
    assert "chat_template_kwargs" not in seen[1] and "stop" not in seen[1] and "seed" not in seen[1]


def test_per_choice_token_counts_without_server_help():
    # Two choices and only a usage total: the total is split, and nothing is lost.
    with scripted_server(lambda i, body: (200, {}, completion_body(["a", "bbbbbbb"], completion_tokens=9))) as (url, _):
        out = HTTPBackend(url, model="m", max_retries=0).generate(CONVS[:1], SamplingParams(n=2))
    assert sum(c.tokens for c in out[0]) == 9 and out[0][0].tokens < out[0][1].tokens


def test_running_server_stops():
    with running_server(Slow()) as url:
        with urllib.request.urlopen(url + "/health") as r:
            assert r.status == 200
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/health", timeout=2)


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_a_reasoning_parsers_split_is_read_back(field):
    """vLLM with a reasoning parser answers `reasoning` (>= 0.16; `reasoning_content` before) beside the
    content: the teacher's reasoning is kept, in the <think> tags the model wrote it in."""
    body = completion_body(["The answer is 4."])
    body["choices"][0]["message"][field] = "2 + 2 = 4"
    with scripted_server(lambda i, _: (200, {}, body)) as (url, _):
        out = HTTPBackend(url, model="m", max_retries=0).generate(CONVS[:1], SamplingParams())
    assert out[0][0].text == "<think>2 + 2 = 4</think>The answer is 4."


def test_tools_are_sent_and_a_servers_tool_calls_come_back_as_the_models_text():
    """An agent episode over HTTP: the schemas go out as `tools`, the tool messages as OpenAI messages, and a
    server's parsed `tool_calls` return as `<tool_call>` text that the episode parses and executes."""
    from autothink.environments.coding import CodingEnvironment
    from autothink.environments.rollout import run_episode, tool_schemas
    from autothink.tasks import Task

    call = {"id": "c1", "type": "function", "function": {
        "name": "write_file", "arguments": json.dumps({"path": "solution.py", "content": "def add(a, b):\n    "
                                                        "return a + b\n"})}}

    def respond(i, body):
        if i == 0:
            message = {"role": "assistant", "content": "Writing it.", "tool_calls": [call]}
        else:
            message = {"role": "assistant", "content": "Done."}
        payload = completion_body(["x"])
        payload["choices"][0]["message"] = message
        payload["choices"][0]["finish_reason"] = "tool_calls" if i == 0 else "stop"
        return 200, {}, payload

    task = Task(id="t", messages=[{"role": "user", "content": "Write add(a, b) in solution.py."}], domain="code",
                verifier="code", reference="assert add(1, 2) == 3")
    with scripted_server(respond) as (url, seen):
        backend = HTTPBackend(url, model="m", max_retries=0)
        env = CodingEnvironment()
        trajectory = run_episode(backend, env, task, SamplingParams(temperature=0))
    assert seen[0]["tools"] == tool_schemas(env) and len(seen) == 2
    sent = seen[1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["function"]["name"] == "write_file" and sent[2]["content"].startswith("wrote")
    assert sent[2] == {"role": "tool", "content": sent[2]["content"], "tool_call_id": sent[1]["tool_calls"][0]["id"],
                       "name": "write_file"}  # no status fields on the wire
    assert trajectory.messages[1]["content"] == "Writing it." and trajectory.outcome["reward"] == 1.0
