"""`HTTPBackend`: any OpenAI-compatible chat endpoint (vLLM, llama.cpp, hosted APIs, `autothink serve`).

Retries (429, 5xx, timeouts, connection errors; `Retry-After` honoured) are the `openai`
client's, with its exponential backoff capped at `max_backoff_s`. Conversations are sent
concurrently, at most `max_concurrency` requests in flight per backend. With `cache_dir`, each
request's completions are stored as one JSON file keyed by a hash of the full request, so a rerun
costs no requests.

A reply prefix (`generate(..., prefix=)`) is sent as vLLM does it: the forced-mode prefix plus the
prefix as a final assistant message, with `continue_final_message=True, add_generation_prompt=False`.
When a choice carries `raw_content` (`autothink serve` sends the generated text, AutoThink tags
and all, beside the split `content`/`reasoning_content`) the completion text is that.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai

from autothink.format import forced_prefix
from autothink.inference.backend import (
    Backend,
    BackendError,
    Completion,
    Conversation,
    SamplingParams,
)
from autothink.tasks.tool_calls import openai_message, tool_call_text

log = logging.getLogger(__name__)
CACHE_VERSION = 1


class _OpenAI(openai.OpenAI):
    """The openai client with its retry backoff capped at `max_backoff_s` (also for Retry-After)."""

    def __init__(self, *args, max_backoff_s: float = 8.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_backoff_s = max_backoff_s

    def _calculate_retry_timeout(self, *args, **kwargs) -> float:  # openai private API (contract-tested)
        return min(super()._calculate_retry_timeout(*args, **kwargs), self.max_backoff_s)


def normalize_base_url(url: str) -> str:
    """`http://host:8000` → `http://host:8000/v1`; a URL with a path is kept as given."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    url = url.rstrip("/")
    return url + "/v1" if parts.path in ("", "/") else url


class DiskCache:
    """One JSON file per request under `root/<2 hex>/<sha256>.json`; atomic writes; bad entries ignored."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    @staticmethod
    def key(request: dict) -> str:
        blob = json.dumps({"v": CACHE_VERSION, **request}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, request: dict) -> list[Completion] | None:
        path = self.path(self.key(request))
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if entry["request"] != json.loads(json.dumps(request)):
                raise ValueError("stored request differs")
            return [Completion(**c) for c in entry["completions"]]
        except FileNotFoundError:
            return None
        except Exception as err:  # corrupted or foreign file: ignore, it is rewritten on put
            log.warning("ignoring unreadable cache entry %s (%s)", path, err)
            return None

    def put(self, request: dict, completions: list[Completion]) -> None:
        path = self.path(self.key(request))
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"request": request, "completions": [dataclasses.asdict(c) for c in completions]}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entry, f, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class HTTPBackend(Backend):
    """Sample from an OpenAI-compatible `/v1/chat/completions` endpoint.

    Args:
        base_url: server URL; `/v1` is appended when the URL has no path.
        model: model name; None asks `/v1/models` and takes the first.
        api_key: defaults to $OPENAI_API_KEY, else "EMPTY" (what vLLM accepts).
        max_concurrency: most requests in flight at once (across threads using this backend).
        timeout_s: per-request timeout.
        max_retries: retries on 408/409/429/5xx, timeouts and connection errors.
        max_backoff_s: cap on the wait between retries (exponential from 0.5 s; Retry-After is
            honoured up to this cap).
        cache_dir: directory for the on-disk response cache (None: no cache).
    """

    supports_tools = True
    supports_prefix = True

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 60,
        max_retries: int = 5,
        cache_dir: str | os.PathLike | None = None,
        max_backoff_s: float = 8.0,
    ):
        for field, value, low in (("max_concurrency", max_concurrency, 1), ("max_retries", max_retries, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{field} must be an integer >= {low}, got {value!r}")
        if not timeout_s > 0 or not max_backoff_s >= 0:
            raise ValueError(f"timeout_s must be > 0 and max_backoff_s >= 0, got {timeout_s!r}, {max_backoff_s!r}")
        self.base_url = normalize_base_url(base_url)
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.cache = DiskCache(cache_dir) if cache_dir is not None else None
        self.client = _OpenAI(
            base_url=self.base_url,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
            timeout=float(timeout_s),
            max_retries=max_retries,
            max_backoff_s=float(max_backoff_s),
        )
        self._model = model
        self._model_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrency)

    # -- model -----------------------------------------------------------------------------
    @property
    def model(self) -> str:
        """The model name, discovered from `/v1/models` on first use when not given."""
        with self._model_lock:
            if self._model is None:
                models = self._call(lambda: self.client.models.list())
                ids = [m.id for m in models.data]
                if not ids:
                    raise BackendError(f"{self.base_url}/models lists no models; pass model= explicitly")
                self._model = ids[0]
            return self._model

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.model

    def __repr__(self) -> str:  # no model discovery here
        return f"HTTPBackend({self.base_url!r}, model={self._model!r})"

    # -- requests --------------------------------------------------------------------------
    def _call(self, fn):
        """Run one request under the concurrency limit, turning client errors into `BackendError`."""
        with self._slots:
            try:
                return fn()
            except openai.APIConnectionError as err:  # includes timeouts
                raise BackendError(
                    f"could not reach {self.base_url} after {self.max_retries} retries: {err}"
                ) from err
            except openai.APIStatusError as err:
                message = _server_message(err)
                if err.status_code < 500 and err.status_code not in (408, 409, 429):
                    raise BackendError(
                        f"{self.base_url} rejected the request (HTTP {err.status_code}): {message}"
                    ) from err
                raise BackendError(
                    f"{self.base_url} failed with HTTP {err.status_code} after {self.max_retries} retries: {message}"
                ) from err

    def request_for(
        self, conversation: Conversation, params: SamplingParams, thinking: str | None, prefix: str = "",
        tools: list[dict] | None = None,
    ) -> dict:
        """The full description of one request: the cache key and the source of the request body."""
        if any(m.get("tool_calls") or m.get("role") == "tool" for m in conversation):
            conversation = [openai_message(m) for m in conversation]  # no trajectory status fields on the wire
        request = {
            "base_url": self.base_url,
            "model": self.model,
            "messages": conversation,
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "stop": list(params.stop),
            "seed": params.seed,
            "thinking": thinking,
        }
        if prefix:  # only then: cache keys of plain requests stay as they were
            request["prefix"] = prefix
        if tools:
            request["tools"] = tools
        return request

    def _generate(
        self,
        conversations: list[Conversation],
        params: SamplingParams,
        thinking: str | None,
        prefixes: list[str] | None = None,
        tools: list[dict] | None = None,
    ) -> list[list[Completion]]:
        prefixes = prefixes or [""] * len(conversations)
        requests = [self.request_for(c, params, thinking, p, tools) for c, p in zip(conversations, prefixes)]
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(requests)), thread_name_prefix="llm-http")
        try:
            futures = [pool.submit(self._complete, r) for r in requests]
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _complete(self, request: dict) -> list[Completion]:
        if self.cache is not None:
            hit = self.cache.get(request)
            if hit is not None:
                return hit
        n = request["n"]
        out: list[Completion] = []
        for attempt in range(n):  # each response yields >= 1 choice, so n requests always suffice
            seed = request["seed"]
            if seed is not None and attempt:
                seed += attempt  # fill-up requests must not repeat the first request's samples
            out += self._request(request, n - len(out), seed)
            if len(out) >= n:
                break
        out = out[:n]
        if self.cache is not None:
            self.cache.put(request, out)
        return out

    def _request(self, request: dict, n: int, seed: int | None) -> list[Completion]:
        kwargs: dict[str, Any] = dict(
            model=request["model"],
            messages=request["messages"],
            n=n,
            temperature=request["temperature"],
            top_p=request["top_p"],
            max_tokens=request["max_tokens"],
        )
        if request["stop"]:
            kwargs["stop"] = request["stop"]
        if request.get("tools"):
            kwargs["tools"] = request["tools"]
        if seed is not None:
            kwargs["seed"] = seed
        if request.get("prefix"):
            # The template's generation prompt (and so its forced-mode suffix) is not rendered when a
            # final message is continued: the forced prefix goes into that message.
            start = forced_prefix(request["thinking"]) if request["thinking"] else ""
            kwargs["messages"] = [*request["messages"], {"role": "assistant", "content": start + request["prefix"]}]
            kwargs["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        elif request["thinking"] is not None:
            kwargs["extra_body"] = {"chat_template_kwargs": {"thinking": request["thinking"]}}
        response = self._call(lambda: self.client.chat.completions.create(**kwargs))
        choices = sorted(response.choices or [], key=lambda c: c.index)
        if not choices:
            raise BackendError(f"{self.base_url} returned no choices for a request with n={n}")
        texts = [_choice_text(c) for c in choices]
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        counts = _token_counts(choices, texts, usage.completion_tokens if usage else None)
        return [
            Completion(
                text=text,
                finish_reason="length" if c.finish_reason == "length" else "stop",
                tokens=count,
                prompt_tokens=prompt_tokens or 0,
                stop_reason=c.stop_reason if isinstance(getattr(c, "stop_reason", None), str) else None,
            )
            for c, text, count in zip(choices, texts, counts)
        ]


def _choice_text(choice) -> str:
    """The generated text of a choice: `raw_content` when the server sends it (`autothink serve`), else
    the content after the reasoning a reasoning parser split off (`reasoning`, vLLM >= 0.16, or
    `reasoning_content`), put back in `<think>` tags as the model wrote it."""
    raw = getattr(choice, "raw_content", None)
    if isinstance(raw, str):
        return raw
    message = choice.message
    if message is None:
        return ""
    reasoning = getattr(message, "reasoning", None) or getattr(message, "reasoning_content", None)
    content = message.content or ""
    for call in getattr(message, "tool_calls", None) or []:  # a server's tool parser: back to the model's text
        try:
            arguments = json.loads(call.function.arguments or "{}")
        except (json.JSONDecodeError, TypeError):
            arguments = call.function.arguments
        content += "\n" + tool_call_text(call.function.name, arguments)
    return f"<think>{reasoning}</think>{content}" if isinstance(reasoning, str) and reasoning else content


def _token_counts(choices, texts: list[str], total: int | None) -> list[int]:
    """Per-choice completion tokens: a per-choice `completion_tokens` field when the server sends one
    (`autothink serve` does), else the usage total (exact for one choice, split by text length
    otherwise — an estimate), else 0."""
    per_choice = [getattr(c, "completion_tokens", None) for c in choices]
    if all(isinstance(x, int) for x in per_choice):
        return per_choice
    if total is None:
        return [0] * len(choices)
    if len(choices) == 1:
        return [total]
    weights = [len(t) + 1 for t in texts]
    raw = [total * w / sum(weights) for w in weights]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _server_message(err: openai.APIStatusError) -> str:
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(body.get("detail"), str):
            return body["detail"]
    if isinstance(body, str) and body:
        return body
    return err.message
