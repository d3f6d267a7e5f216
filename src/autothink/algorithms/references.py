"""Multi-ground-truth RFT (KAT-Coder §3; DESIGN §4): how far a rollout is from several reference trajectories.

    reward = test result - α · discrepancy(rollout, closest reference)

A trajectory is compared by its tool-call sequence, each call a `(name, arguments)` pair
(arguments a dict or its JSON text). Two calls differ by `call_distance`: 1 for another tool,
else the share of argument names (of both calls) whose values differ, values compared as
canonical JSON (sorted keys, 2.0 == 2), so an argument spelled differently but meaning the same
is equal and one wrong argument of four costs 1/4 (per-call argument matching, as ToolRL).

`sequence_distance`: the edit distance over the call sequences (insertion and deletion cost 1,
substitution `call_distance`) divided by the longer length; 0 for two empty sequences, in [0, 1].
`discrepancy` adds, for code, the patch distance `1 - difflib.SequenceMatcher.ratio()` of the final
code: `(1 - w) · sequence + w · patch` with w = `patch_weight` where both sides have a patch.

`prefix_distance` is what early termination reads after each turn: the k calls made so far
against the best-aligned prefix of a reference, `min_j ED(calls, reference[:j]) / k`, so a
rollout is not penalised for the steps it has not reached yet; in [0, 1]. `aligned_step` is where
trajectory correction splices: the closest reference and the step j its continuation starts at.
"""
from __future__ import annotations

import difflib
import json
from collections.abc import Sequence

Call = tuple[str, dict | str]


def canonical_arguments(arguments: dict | str | None) -> dict[str, str]:
    """Each argument's value as canonical JSON text; argument text that does not parse to an object (or nests
    too deeply to walk) is one value under ""."""
    text = arguments if isinstance(arguments, str) else None
    try:
        if text is not None:
            arguments = json.loads(text) if text.strip() else {}
        if not isinstance(arguments, dict):
            return {"": text if text is not None else json.dumps(arguments, sort_keys=True, default=str)}
        return {str(k): json.dumps(_canonical(v), sort_keys=True, ensure_ascii=False, default=str)
                for k, v in arguments.items()}
    except (json.JSONDecodeError, RecursionError):
        return {"": text if text is not None else repr(arguments)}


def _canonical(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def call_distance(a: Call, b: Call) -> float:
    """0 for equal calls, 1 for another tool, else the share of argument names whose values differ.

    >>> call_distance(("cd", {"folder": "docs"}), ("cd", {"folder": "docs"}))
    0.0
    >>> call_distance(("mv", {"source": "a", "destination": "b"}), ("mv", {"source": "a", "destination": "c"}))
    0.5
    """
    if a[0] != b[0]:
        return 1.0
    x, y = canonical_arguments(a[1]), canonical_arguments(b[1])
    names = set(x) | set(y)
    if not names:
        return 0.0
    return sum(x.get(k) != y.get(k) for k in names) / len(names)


def _edit_row(calls: Sequence[Call], reference: Sequence[Call]) -> list[float]:
    """The last row of the edit-distance table: ED(calls, reference[:j]) for every j."""
    row = [float(j) for j in range(len(reference) + 1)]
    for i, call in enumerate(calls, 1):
        previous, row = row, [float(i)] + [0.0] * len(reference)
        for j, ref in enumerate(reference, 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + call_distance(call, ref))
    return row


def sequence_distance(calls: Sequence[Call], reference: Sequence[Call]) -> float:
    """Normalised edit distance of two call sequences, in [0, 1].

    >>> sequence_distance([("a", {}), ("b", {})], [("a", {})])
    0.5
    """
    longest = max(len(calls), len(reference))
    return _edit_row(calls, reference)[-1] / longest if longest else 0.0


def prefix_distance(calls: Sequence[Call], reference: Sequence[Call]) -> float:
    """Distance of the calls so far to the reference's best-aligned prefix, in [0, 1]; 0 before any call.

    >>> prefix_distance([("a", {})], [("a", {}), ("b", {})])
    0.0
    """
    return min(_edit_row(calls, reference)) / len(calls) if calls else 0.0


def aligned_step(calls: Sequence[Call], references: Sequence[dict]) -> tuple[int, int]:
    """(reference, step) where the calls so far align best: the reference with the smallest prefix distance and
    the length j of its prefix that `calls` is closest to, so `reference["calls"][j:]` continues them.

    >>> aligned_step([("a", {})], [{"calls": [("b", {})]}, {"calls": [("a", {}), ("c", {})]}])
    (1, 1)
    """
    if not references:
        raise ValueError("trajectory correction: the task has no reference trajectory")
    rows = [_edit_row(calls, r["calls"]) for r in references]
    best = min(range(len(rows)), key=lambda k: min(rows[k]))
    return best, min(range(len(rows[best])), key=rows[best].__getitem__)


def patch_distance(a: str, b: str) -> float:
    """1 - difflib's similarity ratio of two texts (the final code of two trajectories)."""
    return 1.0 - difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def discrepancy(calls: Sequence[Call], reference: Sequence[Call], patch: str | None = None,
                reference_patch: str | None = None, patch_weight: float = 0.0) -> float:
    """A rollout's discrepancy to one reference: call-sequence distance, blended with the patch distance."""
    d = sequence_distance(calls, reference)
    if patch_weight and patch is not None and reference_patch is not None:
        d = (1 - patch_weight) * d + patch_weight * patch_distance(patch, reference_patch)
    return d


def closest_reference(calls: Sequence[Call], references: Sequence[dict], patch: str | None = None,
                      patch_weight: float = 0.0) -> tuple[float, int]:
    """(discrepancy, index) of the closest reference; each reference is `{"calls": [...], "patch": str | None}`.

    Raises:
        ValueError: no reference.
    """
    if not references:
        raise ValueError("multi-ground-truth reward: the task has no reference trajectory")
    scores = [discrepancy(calls, r["calls"], patch, r.get("patch"), patch_weight) for r in references]
    best = min(range(len(scores)), key=scores.__getitem__)
    return scores[best], best


def drifted(calls: Sequence[Call], references: Sequence[dict], tau: float) -> bool:
    """Early termination: the calls so far are farther than τ from the best-aligned prefix of every reference."""
    return bool(references) and min(prefix_distance(calls, r["calls"]) for r in references) > tau
