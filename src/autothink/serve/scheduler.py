"""The request queue of `autothink serve`: one bounded queue, one worker thread, batches of alike jobs."""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from autothink.inference.backend import Backend, SamplingParams
from autothink.inference.respond import respond, respond_stream
from autothink.serve.protocol import APIError

DEFAULT_MAX_QUEUE = 128
DEFAULT_MAX_BATCH = 32


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
    tools: list[dict] | None = None  # OpenAI tool schemas shown to the model

    def batch_key(self) -> tuple | None:
        """Jobs with equal keys run as one batch; None: alone (streams, continuations, seeded
        sampling, whose results must not depend on other requests)."""
        if self.stream or self.prefix is not None or self.params.seed is not None:
            return None
        return (self.params, self.thinking, self.budget, json.dumps(self.tools, sort_keys=True))

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
        force_directives, forced_judge: as for `respond`.
    """

    def __init__(self, backend: Backend, max_queue: int = DEFAULT_MAX_QUEUE, max_batch: int = DEFAULT_MAX_BATCH,
                 force_directives: bool = False, forced_judge: str = "model"):
        for name, value in (("max_queue", max_queue), ("max_batch", max_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.backend, self.max_queue, self.max_batch = backend, max_queue, max_batch
        self.force_directives, self.forced_judge = force_directives, forced_judge
        self.queue: deque[Job] = deque()
        self.running = 0
        self._running_jobs: list[Job] = []
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

    def cancel_all(self) -> None:
        """Stop every queued and running job now (a shutdown past its grace period): generation stops
        at the next token and each client gets a 503."""
        with self._cond:
            jobs = list(self.queue) + list(self._running_jobs)
        for job in jobs:
            job.cancelled.set()

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
            self._running_jobs = batch
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
                    self.running, self._running_jobs = 0, []
                    self._cond.notify_all()

    def _run(self, batch: list[Job]) -> None:
        gone = APIError(503, "the request was cancelled (its client left, or the server shut down)",
                        "service_unavailable")
        for job in [j for j in batch if j.cancelled.is_set()]:  # its client left while it waited
            job.fail(gone)
        batch = [j for j in batch if not j.cancelled.is_set()]
        if not batch:
            return
        first = batch[0]

        def cancelled() -> bool:
            return all(j.cancelled.is_set() for j in batch)

        try:
            if first.stream:
                self._stream(first)
            elif first.prefix is not None:
                first.resolve(self.backend.generate([first.conversation], first.params, prefix=first.prefix,
                                                    cancel=cancelled)[0])
            else:
                replies = respond(self.backend, [j.conversation for j in batch], first.params, first.thinking,
                                  first.budget, self.force_directives, self.forced_judge, cancel=cancelled,
                                  tools=first.tools)
                for job, group in zip(batch, replies):
                    job.fail(gone) if job.cancelled.is_set() else job.resolve(group)
        except Exception as err:  # noqa: BLE001 - each client gets the reason, the worker keeps running
            for job in batch:
                job.fail(err)

    def _stream(self, job: Job) -> None:
        if job.prefix is not None:
            items = self.backend.stream(job.conversation, job.params, prefix=job.prefix)
        else:
            items = respond_stream(self.backend, job.conversation, job.params, job.thinking, job.budget,
                                   self.force_directives, self.forced_judge, tools=job.tools)
        with contextlib.closing(items):
            for item in items:
                if job.cancelled.is_set():  # the client left (nobody reads this), or the server shuts down
                    job.emit(APIError(503, "the server shut down before this reply finished", "service_unavailable"))
                    return
                job.emit(item)
