"""Depth upscaling: saturation by hand, function preserved, KV cache, save/load, architectures."""
import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from autothink.models import tiny_model
from autothink.models.upscale import (
    layer_saturation,
    plan_upscale,
    plot_saturation,
    saturation_table,
    target_depth,
    upscale,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog, then runs far away into the forest.",
    "Solve 3x + 5 = 20. Subtract 5: 3x = 15, so x = 5.",
    "naïve café 数学",
]
COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=512)


def build(arch, tokenizer, seed=0):
    torch.manual_seed(seed)
    vocab = len(tokenizer)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if arch == "llama":
        return tiny_model(tokenizer, layers=4, seed=seed)[0]
    if arch == "qwen2":  # layers 2, 3 use sliding-window attention
        config = Qwen2Config(vocab_size=vocab, use_sliding_window=True, sliding_window=6, max_window_layers=2,
                             **{k: v for k, v in COMMON.items() if k != "head_dim"}, **ids)
        return Qwen2ForCausalLM(config).eval()
    if arch == "qwen3":
        config = Qwen3Config(vocab_size=vocab, use_sliding_window=True, sliding_window=6, max_window_layers=1,
                             **COMMON, **ids)
        return Qwen3ForCausalLM(config).eval()
    if arch == "gemma3":
        config = Gemma3TextConfig(
            vocab_size=vocab, sliding_window=6, final_logit_softcapping=30.0,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            **COMMON, **ids,
        )
        return Gemma3ForCausalLM(config).eval()
    raise AssertionError(arch)


def encode(tokenizer, texts=TEXTS):
    return tokenizer(texts, return_tensors="pt", padding=True)


ARCHS = ["llama", "qwen2", "qwen3", "gemma3"]


# ----------------------------------------------------------------------------- saturation


def test_saturation_matches_hand_computation(tokenizer):
    model = build("llama", tokenizer)
    table = saturation_table(model, tokenizer, TEXTS, batch_size=2)
    assert [row["layer"] for row in table] == [0, 1, 2, 3]
    assert all(-1.0 <= row["saturation"] <= 1.0 for row in table)
    assert sorted(row["rank"] for row in table) == [0, 1, 2, 3]
    enc = encode(tokenizer)
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
    layer = 1
    values = []
    for b in range(len(TEXTS)):
        for t in range(enc.input_ids.shape[1]):
            if enc.attention_mask[b, t]:
                x, y = hs[layer][b, t].double(), hs[layer + 1][b, t].double()
                values.append((x @ y / (x.norm() * y.norm())).item())
    assert table[layer]["saturation"] == pytest.approx(sum(values) / len(values), abs=1e-9)


def test_last_layer_saturation_uses_its_output_before_the_final_norm(tokenizer):
    model = build("llama", tokenizer)
    with torch.no_grad():  # a trained final norm has non-unit weights (unit ones keep the cosine)
        model.model.norm.weight.uniform_(0.2, 3.0)
    sat = layer_saturation(model, tokenizer, TEXTS)
    enc = encode(tokenizer)
    mask = enc.attention_mask.bool()
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
        last_in = hs[-2]
        pos = torch.arange(last_in.shape[1])[None]
        # right padding + causal attention: real tokens never see pads, no padding mask needed
        last_out = model.model.layers[-1](last_in, attention_mask=None, position_ids=pos,
                                          position_embeddings=model.model.rotary_emb(last_in, pos))
    want = F.cosine_similarity(last_in.double(), last_out.double(), dim=-1)[mask].mean().item()
    naive = F.cosine_similarity(last_in.double(), hs[-1].double(), dim=-1)[mask].mean().item()
    assert sat[-1] == pytest.approx(want, abs=1e-6)
    assert abs(naive - want) > 1e-4  # hidden_states[-1] has the final norm applied


def test_saturation_does_not_depend_on_batching_or_padding(tokenizer):
    model = build("qwen3", tokenizer)
    one_by_one = layer_saturation(model, tokenizer, TEXTS, batch_size=1)
    batched = layer_saturation(model, tokenizer, TEXTS, batch_size=3)
    assert batched == pytest.approx(one_by_one, abs=1e-5)


def test_plot_is_a_png(tokenizer, tmp_path):
    table = saturation_table(build("llama", tokenizer), tokenizer, TEXTS[:1])
    path = plot_saturation(table, tmp_path / "plots" / "saturation.png", duplicated=[1])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


# ----------------------------------------------------------------------------- upscaling


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_init_upscale_keeps_the_function(arch, tokenizer, tmp_path):
    original = build(arch, tokenizer)
    model = copy.deepcopy(original)
    sat = layer_saturation(model, tokenizer, TEXTS)
    duplicated = upscale(model, sat, target_layers=6)
    assert model.config.num_hidden_layers == 6 and len(model.model.layers) == 6
    assert duplicated == plan_upscale(sat, 6)
    # every attention module knows its new index (the KV cache is indexed by it)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(6))
    enc = encode(tokenizer)
    with torch.no_grad():
        want = original(**enc).logits
        got = model(**enc).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)

    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(loaded) is type(original) and loaded.config.num_hidden_layers == 6
    if getattr(original.config, "layer_types", None):
        origin = sorted(list(range(4)) + duplicated)
        assert loaded.config.layer_types == [original.config.layer_types[i] for i in origin]
        for layer, kind in zip(loaded.model.layers, loaded.config.layer_types):
            assert (layer.self_attn.sliding_window is not None) == (kind == "sliding_attention")
    prompt = tokenizer(TEXTS[1], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**prompt).logits, original(**prompt).logits, atol=1e-5, rtol=0)
        # greedy generation with the KV cache, past the sliding window (6)
        kw = dict(max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=tokenizer.pad_token_id)
        new = loaded.generate(**prompt, **kw)
        old = original.generate(**prompt, **kw)
    assert torch.equal(new, old)


def test_the_most_saturated_layers_are_duplicated(tokenizer):
    model = build("llama", tokenizer)
    # make layer 2 nearly the identity: it must come out as the most saturated
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.mul_(1e-3)
        model.model.layers[2].mlp.down_proj.weight.mul_(1e-3)
    table = saturation_table(model, tokenizer, TEXTS)
    assert table[2]["rank"] == 0 and table[2]["saturation"] > 0.99
    top2 = sorted(row["layer"] for row in table if row["rank"] < 2)
    originals = list(model.model.layers)
    duplicated = upscale(model, [row["saturation"] for row in table], target_layers=6)
    assert duplicated == top2
    new = list(model.model.layers)
    # originals are kept in order; each copy sits right after its original
    assert [m for m in new if any(m is o for o in originals)] == originals
    for i in duplicated:
        j = new.index(originals[i])
        twin = new[j + 1]
        assert all(twin is not o for o in originals)
        assert torch.equal(twin.self_attn.q_proj.weight, originals[i].self_attn.q_proj.weight)
        assert torch.count_nonzero(twin.self_attn.o_proj.weight) == 0
        assert torch.count_nonzero(twin.mlp.down_proj.weight) == 0


def test_without_zero_init_the_copy_is_exact_and_the_function_changes(tokenizer):
    original = build("llama", tokenizer)
    model = copy.deepcopy(original)
    upscale(model, [0.1, 0.9, 0.2, 0.3], target_layers=5, zero_init=False)
    assert torch.equal(model.model.layers[2].mlp.down_proj.weight, model.model.layers[1].mlp.down_proj.weight)
    enc = encode(tokenizer)
    with torch.no_grad():
        assert not torch.allclose(model(**enc).logits, original(**enc).logits, atol=1e-3)


def test_qwen2_per_layer_config_follows_the_layers(tokenizer):
    model = build("qwen2", tokenizer)
    assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    upscale(model, [0.9, 0.1, 0.8, 0.2], ratio=1.5)  # 4 -> 6: duplicate layers 0 and 2
    assert model.config.layer_types == ["full_attention"] * 3 + ["sliding_attention"] * 3
    assert model.config.max_window_layers == 3  # the full-attention prefix grew by one


def test_target_and_plan_errors(tokenizer):
    assert target_depth(4, ratio=1.5) == 6 and target_depth(64, ratio=1.25) == 80
    assert plan_upscale([0.5, 0.5, 0.9, 0.1], 6) == [0, 2]  # ties go to the lower index
    model = build("llama", tokenizer)
    with pytest.raises(ValueError, match="at most 8"):
        upscale(model, [0.1] * 4, target_layers=9)
    with pytest.raises(ValueError, match="more than the current 4"):
        upscale(model, [0.1] * 4, target_layers=4)
    with pytest.raises(ValueError, match="exactly one"):
        upscale(model, [0.1] * 4, target_layers=6, ratio=1.5)
    with pytest.raises(ValueError, match="saturation has 3 values"):
        upscale(model, [0.1] * 3, target_layers=6)
    assert model.config.num_hidden_layers == 4  # nothing changed on error


def test_unknown_architecture_is_named(tokenizer):
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2))
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        upscale(gpt2, [0.5, 0.5], target_layers=3)
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        layer_saturation(gpt2, tokenizer, TEXTS)
