"""The llama-cpp-python low-level API the llama.cpp backend and GGUF export use (0.3.36).

`inference/llamacpp.py` drives llama.cpp through its C API (batched sequences need the context
parameters the high-level `Llama` class does not expose), and `models/gguf.py` takes the converter
from this version's sdist. An upgrade fails here first with what to re-check.
"""
import llama_cpp


def test_version_pin():
    assert llama_cpp.__version__ == "0.3.36", \
        "re-check inference/llamacpp.py and models/gguf.py against the new llama-cpp-python, then update the pin"


def test_the_structs_and_functions_we_touch():
    context = {name for name, _ in llama_cpp.llama_context_params._fields_}
    assert {"n_ctx", "n_batch", "n_ubatch", "n_seq_max", "n_threads", "n_threads_batch", "kv_unified"} <= context
    batch = {name for name, _ in llama_cpp.llama_batch._fields_}
    assert {"n_tokens", "token", "pos", "n_seq_id", "seq_id", "logits"} <= batch
    quantize = {name for name, _ in llama_cpp.llama_model_quantize_params._fields_}
    assert {"ftype", "nthread"} <= quantize
    from autothink.models.gguf import QUANTIZED_OUTTYPES

    assert all(isinstance(getattr(llama_cpp, ftype), int) for ftype in QUANTIZED_OUTTYPES.values())
    for name in ("llama_backend_init", "llama_model_load_from_file", "llama_model_default_params",
                 "llama_context_default_params", "llama_init_from_model", "llama_model_n_ctx_train",
                 "llama_batch_init", "llama_batch_free", "llama_decode", "llama_get_logits_ith", "llama_get_memory",
                 "llama_memory_clear", "llama_model_get_vocab", "llama_vocab_n_tokens", "llama_tokenize",
                 "llama_free", "llama_model_free", "llama_model_quantize", "llama_model_quantize_default_params"):
        assert callable(getattr(llama_cpp, name)), name
