"""ULD loss: against a loop reference, gradients, sorting invariance, byte-offset pairing of rows."""
import pytest
import torch
import torch.nn.functional as F

from autothink.algorithms import (
    causal_lm_ce,
    mtp_distill_loss,
    sorted_probs,
    uld_loss,
    uld_loss_sorted,
)
from reference import (
    byte_offset_alignment,
    collate_alignments,
    response_mask,
    uld_loss_aligned,
)


def reference_uld(s_logits, t_logits, s_mask, t_mask, temperature=1.0):
    """Straightforward loops: per sample, per paired position (the paper's definition)."""
    per_sample = []
    for b in range(s_logits.shape[0]):
        s_pos = [i for i in range(s_logits.shape[1]) if s_mask[b, i]]
        t_pos = [j for j in range(t_logits.shape[1]) if t_mask[b, j]]
        m = min(len(s_pos), len(t_pos))
        if m == 0:
            continue
        total = 0.0
        for k in range(m):
            p = sorted(torch.softmax(s_logits[b, s_pos[k]] / temperature, -1).tolist(), reverse=True)
            q = sorted(torch.softmax(t_logits[b, t_pos[k]] / temperature, -1).tolist(), reverse=True)
            v = max(len(p), len(q))
            p, q = p + [0.0] * (v - len(p)), q + [0.0] * (v - len(q))
            total += sum(abs(x - y) for x, y in zip(p, q))
        per_sample.append(total / m)
    return sum(per_sample) / len(per_sample) if per_sample else 0.0


def random_case(seed, b=3, ts=7, tt=9, vs=11, vt=17, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, ts, vs, generator=g, dtype=dtype) * 2
    t = torch.randn(b, tt, vt, generator=g, dtype=dtype) * 2
    ms = torch.rand(b, ts, generator=g) < 0.6
    mt = torch.rand(b, tt, generator=g) < 0.6
    return s, t, ms, mt


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_matches_loop_reference(seed, temperature):
    s, t, ms, mt = random_case(seed)
    ms[0] = True  # sample 0: 7 student positions vs fewer teacher ones
    mt[1, :] = False
    mt[1, [2, 5]] = True  # sample 1: exactly 2 teacher positions
    got = uld_loss(s, t, ms, mt, temperature=temperature)
    want = reference_uld(s, t, ms, mt, temperature)
    assert got.item() == pytest.approx(want, abs=1e-10)


def test_vocab_sizes_either_way_and_float32():
    s, t, ms, mt = random_case(7, vs=30, vt=5, dtype=torch.float32)
    assert uld_loss(s, t, ms, mt).item() == pytest.approx(reference_uld(s, t, ms, mt), abs=1e-5)
    assert uld_loss(t, s, mt, ms).item() == pytest.approx(reference_uld(t, s, mt, ms), abs=1e-5)


def test_temperature_changes_the_loss():
    s, t, ms, mt = random_case(1)
    assert uld_loss(s, t, ms, mt, temperature=1.0) != pytest.approx(uld_loss(s, t, ms, mt, temperature=4.0).item())
    with pytest.raises(ValueError, match="temperature"):
        uld_loss(s, t, ms, mt, temperature=0.0)


def test_samples_without_pairs_are_skipped():
    s, t, ms, mt = random_case(2)
    ms[2] = False  # sample 2 has no pair: the mean is over samples 0 and 1 only
    got = uld_loss(s, t, ms, mt)
    only01 = uld_loss(s[:2], t[:2], ms[:2], mt[:2])
    assert got.item() == pytest.approx(only01.item(), abs=1e-12)
    assert got.item() == pytest.approx(reference_uld(s, t, ms, mt), abs=1e-10)


def test_no_pairs_at_all_is_a_differentiable_zero():
    s, t, ms, mt = random_case(3)
    s.requires_grad_(True)
    loss = uld_loss(s, t, torch.zeros_like(ms), mt)
    assert loss.item() == 0.0
    loss.backward()
    assert s.grad is not None and torch.count_nonzero(s.grad) == 0


def test_gradcheck():
    s, t, ms, mt = random_case(4, b=2, ts=3, tt=4, vs=4, vt=6)
    s.requires_grad_(True)
    t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: uld_loss(a, b, ms, mt, temperature=0.7), (s, t))
    si = torch.tensor([[0, 2, -1], [1, 0, 2]])
    ti = torch.tensor([[3, 1, -1], [0, 0, 2]])
    assert torch.autograd.gradcheck(lambda a, b: uld_loss_aligned(a, b, si, ti, temperature=1.3), (s, t))


def test_zero_when_equal_up_to_permutation():
    s, _, ms, _ = random_case(5, vs=13)
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(0))
    t = s[..., perm].clone()
    assert uld_loss(s, t, ms, ms).item() == pytest.approx(0.0, abs=1e-12)
    # Extra vocabulary entries with (almost) zero probability change nothing either.
    t_big = torch.cat([t, torch.full((*t.shape[:2], 20), -1e4, dtype=t.dtype)], dim=-1)
    assert uld_loss(s, t_big, ms, ms).item() == pytest.approx(0.0, abs=1e-12)
    # ...but a genuinely different distribution does not give 0.
    assert uld_loss(s, t * 2, ms, ms).item() > 1e-3


def test_shape_errors():
    s, t, ms, mt = random_case(6)
    with pytest.raises(ValueError, match=r"batch sizes differ.*\(3, 7, 11\).*\(2, 9, 17\)"):
        uld_loss(s, t[:2], ms, mt[:2])
    with pytest.raises(ValueError, match=r"student_mask \(3, 6\)"):
        uld_loss(s, t, ms[:, :6], mt)
    with pytest.raises(ValueError, match=r"teacher_mask"):
        uld_loss(s, t, ms, ms)
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        uld_loss(s[0], t, ms, mt)
    probs = sorted_probs(t[:, :2])  # (3, 2, 17): two paired rows per sample
    with pytest.raises(ValueError, match=r"shapes do not fit.*student_index \(3, 4\).*teacher_probs \(3, 2, 17\)"):
        uld_loss_sorted(s, torch.zeros(3, 4, dtype=torch.long), probs)
    with pytest.raises(ValueError, match=">= T"):
        uld_loss_sorted(s, torch.tensor([[0, 7]] * 3), probs)


def test_aligned_equals_ordered_pairing_when_indices_match():
    s, t, ms, mt = random_case(8)
    si, ti = [], []
    for b in range(3):
        a, c = ms[b].nonzero()[:, 0], mt[b].nonzero()[:, 0]
        m = min(len(a), len(c))
        si.append(a[:m])
        ti.append(c[:m])
    s_index, t_index = collate_alignments(si, ti)
    assert uld_loss_aligned(s, t, s_index, t_index).item() == pytest.approx(uld_loss(s, t, ms, mt).item(), abs=1e-12)
    # one sample, 2-D form
    assert uld_loss_aligned(s[0], t[0], si[0], ti[0]).item() == pytest.approx(
        uld_loss(s[:1], t[:1], ms[:1], mt[:1]).item(), abs=1e-12
    )


def test_ce_and_distill_total():
    s, t, _, _ = random_case(9, b=2, ts=5, tt=5)
    labels = torch.tensor([[-100, 3, 4, 1, 0], [-100, -100, 2, 2, -100]])
    # hand CE: logits[i] vs labels[i+1]
    terms = [F.cross_entropy(s[b, i], labels[b, i + 1]) for b in range(2) for i in range(4) if labels[b, i + 1] != -100]
    ce = causal_lm_ce(s, labels)
    assert ce.item() == pytest.approx(torch.stack(terms).mean().item(), abs=1e-12)
    mask = response_mask(labels)
    assert mask.tolist() == [[True, True, True, True, False], [False, True, True, False, False]]
    # the trainer's total (no MTP heads): w_ce·CE + w_uld·ULD, the pairs in order
    student_index, _ = collate_alignments([m.nonzero()[:, 0] for m in mask], [m.nonzero()[:, 0] for m in mask])
    rows = t[torch.arange(2)[:, None], student_index.clamp(min=0)]
    probs = sorted_probs(rows) * (student_index >= 0)[..., None]
    out = mtp_distill_loss(s, [], labels, student_index, probs, w_ce=0.3, w_uld=2.0)
    assert out.uld.item() == pytest.approx(uld_loss(s, t, mask, mask).item())
    assert out.loss.item() == pytest.approx(0.3 * ce.item() + 2.0 * out.uld.item())
    assert mtp_distill_loss(s, [], labels, w_uld=0.0).loss.item() == pytest.approx(ce.item())


# ----------------------------------------------------------------------------- byte offsets


def _gpt2_byte_decoder():
    """Inverse of GPT-2's bytes_to_unicode (byte-level BPE token strings -> bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def smollm2_token_bytes(tokenizer, ids):
    dec = _gpt2_byte_decoder()
    return [bytes(dec[ch] for ch in tok) for tok in tokenizer.convert_ids_to_tokens(ids)]


def gemma_token_bytes(tokenizer, ids):
    out = []
    for tok in tokenizer.convert_ids_to_tokens(ids):
        if tok.startswith("<0x") and tok.endswith(">") and len(tok) == 6:
            out.append(bytes([int(tok[3:5], 16)]))
        else:
            out.append(tok.replace("▁", " ").encode("utf-8"))
    return out


def true_ends(token_bytes):
    ends, total = [], 0
    for piece in token_bytes:
        total += len(piece)
        ends.append(total)
    return ends


@pytest.fixture(scope="module")
def gemma_tokenizer():
    from autothink.models import load_tokenizer

    # The first use on a machine converts the tokenizer of the embedded Gemma-3 GGUF (~30 s, once; hence
    # `slow`, and conftest.py starts it in the background); later loads take a few seconds.
    return load_tokenizer("gemma-3-270m")


TEXTS = [
    "naïve café 数学",
    "Let x = 3.14; then 2x  =\n\n6.28 🙂 — done!",
    "def f(a, b):\n    return a**2 + b  # 数学の問題",
]


@pytest.mark.slow
@pytest.mark.parametrize("text", TEXTS)
def test_byte_alignment_on_real_tokenizers(text, tokenizer, gemma_tokenizer):
    a = byte_offset_alignment(text, tokenizer, gemma_tokenizer)
    s_bytes = smollm2_token_bytes(tokenizer, a.student_ids)
    t_bytes = gemma_token_bytes(gemma_tokenizer, a.teacher_ids)
    raw = text.encode("utf-8")
    # the independent byte decodings reproduce the text, so their running sums are the truth
    assert b"".join(s_bytes) == raw and b"".join(t_bytes) == raw
    s_true, t_true = true_ends(s_bytes), true_ends(t_bytes)
    pairs = list(zip(a.student_index.tolist(), a.teacher_index.tolist(), a.byte_ends.tolist()))
    assert pairs, "no aligned positions"
    for i, j, end in pairs:
        assert s_true[i] == t_true[j] == end
    # complete: every byte offset where both tokenizations have a token boundary is paired
    assert sorted(e for _, _, e in pairs) == sorted(set(s_true) & set(t_true))
    assert pairs[-1][2] == len(raw)
    assert a.student_index.tolist() == sorted(a.student_index.tolist())


@pytest.mark.slow
def test_byte_alignment_skips_split_multibyte_characters(tokenizer, gemma_tokenizer):
    text = "naïve café 数学"
    a = byte_offset_alignment(text, tokenizer, gemma_tokenizer)
    s_bytes = smollm2_token_bytes(tokenizer, a.student_ids)
    # SmolLM2 splits 学 into two byte tokens that both report the character's span; only the
    # second ends at a character boundary.
    split = [i for i, b in enumerate(s_bytes) if b and not _is_utf8_complete(b"".join(s_bytes[: i + 1]))]
    assert split, "expected SmolLM2 to split a multi-byte character (tokenizer changed?)"
    assert not set(split) & set(a.student_index.tolist())
    assert "学".encode().__len__() == 3 and len(text.encode()) in a.byte_ends.tolist()


def _is_utf8_complete(data):
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_byte_alignment_same_tokenizer_pairs_every_position(tokenizer):
    text = "plain ascii text, then ünïcödé"
    a = byte_offset_alignment(text, tokenizer, tokenizer)
    n = len(a.student_ids)
    pieces = smollm2_token_bytes(tokenizer, a.student_ids)
    split = sum(1 for i in range(n) if not _is_utf8_complete(b"".join(pieces[: i + 1])))
    assert a.student_index.tolist() == a.teacher_index.tolist()
    assert len(a.student_index) == n - split


@pytest.mark.slow
def test_aligned_loss_on_real_alignment(tokenizer, gemma_tokenizer):
    text = TEXTS[1]
    a = byte_offset_alignment(text, tokenizer, gemma_tokenizer)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(1, len(a.student_ids), 50, generator=g, dtype=torch.float64)
    t = torch.randn(1, len(a.teacher_ids), 70, generator=g, dtype=torch.float64)
    got = uld_loss_aligned(s, t, a.student_index[None], a.teacher_index[None])
    ms = torch.zeros(s.shape[:2], dtype=torch.bool)
    mt = torch.zeros(t.shape[:2], dtype=torch.bool)
    ms[0, a.student_index] = True
    mt[0, a.teacher_index] = True
    # the pairs are monotone, so ordered pairing of exactly those positions is the same loss
    assert got.item() == pytest.approx(reference_uld(s, t, ms, mt), abs=1e-10)


def test_slow_tokenizer_is_rejected(tokenizer):
    class SlowTokenizer:
        is_fast = False
        name_or_path = "my-slow-tok"

    with pytest.raises(ValueError, match=r"SlowTokenizer\(my-slow-tok\) is not a fast tokenizer"):
        byte_offset_alignment("text", SlowTokenizer(), tokenizer)
    with pytest.raises(ValueError, match=r"SlowTokenizer\(my-slow-tok\) is not a fast tokenizer"):
        byte_offset_alignment("text", tokenizer, SlowTokenizer())


def test_tokenizer_without_offsets_is_rejected(tokenizer):
    class NoOffsets:
        is_fast = True
        name_or_path = "weird"

        def __call__(self, text, **kwargs):
            raise NotImplementedError("return_offset_mapping is not available")

    with pytest.raises(ValueError, match=r"NoOffsets\(weird\) cannot give offset mappings"):
        byte_offset_alignment("text", NoOffsets(), tokenizer)


def _full_sort_l1(p_s, p_t):
    """The loss as first written: both sides fully sorted, the shorter zero-padded to the longer."""
    v = max(p_s.shape[-1], p_t.shape[-1])
    p_s = F.pad(p_s.sort(-1, descending=True).values, (0, v - p_s.shape[-1]))
    p_t = F.pad(p_t.sort(-1, descending=True).values, (0, v - p_t.shape[-1]))
    return (p_s - p_t).abs().sum(-1)


@pytest.mark.parametrize("vs, vt", [(11, 40), (40, 11), (17, 17)])
def test_cut_to_the_smaller_vocabulary_plus_a_tail_column_equals_the_full_sort(vs, vt):
    g = torch.Generator().manual_seed(vs * vt)
    s = torch.randn(2, 6, vs, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 5, vt, generator=g, dtype=torch.float64)
    mask_s, mask_t = torch.ones(2, 6, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool)
    got = uld_loss(s, t, mask_s, mask_t, temperature=1.5)
    want = _full_sort_l1(torch.softmax(s[:, :5] / 1.5, -1), torch.softmax(t / 1.5, -1)).mean()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    (g_got,), (g_want,) = torch.autograd.grad(got, s), torch.autograd.grad(want, s)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-12)
    # The live teacher side of the trainer: top-Vs probabilities plus the tail column.
    index = torch.arange(5).expand(2, 5)
    sorted_got = uld_loss_sorted(s, index, sorted_probs(t, 1.5, top_k=vs, tail=True), temperature=1.5)
    torch.testing.assert_close(sorted_got, want, rtol=0, atol=1e-12)


def test_against_a_top_k_teacher_the_students_top_k_suffices():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 4, 50, generator=g, dtype=torch.float64, requires_grad=True)
    top = sorted_probs(torch.randn(3, 4, 90, generator=g, dtype=torch.float64), top_k=8)  # no tail: zeros beyond
    index = torch.tensor([[0, 1, 2, 3], [3, 2, -1, -1], [1, -1, -1, -1]])
    got = uld_loss_sorted(s, index, top)
    per_sample = []
    for b in range(3):
        rows = [(p, int(i)) for p, i in enumerate(index[b]) if i >= 0]
        per_sample.append(torch.stack([_full_sort_l1(torch.softmax(s[b, i], -1), top[b, p]) for p, i in rows]).mean())
    want = torch.stack(per_sample).mean()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    (g_got,), (g_want,) = torch.autograd.grad(got, s), torch.autograd.grad(want, s)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-12)
