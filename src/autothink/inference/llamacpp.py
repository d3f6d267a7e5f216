"""`LlamaCppBackend`: batched sampling from a GGUF model with llama.cpp (llama-cpp-python).

    backend = make_backend("llamacpp:runs/rl")          # a model dir: exported to GGUF once, cached
    backend = make_backend("llamacpp:rl-q8_0.gguf")     # a GGUF file

llama.cpp runs the forward passes on its CPU kernels (several times faster than PyTorch for small
models); everything else is `InProcessBackend`'s, shared with `LocalBackend`: the HF tokenizer and
chat template render and tokenize the prompt, and the same logits processors (per-row seeded
sampler, AutoThink grammar) and stop-string criterion pick each token, so both backends take the
same tokens from the same logits. The rows of a batch are llama.cpp sequences decoded together
(one `llama_decode` per step), each with its own slice of the KV cache; finished rows drop out of
the step, and the prompt tokens all rows share (a primer, a system prompt, the n samples of one
prompt) are computed once and copied to every row, where HF `generate` pads and recomputes them.
"""
from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path

import numpy as np
import torch

from autothink.format import SPECIAL_TOKENS
from autothink.inference.backend import Completion, SamplingParams
from autothink.inference.local import InProcessBackend

DEFAULT_CONTEXT = 2048  # per row; 135M parameters: 23 KB of KV cache per token
MAX_ROWS = 256  # llama.cpp's LLAMA_MAX_SEQ: sequences in one context
MIN_SHARED = 32  # prompt tokens all rows of a batch share, from which they are computed once and copied


class LlamaCppBackend(InProcessBackend):
    """Sample from a GGUF file with llama.cpp.

    Args:
        gguf: the GGUF file; its vocabulary must be the tokenizer's (an `autothink export gguf` file is).
        tokenizer: the HF tokenizer with the chat template (`from_spec` finds it).
        batch_size: rows decoded together (llama.cpp sequences).
        context: tokens per row (prompt and completion); the KV cache holds `batch_size × context`.
        threads: CPU threads (default: the cores this process may run on).
        eos_ids: end-of-sequence ids besides the tokenizer's (a generation config's).
    """

    def __init__(self, gguf: str | os.PathLike, tokenizer, batch_size: int = 8, name: str | None = None,
                 context: int = DEFAULT_CONTEXT, threads: int | None = None, eos_ids: list[int] | None = None):
        import llama_cpp

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's load-time chatter
        path = Path(gguf)
        if not path.is_file():
            raise ValueError(f"GGUF file {path} does not exist")
        if isinstance(context, bool) or not isinstance(context, int) or context < 16:
            raise ValueError(f"context must be an integer >= 16, got {context!r}")
        if isinstance(batch_size, int) and not 1 <= batch_size <= MAX_ROWS:
            raise ValueError(f"batch_size must be 1 to {MAX_ROWS} (llama.cpp's sequences a context), got {batch_size}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        super().__init__(tokenizer, eos_ids or [], batch_size, name or path.stem, None)
        self._lib = llama_cpp
        llama_cpp.llama_backend_init()
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
        if not model:
            raise ValueError(f"llama.cpp could not load {path} (not a GGUF model file?)")
        self.context_length = min(context, llama_cpp.llama_model_n_ctx_train(model))
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.context_length * batch_size
        params.n_batch = params.n_ubatch = max(512, batch_size)
        params.n_seq_max = batch_size
        params.kv_unified = False  # each row its own cache stream: a step attends only to its own row
        params.n_threads = params.n_threads_batch = threads or len(os.sched_getaffinity(0))
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise ValueError(f"llama.cpp could not make a context for {path} "
                             f"({batch_size} rows of {self.context_length} tokens)")
        batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
        self._model, self._ctx, self._batch, self._batch_tokens = model, ctx, batch, params.n_batch
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        weakref.finalize(self, _free, llama_cpp, model, ctx, batch)
        self._check_vocabulary()

    @classmethod
    def from_spec(cls, source: str, **kw) -> "LlamaCppBackend":
        """`source` is a .gguf file (tokenizer from the GGUF, or from `tokenizer=` a model dir) or an
        embedded name / model dir (exported to f16 GGUF once, `models.gguf.cached_gguf`)."""
        from autothink.models.gguf import cached_gguf
        from autothink.models.loading import load_tokenizer

        tokenizer_source = kw.pop("tokenizer", None)
        kw.setdefault("name", Path(source.rstrip("/")).name.removesuffix(".gguf"))
        if not source.endswith(".gguf"):
            tokenizer_source = tokenizer_source or source
            return cls(cached_gguf(source), load_tokenizer(tokenizer_source), eos_ids=_generation_eos(source), **kw)
        path = Path(source).expanduser()
        if not path.is_file():
            raise ValueError(f"GGUF file {path} does not exist")
        if tokenizer_source:
            return cls(path, load_tokenizer(tokenizer_source), eos_ids=_generation_eos(tokenizer_source), **kw)
        backend = cls(path, _gguf_tokenizer(path), **kw)
        # No generation config: llama.cpp's end-of-generation tokens of the file (EOS, end of turn).
        lib = backend._lib
        backend.eos_ids += [t for t in range(backend._n_vocab)
                            if t not in backend.eos_ids and lib.llama_vocab_is_eog(backend._vocab, t)]
        return backend

    def _check_vocabulary(self) -> None:
        """The GGUF and the tokenizer must give the same ids: the tokenizer makes the prompts."""
        probe = self.tokenizer.apply_chat_template([{"role": "user", "content": "Hi, 12+30?"}],
                                                   add_generation_prompt=True, tokenize=False)
        probe += "".join(SPECIAL_TOKENS) + " ok"  # the AutoThink tags are one token each on both sides or on neither
        ours = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        theirs = self._tokenize(probe)
        if self._n_vocab < len(self.tokenizer) or ours != theirs:
            raise ValueError(f"the GGUF's vocabulary ({self._n_vocab} tokens) does not match the tokenizer "
                             f"({len(self.tokenizer)} tokens): {ours[:12]} vs {theirs[:12]}")

    def _tokenize(self, text: str) -> list[int]:
        data = text.encode()
        out = (self._lib.llama_token * (len(data) + 8))()
        count = self._lib.llama_tokenize(self._vocab, data, len(data), out, len(out), False, True)
        return list(out[:count])

    # -- generation ------------------------------------------------------------------------
    def _check_prompts(self, prompts: list[list[int]]) -> None:
        bad = [len(p) for p in prompts if not 0 < len(p) < self.context_length]
        if bad:
            raise ValueError(f"prompts must have 1 to {self.context_length - 1} tokens (the context per row), "
                             f"got {bad[0]}")

    def _generate_batch(
        self, prompts: list[list[int]], params: SamplingParams, row_seeds: list[tuple], streamer=None, cancel=None,
        replies: list[str] | None = None,
    ) -> list[Completion]:
        longest = max(len(p) for p in prompts)
        # Each row's own budget: what is left of its context after its prompt.
        budgets = [min(params.max_tokens, self.context_length - len(p)) for p in prompts]
        budget = max(budgets)
        rows = len(prompts)
        processors = self._processors(params, row_seeds, replies, "cpu")
        stop = self._stop_criterion(params.stop) if params.stop else None
        # input_ids as `generate` keeps them (left-padded prompt, then one column per step), for the
        # processors and the stop criterion, which read the rows' tokens so far.
        ids = torch.full((rows, longest + budget), self.pad_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, longest - len(p):longest] = torch.tensor(p)
        if streamer is not None:
            streamer.put(ids[:, :longest])
        self._lib.llama_memory_clear(self._memory, False)
        shared = _common_prefix(prompts) if rows > 1 else 0
        if shared >= MIN_SHARED:  # a primer, a system prompt, n samples of one prompt: computed once
            self._decode([(0, prompts[0][:shared], 0)], rows)
            for i in range(1, rows):
                self._lib.llama_memory_seq_cp(self._memory, 0, i, -1, -1)
        else:
            shared = 0
        scores = self._decode([(i, p[shared:], shared) for i, p in enumerate(prompts)], rows)
        generated: list[list[int]] = [[] for _ in range(rows)]
        live = list(range(rows))
        eos = torch.tensor(self.eos_ids)
        for step in range(budget):
            width = longest + step
            for processor in processors:
                scores = processor(ids[:, :width], scores)
            chosen = scores.argmax(-1)
            ended = torch.ones(rows, dtype=torch.bool)
            ended[live] = False
            chosen[ended] = self.pad_id
            ids[:, width] = chosen
            if streamer is not None:
                streamer.put(chosen)
            for i in live:
                generated[i].append(int(chosen[i]))
            done = torch.isin(chosen, eos)
            if stop is not None:
                done |= stop(ids[:, :width + 1], scores)
            if cancel is not None and cancel():
                break
            live = [i for i in live if not done[i] and len(generated[i]) < budgets[i]]
            if not live:  # every row has met EOS, a stop string or its budget
                break
            scores = self._decode([(i, [int(chosen[i])], len(prompts[i]) + step) for i in live], rows)
        return [self._finish(tokens, params, len(p)) for tokens, p in zip(generated, prompts)]

    def _decode(self, pieces: list[tuple[int, list[int], int]], rows: int) -> torch.Tensor:
        """Feed `(row, tokens, first position)` pieces to llama.cpp (in chunks of the batch size);
        return each row's logits after its last token (zeros for rows not fed)."""
        lib, batch = self._lib, self._batch
        scores = torch.zeros(rows, self._n_vocab)
        flat = [(row, token, start + k, k == len(tokens) - 1)
                for row, tokens, start in pieces for k, token in enumerate(tokens)]
        for begin in range(0, len(flat), self._batch_tokens):
            chunk = flat[begin:begin + self._batch_tokens]
            for j, (row, token, pos, last) in enumerate(chunk):
                batch.token[j], batch.pos[j], batch.n_seq_id[j] = token, pos, 1
                batch.seq_id[j][0], batch.logits[j] = row, last
            batch.n_tokens = len(chunk)
            status = lib.llama_decode(self._ctx, batch)
            if status != 0:
                raise RuntimeError(f"llama_decode failed with status {status} (1: the KV cache is full)")
            for j, (row, _, _, last) in enumerate(chunk):
                if last:
                    logits = lib.llama_get_logits_ith(self._ctx, j)
                    scores[row] = torch.from_numpy(np.ctypeslib.as_array(logits, shape=(self._n_vocab,)).copy())
        return scores


def _common_prefix(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least its last token to feed (for its logits)."""
    shortest = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for k in range(shortest):
        if any(p[k] != first[k] for p in prompts):
            return k
    return max(shortest, 0)


def _free(lib, model, ctx, batch) -> None:
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    lib.llama_model_free(model)


def _gguf_tokenizer(path: Path):
    """The HF tokenizer of a GGUF file, built from the file's own vocabulary and chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _generation_eos(source: str) -> list[int]:
    """The end-of-sequence ids of a model's generation config (none for a model without one)."""
    from transformers import GenerationConfig

    from autothink.models.loading import resolve

    try:
        eos = GenerationConfig.from_pretrained(resolve(source)).eos_token_id
    except OSError:
        return []
    return [eos] if isinstance(eos, int) else list(eos or [])

