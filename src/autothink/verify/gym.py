"""The "gym" verifier: the native scorer of a `reasoning-gym` dataset.

The reference is `{"dataset": name, "entry": entry}` where `entry` is the generated item
(question, answer, metadata) that the dataset's `score_answer` expects.
"""
from __future__ import annotations

from functools import lru_cache

from autothink.verify.registry import Verdict, answer_text, register


@lru_cache(maxsize=None)
def _scorer(dataset: str):
    import reasoning_gym

    try:
        return reasoning_gym.get_score_answer_fn(dataset)
    except (KeyError, ValueError) as err:
        raise ValueError(f"unknown reasoning-gym dataset {dataset!r}") from err


@register("gym")
def verify_gym(prediction: str, reference, threshold: float = 1.0, **_) -> Verdict:
    if not isinstance(reference, dict) or "dataset" not in reference or "entry" not in reference:
        raise ValueError("a gym reference must be {'dataset': name, 'entry': {...}}")
    answer = answer_text(prediction).strip()
    score = float(_scorer(reference["dataset"])(answer, reference["entry"]))
    gold = reference["entry"].get("answer")
    return Verdict(score, score >= threshold, f"score {score:.2f}; answer {answer[:60]!r}, gold {str(gold)[:60]!r}")
