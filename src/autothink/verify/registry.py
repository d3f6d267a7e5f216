"""The verifier registry: one function per kind, looked up by name."""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from autothink.format import parse


@dataclass(frozen=True)
class Verdict:
    """Outcome of checking one prediction: a score in [0, 1], pass/fail and a readable reason."""

    score: float
    passed: bool
    detail: str = ""


Verifier = Callable[..., Verdict]
VERIFIERS: dict[str, Verifier] = {}


def register(kind: str) -> Callable[[Verifier], Verifier]:
    """Add `fn(prediction: str, reference, **options) -> Verdict` to the registry under `kind`."""

    def wrap(fn: Verifier) -> Verifier:
        if kind in VERIFIERS:
            raise ValueError(f"verifier kind {kind!r} is already registered")
        VERIFIERS[kind] = fn
        return fn

    return wrap


def get_verifier(kind: str) -> Verifier:
    try:
        return VERIFIERS[kind]
    except KeyError:
        raise ValueError(
            f"unknown verifier kind {kind!r}; known kinds: {', '.join(sorted(VERIFIERS))}"
        ) from None


def answer_text(prediction: str) -> str:
    """The part of a model response that holds the final answer.

    AutoThink responses yield their `<answer>` segment; any other text is returned whole, minus
    a leading `<think>...</think>` block (reasoning must not be graded as the answer).
    """
    parsed = parse(prediction)
    if parsed.answer is not None:
        return parsed.answer
    if parsed.think is not None and "</think>" in prediction:
        return prediction.split("</think>", 1)[1]
    return prediction


def verify(kind: str, prediction: str, reference: Any, **options: Any) -> Verdict:
    """Check `prediction` (a raw model response or a bare answer) against `reference`.

    >>> verify("choice", "<answer>The answer is (B).</answer>", "B").passed
    True
    """
    return get_verifier(kind)(prediction, reference, **options)


def _verify_one(item: tuple[str, str, Any, dict]) -> Verdict:
    kind, prediction, reference, options = item
    return verify(kind, prediction, reference, **options)


def verify_many(
    kind: str | Sequence[str],
    predictions: Sequence[str],
    references: Sequence[Any],
    workers: int | None = None,
    **options: Any,
) -> list[Verdict]:
    """Verify many predictions across worker processes; results keep the input order.

    Each check runs on a worker's main thread, where math-verify's time limits work. `kind` is
    one kind for all or one per item; `workers=0` runs in this process.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    kinds = [kind] * len(predictions) if isinstance(kind, str) else list(kind)
    for k in set(kinds):
        get_verifier(k)
    items = [(k, p, r, options) for k, p, r in zip(kinds, predictions, references)]
    workers = min(os.cpu_count() or 1, len(items)) if workers is None else workers
    if workers <= 1 or len(items) <= 1:
        return [_verify_one(item) for item in items]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_verify_one, items, chunksize=max(1, len(items) // (4 * workers))))
