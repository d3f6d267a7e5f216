"""Models: loading (embedded GGUF defaults, model dirs, hub ids, tiny test models), MTP heads,
depth upscaling, GGUF export.

- `loading`: `load_model` (inference, teachers), `load_student` (training, with the AutoThink
  tokens), `load_tokenizer`, `resolve`, `prepare` (the embedded GGUF models, converted once),
  `prepare_tokenizer` (only the tokenizer, in seconds), `tiny_model` (random weights, a real
  tokenizer).
- `mtp`: multi-token-prediction heads (DeepSeek-V3) around any HF causal LM.
- `upscale`: layer saturation and depth upscaling (`autothink upscale`).
- `gguf`: GGUF export with llama.cpp's converter (`autothink export gguf`), cached per checkpoint
  for the `llamacpp:` backend.
"""
from autothink.models.loading import DEFAULT_MODEL as DEFAULT_MODEL
from autothink.models.loading import EMBEDDED as EMBEDDED
from autothink.models.loading import cache_dir as cache_dir
from autothink.models.loading import load_model as load_model
from autothink.models.loading import load_student as load_student
from autothink.models.loading import load_tokenizer as load_tokenizer
from autothink.models.loading import pick_device as pick_device
from autothink.models.loading import pick_dtype as pick_dtype
from autothink.models.loading import prepare as prepare
from autothink.models.loading import prepare_tokenizer as prepare_tokenizer
from autothink.models.loading import resolve as resolve
from autothink.models.loading import tiny_model as tiny_model
