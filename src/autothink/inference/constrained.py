"""Format-constrained decoding: a logits processor that keeps a reply inside the AutoThink grammar.

    <judge> text </judge> ( <think_on> <think> text </think> | <think_off> ) <answer> text </answer> EOS

Between two tags the model is free: every token is allowed except EOS, the tags that do not close
the current segment, and tokens that would spell a tag out of pieces (`<ans` then `wer>`), which
`format.parse` reads as a tag as well. Between segments exactly the grammar's next tag is allowed
(no text, no whitespace). A reply is tracked from its start: the forced prefix and any `prefix=`
continuation are read first (`state_after`), so staged generation (thinking budgets, a forced mode
after the model's own judge) stays constrained across stages. A reply whose text so far already
breaks the grammar is left unconstrained. Nothing here can make a reply that runs out of
`max_tokens` well formed: its last segment stays open.

    grammar = FormatGrammar(tokenizer, eos_ids)
    processor = FormatLogitsProcessor(grammar, [grammar.state_after(reply_so_far) for ...])
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

from autothink.format import (
    ANSWER,
    ANSWER_END,
    JUDGE,
    JUDGE_END,
    SPECIAL_TOKENS,
    THINK,
    THINK_END,
    THINK_OFF,
    THINK_ON,
)

# Positions in the grammar. Segments hold text; the others wait for the next tag.
START, JUDGING, JUDGED, ON, THINKING, THOUGHT, OFF, ANSWERING, END, BROKEN = (
    "start", "judge", "judged", "on", "think", "thought", "off", "answer", "end", "broken")
SEGMENTS = {JUDGING: JUDGE_END, THINKING: THINK_END, ANSWERING: ANSWER_END}  # segment -> its closing tag
NEXT = {  # (position, tag) -> position
    (START, JUDGE): JUDGING, (JUDGING, JUDGE_END): JUDGED, (JUDGED, THINK_ON): ON, (JUDGED, THINK_OFF): OFF,
    (ON, THINK): THINKING, (THINKING, THINK_END): THOUGHT, (THOUGHT, ANSWER): ANSWERING, (OFF, ANSWER): ANSWERING,
    (ANSWERING, ANSWER_END): END,
}
EXPECTED = {where: [t for (w, t) in NEXT if w == where]  # position between segments -> the tags that may come next
            for where, _ in NEXT if where not in SEGMENTS}
_TAG_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
_TAG_PREFIXES = {t[:k] for t in SPECIAL_TOKENS for k in range(1, len(t))}  # proper prefixes of the tags
_LONGEST_TAG = max(map(len, SPECIAL_TOKENS))


@dataclass(frozen=True)
class State:
    """Where a reply is in the grammar; `pending` is the end of the segment's text that a tag may still
    grow from (`<thi`), "" when none."""

    where: str
    pending: str = ""


def _pending(text: str) -> str:
    """The longest end of `text` that is a proper prefix of a tag."""
    for k in range(min(len(text), _LONGEST_TAG - 1), 0, -1):
        if text[-k:] in _TAG_PREFIXES:
            return text[-k:]
    return ""


def _after_text(state: State, text: str) -> State:
    if state.where in SEGMENTS:
        return State(state.where, _pending(state.pending + text))
    if state.where in (BROKEN, END) or not text.strip():  # whitespace between segments is well formed
        return state
    return State(BROKEN)


def _after_tag(state: State, tag: str) -> State:
    return State(NEXT.get((state.where, tag), BROKEN))


def state_after(text: str) -> State:
    """The grammar state after the reply text `text` (its start: "" is `State("start")`)."""
    state, i = State(START), 0
    for m in _TAG_RE.finditer(text):
        state = _after_tag(_after_text(state, text[i:m.start()]), m.group())
        i = m.end()
    return _after_text(state, text[i:])


class FormatGrammar:
    """The grammar over one tokenizer's vocabulary: which token ids each state forbids or allows.

    Building it decodes every token once; a `LocalBackend` builds one and keeps it.

    Raises:
        ValueError: the tokenizer lacks the AutoThink tokens (`format.add_autothink_tokens`).
    """

    def __init__(self, tokenizer, eos_ids: list[int]):
        vocab = tokenizer.get_vocab()
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"constrained decoding needs the AutoThink tokens; the tokenizer lacks {missing} "
                             "(format.add_autothink_tokens)")
        self.tag_of = {vocab[t]: t for t in SPECIAL_TOKENS}
        self.ids_of = {t: vocab[t] for t in SPECIAL_TOKENS}
        self.eos_ids = list(eos_ids)
        self.texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        self._sorted = sorted((text, i) for i, text in enumerate(self.texts) if i not in self.tag_of)
        self._keys = [text for text, _ in self._sorted]
        spelled = [i for i, text in enumerate(self.texts) if i not in self.tag_of and _TAG_RE.search(text)]
        self._always_banned = sorted(set(self.tag_of) | set(self.eos_ids) | set(spelled))
        self._banned: dict[State, torch.Tensor] = {}

    def advance(self, state: State, token: int) -> State:
        if state.where in (END, BROKEN):
            return state
        if token in self.tag_of:
            return _after_tag(state, self.tag_of[token])
        if token in self.eos_ids:
            return State(END)
        return _after_text(state, self.texts[token])

    def allowed(self, state: State) -> list[int] | None:
        """The only ids allowed between segments (EOS after the answer); None inside a segment or when broken."""
        if state.where == END:
            return self.eos_ids
        if state.where in EXPECTED:
            return [self.ids_of[t] for t in EXPECTED[state.where]]
        return None

    def mask(self, state: State, scores: torch.Tensor) -> None:
        """Set the `[V]` logits of what `state` forbids to -inf, in place (a broken reply: nothing)."""
        if state.where == BROKEN:
            return
        allowed = self.allowed(state)
        if allowed is not None:
            keep = scores[allowed].clone()
            scores[:] = float("-inf")
            scores[allowed] = keep
        else:
            scores[self.banned(state).to(scores.device)] = float("-inf")

    def banned(self, state: State) -> torch.Tensor:
        """Ids a segment's text must not continue with: EOS, every tag but its closing one, and tokens
        that would complete a tag spelled in pieces from `state.pending`."""
        if state not in self._banned:
            ids = set(self._always_banned) - {self.ids_of[SEGMENTS[state.where]]}
            p = state.pending
            rests = {t[len(p) - k:] for t in SPECIAL_TOKENS for k in range(len(p)) if t.startswith(p[k:])}
            for rest in rests:  # tokens starting with what a pending tag still lacks
                j = bisect.bisect_left(self._keys, rest)
                while j < len(self._keys) and self._keys[j].startswith(rest):
                    ids.add(self._sorted[j][1])
                    j += 1
            self._banned[state] = torch.tensor(sorted(ids), dtype=torch.long)
        return self._banned[state]


class FormatLogitsProcessor(LogitsProcessor):
    """Masks the logits of each row of a `generate` batch to what the grammar allows next.

    Args:
        grammar: the tokenizer's `FormatGrammar`.
        states: per batch row, the state of its reply before the first generated token
            (`state_after` of the forced prefix and the continued prefix).
    """

    def __init__(self, grammar: FormatGrammar, states: list[State]):
        self.grammar, self.states, self.seen = grammar, list(states), None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        width = input_ids.shape[1]
        if self.seen is not None:
            for b, row in enumerate(input_ids[:, self.seen:].tolist()):
                for token in row:
                    self.states[b] = self.grammar.advance(self.states[b], token)
        self.seen = width
        for b, state in enumerate(self.states):
            self.grammar.mask(state, scores[b])
        return scores
