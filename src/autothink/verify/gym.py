"""The "gym" verifier: the native scorer of a `reasoning-gym` dataset.

The reference is `{"dataset": name, "entry": entry}` where `entry` is the generated item
(question, answer, metadata) that the dataset's `score_answer` expects.
"""
from __future__ import annotations

import re
from functools import lru_cache

from autothink.verify.registry import Verdict, answer_text, register


@lru_cache(maxsize=None)
def _scorer(dataset: str):
    import reasoning_gym

    try:
        return reasoning_gym.get_score_answer_fn(dataset)
    except (KeyError, ValueError) as err:
        raise ValueError(f"unknown reasoning-gym dataset {dataset!r}") from err


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@register("gym")
def verify_gym(prediction: str, reference, threshold: float = 1.0, **_) -> Verdict:
    if not isinstance(reference, dict) or "dataset" not in reference or "entry" not in reference:
        raise ValueError("a gym reference must be {'dataset': name, 'entry': {...}}")
    answer = answer_text(prediction).strip()
    score = float(_scorer(reference["dataset"])(answer, reference["entry"]))
    gold = reference["entry"].get("answer")
    numbers = _NUMBER.findall(answer)
    if score < threshold and numbers and _NUMBER.fullmatch(str(gold).strip()):
        # A numeric gold in a sentence ("The answer is 3."): score the last number, as GSM8K graders do.
        last = float(_scorer(reference["dataset"])(numbers[-1], reference["entry"]))
        if last > score:
            answer, score = numbers[-1], last
    return Verdict(score, score >= threshold, f"score {score:.2f}; answer {answer[:60]!r}, gold {str(gold)[:60]!r}")
