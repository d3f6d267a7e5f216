"""Step-SRPO rewards and advantages, KAT-Coder advantage rescaling, the clipped surrogate.

Pure functions over torch tensors and python sequences: no trainer state, no TRL or
transformers import (DESIGN §2), so the trainer is a thin caller and every formula has a
CPU test. The pipeline for one Step-SRPO batch of N = prompts × G rollouts:

    r_J, r_A, m* = step_srpo_rewards(modes, correct, forced, well_formed, group_ids)
    A_J = group_normalize(r_J, group_ids, include=[not f for f in forced])
    A_A = group_normalize(r_A, group_ids)
    A_J, A_A = (rescale_advantages(A, group_ids, correct, entropy, lam, mu) for A in (A_J, A_A))
    segments, loss_mask = segment_ids(completion_ids, tag_ids, forced, completion_mask)
    adv = segment_advantages(segments, A_J, A_A)                       # [B, T]
    loss, metrics = policy_loss(logprobs, old_logprobs, adv, loss_mask)

Shapes: N (= B) samples, T completion positions.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import torch

from autothink.format import JUDGE, JUDGE_END, THINK_OFF, THINK_ON

# Segment codes of `segment_ids` (one int per completion token).
SEG_NONE = 0  # padding / outside the completion: no advantage
SEG_JUDGE = 1  # <judge>…</judge><think_on|off>: judge advantage
SEG_RESPONSE = 2  # <think>…</think><answer>…</answer> (and malformed tails): answer advantage

_MODES = ("on", "off")
_TIE_TOL = 1e-9  # p_off >= p_on - delta is tested with this slack: float ties go to think-off


def _group_index(group_ids) -> tuple[torch.Tensor, int]:
    """Map hashable group ids to 0..K-1 in order of first appearance.

    Returns:
        (index LongTensor [N], K)
    """
    if isinstance(group_ids, torch.Tensor):
        group_ids = group_ids.tolist()
    seen: dict[Hashable, int] = {}
    index = [seen.setdefault(g, len(seen)) for g in group_ids]
    return torch.tensor(index, dtype=torch.long), len(seen)


def _check_len(name: str, values, n: int) -> None:
    if len(values) != n:
        raise ValueError(f"`{name}` has {len(values)} entries, expected one per sample ({n})")


# ---------------------------------------------------------------------------------------
# Step-SRPO rewards
# ---------------------------------------------------------------------------------------


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

    Returns:
        judge_reward: float32 [N]; answer_reward: float32 [N]; correct_mode: list of N m*
        (each sample gets its group's m*).

    Raises:
        ValueError: lengths differ, an unknown mode, or a group with two prior labels.

    >>> rJ, rA, m = step_srpo_rewards(["on", "on", "off", "off"], [1, 1, 1, 0],
    ...                               [0, 0, 0, 0], [1, 1, 1, 1], ["q", "q", "q", "q"])
    >>> rJ.tolist(), rA.tolist(), m[0]       # p_on = 1 > p_off = 0.5 -> on
    ([1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.5, 0.0], 'on')
    """
    n = len(modes)
    for name, values in (("correct", correct), ("forced", forced), ("well_formed", well_formed),
                         ("group_ids", group_ids)):
        _check_len(name, values, n)
    if prior_modes is not None:
        _check_len("prior_modes", prior_modes, n)
    for i, m in enumerate(modes):
        if m not in (*_MODES, None):
            raise ValueError(f"modes[{i}] = {m!r}; expected 'on', 'off' or None")
    index, k = _group_index(group_ids)
    index = index.tolist()
    valid = [bool(well_formed[i]) and modes[i] is not None for i in range(n)]

    counts = [{m: [0, 0] for m in _MODES} for _ in range(k)]  # group -> mode -> [passed, seen]
    priors: list[str | None] = [None] * k
    prior_set = [False] * k
    for i in range(n):
        g = index[i]
        if modes[i] is not None:
            counts[g][modes[i]][1] += 1
            counts[g][modes[i]][0] += int(valid[i] and bool(correct[i]))
        if prior_modes is not None:
            p = prior_modes[i]
            if p not in (*_MODES, None):
                raise ValueError(f"prior_modes[{i}] = {p!r}; expected 'on', 'off' or None")
            if prior_set[g] and priors[g] != p:
                raise ValueError(f"group {group_ids[i]!r} has two prior labels: {priors[g]!r} and {p!r}")
            priors[g], prior_set[g] = p, True

    group_mode = [
        _correct_mode({m: c[0] / c[1] for m, c in counts[g].items() if c[1]}, priors[g], delta)
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


# ---------------------------------------------------------------------------------------
# Group normalisation and per-segment advantages
# ---------------------------------------------------------------------------------------


def group_normalize(
    rewards: torch.Tensor,
    group_ids,
    eps: float = 1e-4,
    scale: bool = True,
    include=None,
) -> torch.Tensor:
    """GRPO advantages: (r - mean_g) / (std_g + eps) within each group.

    Matches TRL 1.16 `GRPOTrainer._generate_and_score_completions` with scale_rewards="group"
    (grpo_trainer.py:2764-2787): `std` is `trl.trainer.utils.nanstd`, the *sample* std (Bessel
    correction, n - 1), and eps = 1e-4 is added to the std. Differences: groups may be
    interleaved and of any size, a group with one (included) sample has std 0 (TRL: NaN), and
    `include` lets some samples be left out of the statistics.

    Args:
        rewards: float [N].
        group_ids: N hashable ids (list or tensor).
        eps: added to the std (with eps = 0 a zero-std group gets advantage 0, not NaN).
        scale: divide by std + eps; False gives r - mean (Dr. GRPO).
        include: bool [N] or None (all). Excluded samples do not enter mean/std and get
            advantage 0 (e.g. forced samples for the judge reward, whose mode is no choice).

    Returns:
        float [N] advantages.

    >>> a = group_normalize(torch.tensor([1., 0., 5., 0., 1., 5.]), [0, 0, 1, 0, 0, 1])
    >>> [round(x, 3) for x in a.tolist()]    # group 0: mean 0.5, sample std 0.577
    [0.866, -0.866, 0.0, -0.866, 0.866, 0.0]
    """
    rewards = rewards.detach().float()
    index, k = _group_index(group_ids)
    _check_len("group_ids", index, rewards.shape[0])
    inc = torch.ones_like(rewards) if include is None else torch.as_tensor(include).float().reshape(-1)
    _check_len("include", inc, rewards.shape[0])
    count = torch.zeros(k).index_add_(0, index, inc)
    mean = torch.zeros(k).index_add_(0, index, rewards * inc) / count.clamp(min=1)
    sq = torch.zeros(k).index_add_(0, index, (rewards - mean[index]) ** 2 * inc)
    std = torch.where(count > 1, (sq / (count - 1).clamp(min=1)).sqrt(), torch.zeros(k))
    adv = rewards - mean[index]
    if scale:
        denom = std[index] + eps
        safe = denom.clamp(min=torch.finfo(denom.dtype).tiny)
        adv = torch.where(denom > 0, adv / safe, torch.zeros_like(adv))
    return adv * inc


def segment_ids(
    completion_ids: torch.Tensor,
    tag_ids: Mapping[str, int],
    forced,
    completion_mask: torch.Tensor | None = None,
    prefill_lengths: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment codes and loss mask of each completion token, from the AutoThink tag ids.

    Convention: a completion holds the whole response, `<judge>` first. For a forced sample
    the trainer prefills `<judge></judge><think_on|off>` into the completion, so the mode
    token is in the completion and gets no loss.

    - SEG_JUDGE (1): from the first token through the first mode token (`<think_on>` or
      `<think_off>`). With no mode token: through the first `</judge>` when the completion
      starts with `<judge>`, else there is no judge segment.
    - SEG_RESPONSE (2): every later valid token (think and answer). A malformed completion is
      segmented by the same rule, so its tokens carry its (zero) rewards: judge-like tokens the
      judge advantage, the rest the answer advantage.
    - SEG_NONE (0): positions where `completion_mask` is 0 (padding, after EOS).

    The loss mask is `completion_mask`, with zeros over the forced prefix of forced samples:
    the first `prefill_lengths[b]` tokens when given, else everything through the first mode
    token (nothing when a forced completion has no mode token, i.e. the prefix was in the
    prompt). Segment codes are kept on masked tokens.

    Args:
        completion_ids: long [B, T].
        tag_ids: tag string -> token id; needs `<judge>`, `</judge>`, `<think_on>`,
            `<think_off>` (e.g. `{t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}`).
        forced: bool [B] (sequence or tensor).
        completion_mask: [B, T] 1 for real completion tokens, 0 for padding; None = all real.
        prefill_lengths: per sample, how many leading completion tokens the forcing wrote
            (used for forced samples only); None = through the mode token.

    Returns:
        segments: long [B, T] codes; loss_mask: float32 [B, T] in {0, 1}.

    >>> ids = {"<judge>": 1, "</judge>": 2, "<think_on>": 3, "<think_off>": 4}
    >>> seg, mask = segment_ids(torch.tensor([[1, 9, 2, 4, 7, 7, 0]]), ids, [False],
    ...                         torch.tensor([[1, 1, 1, 1, 1, 1, 0]]))
    >>> seg.tolist(), mask.tolist()
    ([[1, 1, 1, 1, 2, 2, 0]], [[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    """
    missing = [t for t in (JUDGE, JUDGE_END, THINK_ON, THINK_OFF) if t not in tag_ids]
    if missing:
        raise ValueError(f"`tag_ids` lacks {missing}")
    b, t = completion_ids.shape
    valid = torch.ones(b, t, dtype=torch.bool) if completion_mask is None else completion_mask.bool()
    valid = valid.to(completion_ids.device)
    forced = torch.as_tensor(forced, dtype=torch.bool).reshape(-1).tolist()
    _check_len("forced", forced, b)
    if prefill_lengths is not None:
        _check_len("prefill_lengths", prefill_lengths, b)

    ids = torch.where(valid, completion_ids, torch.full_like(completion_ids, -1)).tolist()
    is_mode = {tag_ids[THINK_ON], tag_ids[THINK_OFF]}
    segments = torch.full((b, t), SEG_RESPONSE, dtype=torch.long)
    loss_mask = valid.float().cpu()
    for i, row in enumerate(ids):
        mode_pos = next((j for j, x in enumerate(row) if x in is_mode), None)
        judge_end = mode_pos
        if judge_end is None and row and row[0] == tag_ids[JUDGE]:
            judge_end = next((j for j, x in enumerate(row) if x == tag_ids[JUDGE_END]), None)
        if judge_end is not None:
            segments[i, : judge_end + 1] = SEG_JUDGE
        if forced[i]:
            n_prefill = prefill_lengths[i] if prefill_lengths is not None else (
                0 if mode_pos is None else mode_pos + 1)
            loss_mask[i, :n_prefill] = 0.0
    segments[~valid.cpu()] = SEG_NONE
    return segments.to(completion_ids.device), loss_mask.to(completion_ids.device)


def segment_advantages(
    token_segments: torch.Tensor, judge_adv: torch.Tensor, answer_adv: torch.Tensor
) -> torch.Tensor:
    """Per-token advantages: the judge advantage on judge tokens, the answer one elsewhere.

    Args:
        token_segments: long [B, T] codes from `segment_ids` (SEG_NONE/SEG_JUDGE/SEG_RESPONSE).
        judge_adv: float [B] group-normalised r_J.
        answer_adv: float [B] group-normalised r_A.

    Returns:
        float [B, T]: judge_adv[b] where the code is SEG_JUDGE, answer_adv[b] where it is
        SEG_RESPONSE, 0 where it is SEG_NONE.

    >>> segment_advantages(torch.tensor([[1, 2, 0]]), torch.tensor([-1.]), torch.tensor([2.]))
    tensor([[-1.,  2.,  0.]])
    """
    judge_adv = judge_adv.to(token_segments.device).float().unsqueeze(1)  # [B, 1]
    answer_adv = answer_adv.to(token_segments.device).float().unsqueeze(1)
    zero = torch.zeros((), device=token_segments.device)
    return torch.where(token_segments == SEG_JUDGE, judge_adv,
                       torch.where(token_segments == SEG_RESPONSE, answer_adv, zero))


# ---------------------------------------------------------------------------------------
# KAT-Coder difficulty- and entropy-aware rescaling
# ---------------------------------------------------------------------------------------


def sample_entropy(token_entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean token entropy of each sample over its masked tokens (H_ij of KAT-Coder §4.2).

    Args:
        token_entropy: float [B, T]; mask: [B, T] 1 for tokens that count.

    Returns:
        float [B]; 0 for a sample with no counted token.
    """
    mask = mask.float()
    return (token_entropy.detach() * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def rescale_advantages(
    advantages: torch.Tensor,
    group_ids,
    success,
    entropy,
    lam: float,
    mu: float,
) -> torch.Tensor:
    """Difficulty- and entropy-aware advantage rescaling (KAT-Coder §4.2; DESIGN §4).

    D_i = 1 - mean success of group i; alpha_i = max(0, 1 + lam·(D_i - mean_i D_i)), the mean
    over the batch's groups (each group weighs one); beta_ij = max(0, 1 + mu·(H_ij - mean_j
    H_ij)), the mean within group i; A'_ij = alpha_i · beta_ij · A_ij. The factors carry no
    gradient.

    Args:
        advantages: float [N] per sample or [N, T] per token (the factor broadcasts over T).
        group_ids: N hashable ids.
        success: [N] bool or float in [0, 1].
        entropy: [N] float, per-sample mean token entropy (`sample_entropy`).
        lam: difficulty strength λ (0 disables).
        mu: entropy strength μ (0 disables).

    Returns:
        Tensor shaped like `advantages`.

    >>> rescale_advantages(torch.tensor([1., -1., 1., -1.]), [0, 0, 1, 1],
    ...                    torch.tensor([1., 1., 1., 0.]), torch.tensor([1., 1., 2., 0.]), 1.0, 0.5)
    tensor([ 0.7500, -0.7500,  1.8750, -0.6250])
    """
    index, k = _group_index(group_ids)
    n = advantages.shape[0]
    _check_len("group_ids", index, n)
    success = torch.as_tensor(success).detach().float().reshape(-1).cpu()
    entropy = torch.as_tensor(entropy).detach().float().reshape(-1).cpu()
    _check_len("success", success, n)
    _check_len("entropy", entropy, n)
    count = torch.zeros(k).index_add_(0, index, torch.ones(n))
    difficulty = 1.0 - torch.zeros(k).index_add_(0, index, success) / count  # [K]
    alpha = (1.0 + lam * (difficulty - difficulty.mean())).clamp(min=0.0)  # [K]
    h_mean = torch.zeros(k).index_add_(0, index, entropy) / count  # [K]
    beta = (1.0 + mu * (entropy - h_mean[index])).clamp(min=0.0)  # [N]
    factor = (alpha[index] * beta).to(advantages.device, advantages.dtype)
    return advantages * factor.reshape(n, *([1] * (advantages.dim() - 1)))


# ---------------------------------------------------------------------------------------
# SRPO history resampling
# ---------------------------------------------------------------------------------------


def history_resample(
    prompt_ids: Sequence[Hashable],
    rewards_per_prompt: Mapping[Hashable, Sequence],
    keep_unsolved: bool = False,
    tol: float = 1e-6,
) -> list:
    """SRPO history resampling: the prompts of the next epoch.

    After an epoch, a prompt whose every rollout got the same rewards gave zero advantage
    everywhere (no learning signal) and is dropped. "The same rewards" means every component
    equal across its rollouts (within `tol`): for Step-SRPO pass `(r_J, r_A)` per rollout, so
    a prompt is dropped only when all its r_J are identical AND all its r_A are identical
    (e.g. every rollout correct in the correct mode). SRPO (Zhang et al. 2025) keeps the
    all-failed prompts, which may become solvable later; `keep_unsolved=True` does that: an
    identical prompt is kept when its answer reward (the scalar, or the last component of a
    tuple) is 0.

    Args:
        prompt_ids: the epoch's prompts, in order.
        rewards_per_prompt: prompt id -> its rollouts' rewards (floats or tuples like
            (r_J, r_A)) collected over the epoch. Prompts absent from it (or with fewer than
            two rollouts) are kept: there is no evidence against them.
        keep_unsolved: keep prompts whose rollouts all scored 0 on the answer reward.
        tol: absolute tolerance of "same".

    Returns:
        The kept prompt ids, in the order of `prompt_ids`.

    >>> history_resample(["a", "b", "c"], {"a": [(1, 1), (1, 1)], "b": [(1, 1), (0, .5)]})
    ['b', 'c']
    """
    kept = []
    for pid in prompt_ids:
        rows = [tuple(r) if isinstance(r, (tuple, list)) else (float(r),)
                for r in rewards_per_prompt.get(pid, ())]
        if len({len(r) for r in rows}) > 1:
            raise ValueError(f"prompt {pid!r}: rollouts have rewards of different lengths")
        same = len(rows) >= 2 and all(
            math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=tol)
            for r in rows[1:]
            for a, b in zip(r, rows[0])
        )
        unsolved = bool(rows) and abs(float(rows[0][-1])) <= tol
        if not same or (keep_unsolved and unsolved):
            kept.append(pid)
    return kept


# ---------------------------------------------------------------------------------------
# Token-level clipped surrogate
# ---------------------------------------------------------------------------------------


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-level clipped surrogate (GRPO/DAPO form, as TRL's loss_type="bnpo").

    ratio = exp(logprobs - old_logprobs); per token -min(ratio·A, clip(ratio, 1 - clip_low,
    1 + clip_high)·A); loss = Σ masked per-token losses / number of masked tokens (every token
    of the batch weighs the same). DAPO's clip-higher: clip_high = 0.28.

    Args:
        logprobs: float [B, T] log-probs of the completion tokens under the current policy.
        old_logprobs: float [B, T] the same under the rollout policy (no gradient).
        advantages: float [B, T] per token, or [B] per sample.
        loss_mask: [B, T] 1 where a token is trained.
        clip_low, clip_high: clipping range of the ratio.

    Returns:
        loss: scalar; metrics (detached scalars): "clip_fraction" (masked tokens whose
        clipped term was the active one), "clip_low_fraction", "clip_high_fraction",
        "ratio_mean".

    >>> lp = torch.zeros(1, 2); adv = torch.tensor([[1., -1.]])
    >>> loss, m = policy_loss(lp, lp, adv, torch.ones(1, 2))
    >>> float(loss), float(m["clip_fraction"])
    (0.0, 0.0)
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # [B, 1] broadcasts over T
    mask = loss_mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs.detach())
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = -torch.min(ratio * advantages, clipped * advantages)  # [B, T]
    n_tokens = mask.sum().clamp(min=1.0)
    loss = (per_token * mask).sum() / n_tokens
    with torch.no_grad():
        low = (ratio < 1.0 - clip_low) & (advantages < 0)
        high = (ratio > 1.0 + clip_high) & (advantages > 0)
        metrics = {
            "clip_low_fraction": (low.to(mask.dtype) * mask).sum() / n_tokens,
            "clip_high_fraction": (high.to(mask.dtype) * mask).sum() / n_tokens,
            "clip_fraction": ((low | high).to(mask.dtype) * mask).sum() / n_tokens,
            "ratio_mean": (ratio * mask).sum() / n_tokens,
        }
    return loss, metrics
