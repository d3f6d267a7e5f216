"""One interface for every LLM call: sample n completions for each of a batch of chat conversations.

    backend = make_backend("local:smollm2-135m-instruct")        # a local HF model (`inference.spec`)
    backend = make_backend("http://localhost:8000/v1#my-model")  # any OpenAI-compatible server
    outs = backend.generate([[{"role": "user", "content": "2+2?"}]], SamplingParams(n=4), thinking="auto")
    outs[0][3].text, outs[0][3].finish_reason, outs[0][3].tokens

`thinking` ("auto" | "on" | "off") goes to the AutoThink chat template (see `autothink.format`);
over HTTP it is sent as `chat_template_kwargs={"thinking": ...}` (vLLM's convention). Under a forced
mode the completion text starts *after* the forced prefix (`autothink.format.forced_prefix`).

`tools=` shows OpenAI tool schemas to the model (rendered by the chat template locally, sent as
`tools` over HTTP); its calls come back in the text as `<tool_call>` blocks.

`prefix=` continues an assistant reply that is already partly written (how a thinking budget forces
`</think><answer>`): locally it is appended after the rendered generation prompt; over HTTP it is
sent as a final assistant message with vLLM's `continue_final_message=True`. `stream` yields a
completion's text while it is generated.

`SamplingParams(constrained=True)` keeps every reply inside the AutoThink grammar with a logits
processor (`inference.constrained`); only backends that sample locally (`supports_constrained`) can.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from autothink.format import THINKING

Conversation = list[dict]


class BackendError(RuntimeError):
    """A backend could not produce completions (unreachable server, rejected request, ...)."""


@dataclass(frozen=True)
class SamplingParams:
    """OpenAI-style sampling parameters. `temperature=0` is greedy decoding.

    Raises:
        ValueError: a value out of range (the message names the field).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    constrained: bool = False  # keep replies in the AutoThink grammar (backends that `supports_constrained`)

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"SamplingParams.n must be an integer >= 1, got {self.n!r}")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not isinstance(self.temperature,
                          (int, float)) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be a finite number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"SamplingParams.stop must be a tuple of non-empty strings, got {self.stop!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"SamplingParams.seed must be an integer or None, got {self.seed!r}")
        if not isinstance(self.constrained, bool):
            raise ValueError(f"SamplingParams.constrained must be a boolean, got {self.constrained!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    """One sampled completion.

    `finish_reason` is "stop" (end of sequence or a stop string; the stop string is not part of
    `text`) or "length" (`max_tokens` reached). `tokens` counts completion tokens;
    `prompt_tokens` the tokens of the rendered prompt (0 when the backend does not know).
    `stop_reason` is the stop string that ended the completion (None for end of sequence, for
    `max_tokens`, and from servers that do not report it), so callers can tell a stop string
    from the end of sequence although both cut the text.
    """

    text: str
    finish_reason: str
    tokens: int
    prompt_tokens: int = 0
    stop_reason: str | None = None


def check_thinking(thinking: str | None) -> None:
    if thinking is not None and thinking not in THINKING:
        raise ValueError(f"thinking must be None, 'auto', 'on' or 'off', got {thinking!r}")


def check_params(backend: "Backend", params: SamplingParams) -> None:
    """Raise TypeError for params that are not `SamplingParams`, ValueError for what `backend` cannot do."""
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
    if params.constrained and not backend.supports_constrained:
        raise ValueError(f"{type(backend).__name__} cannot constrain decoding to the AutoThink format; "
                         "constrained decoding needs a local model")


def _check_prefixes(prefix, count: int) -> list[str] | None:
    """One prefix per conversation from `prefix` (None, one string for all, or one per conversation)."""
    if prefix is None:
        return None
    prefixes = [prefix] * count if isinstance(prefix, str) else list(prefix)
    if len(prefixes) != count or not all(isinstance(p, str) for p in prefixes):
        raise ValueError(f"prefix must be a string or one string per conversation ({count}), got {prefix!r}")
    return prefixes if any(prefixes) else None


class Backend(ABC):
    """Samples completions for chat conversations; `name` identifies the model.

    Subclasses implement `_generate(conversations, params, thinking)`; those that can continue a
    partly written reply set `supports_prefix = True` and accept `prefixes=` there too; those that
    can stop a generation half-way set `supports_cancel = True` and accept `cancel=`; those that
    can constrain decoding to the AutoThink grammar set `supports_constrained = True`. `stream`
    works on every backend; subclasses that can stream override it. A backend that knows its
    model's context sets `context_length` and counts `prompt_tokens`, so callers (the server) can
    bound a request before it runs.
    """

    name: str = "backend"
    supports_tools: bool = False
    supports_prefix: bool = False
    supports_cancel: bool = False
    supports_constrained: bool = False
    context_length: int | None = None

    def prompt_tokens(self, conversation: Conversation, thinking: str | None = None,
                      tools: list[dict] | None = None) -> int | None:
        """Tokens of the rendered prompt of `conversation` (with `tools`), or None when the backend cannot tell."""
        return None

    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        thinking: str | None = None,
        prefix: str | Sequence[str] | None = None,
        cancel: Callable[[], bool] | None = None,
        tools: list[dict] | None = None,
    ) -> list[list[Completion]]:
        """One list of `params.n` completions per conversation, in the order given.

        Args:
            prefix: the start of the assistant reply to continue (one string for all
                conversations or one per conversation); it comes after the forced-mode prefix
                and is not part of the completion text.
            cancel: polled while generating on backends that `supports_cancel`; once it returns
                True the completions end where they are (finish reason "length").
            tools: OpenAI tool schemas shown to the model (backends that `supports_tools`); tool
                calls come back in the text as `<tool_call>` blocks (`tasks.tool_calls`).

        Raises:
            ValueError: a bad `thinking` or `prefix`, a prefix for a backend that cannot
                continue replies, or constrained decoding on one that cannot constrain it.
        """
        check_params(self, params)
        check_thinking(thinking)
        conversations = [list(c) for c in conversations]
        prefixes = _check_prefixes(prefix, len(conversations))
        if not conversations:
            return []
        extra = {"cancel": cancel} if cancel is not None and self.supports_cancel else {}
        if tools:
            if not self.supports_tools:
                raise ValueError(f"{type(self).__name__} cannot show tools to its model")
            if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
                raise ValueError("tools must be a list of OpenAI tool schemas (objects)")
            extra["tools"] = tools
        if prefixes is None:
            return self._generate(conversations, params, thinking, **extra)
        if not self.supports_prefix:
            raise ValueError(f"{type(self).__name__} cannot continue a reply from a prefix")
        return self._generate(conversations, params, thinking, prefixes=prefixes, **extra)

    def stream(
        self, conversation: Conversation, params: SamplingParams, thinking: str | None = None, prefix: str = "",
        tools: list[dict] | None = None,
    ) -> Iterator[str | Completion]:
        """Yield the text of one completion in pieces as it is generated, then the `Completion`.

        The pieces concatenate to `Completion.text`. This default generates the whole completion
        and yields it as one piece; backends that decode token by token override it.

        Raises:
            ValueError: `params.n` is not 1 (or as `generate`).
        """
        check_params(self, params)
        if params.n != 1:
            raise ValueError(f"stream samples one completion; got n={params.n}")
        completion = self.generate([conversation], params, thinking, prefix=prefix or None, tools=tools)[0][0]
        if completion.text:
            yield completion.text
        yield completion

    @abstractmethod
    def _generate(
        self, conversations: list[Conversation], params: SamplingParams, thinking: str | None
    ) -> list[list[Completion]]:
        """`generate` on validated arguments and at least one conversation (`prefixes=` too when
        `supports_prefix`)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
