"""The AutoThink response format: special tokens, render, parse, directives, chat template.

    think-on:  <judge>why</judge><think_on><think>reasoning</think><answer>response</answer>
    think-off: <judge>why</judge><think_off><answer>response</answer>

`parse` never raises on model output; it reports what is malformed in `Parsed.errors`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["on", "off"]
Thinking = Literal["auto", "on", "off"]

JUDGE, JUDGE_END = "<judge>", "</judge>"
THINK_ON, THINK_OFF = "<think_on>", "<think_off>"
THINK, THINK_END = "<think>", "</think>"
ANSWER, ANSWER_END = "<answer>", "</answer>"
SPECIAL_TOKENS = (JUDGE, JUDGE_END, THINK_ON, THINK_OFF, THINK, THINK_END, ANSWER, ANSWER_END)
MODES: tuple[Mode, ...] = ("on", "off")  # the two regimes
THINKING: tuple[Thinking, ...] = ("auto", "on", "off")  # the mode controls: the model decides, or a forced mode
MODE_TOKENS: dict[str, str] = {"on": THINK_ON, "off": THINK_OFF}
# Forcing a mode after the model's own judge: the judge ends at `</judge>` or at any later tag the
# model writes instead; the forced mode then follows the model's judge, or an empty one (the prefill).
JUDGE_STOPS = (JUDGE_END, THINK_ON, THINK_OFF, THINK, ANSWER, ANSWER_END)
FORCED_JUDGES = ("model", "empty")

_TAG_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


@dataclass
class Parsed:
    """Fields of one response. A field is None when its segment is absent."""

    judge: str | None = None
    mode: Mode | None = None
    think: str | None = None
    answer: str | None = None
    well_formed: bool = False
    errors: list[str] = field(default_factory=list)


def render(mode: Mode, answer: str, judge: str = "", think: str = "") -> str:
    """Write one response in the AutoThink format.

    Raises:
        ValueError: unknown mode, reasoning given for think-off, or a field containing a tag.

    >>> render("off", "4", judge="Simple arithmetic.")
    '<judge>Simple arithmetic.</judge><think_off><answer>4</answer>'
    """
    if mode not in MODE_TOKENS:
        raise ValueError(f"mode must be 'on' or 'off', got {mode!r}")
    if mode == "off" and think:
        raise ValueError("a think-off response has no reasoning; got a non-empty `think`")
    for name, value in (("judge", judge), ("think", think), ("answer", answer)):
        if _TAG_RE.search(value):
            raise ValueError(f"`{name}` contains an AutoThink tag: {_TAG_RE.search(value).group()}")
    body = f"{THINK}{think}{THINK_END}" if mode == "on" else ""
    return f"{JUDGE}{judge}{JUDGE_END}{MODE_TOKENS[mode]}{body}{ANSWER}{answer}{ANSWER_END}"


def _segment(text: str, tags: list[re.Match], open_tag: str, close_tag: str, errors: list[str]):
    """Content of the first `open_tag` segment, ending at `close_tag` or else at the next tag."""
    opens = [m for m in tags if m.group() == open_tag]
    if not opens:
        return None
    if len(opens) > 1:
        errors.append(f"{open_tag} appears {len(opens)} times")
    start = opens[0]
    later = [m for m in tags if m.start() >= start.end()]
    if later and later[0].group() == close_tag:
        return text[start.end() : later[0].start()]
    errors.append(f"unterminated {open_tag}")
    return text[start.end() : later[0].start()] if later else text[start.end() :]


def parse(text: str) -> Parsed:
    """Split a response into judge, mode, think and answer; never raises.

    Fields are extracted leniently (first occurrence wins) so that a partly broken response
    still yields its answer; `well_formed` is True only for an exact match of the format
    (whitespace between segments allowed).

    >>> p = parse("<judge>easy</judge><think_off><answer>4</answer>")
    >>> (p.mode, p.answer, p.well_formed)
    ('off', '4', True)
    """
    if not isinstance(text, str):
        return Parsed(errors=[f"expected a string, got {type(text).__name__}"])
    errors: list[str] = []
    tags = list(_TAG_RE.finditer(text))
    out = Parsed(
        judge=_segment(text, tags, JUDGE, JUDGE_END, errors),
        think=_segment(text, tags, THINK, THINK_END, errors),
        answer=_segment(text, tags, ANSWER, ANSWER_END, errors),
    )
    modes = [m.group() for m in tags if m.group() in (THINK_ON, THINK_OFF)]
    if modes:
        out.mode = "on" if modes[0] == THINK_ON else "off"
        if len(modes) > 1:
            errors.append(f"{len(modes)} mode tokens; the first ({modes[0]}) was used")
    for tag, name in ((JUDGE, "judge"), (ANSWER, "answer")):
        if getattr(out, name) is None:
            errors.append(f"missing {tag} segment")
    if out.mode is None:
        errors.append("missing mode token (<think_on> or <think_off>)")
    elif out.mode == "on" and out.think is None:
        errors.append("think-on response has no <think> segment")
    elif out.mode == "off" and out.think is not None:
        errors.append("think-off response has a <think> segment")

    if not errors and out.mode is not None:
        expected = [JUDGE, JUDGE_END, MODE_TOKENS[out.mode]]
        expected += [THINK, THINK_END] if out.mode == "on" else []
        expected += [ANSWER, ANSWER_END]
        seq = [m.group() for m in tags]
        if seq != expected:
            errors.append("tags out of order: " + "".join(seq))
        else:
            # gaps[i] follows tag i-1; only the gaps opened by <judge>, <think>, <answer> hold text.
            ends = [0] + [m.end() for m in tags]
            starts = [m.start() for m in tags] + [len(text)]
            for opener, a, b in zip([None] + seq, ends, starts):
                if opener not in (JUDGE, THINK, ANSWER) and text[a:b].strip():
                    errors.append(f"text outside segments: {text[a:b].strip()[:40]!r}")
                    break
    out.errors = errors
    out.well_formed = not errors
    return out


# In-prompt directives. Phrases are matched case-insensitively on word boundaries; the data
# pipeline draws from the same lists when it writes directive prompts.
DIRECTIVES: dict[Mode, tuple[str, ...]] = {
    "off": (
        "DO NOT THINK",
        "Don't think, just answer.",
        "Answer directly without thinking.",
        "No thinking needed, reply immediately.",
        "Skip the reasoning and give the answer.",
        "/no_think",
    ),
    "on": (
        "Think deeper.",
        "Think carefully before answering.",
        "Think step by step.",
        "Reason it through thoroughly first.",
        "Take your time and think hard about this.",
        "/think",
    ),
}
_DIRECTIVE_RES: dict[Mode, re.Pattern] = {
    "off": re.compile(
        r"(?<![\w/])(/no_think\b|(do not|don't|dont|no need to|without) (think|thinking|reasoning)\b|"
        r"no (thinking|reasoning)\b|skip the (reasoning|thinking)|answer (directly|immediately|right away))",
        re.IGNORECASE,
    ),
    "on": re.compile(
        r"(?<![\w/])(/think\b|think (deeper|deeply|harder|hard|carefully|step[- ]by[- ]step|it through|"
        r"thoroughly)|reason (carefully|step[- ]by[- ]step|it through|thoroughly))",
        re.IGNORECASE,
    ),
}


def detect_directive(prompt: str) -> Mode | None:
    """The mode a user asks for in `prompt` ("DO NOT THINK" -> "off", "Think deeper" -> "on").

    When both kinds appear, the last one wins (a later instruction overrides an earlier one).

    >>> detect_directive("What is 2+2? DO NOT THINK")
    'off'
    """
    hits = [(m.start(), mode) for mode, rx in _DIRECTIVE_RES.items() for m in rx.finditer(prompt)]
    return max(hits)[1] if hits else None


# The generation prompt under a forced mode: an empty judge, then the mode token (and for
# think-on the opening <think>), like Qwen3's `enable_thinking=False` prefilling an empty think.
_FORCED_PREFIX = {"on": f"{JUDGE}{JUDGE_END}{THINK_ON}{THINK}", "off": f"{JUDGE}{JUDGE_END}{THINK_OFF}{ANSWER}"}
_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Appended to the model's own template. `thinking` takes "auto" | "on" | "off" or a boolean
# (DeepSeek-V3.1's `thinking=True`); Qwen3's `enable_thinking=False` / `True` is read as off / on.
_THINKING_SUFFIX = (
    "{#- autothink: thinking control -#}"
    "{%- if add_generation_prompt %}"
    "{%- set _mode = thinking if thinking is defined else none %}"
    "{%- if _mode is none and enable_thinking is defined and enable_thinking is not none %}"
    "{%- set _mode = 'on' if enable_thinking else 'off' %}{%- endif %}"
    "{%- if _mode is sameas true %}{%- set _mode = 'on' %}{%- elif _mode is sameas false %}{%- set _mode = 'off' %}"
    "{%- endif %}"
    "{%- if _mode == 'on' %}{{ '" + _FORCED_PREFIX["on"] + "' }}"
    "{%- elif _mode == 'off' %}{{ '" + _FORCED_PREFIX["off"] + "' }}"
    "{%- elif _mode is not none and _mode != 'auto' %}{{ raise_exception(\"thinking must be 'auto', 'on' or 'off'\") }}"
    "{%- endif %}{%- endif %}"
)
# The suffix of checkpoints saved before `enable_thinking` was read: replaced, never stacked.
_FORMER_SUFFIX = (
    "{%- if add_generation_prompt and thinking is defined and thinking is not none %}"
    "{%- if thinking == 'on' %}{{ '" + _FORCED_PREFIX["on"] + "' }}"
    "{%- elif thinking == 'off' %}{{ '" + _FORCED_PREFIX["off"] + "' }}"
    "{%- elif thinking != 'auto' %}{{ raise_exception(\"thinking must be 'auto', 'on' or 'off'\") }}"
    "{%- endif %}{%- endif %}"
)


def forced_prefix(thinking: Thinking) -> str:
    """Text the chat template appends after the generation prompt for `thinking`."""
    if thinking not in THINKING:
        raise ValueError(f"thinking must be 'auto', 'on' or 'off', got {thinking!r}")
    return _FORCED_PREFIX.get(thinking, "")


def install_chat_template(tokenizer) -> None:
    """Make `apply_chat_template(..., thinking="auto"|"on"|"off")` work on `tokenizer` (also `thinking=True|False`
    and Qwen3's `enable_thinking=True|False`).

    The tokenizer's own template (ChatML if it has none) is kept and a suffix is appended that
    prefills the forced mode after the generation prompt. Idempotent.
    """
    base = tokenizer.chat_template or _CHATML
    if not isinstance(base, str):
        raise ValueError("tokenizers with several named chat templates are not supported")
    if _THINKING_SUFFIX not in base:
        tokenizer.chat_template = base.replace(_FORMER_SUFFIX, "") + _THINKING_SUFFIX


def add_autothink_tokens(tokenizer, model=None) -> int:
    """Add the AutoThink tokens to `tokenizer` (and resize `model`'s embeddings); install the template.

    The tags are added as atomic, non-special tokens (as Qwen3 does for `<think>`), so
    `decode(..., skip_special_tokens=True)` keeps them while dropping EOS and padding. Each new
    row of the model's input (and untied output) embeddings is the mean of the rows of the tag's
    text pieces (`<judge>` = `<`, `jud`, `ge`, `>`): transformers' default draw around the mean
    embedding starts SmolLM2-135M at log p(`<judge>`) = -20 where a response begins, the pieces'
    mean at -14, and cold-start SFT has to climb that gap before the format appears.

    Returns:
        The number of tokens that were new to the tokenizer.
    """
    import torch
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    pieces = {t: tokenizer(t, add_special_tokens=False)["input_ids"] for t in SPECIAL_TOKENS if t not in vocab}
    added = tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in SPECIAL_TOKENS])
    if model is not None and model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
        tables = {model.get_input_embeddings().weight, model.get_output_embeddings().weight}
        with torch.no_grad():
            for token, ids in pieces.items():
                row = tokenizer.convert_tokens_to_ids(token)
                for table in tables:
                    table[row] = table[ids].mean(0)
    install_chat_template(tokenizer)
    return added
