"""The "math" verifier: equivalence of final answers with `math-verify`.

math-verify bounds its work with `signal.alarm`, which only works on a process's main thread.
Off the main thread (a server, a thread pool) each check runs on the main thread of a worker
process instead, so the time limit holds everywhere.
"""
from __future__ import annotations

import atexit
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from autothink.verify.registry import Verdict, answer_text, register

_POOL: ProcessPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _gold_text(reference) -> str:
    """A bare gold answer is boxed so that math-verify reads it as LaTeX."""
    text = str(reference).strip()
    return text if ("\\boxed" in text or "$" in text) else f"\\boxed{{{text}}}"


def check(prediction: str, reference, timeout_s: int = 5) -> Verdict:
    """Compare on the calling thread, with math-verify's own (main-thread-only) time limits."""
    from math_verify import parse
    from math_verify import verify as mv_verify

    answer = answer_text(prediction)
    try:
        gold = parse(_gold_text(reference), parsing_timeout=timeout_s)
        pred = parse(answer, parsing_timeout=timeout_s)
        if not gold:
            return Verdict(0.0, False, f"could not parse the reference {str(reference)[:80]!r}")
        if not pred:
            return Verdict(0.0, False, f"no answer found in {answer[-80:]!r}")
        ok = mv_verify(gold, pred, timeout_seconds=timeout_s)
    except TimeoutError:
        return Verdict(0.0, False, f"math-verify timed out after {timeout_s} s")
    except Exception as err:  # math-verify raises assorted errors on pathological input
        return Verdict(0.0, False, f"math-verify failed: {err.__class__.__name__}: {err}")
    detail = f"predicted {pred[-1]!s:.80} vs gold {gold[-1]!s:.80}"
    return Verdict(float(ok), bool(ok), detail)


def _pool() -> ProcessPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            atexit.register(_POOL.shutdown, wait=False, cancel_futures=True)
        return _POOL


def _reset_pool() -> None:
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            for proc in list(getattr(_POOL, "_processes", {}).values()):
                proc.kill()  # a stuck worker would block every later check
            _POOL.shutdown(wait=False, cancel_futures=True)
            _POOL = None


@register("math")
def verify_math(prediction: str, reference, timeout_s: int = 5, **_) -> Verdict:
    """Is the final answer (the `<answer>` segment or a `\\boxed{}`) equal to `reference`?

    >>> verify_math("<judge>easy</judge><think_off><answer>\\\\boxed{\\\\frac{1}{2}}</answer>", "0.5").passed
    True
    """
    timeout_s = max(1, int(round(timeout_s)))
    if threading.current_thread() is threading.main_thread():
        return check(prediction, reference, timeout_s)
    future = _pool().submit(check, prediction, reference, timeout_s)
    try:
        # Parse and compare each get timeout_s in the worker; the margin covers its start-up.
        return future.result(timeout=4 * timeout_s + 30)
    except FutureTimeout:
        _reset_pool()
        return Verdict(0.0, False, f"math verification did not finish in {4 * timeout_s + 30} s")
