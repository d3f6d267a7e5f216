"""Per-token segments and loss masks of AutoThink completions, and the advantages laid on them.

    segments, loss_mask = segment_ids(completion_ids, tag_ids, forced, completion_mask)
    advantages = segment_advantages(segments, judge_adv, answer_adv)   # [B, T]

Shapes: B completions, T completion positions.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from autothink.algorithms.groups import check_lengths
from autothink.format import JUDGE, JUDGE_END, THINK_OFF, THINK_ON

# Segment codes of `segment_ids` (one int per completion token).
SEG_NONE = 0  # padding / outside the completion: no advantage
SEG_JUDGE = 1  # <judge>…</judge><think_on|off>: judge advantage
SEG_RESPONSE = 2  # <think>…</think><answer>…</answer> (and malformed tails): answer advantage

def segment_ids(
    completion_ids: torch.Tensor,
    tag_ids: Mapping[str, int],
    forced,
    completion_mask: torch.Tensor | None = None,
    forced_spans: Sequence[tuple[int, int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment codes and loss mask of each completion token, from the AutoThink tag ids.

    Convention: a completion holds the whole response, `<judge>` first. For a forced sample
    the trainer writes the mode token into the completion (after the model's own judge, or as
    the prefill `<judge></judge><think_on|off>`), and the tokens it wrote get no loss.

    - SEG_JUDGE (1): from the first token through the first mode token (`<think_on>` or
      `<think_off>`). With no mode token: through the first `</judge>` when the completion
      starts with `<judge>`, else there is no judge segment.
    - SEG_RESPONSE (2): every later valid token (think and answer). A malformed completion is
      segmented by the same rule, so its tokens carry its (zero) rewards: judge-like tokens the
      judge advantage, the rest the answer advantage.
    - SEG_NONE (0): positions where `completion_mask` is 0 (padding, after EOS).

    The loss mask is `completion_mask`, with zeros over the tokens the forcing wrote in forced
    samples: positions `forced_spans[b] = (start, end)` when given, else everything through the
    first mode token (nothing when a forced completion has no mode token, i.e. the prefix was
    in the prompt). Segment codes are kept on masked tokens.

    Args:
        completion_ids: long [B, T].
        tag_ids: tag string -> token id; needs `<judge>`, `</judge>`, `<think_on>`,
            `<think_off>` (e.g. `{t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}`).
        forced: bool [B] (sequence or tensor).
        completion_mask: [B, T] 1 for real completion tokens, 0 for padding; None = all real.
        forced_spans: per sample, the completion positions [start, end) the forcing wrote (used
            for forced samples only); None = from the start through the mode token.

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
    check_lengths("forced", forced, b)
    if forced_spans is not None:
        check_lengths("forced_spans", forced_spans, b)

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
            start, end = forced_spans[i] if forced_spans is not None else (0, 0 if mode_pos is None else mode_pos + 1)
            loss_mask[i, start:end] = 0.0
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

def segment_lengths(completion_ids: torch.Tensor, segments: torch.Tensor, completion_mask: torch.Tensor,
                    forced_spans: list[tuple[int, int]], think_id: int, think_end_id: int) -> dict[str, list[int]]:
    """Generated tokens per segment of each completion: judge, think (`<think>` through `</think>`,
    or to the end when unclosed) and answer (the rest); tokens the forcing wrote are not counted.

    Returns:
        {"judge": [B], "think": [B], "answer": [B]} token counts.
    """
    out = {"judge": [], "think": [], "answer": []}
    for row, seg, mask, (f_start, f_end) in zip(completion_ids.tolist(), segments.tolist(),
                                                completion_mask.tolist(), forced_spans):
        valid = [j for j in range(len(row)) if mask[j] and not f_start <= j < f_end]
        begin = row.index(think_id) if think_id in row else None
        end = row.index(think_end_id, begin) if begin is not None and think_end_id in row[begin:] else len(row)
        think = [j for j in valid if seg[j] == SEG_RESPONSE and begin is not None and begin <= j <= end]
        out["judge"].append(sum(seg[j] == SEG_JUDGE for j in valid))
        out["think"].append(len(think))
        out["answer"].append(sum(seg[j] == SEG_RESPONSE for j in valid) - len(think))
    return out


