"""MTP heads: the DeepSeek-V3 formula, shifts, loss, switch-off, save/load, gradients."""
import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from autothink.algorithms.uld import mtp_distill_loss
from autothink.models.mtp import MTPConfig, MTPModel, has_mtp, load_mtp, save_mtp

TEXTS = ["The quick brown fox jumps over the lazy dog.", "2 + 2 = 4"]


def tiny_gemma3(vocab, seed=0):
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], final_logit_softcapping=30.0,
    )
    return Gemma3ForCausalLM(config).eval()


def tiny_qwen3(vocab, seed=0):
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, use_sliding_window=True, sliding_window=4, max_window_layers=1,
    )
    return Qwen3ForCausalLM(config).eval()


@pytest.fixture(params=["llama", "gemma3", "qwen3"])
def base(request, tiny):
    model, tokenizer = tiny
    if request.param == "llama":
        return copy.deepcopy(model)
    return {"gemma3": tiny_gemma3, "qwen3": tiny_qwen3}[request.param](len(tokenizer))


@pytest.fixture
def batch(tokenizer):
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    return enc.input_ids, enc.attention_mask, labels


def test_disabled_heads_give_the_base_model_exactly(base, batch):
    ids, mask, labels = batch
    model = MTPModel(base, MTPConfig(num_heads=2))
    with torch.no_grad():
        ref = base(input_ids=ids, attention_mask=mask, labels=labels)
        on = model(ids, attention_mask=mask, labels=labels)
        model.enabled = False
        off = model(ids, attention_mask=mask, labels=labels)
    assert torch.equal(off.logits, ref.logits) and off.mtp_logits == [] and off.mtp_loss is None
    assert torch.equal(off.loss, ref.loss)
    # with the heads on, the main logits are untouched and the loss grows by the MTP term
    assert torch.equal(on.logits, ref.logits)
    assert len(on.mtp_logits) == 2 and all(x.shape == ref.logits.shape for x in on.mtp_logits)
    assert torch.allclose(on.loss, ref.loss + on.mtp_loss) and on.mtp_loss > 0


def test_head_one_follows_the_deepseek_formula(tiny):
    """h' = W·[RMSNorm(Emb(t_{i+1})); RMSNorm(h_i)], one block, shared final norm and head."""
    base, tokenizer = tiny
    ids = tokenizer(TEXTS[0], return_tensors="pt").input_ids
    model = MTPModel(base, MTPConfig(num_heads=1, init="random"))
    head = model.heads.heads[0]
    with torch.no_grad():
        got = model(ids).mtp_logits[0]
        h = base.model.embed_tokens(ids)
        pos = torch.arange(ids.shape[1])[None]
        rope = base.model.rotary_emb(h, pos)
        for layer in base.model.layers:
            h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=rope)
        x = head.proj(torch.cat([head.norm_emb(base.model.embed_tokens(ids[:, 1:])), head.norm_hidden(h[:, :-1])], -1))
        y = head.block(x, attention_mask=None, position_ids=pos[:, :-1],
                       position_embeddings=base.model.rotary_emb(x, pos[:, :-1]))
        want = base.lm_head(base.model.norm(y))
    # the last position has no t_{i+1}; the others match the formula
    torch.testing.assert_close(got[:, :-1], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_head_k_sees_tokens_up_to_i_plus_k(tiny, k):
    base, tokenizer = tiny
    ids = tokenizer(TEXTS[0], return_tensors="pt").input_ids
    model = MTPModel(base, MTPConfig(num_heads=3))
    p = 6
    changed = ids.clone()
    changed[0, p] = (ids[0, p] + 1) % len(tokenizer)
    with torch.no_grad():
        a, b = model(ids).mtp_logits[k - 1], model(changed).mtp_logits[k - 1]
    # position i reads t_{<= i+k}: before p-k nothing changes, at p-k it does
    assert torch.equal(a[:, : p - k], b[:, : p - k])
    assert not torch.allclose(a[:, p - k], b[:, p - k])


def test_mtp_loss_equals_hand_computation(base, batch):
    ids, mask, labels = batch
    lam, depth = 0.7, 3
    model = MTPModel(base, MTPConfig(num_heads=depth, loss_weight=lam))
    with torch.no_grad():
        out = model(ids, attention_mask=mask, labels=labels)
    b, t = ids.shape
    total = 0.0
    for k in range(1, depth + 1):
        terms = [
            F.cross_entropy(out.mtp_logits[k - 1][i, pos], labels[i, pos + k + 1])
            for i in range(b) for pos in range(t) if pos + k + 1 < t and labels[i, pos + k + 1] != -100
        ]
        total += torch.stack(terms).mean().item()
    assert out.mtp_loss.item() == pytest.approx(lam / depth * total, rel=1e-5)
    # a head with nothing to score adds 0, not NaN
    short = labels[:, :3]
    assert mtp_distill_loss(out.logits[:, :3], [x[:, :3] for x in out.mtp_logits], short, w_uld=0.0).mtp_ce.isfinite()


def test_gradients_reach_heads_shared_embedding_and_trunk(tiny, batch):
    base = copy.deepcopy(tiny[0]).train()
    ids, mask, labels = batch
    model = MTPModel(base, MTPConfig(num_heads=2))
    emb_module = base.get_input_embeddings()
    lookups = []

    def keep(module, args, output):
        output.retain_grad()
        lookups.append(output)

    hook = emb_module.register_forward_hook(keep)
    out = model(ids, attention_mask=mask, labels=labels)
    hook.remove()
    out.mtp_loss.backward()  # the MTP term alone
    for name, param in model.heads.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    # one lookup by the trunk, then one per head (Emb(t_{i+k})) through the same shared module
    assert len(lookups) == 3
    for k in (1, 2):
        assert lookups[k].grad is not None and lookups[k].grad.abs().sum() > 0
    assert emb_module.weight.grad is not None and emb_module.weight.grad.abs().sum() > 0
    # shared, not copied: the heads own no vocabulary-sized matrix
    assert not any(len(tiny[1]) in p.shape for p in model.heads.parameters())
    assert base.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0


def test_save_load_round_trip(base, batch, tokenizer, tmp_path):
    ids, mask, labels = batch
    model = MTPModel(base, MTPConfig(num_heads=2, loss_weight=0.5, init="random"))
    model.save_pretrained(tmp_path, tokenizer)
    assert has_mtp(tmp_path)
    torch.manual_seed(123)  # different random init: only loaded weights can give equal outputs
    fresh = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    loaded = load_mtp(tmp_path, fresh)
    assert loaded.mtp_config == model.mtp_config
    with torch.no_grad():
        a = model(ids, attention_mask=mask, labels=labels)
        b = loaded(ids, attention_mask=mask, labels=labels)
    assert torch.equal(a.logits, b.logits)
    for x, y in zip(a.mtp_logits, b.mtp_logits, strict=True):
        assert torch.equal(x, y)
    assert torch.equal(a.loss, b.loss)


def test_base_checkpoint_still_loads_alone(tiny, tokenizer, tmp_path):
    base = tiny[0]
    ids = tokenizer(TEXTS[0], return_tensors="pt").input_ids
    model = MTPModel(base, MTPConfig(num_heads=2))
    model.save_pretrained(tmp_path)
    alone, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    assert not any("mtp" in k or "heads" in k for k in alone.state_dict())
    with torch.no_grad():
        assert torch.equal(alone.eval()(ids).logits, base(ids).logits)


def test_save_mtp_beside_an_existing_checkpoint(tiny, tmp_path):
    base = tiny[0]
    base.save_pretrained(tmp_path)
    model = MTPModel(base, MTPConfig(num_heads=1))
    path = save_mtp(model, tmp_path)
    assert path.name == "mtp_heads.safetensors" and (tmp_path / "mtp_config.json").exists()
    assert (tmp_path / "model.safetensors").exists()


def test_load_errors(tiny, tokenizer, tmp_path):
    base = tiny[0]
    with pytest.raises(ValueError, match="has no MTP heads"):
        load_mtp(tmp_path, base)
    MTPModel(base, MTPConfig(num_heads=1)).save_pretrained(tmp_path)
    # same hidden size, but Gemma3 blocks have more norms than the saved Llama blocks
    with pytest.raises(ValueError, match="do not fit"):
        load_mtp(tmp_path, tiny_gemma3(len(tokenizer)))


def test_unsupported_architecture_and_bad_config(tiny):
    class NotALlama(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match="NotALlama"):
        MTPModel(NotALlama())
    with pytest.raises(ValueError, match="num_heads"):
        MTPModel(tiny[0], MTPConfig(num_heads=0))
    with pytest.raises(ValueError, match="block_layer_idx"):
        MTPModel(tiny[0], MTPConfig(block_layer_idx=5))


def test_block_takes_the_chosen_layer_type(tokenizer, batch):
    ids, mask, labels = batch
    gemma = tiny_gemma3(len(tokenizer))
    default = MTPModel(gemma, MTPConfig(num_heads=1))
    sliding = MTPModel(gemma, MTPConfig(num_heads=1, block_layer_idx=0))
    assert default.heads.layer_type == "full_attention" and default.mtp_config.block_layer_idx == 1
    assert sliding.heads.layer_type == "sliding_attention"
    assert sliding.heads.heads[0].block.self_attn.sliding_window == gemma.config.sliding_window
    with torch.no_grad():
        out = sliding(ids, attention_mask=mask, labels=labels)
    assert out.mtp_loss.isfinite()
    # window 4: head position i reads hidden states i-3..i only. Change the trunk's view of the
    # far past by altering the block input there: positions >= 4 later than it are unaffected.
    with torch.no_grad():
        hidden = torch.randn(1, 10, 64)
        other = hidden.clone()
        other[0, 0] += 1.0
        a = sliding.heads(gemma, ids[:1, :10], hidden)[0]
        b = sliding.heads(gemma, ids[:1, :10], other)[0]
    assert not torch.allclose(a[0, :4], b[0, :4]) and torch.allclose(a[0, 4:], b[0, 4:])
