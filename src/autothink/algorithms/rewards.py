"""Rewards: the Step-SRPO judge and answer rewards, the mode vote, and the verifier reward.

Pure functions: no trainer state, no TRL or transformers import (DESIGN §2).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from autothink.algorithms.groups import check_lengths, group_index
from autothink.format import MODES

logger = logging.getLogger(__name__)

_TIE_TOL = 1e-9  # p_off >= p_on - delta is tested with this slack: float ties go to think-off


def vote_mode(p_on: float, p_off: float, delta: float = 0.0) -> str:
    """The better mode by pass rate: think-off unless think-on passes more than δ more often.

    Shared by the cold-start labels (majority vote) and Step-SRPO's correct mode m*.

    >>> vote_mode(0.5, 0.5), vote_mode(0.75, 0.5), vote_mode(0.75, 0.5, delta=0.25)
    ('off', 'on', 'off')
    """
    return "off" if p_off >= p_on - delta - _TIE_TOL else "on"


def _correct_mode(rates: dict[str, float], prior: str | None, delta: float) -> str | None:
    """m* of one group from its observed per-mode pass rates (see `step_srpo_rewards`)."""

    def rule(p_on: float, p_off: float) -> str:
        return vote_mode(p_on, p_off, delta)

    if len(rates) == 2:
        return rule(rates["on"], rates["off"])
    if len(rates) == 1:
        (mode, p), = rates.items()
        # The rule at both ends of the missing rate's range [0, 1]; it is monotone in the
        # missing rate, so equal ends mean the observed data already decide m*.
        ends = {rule(p, q) if mode == "on" else rule(q, p) for q in (0.0, 1.0)}
        if len(ends) == 1:
            return ends.pop()
        return prior if prior is not None else mode
    return prior


def step_srpo_rewards(
    modes: Sequence[str | None],
    correct: Sequence[bool],
    forced: Sequence[bool],
    well_formed: Sequence[bool],
    group_ids: Sequence[Hashable],
    delta: float = 0.0,
    gamma: float = 0.5,
    prior_modes: Sequence[str | None] | None = None,
    directive_modes: Sequence[str | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str | None]]:
    """Judge and answer rewards of Step-SRPO (KAT-V1 §4.2; DESIGN §4).

    Per group (all rollouts of one prompt):

    - A sample is *valid* when it is well formed and has a mode ("on"/"off"). A sample whose
      mode is None is never valid, whatever `well_formed` says.
    - Pass rates: p_m = #(valid and correct samples of mode m) / #(samples of mode m), over
      every sample whose mode is m, forced ones included (forcing exists so that both modes
      are observed). A malformed sample of mode m counts as a failure of m (a think-on run cut
      off by the length limit is a real cost of thinking). Mode-None samples belong to no mode.
    - Correct mode m* = "off" if p_off >= p_on - delta else "on" (ties, up to 1e-9 float
      slack, go to think-off).
    - One mode absent: m* is what the rule gives for *every* value of the missing pass rate in
      [0, 1] when that is unique (only off observed with p_off >= 1 - delta -> "off"; only on
      observed with p_on <= delta -> "off"); otherwise the group's prior label; without a prior
      the observed mode (the normalised advantages do not depend on that choice when gamma > 0,
      since all samples then share a mode, and with gamma = 0 it keeps the answer signal).
    - No mode observed: m* = the prior label, else None (every sample is invalid anyway).
    - A prompt that carries a user directive ("DO NOT THINK", ...): m* = the directive's mode,
      whatever the pass rates (obeying is the reward; DESIGN §4).

    Rewards per sample: r_J = 1 if valid and mode == m* else 0; r_A = correct · (1 if mode ==
    m* else gamma) if valid else 0. Forced samples get rewards like the others; their mode
    token gets no loss (`segment_ids`), and their r_J should not enter the judge baseline
    (`group_normalize(..., include=not forced)`).

    Args:
        modes: per sample "on", "off" or None (the parsed mode token).
        correct: per sample, the verifier's pass/fail.
        forced: per sample, whether the mode token was forced.
        well_formed: per sample, the parser's `well_formed`.
        group_ids: per sample, a hashable id of its prompt; groups need not be contiguous.
        delta: margin by which think-on must beat think-off to be the correct mode.
        gamma: answer-reward factor for a correct answer in the wrong mode.
        prior_modes: per sample, its group's prior label ("on"/"off"/None), or None.
        directive_modes: per sample, the mode its prompt's directive asks for ("on"/"off"/None), or None.

    Returns:
        judge_reward: float32 [N]; answer_reward: float32 [N]; correct_mode: list of N m*
        (each sample gets its group's m*).

    Raises:
        ValueError: lengths differ, an unknown mode, or a group with two prior labels or directives.

    >>> rJ, rA, m = step_srpo_rewards(["on", "on", "off", "off"], [1, 1, 1, 0],
    ...                               [0, 0, 0, 0], [1, 1, 1, 1], ["q", "q", "q", "q"])
    >>> rJ.tolist(), rA.tolist(), m[0]       # p_on = 1 > p_off = 0.5 -> on
    ([1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.5, 0.0], 'on')
    """
    n = len(modes)
    for name, values in (("correct", correct), ("forced", forced), ("well_formed", well_formed),
                         ("group_ids", group_ids)):
        check_lengths(name, values, n)
    for name, labels in (("prior_modes", prior_modes), ("directive_modes", directive_modes)):
        if labels is not None:
            check_lengths(name, labels, n)
            for i, label in enumerate(labels):
                if label not in (*MODES, None):
                    raise ValueError(f"{name}[{i}] = {label!r}; expected 'on', 'off' or None")
    for i, m in enumerate(modes):
        if m not in (*MODES, None):
            raise ValueError(f"modes[{i}] = {m!r}; expected 'on', 'off' or None")
    index, k = group_index(group_ids)
    index = index.tolist()
    valid = [bool(well_formed[i]) and modes[i] is not None for i in range(n)]

    counts = [{m: [0, 0] for m in MODES} for _ in range(k)]  # group -> mode -> [passed, seen]
    for i in range(n):
        if modes[i] is not None:
            counts[index[i]][modes[i]][1] += 1
            counts[index[i]][modes[i]][0] += int(valid[i] and bool(correct[i]))
    priors, directives = (_per_group(labels, name, index, k, group_ids)
                          for name, labels in (("prior labels", prior_modes), ("directives", directive_modes)))
    group_mode = [
        directives[g] or _correct_mode({m: c[0] / c[1] for m, c in counts[g].items() if c[1]}, priors[g], delta)
        for g in range(k)
    ]
    correct_mode = [group_mode[g] for g in index]
    judge = [float(valid[i] and modes[i] == correct_mode[i]) for i in range(n)]
    answer = [
        float(valid[i] and bool(correct[i])) * (1.0 if modes[i] == correct_mode[i] else gamma)
        for i in range(n)
    ]
    return (torch.tensor(judge, dtype=torch.float32), torch.tensor(answer, dtype=torch.float32),
            correct_mode)


def _per_group(labels: Sequence[str | None] | None, name: str, index: list[int], k: int,
               group_ids: Sequence[Hashable]) -> list[str | None]:
    """One label per group from per-sample labels (None when not given); a group must agree on it."""
    out: list[str | None] = [None] * k
    seen = [False] * k
    for i, label in enumerate(labels or []):
        g = index[i]
        if seen[g] and out[g] != label:
            raise ValueError(f"group {group_ids[i]!r} has two {name}: {out[g]!r} and {label!r}")
        out[g], seen[g] = label, True
    return out


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or a conversational `[{"role": "assistant", "content"}]`."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content") or "" for m in completion if isinstance(m, dict))
    return str(completion)


def verifier_reward(completions: list, verifier: list[str], reference: list[str], **kwargs) -> list[float]:
    """TRL reward function: 1.0 when `autothink.verify` passes the completion, else 0.0.

    Dataset columns arrive as keyword arguments (TRL): `verifier` (the kind) and `reference`
    (JSON-encoded) per completion; the answer is extracted from the completion (its `<answer>`
    segment). A verifier that raises (a broken reference) scores 0 with a warning naming the
    record, and is counted in the `verify_errors` metric when TRL passes `log_metric`.

    >>> verifier_reward(["<answer>B</answer>", "<answer>C</answer>"], ["choice"] * 2, ['"B"'] * 2)
    [1.0, 0.0]
    """
    from autothink.verify import verify

    ids = kwargs.get("id") or [None] * len(completions)
    scores, errors = [], 0
    for completion, kind, ref, rid in zip(completions, verifier, reference, ids):
        try:
            verdict = verify(kind, completion_text(completion), json.loads(ref) if isinstance(ref, str) else ref)
            scores.append(float(verdict.passed))
        except Exception as err:  # noqa: BLE001 - a bad reference must not kill a long run; it is reported instead
            logger.warning("verifier %r failed on record %r: %s: %s", kind, rid, err.__class__.__name__, err)
            scores.append(0.0)
            errors += 1
    if "log_metric" in kwargs:
        kwargs["log_metric"]("srpo/verify_errors", float(errors))
    return scores
