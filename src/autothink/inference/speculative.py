"""Self-speculative decoding with the model's own MTP heads (`models.mtp`): the heads draft, one
forward of the model verifies, and the output is exactly the model's.

Each step, with the pending token x_N (sampled, not yet read by the model) and the heads' caches
up to date, head 1 at the last read position reads x_N and drafts d_1 = x_{N+1}, head 2 reads
d_1 and drafts d_2, and so on to head K (the DeepSeek-V3 chain, as the heads were trained). One
forward of the model over [x_N, d_1, ..., d_K] gives its own distributions p_0..p_K at those
positions. Greedy: the drafts are accepted while they equal the model's argmax, and the model's
token at the first mismatch (or after the last draft) is appended, so the text is token for token
what plain greedy decoding writes. Sampling: the speculative rejection rule (Leviathan et al.
2023, Chen et al. 2023): d_j is accepted with probability min(1, p(d_j)/q(d_j)); at the first
rejection a token is drawn from norm(max(0, p - q)); after K acceptances one is drawn from p_K.
Every row thus samples exactly from the model's distribution whatever the heads say (q is the
heads' distribution under the same temperature and top-p). The grammar of constrained decoding
masks p along the draft path, as it masks plain decoding. Rejected positions are cut from the
model's KV cache.

Rows of a batch accept different numbers of drafts. Every row still keeps its own: a row that
accepted fewer than the most accepting row leaves holes (masked columns, not attended to; the
positions count real tokens only), so no row waits for the others. The heads read the token k
real places ahead of each column, and a head's cache is recomputed from the first column whose
input was a draft.

    tokens = mtp_generate(model, heads, input_ids, attention_mask, max_new_tokens=128,
                          eos_ids=[2], pad_id=0)          # [B, new], pad after each row's end
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache

from autothink.models.mtp import MTPHeads, last_layer_output

SPECULATIVE = ("auto", "mtp", "off")  # the `--speculative` choices of a local model
# MKL's fp32 GEMM takes 2 or 3 rows as that many matrix-vector products (2-3x one row's time) but 4
# rows in about 1.2x (BENCHMARKS.md, "Self-speculative decoding"): on a CPU the verify forward of a
# short draft gets masked filler columns up to 4 rows.
CPU_MIN_ROWS = 4


def speculative_field():
    """The `--speculative` option of the commands that decode with a local model."""
    return field(default="auto", metadata={
        "help": "local models: auto = single streams draft with the model's MTP heads when it has them "
                "(mtp_heads.safetensors), mtp = every batch does (an error without heads), off = plain decoding; "
                "the output is the same", "choices": list(SPECULATIVE)})


@dataclass
class DraftStats:
    """Counts over a generation: `drafted[k-1]` / `accepted[k-1]` drafts of head k (rows that were
    still running), `steps` model forwards after the prompt, `tokens` tokens committed."""

    drafted: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0

    def add(self, other: "DraftStats") -> None:
        width = max(len(self.drafted), len(other.drafted))
        pad = lambda xs: xs + [0] * (width - len(xs))  # noqa: E731
        self.drafted = [x + y for x, y in zip(pad(self.drafted), pad(other.drafted))]
        self.accepted = [x + y for x, y in zip(pad(self.accepted), pad(other.accepted))]
        self.steps += other.steps
        self.tokens += other.tokens

    def acceptance(self) -> list[float]:
        """Per head, the share of its drafts the model accepted."""
        return [a / d if d else 0.0 for a, d in zip(self.accepted, self.drafted)]


def accept_drafts(scores: torch.Tensor, drafts: list[int], draft_probs: torch.Tensor | None = None,
                  probs: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  generator: torch.Generator | None = None) -> tuple[int, int]:
    """The speculative acceptance rule for one row.

    Args:
        scores: `[J+1, V]` the model's (processed) logits at the pending token and after each draft.
        drafts: the J draft tokens.
        draft_probs: `[J, V]` the distribution each draft was sampled from (sampling only).
        probs: maps logits to the sampling distribution (temperature, top-p); None = greedy.
        generator: the row's random generator (sampling only).

    Returns:
        `(a, token)`: the first a drafts are accepted, then `token` is the model's next one.
    """
    if probs is None:
        target = scores.argmax(-1).tolist()
        a = 0
        while a < len(drafts) and drafts[a] == target[a]:
            a += 1
        return a, target[a]
    p = probs(scores)  # (J+1, V)
    p = p / p.sum(-1, keepdim=True)
    if drafts:
        draft_probs = draft_probs / draft_probs.sum(-1, keepdim=True)
    for j, d in enumerate(drafts):
        u = torch.rand((), generator=generator, device=p.device)
        if u * draft_probs[j, d] <= p[j, d]:
            continue
        residual = (p[j] - draft_probs[j]).clamp(min=0)
        if residual.sum() <= 0:  # p == q up to rounding: p itself is the residual's limit
            residual = p[j]
        return j, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
    return len(drafts), int(torch.multinomial(p[-1], 1, generator=generator))


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only, as `generate` makes them (1 on masked columns)."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


def _ahead(tokens: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """`[B, L]`: at each column, the token k real columns further on (masked columns are skipped;
    where there is none, any token: such columns are never read)."""
    rank = mask.cumsum(-1)  # real columns up to and including each column
    b, length = tokens.shape
    col_of = torch.zeros(b, length + 1, dtype=torch.long, device=tokens.device)  # rank-1 -> column
    cols = torch.arange(length, device=tokens.device).expand(b, length)
    col_of.scatter_(1, torch.where(mask.bool(), rank - 1, length), cols)
    want = (rank - 1 + k).clamp(max=length - 1)
    return tokens.gather(1, col_of.gather(1, want).clamp(max=length - 1))


def _kth_last_real(mask: torch.Tensor, k: int) -> int:
    """The smallest over rows of the column of each row's k-th last real column (k = 1: the last);
    0 when a row has fewer than k."""
    from_right = mask.flip(-1).cumsum(-1).flip(-1)  # real columns at or after each column
    hit = (from_right == k) & mask.bool()
    cols = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    per_row = torch.where(hit, cols, mask.shape[1]).amin(-1)
    return int(torch.where(per_row == mask.shape[1], 0, per_row).min())


@torch.no_grad()
def mtp_generate(
    model, heads: MTPHeads, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, *,
    eos_ids: list[int], pad_id: int, grammar=None, states: list | None = None, sampler=None,
    stop: Callable | None = None, cancel: Callable[[], bool] | None = None, streamer=None,
    stats: DraftStats | None = None,
) -> torch.Tensor:
    """Decode left-padded prompts with the MTP heads as the draft model.

    Args:
        model: the base causal LM the heads belong to.
        heads: its `MTPHeads`.
        input_ids, attention_mask: `[B, W]` left-padded prompts (every row holds a token).
        max_new_tokens: tokens per row.
        eos_ids: end-of-generation ids (the row ends after one).
        pad_id: written after a row's end.
        grammar, states: a `FormatGrammar` and each row's state (constrained decoding), or None.
        sampler: None for greedy, else an object with `probs(scores)` and per-row `generators`.
        stop: HF's `StopStringCriteria` (called as `stop(ids [1, L], None) -> [1] bool`): the row ends at the token
            that completes a stop string.
        cancel: ends every row once it returns True.
        streamer: an HF streamer (batch of one): the prompt, then the committed tokens of each step.
        stats: filled with the heads' acceptance counts.

    Returns:
        `[B, n]` the new tokens, each row padded with `pad_id` after its end, as `generate` returns them.
    """
    device, b = input_ids.device, input_ids.shape[0]
    depth = len(heads.heads)
    stats = stats if stats is not None else DraftStats()
    stats.drafted, stats.accepted = [0] * depth, [0] * depth
    probs = sampler.probs if sampler is not None else None
    logits_width = model.get_output_embeddings().weight.shape[0]
    seq, mask = input_ids, attention_mask.long()
    cache, head_caches = DynamicCache(config=model.config), [DynamicCache() for _ in range(depth)]
    valid = [0] * depth  # head k's cache is right for columns < valid[k-1]
    streams: list[tuple[int, torch.Tensor]] = []  # depth d-1 outputs: (first column, [B, n, H]) up to T-1
    out: list[list[int]] = [[] for _ in range(b)]
    history = [[t for t, m in zip(row, mrow) if m] for row, mrow in zip(seq.tolist(), mask.tolist())]
    done = [False] * b
    tail = getattr(stop, "maximum_token_len", 0)  # the tokens HF's StopStringCriteria reads (0: all)
    if streamer is not None:
        streamer.put(input_ids.cpu())

    def commit(r: int, tokens: list[int]) -> list[int]:
        """Append row r's new tokens until it ends; return those kept."""
        kept = []
        for t in tokens:
            if done[r]:
                break
            kept.append(t)
            out[r].append(t)
            history[r].append(t)
            if grammar is not None:
                states[r] = grammar.advance(states[r], t)
            if (t in eos_ids or len(out[r]) >= max_new_tokens
                    or (stop is not None and bool(stop(torch.tensor([history[r][-tail:]], device=device), None)[0]))):
                done[r] = True
        return kept

    def masked(scores: torch.Tensor, state_rows: list) -> torch.Tensor:
        scores = scores.float()
        if grammar is not None:
            for r, state in enumerate(state_rows):
                grammar.mask(state, scores[r])
        return scores

    def choose(scores: torch.Tensor, r: int) -> int:
        return accept_drafts(scores[None], [], probs=probs, generator=sampler.generators[r] if sampler else None)[1]

    # Prefill: the model reads the prompts; its last logits give the first (pending) token.
    with last_layer_output(model) as captured:
        logits = model(input_ids=seq, attention_mask=mask, position_ids=_positions(mask), past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1]
    streams.append((0, captured[-1]))
    first = masked(logits, states or [None] * b)
    pending = [choose(first[r], r) for r in range(b)]
    for r in range(b):
        kept = commit(r, [pending[r]])
        if streamer is not None:
            streamer.put(torch.tensor(kept))
    seq = torch.cat([seq, torch.tensor(pending, device=device)[:, None]], dim=1)
    mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
    stats.tokens += b

    while not all(done) and not (cancel is not None and cancel()):
        t = seq.shape[1]  # column t-1 holds each row's pending token; the model has read columns < t-1
        pos = _positions(mask)
        # --- draft: head k over the columns its cache lacks, each reading the token k real columns on
        ext_tokens, ext_mask = seq, mask
        last = (mask[:, : t - 1] * torch.arange(1, t, device=device)).argmax(-1)  # last real column < t-1
        drafts, draft_probs, new_streams = [], [], [streams[0]]
        for k in range(1, depth + 1):
            lo, hidden = new_streams[k - 1]
            start = valid[k - 1]
            kept = head_caches[k - 1].get_seq_length(heads.config.block_layer_idx)
            if kept > start:
                head_caches[k - 1].crop(start - kept)
            ahead = _ahead(ext_tokens, ext_mask, k)[:, start:t - 1]
            h = heads.step(k, model, ahead, hidden[:, start - lo:], mask[:, :t - 1], pos[:, start:t - 1],
                           head_caches[k - 1])  # (B, t-1-start, H)
            if k < depth:
                old_lo, old = streams[k] if k < len(streams) else (start, h[:, :0])
                new_streams.append((old_lo, torch.cat([old[:, : start - old_lo], h], dim=1)))
            logits, ids = heads.draft_logits(model, h[torch.arange(b, device=device), last - start])  # (B, V')
            if probs is None:
                d = logits.argmax(-1)
            else:
                q = probs(logits.float())
                d = torch.stack([torch.multinomial(q[r], 1, generator=sampler.generators[r]) for r in range(b)])[:, 0]
                if ids is not None:  # q over the whole vocabulary: zero outside the draft ids
                    q = q.new_zeros(b, logits_width).index_copy_(1, ids, q)
                draft_probs.append(q)
            d = d if ids is None else ids[d]
            drafts.append(d)
            ext_tokens = torch.cat([ext_tokens, d[:, None]], dim=1)
            ext_mask = torch.cat([ext_mask, mask.new_ones(b, 1)], dim=1)
        for k in range(1, depth + 1):  # after this step, head k's columns up to its k-th last real one stay right
            valid[k - 1] = _kth_last_real(mask, k)
        # --- verify: one forward over the pending token and the drafts still needed
        room = max(max_new_tokens - len(out[r]) for r in range(b) if not done[r])
        j = min(depth, room - 1)
        filler = max(0, -(-CPU_MIN_ROWS // b) - (j + 1)) if device.type == "cpu" else 0
        verify_mask = torch.cat([ext_mask[:, : t + j], mask.new_zeros(b, filler)], dim=1)
        verify_ids = torch.cat([ext_tokens[:, t - 1: t + j], seq.new_full((b, filler), pad_id)], dim=1)
        with last_layer_output(model) as captured:
            logits = model(input_ids=verify_ids, attention_mask=verify_mask,
                           position_ids=_positions(verify_mask)[:, t - 1:], past_key_values=cache,
                           use_cache=True).logits[:, : j + 1]  # (B, j+1, V)
        stats.steps += 1
        accepted, nexts = [], []
        q_all = torch.stack(draft_probs[:j], dim=1) if probs is not None and j else None  # (B, j, V)
        for r in range(b):
            if done[r]:
                accepted.append(None)
                nexts.append(pad_id)
                continue
            row_drafts = [int(drafts[i][r]) for i in range(j)]
            path = [states[r] if grammar is not None else None]  # the grammar's state before each position
            if grammar is not None:
                for tok in row_drafts:
                    path.append(grammar.advance(path[-1], tok))
            scores = masked(logits[r], path)
            a, token = accept_drafts(scores, row_drafts, None if q_all is None else q_all[r], probs,
                                     sampler.generators[r] if sampler else None)
            for i in range(j):
                stats.drafted[i] += 1
                stats.accepted[i] += int(i < a)
            accepted.append(a)
            nexts.append(token)
        most = max(a for a in accepted if a is not None)
        # --- commit: row r keeps its a accepted drafts; holes up to the most accepting row; its next token last
        new_cols = torch.full((b, most + 1), pad_id, dtype=seq.dtype, device=device)
        new_mask = mask.new_ones(b, most + 1)
        for r in range(b):
            a = most if accepted[r] is None else accepted[r]
            new_cols[r, :a] = ext_tokens[r, t: t + a]
            new_mask[r, a:most] = 0
            new_cols[r, most] = nexts[r]
            if accepted[r] is not None:
                kept = commit(r, new_cols[r, :a].tolist() + [nexts[r]])
                stats.tokens += len(kept)
                if streamer is not None and kept:
                    streamer.put(torch.tensor(kept))
        if j + filler > most:
            cache.crop(most - j - filler)
        # keep what the next step reads: the model's outputs of the columns it just read, and each
        # head's outputs from where the next head starts
        streams = [(t - 1, captured[-1][:, : most + 1])]
        streams += [(valid[k], s[:, valid[k] - lo:]) for k, (lo, s) in enumerate(new_streams[1:], start=1)]
        seq, mask = torch.cat([seq, new_cols], dim=1), torch.cat([mask, new_mask], dim=1)
    if streamer is not None:
        streamer.end()
    length = max(len(o) for o in out)
    return torch.tensor([o + [pad_id] * (length - len(o)) for o in out], dtype=torch.long, device=device)
