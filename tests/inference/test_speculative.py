"""Self-speculative decoding with the MTP heads: the model's own tokens (greedy) and its own
distribution (sampling), whatever the heads draft."""
import json
from collections import Counter

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

from autothink.cli import main
from autothink.inference import speculative
from autothink.inference.backend import SamplingParams
from autothink.inference.local import LocalBackend, _RowSampler
from autothink.inference.spec import make_backend
from autothink.inference.speculative import DraftStats, accept_drafts, mtp_generate
from autothink.models.mtp import MTPConfig, MTPHeads, MTPModel, load_mtp
from autothink.training.distill import DistillConfig
from helpers import varied_tiny


def toy_model(vocab=50, seed=0, sharpen=1.0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)  # peaked distributions: the heads' q then differs from p
    return model


def left_padded(vocab, lengths, seed=1):
    torch.manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), width))
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, : width - n] = 0
        mask[r, width - n:] = 1
    return ids, mask


def trained_heads(model, depth, steps=300):
    """Heads fitted to the model's own greedy continuations: most of their drafts are right."""
    prompts = torch.randint(3, model.config.vocab_size, (64, 5), generator=torch.Generator().manual_seed(2))
    data = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=40,
                          do_sample=False, eos_token_id=[], pad_token_id=0)
    wrapped = MTPModel(model, MTPConfig(num_heads=depth))
    model.requires_grad_(False)
    opt = torch.optim.Adam(wrapped.heads.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(steps):
        opt.zero_grad()
        wrapped(data, labels=data).mtp_loss.backward()
        opt.step()
    return wrapped.heads.eval()


@pytest.fixture(scope="module")
def toy():
    return toy_model()


@pytest.fixture(scope="module")
def right_heads(toy):
    return trained_heads(toy, depth=2)


def greedy_reference(model, ids, mask, n):
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, eos_token_id=[1],
                         pad_token_id=0)
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("depth, draft_vocab", [(1, None), (2, None), (3, None), (2, range(0, 50, 3))])
def test_greedy_with_random_heads_is_token_for_token_generate(toy, depth, draft_vocab):
    torch.manual_seed(depth)
    heads = MTPHeads(toy, MTPConfig(num_heads=depth, init="random")).eval()
    heads.set_draft_vocab(None if draft_vocab is None else list(draft_vocab))
    ids, mask = left_padded(50, [7, 4, 1, 6])
    stats = DraftStats()
    got = mtp_generate(toy, heads, ids, mask, 40, eos_ids=[1], pad_id=0, stats=stats)
    assert torch.equal(got, greedy_reference(toy, ids, mask, 40))
    assert stats.drafted[0] > 0 and stats.acceptance()[0] < 0.2  # random drafts: nearly all rejected


def test_greedy_with_trained_heads_is_token_for_token_generate_and_saves_forwards(toy, right_heads):
    ids, mask = left_padded(50, [7, 4, 1, 6, 7, 2])
    for rows in (slice(0, 1), slice(0, 6)):  # one stream; a batch whose rows accept different numbers
        stats = DraftStats()
        got = mtp_generate(toy, right_heads, ids[rows], mask[rows], 60, eos_ids=[1], pad_id=0, stats=stats)
        assert torch.equal(got, greedy_reference(toy, ids[rows], mask[rows], 60))
        assert stats.acceptance()[0] > 0.6, stats
        assert stats.steps < 0.75 * got.shape[1]  # fewer model forwards than tokens


def test_draft_logits_are_the_output_heads_rows_of_the_draft_vocabulary(toy):
    heads = MTPHeads(toy, MTPConfig(num_heads=1))
    hidden = torch.randn(3, 32)
    full = heads.logits(toy, hidden)
    heads.set_draft_vocab([4, 9, 17])
    logits, ids = heads.draft_logits(toy, hidden)
    torch.testing.assert_close(logits, full[:, [4, 9, 17]])
    assert ids.tolist() == [4, 9, 17] and heads.config.draft_vocab == 3
    heads.set_draft_vocab(None)
    assert heads.draft_logits(toy, hidden)[1] is None


def exact_distribution(model, prompt, sampler, n):
    """P(x_1..x_n | prompt) by enumeration, under the sampler's temperature and top-p."""
    seqs, weights = prompt[None], torch.ones(1)
    for _ in range(n):
        with torch.no_grad():
            p = sampler.probs(model(seqs).logits[:, -1])
        p = p / p.sum(-1, keepdim=True)
        vocab = p.shape[-1]
        seqs = torch.cat([seqs.repeat_interleave(vocab, 0), torch.arange(vocab).repeat(len(seqs))[:, None]], 1)
        weights = (weights[:, None] * p).reshape(-1)
    return {tuple(s[len(prompt):].tolist()): float(w) for s, w in zip(seqs, weights)}


def chi_square(counts: Counter, expected: dict, total: int) -> tuple[float, int, int]:
    """(statistic, degrees of freedom, samples where the model gives probability 0); cells expecting
    fewer than 5 samples are pooled."""
    stat, pooled_obs, pooled_exp, cells = 0.0, 0, 0.0, 0
    for cell, p in expected.items():
        e = p * total
        if e < 5:
            pooled_obs, pooled_exp = pooled_obs + counts.get(cell, 0), pooled_exp + e
            continue
        stat += (counts.get(cell, 0) - e) ** 2 / e
        cells += 1
    if pooled_exp >= 5:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        cells += 1
    impossible = sum(c for cell, c in counts.items() if expected.get(cell, 0.0) == 0.0)
    return stat, cells - 1, impossible


@pytest.mark.parametrize("top_p, draft_vocab", [(1.0, None), (0.9, None), (1.0, [0, 2, 3])])
def test_sampling_draws_exactly_from_the_models_distribution(monkeypatch, top_p, draft_vocab):
    vocab, total = 6, 12000
    model = toy_model(vocab, seed=3, sharpen=6.0)
    torch.manual_seed(4)
    heads = MTPHeads(model, MTPConfig(num_heads=2, init="random")).eval()
    heads.set_draft_vocab(draft_vocab)  # drafts among some tokens only: q is zero on the others
    prompt = torch.tensor([2, 5, 3])
    params = SamplingParams(temperature=1.0, top_p=top_p, max_tokens=3, seed=0)
    sampler = _RowSampler([(0, r) for r in range(total)], params, "cpu")
    expected = exact_distribution(model, prompt, sampler, 3)

    def sample():
        sampler = _RowSampler([(0, r) for r in range(total)], params, "cpu")
        out = mtp_generate(model, heads, prompt.repeat(total, 1), torch.ones(total, 3, dtype=torch.long), 3,
                           eos_ids=[], pad_id=0, sampler=sampler)
        return Counter(tuple(row) for row in out.tolist())

    stat, df, impossible = chi_square(sample(), expected, total)
    assert impossible == 0 and stat < df + 5 * (2 * df) ** 0.5, (stat, df)
    # the test can tell: accepting every draft (the heads' distribution) is far off
    def accept_all(scores, drafts, draft_probs=None, probs=None, generator=None):
        return len(drafts), accept_drafts(scores[-1:], [], None, probs, generator)[1]

    monkeypatch.setattr(speculative, "accept_drafts", accept_all)
    bad, df, _ = chi_square(sample(), expected, total)
    assert bad > 10 * df, (bad, df)


# --------------------------------------------------------------------------- the backend and the CLI


PROMPTS = [f"Question {i}: what comes after {i * 7}?" for i in range(4)]


@pytest.fixture(scope="module")
def mtp_dir(tmp_path_factory, tokenizer):
    """(student dir, dir of the student + heads from `autothink distill --mtp_only`)."""
    model, tok = varied_tiny(tokenizer, autothink=True)
    student = tmp_path_factory.mktemp("student")
    model.save_pretrained(student)
    tok.save_pretrained(student)
    prompts = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    out = student.parent / (student.name + "-mtp")
    argv = ["distill", "--mtp_only", "--student", str(student), "--data", str(prompts), "--output_dir", str(out),
            "--mtp_heads", "2", "--reply_tokens", "32", "--max_steps", "30", "--learning_rate", "1e-2",
            "--per_device_train_batch_size", "4", "--logging_steps", "10", "--save_strategy", "no",
            "--report_to", "none", "--disable_tqdm", "true"]
    assert main(argv) == 0
    return student, out, prompts, argv


def test_mtp_only_trains_the_heads_alone_on_the_models_own_replies(mtp_dir, tmp_path, capsys):
    student, out, prompts, argv = mtp_dir
    before = AutoModelForCausalLM.from_pretrained(student)
    after = load_mtp(out, AutoModelForCausalLM.from_pretrained(out))
    for (name, x), (_, y) in zip(before.named_parameters(), after.base.named_parameters()):
        assert torch.equal(x, y), name  # the model itself is untouched
    assert after.mtp_config.num_heads == 2
    reply_tokens = {t for line in (out / "own_replies.jsonl").read_text().splitlines()
                    for t in json.loads(line)["reply_ids"]}
    assert set(after.heads.draft_ids.tolist()) == reply_tokens  # fewer distinct tokens than --draft_vocab
    replies = [json.loads(line) for line in (out / "own_replies.jsonl").read_text().splitlines()]
    assert [r["id"] for r in replies] == [f"p{i}" for i in range(len(PROMPTS))]
    plain = LocalBackend.from_pretrained(student, device="cpu")
    [[first]] = plain.generate(CONVERSATIONS[:1], SamplingParams(temperature=0.0, max_tokens=32))
    assert replies[0]["text"] == first.text  # the model's own greedy reply
    log = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "mtp_ce" in e]
    assert log[-1]["mtp_ce"] < 0.2 * log[0]["mtp_ce"], log
    # a rerun reuses the replies it has (a resume trains on the same data) and makes those missing
    again = tmp_path / "again"
    again.mkdir()
    (again / "own_replies.jsonl").write_text("".join(line + "\n" for line in
                                                     (out / "own_replies.jsonl").read_text().splitlines()[:-1]))
    capsys.readouterr()
    rerun = argv[:argv.index("--output_dir") + 1] + [str(again)] + argv[argv.index("--output_dir") + 2:]
    assert main(rerun + ["--max_steps", "1"]) == 0
    assert f"{len(PROMPTS)}/{len(PROMPTS)} replies ->" in capsys.readouterr().out
    assert (again / "own_replies.jsonl").read_text() == (out / "own_replies.jsonl").read_text()
    with pytest.raises(ValueError, match="--mtp_only .* takes no teacher"):
        DistillConfig(student=str(student), data=str(prompts), mtp_only=True, teacher=str(student))


CONVERSATIONS = [[{"role": "user", "content": p}] for p in PROMPTS[:3] + ["Something new: 3, 5, 7, 9?", "Hi"]]


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.0, max_tokens=32),
    SamplingParams(temperature=0.0, max_tokens=32, stop=("e", "</answer>")),
    SamplingParams(temperature=0.0, max_tokens=24, n=2, constrained=True),
], ids=["greedy", "stop-strings", "constrained"])
def test_local_backend_drafts_with_saved_heads_and_writes_what_plain_decoding_writes(mtp_dir, params):
    _, out, _, _ = mtp_dir
    fast = LocalBackend.from_pretrained(out, device="cpu", batch_size=4, speculative="mtp")
    plain = LocalBackend.from_pretrained(out, device="cpu", speculative="off")
    assert fast.heads is not None and plain.heads is None
    for thinking in (None, "on"):
        want = plain.generate(CONVERSATIONS, params, thinking=thinking)
        assert fast.generate(CONVERSATIONS, params, thinking=thinking) == want
    assert fast.draft_stats.drafted[0] > 0


def test_heads_from_mtp_only_draft_the_replies_they_were_trained_on(mtp_dir):
    _, out, _, _ = mtp_dir
    fast = LocalBackend.from_pretrained(out, device="cpu", speculative="mtp")
    fast.generate(CONVERSATIONS[:3], SamplingParams(temperature=0.0, max_tokens=32))
    assert min(fast.draft_stats.acceptance()) > 0.6, fast.draft_stats
    assert fast.draft_stats.steps < 0.5 * fast.draft_stats.tokens  # about 3 tokens per forward of the model


def test_streaming_sampling_and_cancel_with_heads(mtp_dir):
    _, out, _, _ = mtp_dir
    fast = LocalBackend.from_pretrained(out, device="cpu", speculative="mtp")
    conversation, greedy = CONVERSATIONS[0], SamplingParams(temperature=0.0, max_tokens=32)
    *pieces, done = fast.stream(conversation, greedy)
    [[want]] = LocalBackend.from_pretrained(out, device="cpu", speculative="off").generate([conversation], greedy)
    assert "".join(pieces) == done.text == want.text and done == want
    sampled = SamplingParams(max_tokens=30, temperature=0.8, top_p=0.9, seed=7, n=3)
    first = fast.generate(CONVERSATIONS[:2], sampled)
    assert fast.generate(CONVERSATIONS[:2], sampled) == first  # a seeded call repeats itself
    assert len({c.text for c in first[0]}) > 1
    [[cut]] = fast.generate([conversation], greedy, cancel=lambda: True)
    assert cut.tokens < want.tokens


def test_speculative_choices_are_checked(mtp_dir, tiny):
    student, out, _, _ = mtp_dir
    with pytest.raises(ValueError, match="has no MTP heads.*--mtp_only"):
        LocalBackend.from_pretrained(student, device="cpu", speculative="mtp")
    with pytest.raises(ValueError, match="speculative must be one of"):
        LocalBackend(*tiny, speculative="yes")
    gemma = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=len(tiny[1]), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=4, layer_types=["sliding_attention", "full_attention"]))
    heads = MTPHeads(gemma, MTPConfig())
    with pytest.raises(ValueError, match="sliding-window"):
        LocalBackend(gemma, tiny[1], heads=heads, speculative="mtp")
    assert LocalBackend(gemma, tiny[1], heads=heads).heads is None  # auto: plain decoding
    with pytest.raises(ValueError, match="local models only"):
        make_backend("http://localhost:1/v1", speculative="mtp")
    auto = LocalBackend.from_pretrained(out, device="cpu")  # auto: heads for one row, plain for batches
    auto.generate(CONVERSATIONS[:2], SamplingParams(temperature=0.0, max_tokens=8))
    assert auto.draft_stats.steps == 0
    auto.generate(CONVERSATIONS[:1], SamplingParams(temperature=0.0, max_tokens=8))
    assert auto.draft_stats.steps > 0


def test_generate_command_with_and_without_heads(mtp_dir, capsys):
    _, out, _, _ = mtp_dir
    texts = []
    for mode in ("mtp", "off"):
        assert main(["generate", PROMPTS[1], "Hi", "--model", str(out), "--max_tokens", "24",
                     "--speculative", mode]) == 0
        texts.append([json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()])
    assert texts[0] == texts[1] and all(texts[0])
