"""`LocalBackend`: batched sampling from a Hugging Face causal LM with `model.generate`."""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Sequence

import torch
from transformers import StoppingCriteriaList, StopStringCriteria

from . import Backend, Completion, Conversation, SamplingParams


class LocalBackend(Backend):
    """Sample from an in-process HF model.

    The n samples of each conversation are rows of the batch; rows are grouped by prompt length
    (less padding) into batches of at most `batch_size` and left-padded. With a `seed`, results are
    reproducible for the same inputs and `batch_size`; the global torch RNG is left untouched.
    Calls from several threads run one at a time.

    Args:
        model: a causal LM (eval mode is set).
        tokenizer: its tokenizer, with a chat template.
        batch_size: rows (conversations × n) per `model.generate` call.
        name: the model name reported by `name` (and by `autothink serve`).
    """

    def __init__(self, model, tokenizer, batch_size: int = 16, name: str | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the tokenizer has no chat template; LocalBackend renders chat conversations")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.name = name or os.path.basename(str(getattr(model.config, "_name_or_path", "") or "").rstrip("/")) or "local"
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
            eos.append(tokenizer.eos_token_id)
        if not eos:
            raise ValueError("neither the model's generation config nor the tokenizer defines an EOS token")
        self.eos_ids = eos
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        self._stop_criteria: dict[tuple, StopStringCriteria] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, name_or_path, device: str = "auto", dtype: str = "auto", **kw) -> "LocalBackend":
        """Load an embedded model name, a model directory or a hub id (see `autothink.models.load_model`)."""
        from autothink.models import load_model

        model, tokenizer = load_model(name_or_path, device=device, dtype=dtype)
        kw.setdefault("name", os.path.basename(str(name_or_path).rstrip("/")))
        return cls(model, tokenizer, **kw)

    # -- prompts ---------------------------------------------------------------------------
    def render(self, conversation: Conversation, thinking: str | None = None) -> str:
        """The prompt text for one conversation (chat template, generation prompt, forced mode)."""
        extra = {} if thinking is None else {"thinking": thinking}
        try:
            text = self.tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=False, **extra
            )
        except Exception as err:  # jinja errors, bad message structure
            raise ValueError(f"could not render the conversation with the chat template: {err}") from err
        if thinking in ("on", "off"):
            plain = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
            if plain == text:
                raise ValueError(
                    f"thinking={thinking!r} has no effect: the chat template does not use a `thinking` variable; "
                    "call autothink.format.add_autothink_tokens(tokenizer, model) first"
                )
        return text

    def _encode(self, conversations: Sequence[Conversation], thinking: str | None) -> list[list[int]]:
        # The chat template already holds BOS and the like: no extra special tokens.
        return [
            self.tokenizer(self.render(c, thinking), add_special_tokens=False)["input_ids"] for c in conversations
        ]

    # -- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def _generate(
        self, conversations: list[Conversation], params: SamplingParams, thinking: str | None
    ) -> list[list[Completion]]:
        prompts = self._encode(conversations, thinking)
        with self._lock:
            return self._sample(prompts, params)

    def _sample(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        rows = [i for i in range(len(prompts)) for _ in range(params.n)]  # row -> conversation
        # Longest prompts first, stable: batches hold rows of similar length.
        order = sorted(range(len(rows)), key=lambda r: -len(prompts[rows[r]]))
        results: list[Completion | None] = [None] * len(rows)
        device = self.model.device
        rng = contextlib.nullcontext()
        if params.seed is not None:
            devices = [device] if device.type == "cuda" else []
            rng = torch.random.fork_rng(devices=devices)
        with rng:
            if params.seed is not None:
                torch.manual_seed(params.seed)
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                outs = self._generate_batch([prompts[rows[r]] for r in chunk], params, device)
                for r, out in zip(chunk, outs):
                    results[r] = out
        n = params.n
        return [results[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, device) -> list[Completion]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            if p:
                ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[i, width - len(p):] = 1
        kwargs = dict(
            max_new_tokens=params.max_tokens,
            min_new_tokens=0,
            do_sample=not params.greedy,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            num_beams=1,
        )
        if not params.greedy:
            # OpenAI semantics: no top-k unless asked (HF's default is top_k=50).
            kwargs.update(temperature=float(params.temperature), top_p=float(params.top_p), top_k=0)
        if params.stop:
            kwargs["stopping_criteria"] = StoppingCriteriaList([self._stop_criterion(params.stop)])
        out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        new = out[:, width:].tolist()
        return [self._finish(tokens, params, len(p)) for tokens, p in zip(new, prompts)]

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
        hits = [i for i in (text.find(s) for s in params.stop) if i >= 0]
        if hits:
            cut = min(hits)
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
        return Completion(text=text, finish_reason=reason, tokens=count, prompt_tokens=prompt_tokens)
