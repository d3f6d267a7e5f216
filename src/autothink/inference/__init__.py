"""Inference: one backend interface for every LLM call, and AutoThink replies over it.

- `backend`: `Backend.generate(conversations, SamplingParams, thinking=, prefix=)`, `make_backend`
  (`local:` model, `http(s)://` endpoint, `reference:` tasks).
- `local`, `http`, `reference`: the backends (a local HF model, any OpenAI-compatible server, the
  tasks' own solutions).
- `respond`: `respond` / `respond_stream` with mode control and a thinking budget; `Reply`;
  splitting a reply into reasoning and content.
- `commands`: `autothink generate` and `autothink chat`.
"""
from autothink.inference.backend import Backend as Backend
from autothink.inference.backend import BackendError as BackendError
from autothink.inference.backend import Completion as Completion
from autothink.inference.backend import Conversation as Conversation
from autothink.inference.backend import SamplingParams as SamplingParams
from autothink.inference.respond import Reply as Reply
from autothink.inference.respond import respond as respond
from autothink.inference.respond import respond_stream as respond_stream
from autothink.inference.respond import split_reasoning as split_reasoning
from autothink.inference.spec import make_backend as make_backend
