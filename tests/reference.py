"""Reference computations the tests compare the library with (not library code).

- `policy_loss`: the token-level clipped surrogate written out, which TRL's `_compute_loss`
  must equal on Step-SRPO's per-token advantages (tests/test_rl.py).
- ULD by explicit pairs (`uld_loss_aligned`, `byte_offset_alignment`, `collate_alignments`) and
  `response_mask`: the forms the ULD paper and tests are written in, built from the functions
  the trainer uses (`prediction_bounds`, `pair_rows`, `sorted_probs`, `uld_loss_sorted`), so a
  test of these is a test of the training path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from autothink.algorithms.uld import (
    IGNORE_INDEX,
    pair_rows,
    prediction_bounds,
    sorted_probs,
    uld_loss_sorted,
)


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


@dataclass
class ByteAlignment:
    """Token positions of two tokenizations of one text whose tokens end at the same byte.

    `student_index[p]` and `teacher_index[p]` are token positions (in `student_ids` and
    `teacher_ids`) whose tokens both end at byte `byte_ends[p]` of the UTF-8 text. All `[N]` long.
    """

    student_ids: list[int]
    teacher_ids: list[int]
    student_index: torch.Tensor
    teacher_index: torch.Tensor
    byte_ends: torch.Tensor


def byte_offset_alignment(text: str, student_tokenizer, teacher_tokenizer) -> ByteAlignment:
    """Pair the tokens of two tokenizations of `text` that end at the same byte offset, through
    `prediction_bounds` + `pair_rows` (what `autothink distill` pairs rows with): row r + 1 has
    read tokens 0..r, so its bound is the byte where token r ends."""
    s_ids, s_bounds = prediction_bounds(text, student_tokenizer)
    t_ids, t_bounds = prediction_bounds(text, teacher_tokenizer)
    s_rows, t_rows = pair_rows(s_bounds[1:], t_bounds[1:], "bytes")
    as_long = lambda xs: torch.tensor(list(xs), dtype=torch.long)  # noqa: E731
    return ByteAlignment(s_ids, t_ids, as_long(s_rows), as_long(t_rows), as_long(s_bounds[1:][i] for i in s_rows))


def uld_loss_aligned(student_logits, teacher_logits, student_index, teacher_index, temperature: float = 1.0):
    """ULD on explicit pairs: `student_logits[b, student_index[b, p]]` against
    `teacher_logits[b, teacher_index[b, p]]` (-1 = no pair), through `uld_loss_sorted`.

    Args: logits `[B, T, V]` (or `[T, V]` for one sample), indices `[B, N]` (or `[N]`).
    """
    if student_logits.dim() == 2:
        student_logits, teacher_logits = student_logits[None], teacher_logits[None]
        student_index, teacher_index = student_index[None], teacher_index[None]
    rows = teacher_logits[torch.arange(len(teacher_index))[:, None], teacher_index.clamp(min=0)]  # (B, N, Vt)
    probs = sorted_probs(rows, temperature) * (teacher_index >= 0)[..., None]
    return uld_loss_sorted(student_logits, student_index, probs, temperature)


def collate_alignments(student_index: Sequence[torch.Tensor], teacher_index: Sequence[torch.Tensor]):
    """Per-sample index vectors stacked into `[B, N]` tensors padded with -1."""
    n = max([len(x) for x in student_index] + [0])
    s = torch.full((len(student_index), n), -1, dtype=torch.long)
    t = torch.full((len(student_index), n), -1, dtype=torch.long)
    for b, (si, ti) in enumerate(zip(student_index, teacher_index)):
        s[b, : len(si)] = torch.as_tensor(si, dtype=torch.long)
        t[b, : len(ti)] = torch.as_tensor(ti, dtype=torch.long)
    return s, t


def response_mask(labels: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """The logit positions that predict a labelled token: `mask[:, i] = labels[:, i + shift] != -100`."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    if shift < labels.shape[1]:
        mask[:, : labels.shape[1] - shift] = labels[:, shift:] != IGNORE_INDEX
    return mask
