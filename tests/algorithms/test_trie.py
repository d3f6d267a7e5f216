"""Trie packing is exact: loss and every gradient equal the unpacked batch's (fp32, 1e-5 relative)."""
import random

import pytest
import torch

from autothink.algorithms import trie_logprobs, trie_pack
from autothink.algorithms.trie import flex_block_mask

VOCAB = 61


def _model(arch: str, attn: str = "sdpa"):
    import transformers

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=False, attn_implementation=attn)
    config = {
        "llama": lambda: transformers.LlamaConfig(**common),
        "qwen2": lambda: transformers.Qwen2Config(**common),
        "qwen3": lambda: transformers.Qwen3Config(head_dim=8, **common),
    }[arch]()
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).float()


def _unpacked_loss(model, sequences, weights):
    """The reference: each sequence alone, Σ_t w[t]·NLL of token t from tokens < t."""
    total = 0.0
    for seq, w in zip(sequences, weights):
        ids = torch.tensor([seq], device=model.device)
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        nll = -logp.gather(-1, ids[0, 1:, None])[:, 0]
        total = total + (torch.tensor(w[1:], dtype=torch.float32, device=model.device) * nll).sum()
    return total


def _packed_loss(model, packs):
    total = 0.0
    for pack in packs:
        logp, _ = trie_logprobs(model, pack)
        total = total + -(pack.weight.to(logp) * logp).sum()
    return total


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_exact(model, sequences, weights, token_budget):
    packs = trie_pack(sequences, weights, token_budget)
    ref_loss = _unpacked_loss(model, sequences, weights)
    ref = _grads(model, ref_loss)
    loss = _packed_loss(model, packs)
    got = _grads(model, loss)
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item())
    for name, g in ref.items():
        err = (got[name] - g).norm() / g.norm().clamp_min(1e-30)
        assert err <= 1e-5, f"{name}: relative gradient error {err:.2e}"
    return packs


def _trajectories(seed=0, n=6, shared=24, branch=10):
    """Agent-like sequences: one long shared context, branches, sub-branches, a duplicate, a prefix."""
    rng = random.Random(seed)
    context = [rng.randrange(VOCAB) for _ in range(shared)]
    seqs = []
    for _ in range(n):
        mid = [rng.randrange(VOCAB) for _ in range(branch)]
        seqs.append(context + mid)
        seqs.append(context + mid[:4] + [rng.randrange(VOCAB) for _ in range(5)])
    seqs.append(list(seqs[0]))          # an exact duplicate
    seqs.append(context[:15])           # ends at an internal node of the shared context
    return seqs


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_loss_and_gradients_equal_the_unpacked_batch(arch):
    model = _model(arch)
    seqs = _trajectories()
    rng = random.Random(1)
    weights = []
    for s in seqs:  # masked spans inside the shared prefix, and ragged 0/1 masks
        w = [1.0] * len(s)
        for t in range(5, 9):
            w[t] = 0.0
        w[rng.randrange(len(s))] = 0.0
        weights.append(w)
    packs = _assert_exact(model, seqs, weights, token_budget=4096)
    assert len(packs) == 1
    distinct = len({tuple(s[:t + 1]) for s in seqs for t in range(len(s))})
    assert len(packs[0]) == distinct < sum(len(s) for s in seqs)


def test_signed_per_sequence_weights():
    """Advantages: a per-sequence sign and scale, so shared nodes sum weights of both signs."""
    model = _model("llama")
    seqs = _trajectories(seed=2)
    weights = [[(-1.0) ** s * (0.5 + s / 7)] * len(seq) for s, seq in enumerate(seqs)]
    _assert_exact(model, seqs, weights, token_budget=4096)


def test_several_packs_repeat_the_ancestor_path_and_count_each_prediction_once():
    model = _model("qwen2")
    seqs = _trajectories(seed=3, n=8)
    weights = [[1.0 + 0.1 * t for t in range(len(s))] for s in seqs]
    packs = _assert_exact(model, seqs, weights, token_budget=48)
    assert len(packs) > 1 and all(len(p) <= 48 for p in packs)
    placed = [s for p in packs for s in p.token_index]
    assert sorted(placed) == list(range(len(seqs)))  # every sequence whole in exactly one pack
    for p in packs:
        for s, idx in p.token_index.items():
            assert p.input_ids[idx].tolist() == seqs[s]
            assert p.position_ids[idx].tolist() == list(range(len(seqs[s])))
            assert (p.parent[idx[1:]] == idx[:-1]).all() and p.parent[idx[0]] == -1
    # The shared context is repeated in every pack, its predictions weighted in one pack only.
    total = sum(sum(w[1:]) for w in weights)
    assert sum(p.weight.sum().item() for p in packs) == pytest.approx(total, rel=1e-6)


def test_eager_attention_uses_an_additive_mask_and_is_exact():
    model = _model("llama", attn="eager")
    seqs = _trajectories(seed=4, n=3)
    _assert_exact(model, seqs, [[1.0] * len(s) for s in seqs], token_budget=4096)


def test_ppo_clip_through_token_index_equals_the_unpacked_loss():
    """A loss not linear in the log-probs: per-sequence log-probs scattered back from the pack."""
    model = _model("qwen3")
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(VOCAB, (20,), generator=g).tolist()
    seqs = [prompt + torch.randint(VOCAB, (int(n),), generator=g).tolist() for n in (6, 9, 9, 3, 7, 5, 8, 4)]
    adv = torch.randn(len(seqs), generator=g)
    old = [torch.randn(len(s) - len(prompt), generator=g) * 0.1 for s in seqs]

    def ppo(logps):  # per sequence, the completion's per-token log-probs
        out = 0.0
        for s, lp in enumerate(logps):
            ratio = torch.exp(lp - (lp.detach() + old[s]))
            out = out - torch.min(ratio * adv[s], ratio.clamp(0.8, 1.2) * adv[s]).mean()
        return out / len(logps)

    ref_lp = []
    for s in seqs:
        ids = torch.tensor([s])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
        ref_lp.append(logp[len(prompt) - 1:])
    ref_loss = ppo(ref_lp)
    ref = _grads(model, ref_loss)
    (pack,) = trie_pack(seqs, [[0.0] * len(s) for s in seqs], token_budget=512)
    logp, _ = trie_logprobs(model, pack)
    loss = ppo([logp[pack.token_index[s][len(prompt):]] for s in range(len(seqs))])
    got = _grads(model, loss)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    for name, gr in ref.items():
        assert (got[name] - gr).norm() / gr.norm() <= 1e-5, name


def test_entropy_and_temperature_match_the_unpacked_distribution():
    model = _model("llama")
    seqs = [[1, 2, 3, 4], [1, 2, 5], [1, 2, 3, 6, 7]]
    (pack,) = trie_pack(seqs, [[1.0] * len(s) for s in seqs], token_budget=16)
    with torch.no_grad():
        logp, ent = trie_logprobs(model, pack, temperature=0.7, entropy=True)
        for s, seq in enumerate(seqs):
            logits = model(input_ids=torch.tensor([seq])).logits[0, :-1] / 0.7
            ref = torch.log_softmax(logits, -1)
            idx = pack.token_index[s][1:]
            torch.testing.assert_close(logp[idx], ref.gather(-1, torch.tensor(seq[1:])[:, None])[:, 0])
            torch.testing.assert_close(ent[idx], -(ref.exp() * ref).sum(-1))
    assert logp[0] == 0 and ent[0] == 0
    needed = pack.weight > 0
    needed[2] = False
    with torch.no_grad():
        some, some_ent = trie_logprobs(model, pack, temperature=0.7, entropy=True, nodes=needed)
    torch.testing.assert_close(some[needed], logp[needed])
    torch.testing.assert_close(some_ent[needed], ent[needed])
    assert (some[~needed] == 0).all() and (some_ent[~needed] == 0).all()


def test_pack_layout_is_the_documented_one():
    (pack,) = trie_pack([[1, 2, 3], [1, 2, 4], [1, 2]], [[0, 1, 1], [0, 1, 1], [0, 5]], token_budget=8)
    assert pack.input_ids.tolist() == [1, 2, 3, 4]
    assert pack.position_ids.tolist() == [0, 1, 2, 2]
    assert pack.parent.tolist() == [-1, 0, 1, 1]
    assert pack.weight.tolist() == [0.0, 7.0, 1.0, 1.0]
    assert pack.end.tolist() == [4, 4, 3, 4]
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(pack.attention_mask(), expected)
    assert {s: i.tolist() for s, i in pack.token_index.items()} == {0: [0, 1, 2], 1: [0, 1, 3], 2: [0, 1]}


def test_given_positions_share_only_where_token_and_position_agree():
    (pack,) = trie_pack([[7, 8], [7, 8], [7, 9]], [[0, 1]] * 3, token_budget=8, positions=[[0, 1], [3, 4], [0, 1]])
    assert pack.input_ids.tolist() == [7, 8, 9, 7, 8]
    assert pack.position_ids.tolist() == [0, 1, 1, 3, 4]


@pytest.mark.parametrize("bad, message", [
    (dict(sequences=[[1, 2, 3]], weights=[[1, 1]]), "3 tokens but 2 weights"),
    (dict(sequences=[[1, 2], []], weights=[[1, 1], []]), "sequence 1 is empty"),
    (dict(sequences=[[1] * 9], weights=[[1] * 9]), "more than the token budget 8"),
    (dict(sequences=[[1, 2]], weights=[[1, 1], [1]]), "1 sequences but 2 weight lists"),
    (dict(sequences=[[1, 2]], weights=[[1, 1]], token_budget=0), "token_budget"),
])
def test_bad_input_is_a_clear_error(bad, message):
    args = dict(token_budget=8) | bad
    with pytest.raises(ValueError, match=message):
        trie_pack(**args)


def test_unverified_attention_and_sliding_windows_are_refused():
    import transformers

    model = _model("llama")
    (pack,) = trie_pack([[1, 2, 3]], [[1, 1, 1]], token_budget=8)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="not 'flash_attention_2'"):
        trie_logprobs(model, pack)
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True,
                                      sliding_window=4, max_window_layers=0, attn_implementation="sdpa")
    windowed = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match="sliding-window"):
        trie_logprobs(windowed, pack)


def test_flex_mask_function_equals_the_dense_mask():
    """FlexAttention has no backward on CPU: its mask (and a forward without grad) are checked here."""
    seqs = _trajectories(seed=6, n=3)
    (pack,) = trie_pack(seqs, [[1.0] * len(s) for s in seqs], token_budget=4096)
    block = flex_block_mask(pack, device="cpu", block_size=128)
    n = len(pack)
    dense = block.to_dense()[0, 0]  # (blocks, blocks) of which blocks are visited
    assert dense.shape[-1] == -(-n // 128)
    q, k = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    full = block.mask_mod(torch.tensor(0), torch.tensor(0), q, k)
    assert torch.equal(full[:n, :n], pack.attention_mask())
    assert not full[:n, n:].any() and torch.equal(full[n:, n:], torch.eye(128 - n, dtype=torch.bool))


def test_flex_attention_forward_matches_sdpa_without_grad():
    pytest.importorskip("torch.nn.attention.flex_attention")
    seqs = _trajectories(seed=7, n=2)
    (pack,) = trie_pack(seqs, [[1.0] * len(s) for s in seqs], token_budget=4096)
    sdpa, flex = _model("llama"), _model("llama", attn="flex_attention")
    with torch.no_grad():
        ref, _ = trie_logprobs(sdpa, pack)
        got, _ = trie_logprobs(flex, pack)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)



def test_row_logprobs_equal_a_padded_batch_forward_and_its_gradients():
    """GRPO's layout: left-padded prompts, right-padded completions, positions = column index."""
    from autothink.algorithms.trie import trie_row_logprobs

    model = _model("qwen2")
    g = torch.Generator().manual_seed(8)
    prompts = [torch.randint(VOCAB, (n,), generator=g).tolist() for n in (12, 7)]
    rows, masks = [], []
    for prompt in prompts:  # two groups of 4, prompts padded to 12, completions to 9
        for n in (9, 4, 9, 6):
            completion = torch.randint(VOCAB, (n,), generator=g).tolist()
            pad_left, pad_right = 12 - len(prompt), 9 - n
            rows.append([0] * pad_left + prompt + completion + [0] * pad_right)
            masks.append([0] * pad_left + [1] * (len(prompt) + n) + [0] * pad_right)
    ids, mask = torch.tensor(rows), torch.tensor(masks)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, -10:-1] / 0.9
    ref = torch.log_softmax(logits, -1).gather(-1, ids[:, -9:, None])[..., 0] * mask[:, -9:]
    ref_grads = _grads(model, ref.sum())
    got, ent = trie_row_logprobs(model, ids, mask, logits_to_keep=9, token_budget=64, temperature=0.9, entropy=True)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert got.shape == ent.shape == (8, 9) and (ent[mask[:, -9:] == 0] == 0).all()
    grads = _grads(model, got.sum())
    for name, gr in ref_grads.items():
        assert (grads[name] - gr).norm() / gr.norm() <= 1e-5, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention has no backward on CPU; needs a GPU")
def test_flex_attention_loss_and_gradients_equal_the_unpacked_batch_on_gpu():
    model = _model("llama", attn="flex_attention").cuda()
    seqs = _trajectories(seed=9)
    weights = [[(-1.0) ** s] * len(seq) for s, seq in enumerate(seqs)]
    ref_loss = _unpacked_loss(model, seqs, weights)  # per-sequence forwards need no mask: plain causal
    ref = _grads(model, ref_loss)
    loss = _packed_loss(model, trie_pack(seqs, weights, token_budget=96))
    got = _grads(model, loss)
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item())
    for name, g in ref.items():
        assert (got[name] - g).norm() / g.norm() <= 1e-5, name


def test_cuts_repeat_a_shared_prompt_as_few_times_as_the_budget_allows():
    """A group over budget: first-fit-decreasing on marginal cost puts as many completions as fit with one copy
    of the prompt (4 of 128 tokens with a 500-token prompt in 1024), not one completion per pack."""
    g = torch.Generator().manual_seed(10)
    prompt = torch.randint(10**6, (500,), generator=g).tolist()  # a large vocabulary: completions share nothing
    seqs = [prompt + torch.randint(10**6, (128,), generator=g).tolist() for _ in range(8)]
    packs = trie_pack(seqs, [[1.0] * len(s) for s in seqs], token_budget=1024)
    assert [len(p) for p in packs] == [500 + 4 * 128] * 2
    assert [sorted(p.token_index) for p in packs] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert packs[1].weight[:500].sum() == 0 and packs[0].weight[1:500].eq(8).all()  # the prompt counted once
