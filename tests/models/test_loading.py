
import pytest
import torch

from autothink import models


def test_the_default_model_converts_once_to_exactly_the_gguf_model(monkeypatch):
    from transformers import AutoModelForCausalLM

    converted, load = [], AutoModelForCausalLM.from_pretrained  # the GGUF model `prepare` loads, when it converts

    def spy(*args, **kwargs):
        model = load(*args, **kwargs)
        if "gguf_file" in kwargs:
            converted.append(model)
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    models.prepare()  # converts once (first run only)
    gguf = models.EMBEDDED[models.DEFAULT_MODEL].locate_gguf()
    reference = (converted or [load(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)])[0].eval()
    model, tokenizer = models.load_model(device="cpu")
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    assert not hasattr(model.config, "quantization_config")
    assert tokenizer.pad_token is not None and len(tokenizer) == model.config.vocab_size == 49152
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        next_id = model(**ids).logits[0, -1].argmax().item()
    assert tokenizer.decode(next_id).strip() == "Paris"
    ids = tokenizer("Adaptive thinking saves tokens on easy questions.", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**ids).logits, reference(**ids).logits, rtol=0, atol=0)


def test_tiny_model_uses_the_real_tokenizer(tiny):
    model, tokenizer = tiny
    assert model.config.vocab_size == len(tokenizer)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    ids = tokenizer(["hello world", "a"], return_tensors="pt", padding=True)
    assert model(**ids).logits.shape == (2, ids["input_ids"].shape[1], len(tokenizer))


def test_resolve_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'no-such-model'.*smollm2-135m-instruct"):
        models.resolve("no-such-model")
    with pytest.raises(ValueError, match="no config.json"):
        models.resolve(tmp_path)
    with pytest.raises(ValueError, match="unknown model"):
        models.resolve(tmp_path / "missing")
    assert models.resolve("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    with pytest.raises(ValueError, match="unknown embedded model"):
        models.prepare("gpt-5")


def test_unreachable_hub_id_is_a_clear_error():
    with pytest.raises(ValueError, match="could not load model 'nobody/nothing'"):
        models.load_model("nobody/nothing")


def test_device_and_dtype_choice():
    assert models.pick_device("cpu") == torch.device("cpu")
    assert models.pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert models.pick_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        models.pick_dtype("float8")
