"""Answering in the AutoThink format with mode control and a thinking budget, over any `Backend`.

    replies = respond(backend, [[{"role": "user", "content": "What is 17*23?"}]],
                      SamplingParams(temperature=0, max_tokens=512), thinking="auto", thinking_budget=128)
    r = replies[0][0]            # one list of n replies per conversation
    r.parts.answer, r.mode, r.think_tokens, r.budget_hit

Control (DESIGN §3, §4): with `thinking="auto"` the model decides, directives in the prompt
("DO NOT THINK", "Think deeper", ...) included: a model trained on them obeys them itself.
`thinking="on"|"off"` forces the mode token *after the model's own judge*: the reply starts with
`<judge>`, the judge stops at `</judge>` (or at any later tag the model writes instead, which is
dropped), then `</judge>` and the mode token are appended (with `<think>` for on, `<answer>` for
off) and the model continues. `forced_judge="empty"`, and backends that cannot continue a reply,
use the chat template's forced prefix instead: an empty judge, then the mode token (a context
that the SFT data never shows; kept as the measured fallback). `force_directives=True` forces the
mode of a directive found in the prompt (`autothink.format.detect_directive`, a regex) for models
that have not learnt directives. Generation stops at `</answer>`. `SamplingParams(constrained=True)`
keeps the reply in the AutoThink grammar on backends that can (`inference.constrained`).

A thinking budget of N tokens runs the reply in stages, each continuing the text so far
(`Backend.generate(prefix=...)`): in auto mode the judge up to `<think>` (or to `</answer>` for a
think-off reply); then at most N think tokens, stopping at `</think>`; when the think segment hit
the budget unclosed, `</think><answer>` is appended; finally the answer up to `</answer>`.
`max_tokens` bounds the generated tokens of all stages together.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from autothink.format import (
    ANSWER,
    ANSWER_END,
    FORCED_JUDGES,
    JUDGE,
    JUDGE_END,
    JUDGE_STOPS,
    MODE_TOKENS,
    SPECIAL_TOKENS,
    THINK,
    THINK_END,
    THINKING,
    Mode,
    Parsed,
    detect_directive,
    forced_prefix,
    parse,
)
from autothink.inference.backend import (
    Backend,
    Completion,
    Conversation,
    SamplingParams,
)

_JUDGE, _OWN_JUDGE, _THINK, _ANSWER = "judge", "own_judge", "think", "answer"  # stages
_STAGE_STOPS = {_JUDGE: (THINK, ANSWER_END), _OWN_JUDGE: JUDGE_STOPS, _THINK: (THINK_END,), _ANSWER: (ANSWER_END,)}


@dataclass
class ControlOptions:
    """The reply controls beyond `thinking` and the budget: flags of generate, chat, serve and eval."""

    force_directives: bool = field(default=False, metadata={
        "help": "force the mode a prompt directive asks for (a regex); by default the model decides"})
    forced_judge: str = field(default="model", metadata={
        "help": "a forced mode follows the model's own judge (model) or an empty one (empty: the prefill fallback)",
        "choices": list(FORCED_JUDGES)})
    constrained: bool = field(default=False, metadata={
        "help": "keep replies in the AutoThink grammar with a logits processor (local models)"})


@dataclass
class Reply:
    """One reply: the text, its parsed parts, how the mode was controlled and what it cost.

    `text` is the whole response as `autothink.format.parse` takes it (a forced prefix included).
    `thinking` is the control applied ("auto", or the mode forced by the request or, under
    `force_directives`, by `directive`); `directive` is the directive found in the prompt, forced
    or not (so its obedience can be scored). Token counts: `completion_tokens` are all
    generated tokens (from the backend); the per-segment counts are the segments' contents
    (tags excluded), counted with the backend's tokenizer when it has one, else the completion
    tokens split in proportion to characters (an estimate). `finish_reason` is "stop" or
    "length"; `stop_reason` is the caller's stop string that ended the reply, if any;
    `budget_hit` says the think segment was cut at the thinking budget.
    """

    text: str
    parts: Parsed
    thinking: str
    directive: Mode | None
    judge_tokens: int
    think_tokens: int
    answer_tokens: int
    completion_tokens: int
    prompt_tokens: int
    finish_reason: str
    stop_reason: str | None = None
    budget_hit: bool = False

    @property
    def mode(self) -> Mode | None:
        """The mode the reply is in ("on", "off", or None when it has no mode token)."""
        return self.parts.mode

    @property
    def reasoning_tokens(self) -> int:
        return self.judge_tokens + self.think_tokens

    def to_dict(self) -> dict:
        """A JSON-ready record: the text, its parts, the control and the token counts."""
        p = self.parts
        return {
            "text": self.text, "judge": p.judge, "mode": p.mode, "think": p.think, "answer": p.answer,
            "well_formed": p.well_formed, "errors": p.errors, "thinking": self.thinking,
            "directive": self.directive, "finish_reason": self.finish_reason, "stop_reason": self.stop_reason,
            "budget_hit": self.budget_hit,
            "tokens": {"judge": self.judge_tokens, "think": self.think_tokens, "answer": self.answer_tokens,
                       "completion": self.completion_tokens, "prompt": self.prompt_tokens},
        }


@dataclass
class _Row:
    """One reply being generated: the text so far and the stage that continues it."""

    conv: int
    thinking: str
    directive: Mode | None
    stage: str
    text: str  # the reply so far; its first `start` characters are the forced prefix,
    start: int  # which the backend renders itself from `render`
    render: str  # the `thinking` the backend's chat template gets
    budget: int | None = None  # the thinking budget
    fresh: bool = True  # nothing generated yet: the n rows of a conversation are sampled together
    tokens: int = 0
    prompt_tokens: int = 0
    finish_reason: str = ""
    stop_reason: str | None = None
    budget_hit: bool = False
    done: bool = False

    @property
    def generated(self) -> str:
        return self.text[self.start:]


def check_controls(params: SamplingParams, thinking: str, thinking_budget: int | None,
                   forced_judge: str = "model") -> None:
    """Raise TypeError / ValueError for bad sampling params, `thinking`, `thinking_budget` or `forced_judge`."""
    if forced_judge not in FORCED_JUDGES:
        raise ValueError(f"forced_judge must be 'model' or 'empty', got {forced_judge!r}")
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
    if thinking not in THINKING:
        raise ValueError(f"thinking must be 'auto', 'on' or 'off', got {thinking!r}")
    if thinking_budget is not None and (
        isinstance(thinking_budget, bool) or not isinstance(thinking_budget, int) or thinking_budget < 1
    ):
        raise ValueError(f"thinking_budget must be an integer >= 1 or None, got {thinking_budget!r}")


def _directive(conversation: Conversation) -> Mode | None:
    users = [m.get("content") for m in conversation if m.get("role") == "user"]
    return detect_directive(users[-1]) if users and isinstance(users[-1], str) else None


def _start(conv: int, conversation: Conversation, thinking: str, budget: int | None, force_directives: bool,
           own_judge: bool) -> _Row:
    directive = _directive(conversation)
    control = directive if thinking == "auto" and directive and force_directives else thinking
    if control != "auto" and own_judge:  # the model writes its judge; the mode token comes after it
        return _Row(conv=conv, thinking=control, directive=directive, stage=_OWN_JUDGE, text=JUDGE, start=0,
                    render="auto", budget=budget)
    prefix = forced_prefix(control)
    if budget is None or control == "off":
        stage = _ANSWER
    else:
        stage = _THINK if control == "on" else _JUDGE
    return _Row(conv=conv, thinking=control, directive=directive, stage=stage, text=prefix, start=len(prefix),
                render=control, budget=budget)


def _stage_params(params: SamplingParams, row: _Row, budget: int | None) -> SamplingParams:
    left = params.max_tokens - row.tokens
    own = tuple(s for s in _STAGE_STOPS[row.stage] if s not in params.stop)
    return dataclasses.replace(
        params, n=1, max_tokens=min(budget, left) if row.stage == _THINK else left, stop=params.stop + own
    )


def _advance(row: _Row, c: Completion, params: SamplingParams) -> str:
    """Add one stage's completion to `row` and move it on; returns the tags appended after the text."""
    row.tokens += c.tokens
    row.fresh = False
    row.prompt_tokens = row.prompt_tokens or c.prompt_tokens
    row.text += c.text
    added, stage = "", None
    if c.stop_reason is not None and c.stop_reason in params.stop:
        row.stop_reason = c.stop_reason  # the caller's stop string ends the reply
    elif row.stage == _OWN_JUDGE and (c.finish_reason == "stop" or row.tokens < params.max_tokens):
        # the judge ended (at </judge>, another tag, EOS or the budget): close it and force the mode
        added = JUDGE_END + MODE_TOKENS[row.thinking] + (THINK if row.thinking == "on" else ANSWER)
        stage = _THINK if row.thinking == "on" and row.budget is not None else _ANSWER
    elif row.stage == _JUDGE and c.stop_reason == THINK:
        added, stage = THINK, _THINK
    elif row.stage == _THINK and c.stop_reason == THINK_END:
        added, stage = THINK_END, _ANSWER
    elif row.stage == _THINK and c.finish_reason == "length" and row.tokens < params.max_tokens:
        added, stage, row.budget_hit = THINK_END + ANSWER, _ANSWER, True
    elif c.stop_reason == ANSWER_END:
        added = ANSWER_END
    row.text += added
    if stage is not None and row.tokens < params.max_tokens:
        row.stage = stage
    else:  # finished, or max_tokens ran out just as a stage ended
        row.done = True
        row.finish_reason = c.finish_reason if stage is None else "length"
    return added


def _count(tokenizer, text: str | None) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False)) if text else 0


def _reply(backend: Backend, row: _Row) -> Reply:
    parts = parse(row.text)
    segments = (parts.judge, parts.think, parts.answer)
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is not None:
        judge, think, answer = (_count(tokenizer, s) for s in segments)
    else:
        chars = max(len(row.generated), 1)
        judge, think, answer = (round(row.tokens * len(s or "") / chars) for s in segments)
    return Reply(
        text=row.text, parts=parts, thinking=row.thinking, directive=row.directive, judge_tokens=judge,
        think_tokens=think, answer_tokens=answer, completion_tokens=row.tokens, prompt_tokens=row.prompt_tokens,
        finish_reason=row.finish_reason, stop_reason=row.stop_reason, budget_hit=row.budget_hit,
    )


def respond(
    backend: Backend,
    conversations: Sequence[Conversation],
    params: SamplingParams,
    thinking: str = "auto",
    thinking_budget: int | None = None,
    force_directives: bool = False,
    forced_judge: str = "model",
    cancel: Callable[[], bool] | None = None,
    tools: list[dict] | None = None,
) -> list[list[Reply]]:
    """`params.n` replies per conversation, with mode control and an optional thinking budget.

    Each stage is one batched `backend.generate` call over every reply that reached it.

    Args:
        thinking: "auto" (the model decides), "on" or "off" (forced after the model's judge).
        thinking_budget: most think tokens before `</think><answer>` is forced (None: no limit).
        force_directives: under "auto", force the mode a prompt directive asks for (regex), instead
            of leaving it to the model.
        forced_judge: "model" (a forced mode follows the model's own judge) or "empty" (the chat
            template's empty-judge prefix; also what backends that cannot continue a reply get).
        cancel: once it returns True, generation stops where it is (backends that `supports_cancel`)
            and no further stage starts.
        tools: OpenAI tool schemas shown to the model (backends that `supports_tools`).

    Raises:
        ValueError: a bad `thinking`, `thinking_budget` or `forced_judge`, or a budget for a backend
            that cannot continue a reply from a prefix.

    >>> replies = respond(backend, [[{"role": "user", "content": "2+2?"}]], SamplingParams(), thinking="off")
    >>> replies[0][0].text                                       # doctest: +SKIP
    '<judge>Simple addition.</judge><think_off><answer>4</answer>'
    """
    check_controls(params, thinking, thinking_budget, forced_judge)
    if thinking_budget is not None and not backend.supports_prefix:
        raise ValueError(f"a thinking budget needs a backend that continues replies; {backend!r} does not")
    conversations = [list(c) for c in conversations]
    own_judge = forced_judge == "model" and backend.supports_prefix
    rows = [
        _start(i, conv, thinking, thinking_budget, force_directives, own_judge)
        for i, conv in enumerate(conversations) for _ in range(params.n)
    ]
    options = {"cancel": cancel} if cancel is not None else {}
    if tools:
        options["tools"] = tools
    while (pending := [r for r in rows if not r.done]) and not (cancel and cancel()):
        groups: dict[tuple, list[_Row]] = defaultdict(list)
        for row in pending:
            groups[(row.render, _stage_params(params, row, thinking_budget))].append(row)
        for (render, stage_params), group in groups.items():
            fresh = [r for r in group if r.fresh]  # all n rows of a conversation, sampled together
            going = [r for r in group if not r.fresh]
            first = {r.conv: r for r in reversed(fresh)}
            convs = list(dict.fromkeys(r.conv for r in fresh))
            if convs:
                outs = backend.generate([conversations[i] for i in convs],
                                        dataclasses.replace(stage_params, n=params.n), thinking=render,
                                        prefix=[first[i].generated for i in convs], **options)
                by_conv = {i: iter(out) for i, out in zip(convs, outs)}
                for row in fresh:
                    _advance(row, next(by_conv[row.conv]), params)
            if going:
                outs = backend.generate([conversations[r.conv] for r in going], stage_params, thinking=render,
                                        prefix=[r.generated for r in going], **options)
                for row, out in zip(going, outs):
                    _advance(row, out[0], params)
    n = params.n
    return [[_reply(backend, r) for r in rows[i * n:(i + 1) * n]] for i in range(len(conversations))]


def respond_stream(
    backend: Backend,
    conversation: Conversation,
    params: SamplingParams,
    thinking: str = "auto",
    thinking_budget: int | None = None,
    force_directives: bool = False,
    forced_judge: str = "model",
    tools: list[dict] | None = None,
) -> Iterator[str | Reply]:
    """One reply as it is generated: text pieces (concatenating to `Reply.text`), then the `Reply`.

    Same control and stages as `respond` (`params.n` must be 1); pieces arrive as the backend's
    `stream` produces them (token by token for `LocalBackend`).
    """
    check_controls(params, thinking, thinking_budget, forced_judge)
    if params.n != 1:
        raise ValueError(f"respond_stream produces one reply; got n={params.n}")
    if thinking_budget is not None and not backend.supports_prefix:
        raise ValueError(f"a thinking budget needs a backend that continues replies; {backend!r} does not")
    conversation = list(conversation)
    row = _start(0, conversation, thinking, thinking_budget, force_directives,
                 forced_judge == "model" and backend.supports_prefix)
    if row.text:
        yield row.text
    while not row.done:
        completion = None
        for item in backend.stream(conversation, _stage_params(params, row, thinking_budget), thinking=row.render,
                                   prefix=row.generated, **({"tools": tools} if tools else {})):
            if isinstance(item, Completion):
                completion = item
            elif item:
                yield item
        added = _advance(row, completion, params)
        if added:
            yield added
    yield _reply(backend, row)


class ReasoningSplitter:
    """Splits reply text, fed in pieces, into reasoning (judge and think) and content (the answer).

    AutoThink tags are dropped; the judge and the think text are joined by a blank line. A text
    that does not start with an AutoThink tag is not in the format: all of it is content. A
    piece that may be the start of a tag is held back until the next piece (or `finish`), so the
    outputs of `feed` concatenate to those of splitting the whole text at once.

    >>> s = ReasoningSplitter()
    >>> s.feed("<judge>easy</judge><think_off><ans"), s.feed("wer>4</answer>"), s.finish()
    (('easy', ''), ('', '4'), ('', ''))
    """

    def __init__(self):
        self.buffer = ""
        self.state = None  # None (undecided), "plain", "reasoning", "content", "end"
        self.reasoning_seen = False
        self.separate = False

    def feed(self, piece: str) -> tuple[str, str]:
        """(reasoning, content) text that `piece` completes."""
        self.buffer += piece
        return self._drain(final=False)

    def finish(self) -> tuple[str, str]:
        """(reasoning, content) still held back at the end of the text."""
        return self._drain(final=True)

    @staticmethod
    def _partial_tag(text: str) -> bool:
        return any(len(text) < len(t) and t.startswith(text) for t in SPECIAL_TOKENS)

    def _emit(self, text: str, reasoning: list[str], content: list[str]) -> None:
        if text and self.state == "reasoning":
            reasoning.append("\n\n" + text if self.separate else text)
            self.reasoning_seen, self.separate = True, False
        elif text and self.state in ("content", "plain"):
            content.append(text)

    def _drain(self, final: bool) -> tuple[str, str]:
        reasoning: list[str] = []
        content: list[str] = []
        if self.state is None:
            if not final and self._partial_tag(self.buffer):
                return "", ""
            self.state = "reasoning" if self.buffer.startswith(SPECIAL_TOKENS) else "plain"
        buf, self.buffer = self.buffer, ""
        if self.state == "plain":
            return "", buf
        i = 0
        while (j := buf.find("<", i)) >= 0:
            self._emit(buf[i:j], reasoning, content)
            tag = next((t for t in SPECIAL_TOKENS if buf.startswith(t, j)), None)
            if tag is None and not final and self._partial_tag(buf[j:]):
                self.buffer, i = buf[j:], len(buf)  # wait for the rest of the tag
                break
            if tag is None:  # a "<" that starts no tag is text
                self._emit("<", reasoning, content)
                i = j + 1
                continue
            i = j + len(tag)
            if tag == ANSWER and self.state == "reasoning":
                self.state = "content"
            elif tag == ANSWER_END:
                self.state = "end"
            elif tag == THINK and self.reasoning_seen:
                self.separate = True
        self._emit(buf[i:], reasoning, content)
        return "".join(reasoning), "".join(content)


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, content) of a whole reply text; see `ReasoningSplitter`."""
    splitter = ReasoningSplitter()
    reasoning, content = splitter.feed(text)
    more_reasoning, more_content = splitter.finish()
    return reasoning + more_reasoning, content + more_content
