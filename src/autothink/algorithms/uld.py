"""Universal Logit Distillation (ULD, Boizard et al. 2024) and the distillation loss around it.

ULD compares a student and a teacher that do not share a vocabulary: at each aligned position
both distributions are sorted in descending order, the shorter one is zero-padded, and the L1
distance between the two sorted vectors is the loss. Sorting forgets which token carries which
probability, so only the *shape* of the teacher's distribution is transferred; that is what makes
it work across tokenizers.

- `uld_loss`: the loss with positions paired by order. Per sample, the first m = min(#student,
  #teacher) response positions are paired in order (the paper's choice).
- For training (`autothink distill`): `prediction_bounds` + `pair_rows` pair the prediction rows
  of a response by order or by byte offsets (rows that have read the same bytes of the text
  predict the same thing, across tokenizers), `sorted_probs` turns teacher logits into sorted
  (optionally top-k) probabilities once, `uld_loss_sorted` scores student logits against them,
  `shift_pairs` moves the pairs to an MTP head, and `mtp_distill_loss` is the total over the
  main and MTP heads (the MTP CE sum included).

Everything here is plain torch (no TRL); shapes are in the docstrings. `tests/reference.py` holds
the loop-level reference computations the tests compare these with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _check_logits(name: str, logits: torch.Tensor) -> None:
    if logits.dim() != 3:
        raise ValueError(f"{name} must be [B, T, V]; got shape {tuple(logits.shape)}")


def _sorted_l1(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """L1 distance between sorted, zero-padded softmax distributions, one value per row.

    The larger side is cut to the smaller vocabulary V plus one column holding the rest of its mass
    (`sorted_probs(..., tail=True)`): against the other side's zero padding that column is exactly
    the L1 of the cut-off tail, so only V + 1 columns are sorted and compared.

    Args:
        student: `[N, Vs]` logits. teacher: `[N, Vt]` logits.
    Returns:
        `[N]`, each in [0, 2].
    """
    v = min(student.shape[-1], teacher.shape[-1])
    return _padded_l1(sorted_probs(student, temperature, top_k=v, tail=True),
                      sorted_probs(teacher, temperature, top_k=v, tail=True))


def _padded_l1(p_s: torch.Tensor, p_t: torch.Tensor) -> torch.Tensor:
    """L1 between two sorted distributions `[..., Vs]` and `[..., Vt]`, the shorter zero-padded."""
    v = max(p_s.shape[-1], p_t.shape[-1])
    p_s = F.pad(p_s, (0, v - p_s.shape[-1]))  # zeros sort last: padding keeps the order
    p_t = F.pad(p_t, (0, v - p_t.shape[-1]))
    return (p_s - p_t).abs().sum(dim=-1)


def sorted_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                 tail: bool = False) -> torch.Tensor:
    """softmax(logits / temperature), sorted in descending order, optionally only the top k.

    Computed in at least fp32 (half precision loses too much in a 100k-way softmax). The top-k
    values are probabilities of the full softmax, not renormalised: the omitted tail stands for
    zeros (see `uld_loss_sorted`), unless `tail` adds it as one more column (1 − the top-k mass):
    compared with a zero-padded distribution of at most k values, that column is exactly the L1 of
    the omitted tail, so the ULD loss is unchanged while k + 1 columns replace V.

    Args:
        logits: `[..., V]`. temperature: > 0. top_k: keep the k largest (None or >= V: all V).
        tail: with top_k < V, append the omitted mass as column k + 1.

    Returns:
        `[..., K]` with K = min(top_k, V) (+ 1 with `tail` when top_k < V).

    >>> sorted_probs(torch.tensor([0.0, 2.0, 1.0]), top_k=2).shape
    torch.Size([2])
    >>> sorted_probs(torch.tensor([0.0, 0.0, 0.0, 0.0]), top_k=1, tail=True).tolist()
    [0.25, 0.75]
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    probs = torch.softmax(logits.to(dtype) / temperature, dim=-1)
    if top_k is not None and top_k < probs.shape[-1]:
        top = probs.topk(top_k, dim=-1).values  # sorted descending
        return torch.cat([top, (1 - top.sum(-1, keepdim=True)).clamp(min=0)], dim=-1) if tail else top
    return probs.sort(dim=-1, descending=True).values


def _batch_mean(per_pair: torch.Tensor, sample: torch.Tensor, batch: int, anchor: torch.Tensor) -> torch.Tensor:
    """Mean over each sample's pairs, then mean over the samples that have at least one pair.

    Args:
        per_pair: `[N]` loss per pair. sample: `[N]` the sample index of each pair.
        anchor: a tensor of the graph, so that an empty batch still gives a differentiable 0.
    """
    if per_pair.numel() == 0:
        return anchor.sum() * 0.0
    sums = per_pair.new_zeros(batch).index_add(0, sample, per_pair)
    counts = torch.bincount(sample, minlength=batch).to(per_pair.dtype)
    has = counts > 0
    return (sums[has] / counts[has]).mean()


def uld_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_mask: torch.Tensor,
    teacher_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """ULD loss with positions paired in order, truncated to the shorter response.

    Per sample b, the selected positions of each side are taken in order and the first
    m_b = min(#student selected, #teacher selected) are paired. Per pair: softmax with
    `temperature`, sort descending, zero-pad the smaller vocabulary, L1 distance. The loss is
    the mean over a sample's pairs, averaged over the batch. Samples with m_b = 0 are skipped:
    they are left out of the batch average (not counted as 0). If no sample has a pair the
    result is a 0 that still backpropagates (zero gradients).

    Args:
        student_logits: `[B, Ts, Vs]`.
        teacher_logits: `[B, Tt, Vt]` (Tt and Vt may differ from Ts and Vs).
        student_mask: `[B, Ts]` bool or 0/1: the student's response positions (the positions
            whose logits predict a response token).
        teacher_mask: `[B, Tt]`, likewise for the teacher.
        temperature: softmax temperature (> 0) applied to both sides.

    Returns:
        A scalar tensor in [0, 2].

    Raises:
        ValueError: logits not 3-D, batch sizes differ, or a mask's shape is not the logits'
            `[B, T]`.

    >>> s, t = torch.randn(2, 5, 10), torch.randn(2, 7, 12)
    >>> ms, mt = torch.ones(2, 5, dtype=torch.bool), torch.ones(2, 7, dtype=torch.bool)
    >>> float(uld_loss(s, t, ms, mt)) > 0
    True
    """
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(
            f"batch sizes differ: student_logits {tuple(student_logits.shape)}, "
            f"teacher_logits {tuple(teacher_logits.shape)}"
        )
    if tuple(student_mask.shape) != tuple(student_logits.shape[:2]):
        raise ValueError(
            f"student_mask {tuple(student_mask.shape)} must be [B, T] of student_logits {tuple(student_logits.shape)}"
        )
    if tuple(teacher_mask.shape) != tuple(teacher_logits.shape[:2]):
        raise ValueError(
            f"teacher_mask {tuple(teacher_mask.shape)} must be [B, T] of teacher_logits {tuple(teacher_logits.shape)}"
        )
    s_mask, t_mask = student_mask.bool(), teacher_mask.bool()
    m = torch.minimum(s_mask.sum(1), t_mask.sum(1))  # (B,) pairs per sample
    # Keep the first m_b selected positions of each side: rank = running count - 1.
    s_keep = s_mask & (s_mask.cumsum(1) <= m[:, None])  # (B, Ts)
    t_keep = t_mask & (t_mask.cumsum(1) <= m[:, None])  # (B, Tt)
    # Boolean indexing is row-major, so the k-th student row pairs with the k-th teacher row.
    per_pair = _sorted_l1(student_logits[s_keep], teacher_logits[t_keep], temperature)  # (N,)
    sample = s_keep.nonzero()[:, 0]  # (N,)
    return _batch_mean(per_pair, sample, student_logits.shape[0], student_logits)


def uld_loss_sorted(
    student_logits: torch.Tensor,
    student_index: torch.Tensor,
    teacher_probs: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """ULD loss against teacher distributions that are already sorted (e.g. precomputed top-k).

    Pair p of sample b compares the sorted softmax of `student_logits[b, student_index[b, p]]`
    with `teacher_probs[b, p]`. When the teacher rows hold only its top-k probabilities (see
    `sorted_probs`), the omitted tail counts as zeros: the loss is the L1 over the teacher's
    top-k mass, sum_{r<=k} |p_s(r) - p_t(r)| + sum_{r>k} p_s(r), which never sees the teacher's
    missing tail (1 - its top-k mass). With k = the full vocabulary it is the loss against the live teacher.
    Only the student's top k probabilities meet the teacher's, so for k < Vs a `topk` replaces the
    full sort and the rest of the student's mass is one column (`sorted_probs(..., tail=True)`).
    Reduction as in `uld_loss`.

    Args:
        student_logits: `[B, Ts, Vs]`.
        student_index: `[B, N]` long, positions into Ts; -1 = no pair.
        teacher_probs: `[B, N, K]` probabilities sorted descending (zero rows where padded).
        temperature: softmax temperature of the student (> 0); the teacher's was applied when
            its probabilities were computed.

    Returns:
        A scalar tensor in [0, 2].

    Raises:
        ValueError: shapes that do not fit, or an index out of range.

    >>> s = torch.randn(1, 3, 5)
    >>> t = sorted_probs(torch.randn(1, 2, 7))
    >>> float(uld_loss_sorted(s, torch.tensor([[0, 2]]), t)) > 0
    True
    """
    _check_logits("student_logits", student_logits)
    b = student_logits.shape[0]
    if student_index.dim() != 2 or student_index.shape[0] != b or teacher_probs.dim() != 3 or (
        tuple(teacher_probs.shape[:2]) != tuple(student_index.shape)
    ):
        raise ValueError(
            f"shapes do not fit: student_logits {tuple(student_logits.shape)}, student_index "
            f"{tuple(student_index.shape)}, teacher_probs {tuple(teacher_probs.shape)} "
            "(want [B, Ts, Vs], [B, N], [B, N, K])"
        )
    valid = student_index >= 0
    if valid.any() and int(student_index[valid].max()) >= student_logits.shape[1]:
        raise ValueError(f"student_index has position {int(student_index[valid].max())} "
                         f">= T = {student_logits.shape[1]}")
    sample, pair = valid.nonzero(as_tuple=True)  # (N,), (N,)
    p_s = sorted_probs(student_logits[sample, student_index[sample, pair]], temperature,
                       top_k=teacher_probs.shape[-1], tail=True)  # (N, min(Vs, K + 1))
    p_t = teacher_probs[sample, pair].to(p_s.dtype)  # (N, K)
    return _batch_mean(_padded_l1(p_s, p_t), sample, b, student_logits)


def shift_pairs(student_index: torch.Tensor, teacher_index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs for MTP head k from the main head's pairs.

    A main-head pair (i, j) says that student position i and teacher position j predict the same
    next token (the token starting at the same byte). MTP head k at student position i - k
    predicts that same token (it reads t_{i} and predicts t_{i+1}), so it pairs with teacher
    position j. Pairs whose shifted student position falls before 0 are dropped (-1 on both).

    Args:
        student_index, teacher_index: `[B, N]` long, -1 = no pair (at the same places).
        k: the MTP depth (0 = the main head, pairs unchanged).

    Returns:
        `(student_index - k, teacher_index)` with -1 where there is no pair.

    >>> shift_pairs(torch.tensor([[3, 5, 1, -1]]), torch.tensor([[0, 1, 2, -1]]), 2)
    (tensor([[ 1,  3, -1, -1]]), tensor([[ 0,  1, -1, -1]]))
    """
    if k < 0:
        raise ValueError(f"k must be >= 0; got {k}")
    if student_index.shape != teacher_index.shape:
        raise ValueError(f"student_index {tuple(student_index.shape)} and teacher_index "
                         f"{tuple(teacher_index.shape)} differ")
    shifted = student_index - k
    drop = (student_index < 0) | (teacher_index < 0) | (shifted < 0)
    return shifted.masked_fill(drop, -1), teacher_index.masked_fill(drop, -1)


# --------------------------------------------------------------------------- CE and the total


def causal_lm_ce(logits: torch.Tensor, labels: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """Token cross-entropy of a causal LM, ignoring labels equal to -100.

    `labels` follow the Hugging Face convention (aligned with `input_ids`): the logits at
    position i are scored against `labels[:, i + shift]`. `shift=1` is the ordinary next-token
    loss; an MTP head k uses `shift=k + 1`. With no label to score the result is a 0 that
    still backpropagates.

    Args:
        logits: `[B, T, V]`. labels: `[B, T]` long.
        shift: how far ahead position i predicts (>= 1).

    Returns:
        A scalar: mean over the scored tokens.
    """
    _check_logits("logits", logits)
    if tuple(labels.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"labels {tuple(labels.shape)} must be [B, T] of logits {tuple(logits.shape)}")
    t = logits.shape[1]
    if shift >= t:
        return logits.sum() * 0.0
    dtype = torch.promote_types(logits.dtype, torch.float32)
    pred = logits[:, : t - shift].reshape(-1, logits.shape[-1]).to(dtype)  # (B*(T-shift), V)
    target = labels[:, shift:].reshape(-1)  # (B*(T-shift),)
    n = (target != IGNORE_INDEX).sum()
    if n == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(pred, target, ignore_index=IGNORE_INDEX, reduction="sum") / n


@dataclass
class MTPDistillLoss:
    """The weighted total and its parts: main-head CE and ULD, and the MTP heads' mean CE and ULD."""

    loss: torch.Tensor
    ce: torch.Tensor
    uld: torch.Tensor
    mtp_ce: torch.Tensor
    mtp_uld: torch.Tensor


def mtp_distill_loss(
    logits: torch.Tensor,
    mtp_logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    student_index: torch.Tensor | None = None,
    teacher_probs: torch.Tensor | None = None,
    w_ce: float = 1.0,
    w_uld: float = 1.0,
    mtp_weight: float = 0.3,
    temperature: float = 1.0,
) -> MTPDistillLoss:
    """Stage-1 loss with MTP heads (DESIGN §4):

        w_ce·CE_0 + w_uld·ULD_0 + (λ/D)·Σ_{k=1..D} (w_ce·CE_k + w_uld·ULD_k)

    CE_k scores head k at position i against `labels[:, i + k + 1]` (`causal_lm_ce`); ULD_k pairs
    head k at position i - k with the teacher row the main head's position i is paired with
    (`shift_pairs`), so each head is supervised by the teacher's distribution for the token it
    predicts.

    Args:
        logits: `[B, T, V]` main head. mtp_logits: D × `[B, T, V]` (may be empty).
        labels: `[B, T]` HF convention, -100 = no CE loss.
        student_index: `[B, N]` the main head's paired positions (-1 = none).
        teacher_probs: `[B, N, K]` the teacher's sorted probabilities for those pairs
            (`sorted_probs`); both may be None when `w_uld` is 0.
        w_ce, w_uld: term weights (a zero weight skips that term). mtp_weight: λ.
        temperature: the student's softmax temperature in ULD.

    Returns:
        `MTPDistillLoss`; `mtp_ce` / `mtp_uld` are the means over the D heads (0 without heads).

    >>> labels = torch.tensor([[-100, 1, 2, 3]])
    >>> out = mtp_distill_loss(torch.zeros(1, 4, 5), [], labels, w_uld=0.0)
    >>> round(float(out.loss), 4)  # ln 5
    1.6094
    """
    if w_uld and (student_index is None or teacher_probs is None):
        raise ValueError("w_uld > 0 needs student_index and teacher_probs")
    zero = logits.sum() * 0.0
    cols = None
    if w_uld:
        cols = torch.arange(student_index.shape[1], device=student_index.device).expand_as(student_index)
        cols = cols.masked_fill(student_index < 0, -1)

    def head(k: int, head_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ce = causal_lm_ce(head_logits, labels, shift=k + 1) if w_ce else zero
        if not w_uld:
            return ce, zero
        s_index, _ = shift_pairs(student_index, cols, k)  # column p still indexes teacher_probs[:, p]
        return ce, uld_loss_sorted(head_logits, s_index, teacher_probs, temperature)

    ce, uld = head(0, logits)
    total = w_ce * ce + w_uld * uld
    parts = [head(k, x) for k, x in enumerate(mtp_logits, start=1)]
    if not parts:
        return MTPDistillLoss(total, ce, uld, zero, zero)
    mtp_ce = torch.stack([p[0] for p in parts]).mean()
    mtp_uld = torch.stack([p[1] for p in parts]).mean()
    total = total + mtp_weight * (w_ce * mtp_ce + w_uld * mtp_uld)  # (λ/D)·Σ = λ·mean
    return MTPDistillLoss(total, ce, uld, mtp_ce, mtp_uld)


# --------------------------------------------------------------------------- byte-offset alignment


def _tokenizer_name(tokenizer) -> str:
    return f"{type(tokenizer).__name__}({getattr(tokenizer, 'name_or_path', '') or '?'})"


def token_byte_ends(text: str, tokenizer) -> tuple[list[int], list[int | None]]:
    """Token ids and, per token, the byte offset where it truly ends (None when it does not
    end on a character boundary of its own, e.g. the first half of a split multi-byte char)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"tokenizer {_tokenizer_name(tokenizer)} is not a fast tokenizer: byte-offset alignment "
            "needs offset mappings (return_offsets_mapping), which only fast tokenizers give"
        )
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError) as err:
        raise ValueError(f"tokenizer {_tokenizer_name(tokenizer)} cannot give offset mappings: {err}") from err
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    # byte_at[c] = UTF-8 byte offset of character c (c = 0..len(text)).
    byte_at = [0]
    for ch in text:
        byte_at.append(byte_at[-1] + len(ch.encode("utf-8")))
    ends: list[int | None] = []
    for i, (start, end) in enumerate(offsets):
        # A zero-length token (special token) ends nowhere; a token whose character is shared
        # with the next token (byte-level BPE splits "学" into two tokens with the same
        # character span) ends inside that character, not at its reported end.
        shared = i + 1 < len(offsets) and offsets[i + 1][0] < end and offsets[i + 1][1] > offsets[i + 1][0]
        ends.append(None if end <= start or shared else byte_at[end])
    return ids, ends


def prediction_bounds(text: str, tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of `text` and, per prediction row, the byte offset the predicted token starts at.

    Row r is the position whose logits predict token r of `text` (for a response after a prompt:
    the position just before it). `bounds[0] = 0`; `bounds[r]` = the UTF-8 byte offset where
    token r-1 ends, or -1 when it ends inside a character; `bounds[len(ids)]` is the end of the
    text (the row that predicts what follows it, e.g. EOS). Two tokenizations' rows with the
    same bound have read the same bytes and predict what follows them (`pair_rows`).

    Args:
        text: e.g. a response. tokenizer: a fast Hugging Face tokenizer.

    Returns:
        `(ids, bounds)` with `len(bounds) == len(ids) + 1`.

    Raises:
        ValueError: the tokenizer is not fast or cannot give offsets.
    """
    ids, ends = token_byte_ends(text, tokenizer)
    return ids, [0] + [-1 if end is None else end for end in ends]


def pair_rows(
    student_bounds: Sequence[int], teacher_bounds: Sequence[int], alignment: str = "bytes"
) -> tuple[list[int], list[int]]:
    """Pair the prediction rows of two tokenizations of one response.

    Args:
        student_bounds, teacher_bounds: per row, the byte offset of the predicted token's start
            (`prediction_bounds`, possibly truncated; -1 = not on a character boundary).
        alignment: "position" (the first min(Ns, Nt) rows in order, the ULD paper) or "bytes"
            (rows with the same byte offset).

    Returns:
        `(student_rows, teacher_rows)`, ascending.

    >>> pair_rows([0, 3, -1, 7, 9], [0, 2, 3, 9], "bytes")
    ([0, 1, 4], [0, 2, 3])
    """
    if alignment == "position":
        m = min(len(student_bounds), len(teacher_bounds))
        return list(range(m)), list(range(m))
    if alignment != "bytes":
        raise ValueError(f"alignment must be 'position' or 'bytes'; got {alignment!r}")
    at = {b: j for j, b in enumerate(teacher_bounds) if b >= 0}
    pairs = [(i, at[b]) for i, b in enumerate(student_bounds) if b >= 0 and b in at]
    return [i for i, _ in pairs], [j for _, j in pairs]
