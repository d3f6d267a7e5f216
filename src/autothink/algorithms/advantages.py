"""Advantages: GRPO group normalisation and KAT-Coder's difficulty/entropy-aware rescaling.

Pure functions over torch tensors and python sequences: no trainer state, no TRL or
transformers import (DESIGN §2), so the trainer is a thin caller and every formula has a
CPU test. The pipeline for one Step-SRPO batch of N = prompts × G rollouts:

    r_J, r_A, m* = step_srpo_rewards(modes, correct, forced, well_formed, group_ids)   # rewards.py
    A_J, A_A = step_srpo_advantages(r_J, r_A, group_ids, forced)
    A_J, A_A = (rescale_advantages(A, group_ids, correct, entropy, lam, mu) for A in (A_J, A_A))
    segments, loss_mask = segment_ids(completion_ids, tag_ids, forced, completion_mask)  # masks.py
    adv = segment_advantages(segments, A_J, A_A)                       # [B, T]

Shapes: N (= B) samples, T completion positions.
"""
from __future__ import annotations

import torch

from autothink.algorithms.groups import check_lengths, group_index


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
    index, k = group_index(group_ids)
    check_lengths("group_ids", index, rewards.shape[0])
    inc = torch.ones_like(rewards) if include is None else torch.as_tensor(include).float().reshape(-1)
    check_lengths("include", inc, rewards.shape[0])
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


def step_srpo_advantages(judge_reward, answer_reward, group_ids, forced, eps: float = 1e-4,
                         scale: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-SRPO's two advantages per sample (DESIGN §4, §6): r_J and r_A, each group-normalised.

    The judge baseline is the whole group, forced rollouts included: when every free rollout
    picks the same, wrong mode and a forced rollout shows the right one, the free rollouts' r_J
    sits below the group mean and their mode tokens get a negative advantage (a baseline over
    free rollouts only gives them 0, no signal exactly where it is needed). A forced rollout
    gets no judge advantage itself: its mode was not its choice. r_A is plain GRPO.

    Args:
        judge_reward, answer_reward: float [N] (`step_srpo_rewards`).
        group_ids: N hashable ids. forced: N bools.
        eps, scale: as `group_normalize` (scale False: Dr. GRPO's r - mean).

    Returns:
        (judge_adv, answer_adv), float [N] each.

    >>> a_j, _ = step_srpo_advantages(torch.tensor([0., 0., 1., 0.]), torch.zeros(4), [0] * 4,
    ...                               [False, False, True, True], eps=0.0)
    >>> a_j.tolist()    # free rollouts both chose the wrong mode; the forced one that showed the right mode
    [-0.5, -0.5, 0.0, 0.0]
    """
    judge_reward = torch.as_tensor(judge_reward).float()
    forced = torch.as_tensor(forced, dtype=torch.bool).reshape(-1)
    check_lengths("forced", forced, judge_reward.shape[0])
    judge_adv = group_normalize(judge_reward, group_ids, eps=eps, scale=scale).masked_fill(forced, 0.0)
    return judge_adv, group_normalize(torch.as_tensor(answer_reward).float(), group_ids, eps=eps, scale=scale)


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
    index, k = group_index(group_ids)
    n = advantages.shape[0]
    check_lengths("group_ids", index, n)
    success = torch.as_tensor(success).detach().float().reshape(-1).cpu()
    entropy = torch.as_tensor(entropy).detach().float().reshape(-1).cpu()
    check_lengths("success", success, n)
    check_lengths("entropy", entropy, n)
    count = torch.zeros(k).index_add_(0, index, torch.ones(n))
    difficulty = 1.0 - torch.zeros(k).index_add_(0, index, success) / count  # [K]
    alpha = (1.0 + lam * (difficulty - difficulty.mean())).clamp(min=0.0)  # [K]
    h_mean = torch.zeros(k).index_add_(0, index, entropy) / count  # [K]
    beta = (1.0 + mu * (entropy - h_mean[index])).clamp(min=0.0)  # [N]
    factor = (alpha[index] * beta).to(advantages.device, advantages.dtype)
    return advantages * factor.reshape(n, *([1] * (advantages.dim() - 1)))
