"""The "general" verifier: keyword overlap with a reference answer, for open-ended replies.

A cheap, deterministic proxy: the fraction of the reference's content words that the answer
contains. Use a judge backend (the data pipeline's) where quality matters more than cost.
"""
from __future__ import annotations

import re

from autothink.verify.registry import Verdict, answer_text, register

_STOPWORDS = frozenset(
    "a an and are as at be but by for from has have he her his i if in into is it its of on or our "
    "she so that the their them then there these they this to was we were what when which who will "
    "with you your".split()
)


def keywords(text: str) -> set[str]:
    """Lower-cased words and numbers of `text`, minus stopwords."""
    return {w for w in re.findall(r"[a-z0-9]+(?:\.[0-9]+)?", text.lower()) if w not in _STOPWORDS}


@register("general")
def verify_general(prediction: str, reference, threshold: float = 0.5, **_) -> Verdict:
    """Score = share of reference keywords present in the answer; passed when >= `threshold`.

    `reference` is a reference answer (str) or an explicit list of required keywords.
    """
    wanted = set().union(*(keywords(k) for k in reference)) if isinstance(reference, list) else keywords(str(reference))
    if not wanted:
        raise ValueError(f"a general reference needs at least one keyword, got {reference!r}")
    found = wanted & keywords(answer_text(prediction))
    score = len(found) / len(wanted)
    missing = sorted(wanted - found)[:10]
    return Verdict(score, score >= threshold, f"{len(found)}/{len(wanted)} keywords; missing {missing}")
