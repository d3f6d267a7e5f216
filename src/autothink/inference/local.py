"""`LocalBackend`: batched sampling from a Hugging Face causal LM with `model.generate`, on the
in-process machinery (`InProcessBackend`) that the llama.cpp backend shares."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import queue
import re
import secrets
import threading
from abc import abstractmethod
from typing import Callable, Iterator, Sequence

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)
from transformers.generation.streamers import BaseStreamer

from autothink.format import MODES, forced_prefix
from autothink.inference.backend import (
    Backend,
    Completion,
    Conversation,
    SamplingParams,
    check_params,
    check_thinking,
)
from autothink.inference.constrained import FormatGrammar, FormatLogitsProcessor, state_after
from autothink.inference.speculative import SPECULATIVE, DraftStats, mtp_generate
from autothink.tasks.tool_calls import chat_message


class InProcessBackend(Backend):
    """What the backends that sample in this process share: the chat template and tokenizer, the
    coalescing of concurrent calls, per-row seeds, the AutoThink grammar, stop strings and
    streaming. A subclass runs one batch of token-id prompts in `_generate_batch`.

    The n samples of each conversation are rows of the batch; rows are grouped by prompt length
    (less padding) into batches of at most `batch_size`. Calls from several threads are
    coalesced: while one runs, the calls that arrive wait, and those with the same sampling
    settings then run together as one batch (the data stages' workers share the model). Each row
    samples with its own generator seeded by (call seed, row), so a seeded call gives the same
    completions whatever it was batched with, and the global torch RNG is left untouched.
    `prefix=` is appended to the rendered prompt text; `stream` decodes token by token.
    `SamplingParams(constrained=True)` masks each step's logits to the AutoThink grammar
    (`inference.constrained`), read from the start of the reply (forced prefix and `prefix=` included).
    """

    supports_tools = True
    supports_prefix = True
    supports_cancel = True
    supports_constrained = True

    def __init__(self, tokenizer, eos_ids: list[int], batch_size: int, name: str, context_length: int | None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"the tokenizer has no chat template; {type(self).__name__} renders chat conversations")
        eos = list(eos_ids)
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
            eos.append(tokenizer.eos_token_id)
        if not eos:
            raise ValueError("neither the model's generation config nor the tokenizer defines an EOS token")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.name = name
        self.eos_ids = eos
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        self.context_length = context_length
        self._stop_criteria: dict[tuple, StopStringCriteria] = {}
        self._grammar: FormatGrammar | None = None
        self._lock = threading.Lock()  # the model: one batch at a time
        self._pending: list[_Call] = []  # calls waiting to be coalesced
        self._cv = threading.Condition()
        self._running = False

    # -- prompts ---------------------------------------------------------------------------
    def render(self, conversation: Conversation, thinking: str | None = None, tools: list[dict] | None = None) -> str:
        """The prompt text for one conversation (chat template, generation prompt, forced mode, tools)."""
        extra = {} if thinking is None else {"thinking": thinking}
        if tools:
            extra["tools"] = tools
        if any(m.get("tool_calls") or m.get("role") == "tool" for m in conversation):
            conversation = [chat_message(m) for m in conversation]  # tool-call arguments as objects
        try:
            text = self.tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=False, **extra
            )
        except Exception as err:  # jinja errors, bad message structure
            raise ValueError(f"could not render the conversation with the chat template: {err}") from err
        if thinking in MODES:
            plain = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False,
                                                       tools=tools or None)
            if plain == text:
                raise ValueError(
                    f"thinking={thinking!r} has no effect: the chat template does not use a `thinking` variable; "
                    "call autothink.format.add_autothink_tokens(tokenizer, model) first"
                )
        return text

    def _encode(
        self, conversations: Sequence[Conversation], thinking: str | None, prefixes: Sequence[str] | None = None,
        tools: list[dict] | None = None,
    ) -> list[list[int]]:
        # The chat template already holds BOS and the like: no extra special tokens.
        prefixes = prefixes or [""] * len(conversations)
        return [
            self.tokenizer(self.render(c, thinking, tools) + p, add_special_tokens=False)["input_ids"]
            for c, p in zip(conversations, prefixes)
        ]

    @staticmethod
    def _replies(count: int, thinking: str | None, prefixes: Sequence[str] | None) -> list[str]:
        """The reply text each prompt already ends with: the forced prefix, then the continued prefix."""
        forced = forced_prefix(thinking) if thinking is not None else ""
        return [forced + p for p in (prefixes or [""] * count)]

    def grammar(self) -> FormatGrammar:
        """The AutoThink grammar over this tokenizer (built on first use, rebuilt if the vocabulary grew)."""
        if self._grammar is None or len(self._grammar.texts) != len(self.tokenizer):
            self._grammar = FormatGrammar(self.tokenizer, self.eos_ids)
        return self._grammar

    def prompt_tokens(self, conversation: Conversation, thinking: str | None = None,
                      tools: list[dict] | None = None) -> int:
        return len(self._encode([conversation], thinking, tools=tools)[0])

    # -- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def _generate(
        self,
        conversations: list[Conversation],
        params: SamplingParams,
        thinking: str | None,
        prefixes: list[str] | None = None,
        cancel: Callable[[], bool] | None = None,
        tools: list[dict] | None = None,
    ) -> list[list[Completion]]:
        prompts = self._encode(conversations, thinking, prefixes, tools)
        self._check_prompts(prompts)  # before coalescing: a bad prompt fails its own call only
        call = _Call(prompts, params, cancel, self._replies(len(conversations), thinking, prefixes))
        with self._cv:
            self._pending.append(call)
            while not call.done and self._running:
                self._cv.wait()
            if call.done:  # another thread ran it with its own batch
                return call.get()
            self._running = True
            batch = [c for c in self._pending if c.key == call.key]
            self._pending = [c for c in self._pending if c.key != call.key]
        try:
            outcome = self._run_calls(batch)
        except BaseException as err:  # noqa: BLE001 - every coalesced caller gets the error
            outcome = [err] * len(batch)
        with self._cv:
            for c, result in zip(batch, outcome):
                c.settle(result)
            self._running = False
            self._cv.notify_all()
        return call.get()

    def _run_calls(self, calls: list["_Call"]) -> list[list[list[Completion]]]:
        """Several calls with the same sampling settings as one `_sample`; results split back per call."""
        prompts = [p for c in calls for p in c.prompts]
        seeds = [(c.seed, i) for c in calls for i in range(len(c.prompts))]
        replies = [r for c in calls for r in c.replies]
        cancels = [c.cancel for c in calls]  # a shared batch stops when every caller has cancelled
        cancel = (lambda: all(f() for f in cancels)) if all(f is not None for f in cancels) else None
        with self._lock:
            results = self._sample(prompts, calls[0].params, seeds=seeds, cancel=cancel, replies=replies)
        out, start = [], 0
        for c in calls:
            out.append(results[start:start + len(c.prompts)])
            start += len(c.prompts)
        return out

    def stream(
        self, conversation: Conversation, params: SamplingParams, thinking: str | None = None, prefix: str = "",
        tools: list[dict] | None = None,
    ) -> Iterator[str | Completion]:
        """Yield the completion's text as tokens are sampled (stop strings held back), then the `Completion`.

        The batch runs in a worker thread; closing the iterator early stops it at the next token.
        """
        check_params(self, params)
        if params.n != 1:
            raise ValueError(f"stream samples one completion; got n={params.n}")
        check_thinking(thinking)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, got {prefix!r}")
        prompt = self._encode([list(conversation)], thinking, [prefix], tools)[0]
        self._check_prompts([prompt])
        pieces: queue.Queue = queue.Queue()
        cancel = threading.Event()

        @torch.no_grad()
        def work():
            try:
                with self._lock:
                    out = self._sample([prompt], params, seeds=[(_Call.seed_of(params), 0)],
                                       streamer=_TokenQueue(pieces), cancel=cancel.is_set,
                                       replies=self._replies(1, thinking, [prefix]))
                pieces.put(out[0][0])
            except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
                pieces.put(err)

        worker = threading.Thread(target=work, name="local-stream", daemon=True)
        worker.start()
        tokens: list[int] = []
        shown = ""
        try:
            while not isinstance(item := pieces.get(), (Completion, BaseException)):
                tokens += item
                text = _visible(self.tokenizer.decode(tokens, skip_special_tokens=True), params.stop)
                if len(text) > len(shown) and text.startswith(shown):
                    yield text[len(shown):]
                    shown = text
            if isinstance(item, BaseException):
                raise item
            if not item.text.startswith(shown):
                raise RuntimeError(f"streamed text {shown!r} is not a prefix of the completion {item.text!r}")
            if len(item.text) > len(shown):
                yield item.text[len(shown):]
            yield item
        finally:
            cancel.set()
            worker.join()

    def _sample(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[tuple[int, int]],
        streamer=None, cancel: Callable[[], bool] | None = None, replies: list[str] | None = None,
    ) -> list[list[Completion]]:
        """`params.n` completions per prompt; `seeds[i]` = (call seed, index in the call) of prompt i;
        `replies[i]` the reply text prompt i ends with (read by constrained decoding)."""
        replies = replies or [""] * len(prompts)
        rows = [i for i in range(len(prompts)) for _ in range(params.n)]  # row -> prompt
        # Longest prompts first, stable: batches hold rows of similar length.
        order = sorted(range(len(rows)), key=lambda r: -len(prompts[rows[r]]))
        results: list[Completion | None] = [None] * len(rows)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            row_seeds = [(*seeds[rows[r]], r % params.n) for r in chunk]
            outs = self._generate_batch([prompts[rows[r]] for r in chunk], params, row_seeds, streamer, cancel,
                                        [replies[rows[r]] for r in chunk])
            for r, out in zip(chunk, outs):
                results[r] = out
        n = params.n
        return [results[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _check_prompts(self, prompts: list[list[int]]) -> None:
        """Raise ValueError for prompts (token ids) this backend cannot run; by default all can."""

    @abstractmethod
    def _generate_batch(
        self, prompts: list[list[int]], params: SamplingParams, row_seeds: list[tuple], streamer=None, cancel=None,
        replies: list[str] | None = None,
    ) -> list[Completion]:
        """One completion per prompt (token ids), at most `batch_size` of them: `row_seeds` seed
        `_RowSampler`, `streamer` gets the prompt then each new token, `cancel` ends every row."""

    def _processors(self, params: SamplingParams, row_seeds: list[tuple], replies: list[str] | None, device) -> list:
        """The logits processors of a batch: the grammar first (the sampler then draws among allowed
        tokens), then the per-row sampler (greedy decoding then keeps its one token)."""
        processors = []
        if params.constrained:
            states = [state_after(r) for r in replies or [""] * len(row_seeds)]
            processors.append(FormatLogitsProcessor(self.grammar(), states))
        if not params.greedy:
            processors.append(_RowSampler(row_seeds, params, device))
        return processors

    def _stop_criterion(self, stop: tuple[str, ...]) -> StopStringCriteria:
        """HF's stop-string criterion, built once per stop tuple (building it scans the vocabulary)."""
        key = (stop, len(self.tokenizer))  # the vocabulary may grow (add_autothink_tokens)
        crit = self._stop_criteria.pop(key, None) or StopStringCriteria(self.tokenizer, list(stop))
        self._stop_criteria[key] = crit  # most recently used last
        while len(self._stop_criteria) > 16:
            self._stop_criteria.pop(next(iter(self._stop_criteria)))
        return crit

    def _finish(self, tokens: list[int], params: SamplingParams, prompt_tokens: int) -> Completion:
        """Cut one generated row at EOS / stop string and decide the finish reason."""
        eos = set(self.eos_ids)
        end = next((i for i, t in enumerate(tokens) if t in eos), None)
        if end is not None:
            count, reason, body = end + 1, "stop", tokens[:end]
        else:
            count, reason, body = len(tokens), "length", tokens
            if params.stop:  # a row stopped by a stop string is padded after it
                while body and body[-1] == self.pad_id:
                    body, reason = body[:-1], "stop"
                count = len(body)
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        text = decode(body)
        hits = [(i, s) for s, i in ((s, text.find(s)) for s in params.stop) if i >= 0]
        stop_reason = None
        if hits:
            cut, stop_reason = min(hits, key=lambda h: h[0])
            text, reason = text[:cut], "stop"
            # Generation halts at the token completing the stop string (later tokens are padding):
            # count the shortest prefix whose text holds a stop string.
            lo, hi = 1, len(body)
            while lo < hi:
                mid = (lo + hi) // 2
                if any(s in decode(body[:mid]) for s in params.stop):
                    hi = mid
                else:
                    lo = mid + 1
            count = hi
        return Completion(
            text=text, finish_reason=reason, tokens=count, prompt_tokens=prompt_tokens, stop_reason=stop_reason
        )


class LocalBackend(InProcessBackend):
    """Sample from an in-process HF model with `model.generate` (rows left-padded), or with its MTP
    heads drafting for it (`inference.speculative`: the same tokens, fewer forwards).

    Args:
        model: a causal LM (eval mode is set).
        tokenizer: its tokenizer, with a chat template.
        batch_size: rows (conversations × n) per `model.generate` call.
        name: the model name reported by `name` (and by `autothink serve`).
        heads: the model's `MTPHeads` (`models.mtp.load_mtp`), or None.
        speculative: "auto" (self-speculative decoding of single-row batches when there are heads
            and the model's attention is all full, not sliding; batched rows verify at a cost that
            made them slower in every measurement, BENCHMARKS.md), "mtp" (every batch; an error
            without heads) or "off".
    """

    def __init__(self, model, tokenizer, batch_size: int = 16, name: str | None = None, heads=None,
                 speculative: str = "auto"):
        if speculative not in SPECULATIVE:
            raise ValueError(f"speculative must be one of {', '.join(SPECULATIVE)}; got {speculative!r}")
        self.model = model.eval()
        path = str(getattr(model.config, "_name_or_path", "") or "")
        eos = model.generation_config.eos_token_id
        super().__init__(tokenizer, [eos] if isinstance(eos, int) else list(eos or []), batch_size,
                         name or os.path.basename(path.rstrip("/")) or "local",
                         getattr(model.config, "max_position_embeddings", None))
        sliding = any(t != "full_attention" for t in getattr(model.config, "layer_types", None) or [])
        if speculative == "mtp" and (heads is None or sliding):
            raise ValueError(f"--speculative mtp: {self.name} " + (
                "has no MTP heads (mtp_heads.safetensors; train them with `autothink distill --mtp_only`)"
                if heads is None else "has sliding-window layers; speculative decoding needs full attention"))
        self.heads = heads.eval() if heads is not None and speculative != "off" and not sliding else None
        self.speculative = speculative
        self.draft_stats = DraftStats()  # the heads' acceptance, summed over every call

    @classmethod
    def from_pretrained(cls, name_or_path, device: str = "auto", dtype: str = "auto", **kw) -> "LocalBackend":
        """Load an embedded model name, a model directory or a hub id (see `autothink.models.load_model`);
        MTP heads saved beside a model directory are loaded too."""
        from autothink.models import load_model, resolve
        from autothink.models.mtp import has_mtp, load_mtp

        model, tokenizer = load_model(name_or_path, device=device, dtype=dtype)
        kw.setdefault("name", os.path.basename(str(name_or_path).rstrip("/")))
        source = resolve(name_or_path)
        if kw.get("speculative", "auto") != "off" and os.path.isdir(source) and has_mtp(source):
            kw.setdefault("heads", load_mtp(source, model).heads)
        return cls(model, tokenizer, **kw)

    def _generate_batch(
        self, prompts: list[list[int]], params: SamplingParams, row_seeds: list[tuple], streamer=None, cancel=None,
        replies: list[str] | None = None,
    ) -> list[Completion]:
        device = self.model.device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            if p:
                ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[i, width - len(p):] = 1
        if self.heads is not None and all(prompts) and (self.speculative == "mtp" or len(prompts) == 1):
            new = self._speculate(ids.to(device), mask.to(device), params, row_seeds, replies, streamer, cancel)
            return [self._finish(tokens, params, len(p)) for tokens, p in zip(new.tolist(), prompts)]
        kwargs = dict(
            max_new_tokens=params.max_tokens,
            min_new_tokens=0,
            do_sample=False,  # sampling, when asked, is _RowSampler's: generate then keeps its one token
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            num_beams=1,
            use_cache=True,  # a checkpoint saved by a trainer may say otherwise (decoding then recomputes everything)
        )
        processors = self._processors(params, row_seeds, replies, device)
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        criteria = [self._stop_criterion(params.stop)] if params.stop else []
        criteria += [_Cancelled(cancel)] if cancel is not None else []
        if criteria:
            kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        if streamer is not None:
            kwargs["streamer"] = streamer
        out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        new = out[:, width:].tolist()
        return [self._finish(tokens, params, len(p)) for tokens, p in zip(new, prompts)]

    def _speculate(self, ids, mask, params, row_seeds, replies, streamer, cancel) -> torch.Tensor:
        """`mtp_generate` with this batch's grammar, sampler and stop strings (what `generate` gets as processors)."""
        grammar = self.grammar() if params.constrained else None
        states = [state_after(r) for r in replies or [""] * len(row_seeds)] if grammar is not None else None
        stats = DraftStats()
        sampler = None if params.greedy else _RowSampler(row_seeds, params, ids.device)
        new = mtp_generate(
            self.model, self.heads, ids, mask, params.max_tokens, eos_ids=self.eos_ids, pad_id=self.pad_id,
            grammar=grammar, states=states, sampler=sampler,
            stop=self._stop_criterion(params.stop) if params.stop else None, cancel=cancel, streamer=streamer,
            stats=stats)
        self.draft_stats.add(stats)
        return new


class _Call:
    """One `generate` call waiting to be run, alone or coalesced with alike calls."""

    def __init__(self, prompts: list[list[int]], params: SamplingParams, cancel: Callable[[], bool] | None,
                 replies: list[str]):
        self.prompts, self.params, self.seed, self.cancel = prompts, params, self.seed_of(params), cancel
        self.replies = replies
        self.key = dataclasses.replace(params, seed=None)  # calls differing only in seed run together
        self.done, self._outcome = False, None

    @staticmethod
    def seed_of(params: SamplingParams) -> int:
        return params.seed if params.seed is not None else secrets.randbits(63)

    def settle(self, outcome) -> None:
        self.done, self._outcome = True, outcome

    def get(self):
        """The completions, or the error the batch raised."""
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome


class _RowSampler(LogitsProcessor):
    """Samples each row's next token with the row's own generator (temperature, then nucleus
    top-p; no top-k, as OpenAI), and leaves only that token for greedy `generate` to pick."""

    def __init__(self, row_seeds: list[tuple], params: SamplingParams, device):
        self.generators = [torch.Generator(device=device).manual_seed(_mix(seed)) for seed in row_seeds]
        self.temperature, self.top_p = float(params.temperature), float(params.top_p)

    def probs(self, scores: torch.Tensor) -> torch.Tensor:
        """The distribution sampled from: softmax at the temperature, cut to the top-p nucleus (unnormalised)."""
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, index = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs >= self.top_p  # the top token always stays
            probs = probs.scatter(-1, index, sorted_probs.masked_fill(outside, 0.0))
        return probs

    def __call__(self, input_ids, scores):
        probs = self.probs(scores)
        tokens = torch.stack([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, tokens, 0.0)


def _mix(seed: tuple) -> int:
    """A 63-bit generator seed from (call seed, prompt index, sample index)."""
    return int.from_bytes(hashlib.blake2b(repr(seed).encode(), digest_size=8).digest(), "big") >> 1


class _TokenQueue(BaseStreamer):
    """Hands each step's new token ids (batch of one) to a queue; the prompt is skipped."""

    def __init__(self, pieces: queue.Queue):
        self.pieces, self.prompt_seen = pieces, False

    def put(self, value):
        if self.prompt_seen:
            self.pieces.put(value.reshape(-1).tolist())
        self.prompt_seen = True

    def end(self):
        pass


class _Cancelled(StoppingCriteria):
    """Stops every row once `cancelled()` says so (the client went away, the server shuts down)."""

    def __init__(self, cancelled: Callable[[], bool]):
        self.cancelled = cancelled

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), bool(self.cancelled()), dtype=torch.bool, device=input_ids.device)


_UNSETTLED_END = re.compile(r"[\s\ufffd]+$")


def _visible(text: str, stop: tuple[str, ...]) -> str:
    """The part of partly decoded `text` that is final: cut at a stop string, without a tail that may
    still become one, nor trailing whitespace or an incomplete UTF-8 character (later tokens can
    change how those decode)."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    if hits:
        return text[: min(hits)]
    end = len(text)
    for s in stop:
        end = min([end] + [len(text) - k for k in range(1, len(s)) if text.endswith(s[:k])])
    return _UNSETTLED_END.sub("", text[:end])
