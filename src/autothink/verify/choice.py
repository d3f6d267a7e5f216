"""The "choice" verifier: multiple choice, graded on the first option letter of the answer."""
from __future__ import annotations

import re

from autothink.verify.registry import Verdict, answer_text, register

# Most explicit first: "answer is (B)", then a leading "B." / "(B)", then any "(B)", then a lone
# letter (never the pronoun "I").
_PATTERNS = [
    re.compile(r"answer\s*(?:is|:)?\s*[:\-]?\s*\(?([A-J])\)?(?![A-Za-z])", re.IGNORECASE),
    re.compile(r"^\s*\(?([A-J])(?:[).:]|\s*$)"),
    re.compile(r"\(([A-J])\)"),
    re.compile(r"(?<![A-Za-z'])([A-HJ])(?![A-Za-z'])"),
]


def extract_choice(text: str) -> str | None:
    """The option letter a response picks, or None.

    >>> extract_choice("After checking each option, the answer is (C).")
    'C'
    """
    for pattern in _PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1).upper()
    return None


@register("choice")
def verify_choice(prediction: str, reference, **_) -> Verdict:
    gold = str(reference).strip().strip("()").upper()
    if not re.fullmatch(r"[A-J]", gold):
        raise ValueError(f"a choice reference must be one option letter A-J, got {reference!r}")
    picked = extract_choice(answer_text(prediction))
    ok = picked == gold
    return Verdict(float(ok), ok, f"picked {picked or 'nothing'}, gold {gold}")
