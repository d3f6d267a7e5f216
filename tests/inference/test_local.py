"""LocalBackend on a tiny random Llama with the real SmolLM2 tokenizer."""

import pytest
import torch

from autothink.format import SPECIAL_TOKENS, forced_prefix
from autothink.inference.backend import Backend, Completion, SamplingParams
from autothink.inference.local import LocalBackend
from autothink.inference.spec import make_backend
from helpers import varied_tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONVS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2? Answer with care."}],
    [{"role": "user", "content": "Tell me a story about a dragon who learned to count to ten."}],
]


@pytest.fixture(scope="module")
def tiny_varied(tokenizer):
    return varied_tiny(tokenizer)


@pytest.fixture(scope="module")
def backend(tiny_varied):
    model, tok = tiny_varied
    return LocalBackend(model, tok, batch_size=16, name="tiny")


def reference_greedy(model, tok, conv, max_new_tokens, thinking=None):
    """Plain `model.generate` on one unpadded prompt."""
    extra = {} if thinking is None else {"thinking": thinking}
    text = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False, **extra)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, ids.input_ids.shape[1]:].tolist()
    return tok.decode(new, skip_special_tokens=True), new, ids.input_ids.shape[1]


def test_shapes_order_and_fields(backend):
    params = SamplingParams(n=3, temperature=1.0, max_tokens=6, seed=0)
    out = backend.generate(CONVS, params)
    assert isinstance(backend, Backend) and backend.name == "tiny"
    assert len(out) == len(CONVS) and all(len(group) == 3 for group in out)
    assert all(isinstance(c, Completion) and isinstance(c.text, str) for group in out for c in group)
    # Order: each conversation's greedy output equals the output when it is generated alone.
    greedy = SamplingParams(n=2, temperature=0, max_tokens=8)
    together = backend.generate(CONVS, greedy)
    alone = [backend.generate([c], greedy)[0] for c in CONVS]
    assert together == alone
    assert len({group[0].text for group in together}) == len(CONVS)  # distinct, so order is checkable
    tok = backend.tokenizer
    for conv, group in zip(CONVS, together):
        prompt = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        assert group[0].prompt_tokens == len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert backend.generate([], greedy) == []


def test_seed_makes_sampling_reproducible_and_leaves_global_rng_alone(backend):
    params = SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=123)
    state = torch.get_rng_state()
    a = backend.generate(CONVS, params)
    assert torch.equal(torch.get_rng_state(), state)
    b = backend.generate(CONVS, params)
    c = backend.generate(CONVS, SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=124))
    assert a == b
    assert a != c
    assert len({x.text for x in a[0]}) > 1  # the n samples differ


def test_greedy_equals_model_generate(tiny_varied, backend):
    model, tok = tiny_varied
    out = backend.generate(CONVS, SamplingParams(temperature=0, max_tokens=16))
    for conv, (got,) in zip(CONVS, out):
        text, new, prompt_len = reference_greedy(model, tok, conv, 16)
        assert got.text == text and text.strip()
        assert got.tokens == len(new) == 16 and got.prompt_tokens == prompt_len


def test_tiny_top_p_and_temperature_are_greedy(backend):
    greedy = backend.generate(CONVS, SamplingParams(temperature=0, max_tokens=10))
    nucleus = backend.generate(CONVS, SamplingParams(n=2, temperature=1.0, top_p=1e-6, max_tokens=10, seed=5))
    assert all(c.text == g[0].text for g, group in zip(greedy, nucleus) for c in group)
    # ...while plain sampling with the same seed does not reproduce greedy decoding.
    sampled = backend.generate(CONVS, SamplingParams(n=2, temperature=1.0, max_tokens=10, seed=5))
    assert any(c.text != g[0].text for g, group in zip(greedy, sampled) for c in group)


def test_stop_strings_truncate_and_stop_early(tiny_varied, backend):
    model, tok = tiny_varied
    conv = CONVS[1]
    full, new, _ = reference_greedy(model, tok, conv, 24)
    # The stop string is token k's text; it must not occur before token k.
    k = next(
        k for k in range(3, 20)
        if (s := tok.decode(new[k]).strip()) and len(s) >= 3 and s not in tok.decode(new[:k]) and full.count(s) == 1
    )
    stop = tok.decode(new[k]).strip()
    (got,), = backend.generate([conv], SamplingParams(temperature=0, max_tokens=24, stop=(stop,)))
    assert got.text == full[: full.index(stop)]
    assert got.finish_reason == "stop"
    assert got.tokens == k + 1  # generation halted at the token completing the stop string
    # Several stop strings: the earliest occurrence wins, whatever the order given.
    early = tok.decode(new[1]).strip() or tok.decode(new[2]).strip()
    (got2,), = backend.generate([conv], SamplingParams(temperature=0, max_tokens=24, stop=(stop, early)))
    assert got2.text == full[: full.index(early)] and got2.finish_reason == "stop"
    # A stop string that never appears changes nothing.
    (got3,), = backend.generate([conv], SamplingParams(temperature=0, max_tokens=24, stop=("\x00never\x00",)))
    assert got3.text == full and got3.finish_reason == "length"


def test_max_tokens_gives_length(backend):
    for params in (SamplingParams(n=3, temperature=0.8, max_tokens=7, seed=1),
                   SamplingParams(temperature=0, max_tokens=5)):
        for group in backend.generate(CONVS, params):
            for c in group:
                assert c.finish_reason == "length" and c.tokens == params.max_tokens
                assert len(backend.tokenizer(c.text, add_special_tokens=False)["input_ids"]) > 0


def test_eos_gives_stop_and_is_not_in_text(tokenizer):
    model, tok = varied_tiny(tokenizer)
    with torch.no_grad():  # an output bias that makes EOS the first token
        head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[tok.eos_token_id] = 1e4
    model.lm_head = head
    backend = LocalBackend(model, tok)
    for params in (SamplingParams(temperature=0, max_tokens=9), SamplingParams(n=2, max_tokens=9, seed=0)):
        for group in backend.generate(CONVS, params):
            assert [(c.text, c.finish_reason, c.tokens) for c in group] == [("", "stop", 1)] * params.n


def test_thinking_off_forces_the_prefix(tokenizer):
    model, tok = varied_tiny(tokenizer, autothink=True)
    backend = LocalBackend(model, tok)
    conv = CONVS[0]
    prompt = backend.render(conv, "off")
    assert prompt.endswith(forced_prefix("off")) and not backend.render(conv, "auto").endswith(forced_prefix("off"))
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<think_off>") in ids  # one atomic token
    greedy = SamplingParams(temperature=0, max_tokens=12)
    (off,), (auto,) = backend.generate([conv], greedy, thinking="off")[0], backend.generate([conv], greedy,
                                                                                            thinking="auto")[0]
    assert off.prompt_tokens - auto.prompt_tokens == 4  # <judge></judge><think_off><answer>
    assert off.text == reference_greedy(model, tok, conv, 12, thinking="off")[0]
    assert off.text != auto.text
    (on,) = backend.generate([conv], greedy, thinking="on")[0]
    assert on.prompt_tokens - auto.prompt_tokens == 4  # <judge></judge><think_on><think>
    with pytest.raises(ValueError, match="thinking"):
        backend.generate([conv], greedy, thinking="maybe")


def test_autothink_tags_survive_decoding(tokenizer):
    model, tok = varied_tiny(tokenizer, autothink=True)
    tag_ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    with torch.no_grad():  # make the head emit the AutoThink tags in turn, whatever the input
        head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tag_ids[3]] = 5.0  # <think_off>
    model.lm_head = head
    (c,), = LocalBackend(model, tok).generate([CONVS[0]], SamplingParams(temperature=0, max_tokens=3))
    assert c.text == "<think_off>" * 3


def test_thinking_needs_the_autothink_template(backend):
    with pytest.raises(ValueError, match="add_autothink_tokens"):
        backend.generate([CONVS[0]], SamplingParams(temperature=0, max_tokens=2), thinking="off")
    # "auto" and None need nothing.
    assert len(backend.generate([CONVS[0]], SamplingParams(temperature=0, max_tokens=2), thinking="auto")[0]) == 1


def test_small_batches_equal_one_big_batch(tiny_varied):
    model, tok = tiny_varied
    convs = CONVS + [[{"role": "user", "content": "x" * i}] for i in (1, 7, 30)]
    params = SamplingParams(n=2, temperature=0, max_tokens=8, stop=("zzzz",))
    big = LocalBackend(model, tok, batch_size=64).generate(convs, params)
    small = LocalBackend(model, tok, batch_size=3).generate(convs, params)
    assert big == small
    one = LocalBackend(model, tok, batch_size=1).generate(convs, SamplingParams(temperature=0, max_tokens=8))
    assert [g[:1] for g in big] == one
    assert len({g[0].text for g in big}) >= 4  # the prompts get different outputs


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"n": 0}, "n"), ({"n": 1.5}, "n"), ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.1}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"), ({"stop": ("",)}, "stop"), ({"stop": (1,)}, "stop"),
        ({"seed": "1"}, "seed"),
    ],
)
def test_sampling_params_validation(kwargs, field):
    with pytest.raises(ValueError, match=f"SamplingParams.{field}"):
        SamplingParams(**kwargs)


def test_sampling_params_accepts_a_single_stop_string():
    assert SamplingParams(stop="\n").stop == ("\n",)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")


def test_generate_rejects_bad_arguments(backend):
    with pytest.raises(TypeError, match="SamplingParams"):
        backend.generate(CONVS, {"n": 1})
    with pytest.raises(ValueError, match="batch_size"):
        LocalBackend(backend.model, backend.tokenizer, batch_size=0)


def test_make_backend(tiny_varied, tmp_path):
    model, tok = tiny_varied
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    local = make_backend(f"local:{tmp_path / 'm'}", device="cpu", batch_size=4)
    assert isinstance(local, LocalBackend) and local.batch_size == 4 and local.name == "m"
    greedy = SamplingParams(temperature=0, max_tokens=6)
    assert local.generate(CONVS, greedy) == LocalBackend(model, tok).generate(CONVS, greedy)
    assert isinstance(make_backend(str(tmp_path / "m"), device="cpu"), LocalBackend)  # bare directory

    from autothink.inference.http import HTTPBackend

    http = make_backend("http://127.0.0.1:9/v1#some-model", max_retries=0)
    assert isinstance(http, HTTPBackend) and http.name == "some-model" and http.base_url == "http://127.0.0.1:9/v1"
    assert make_backend("https://example.invalid", model="m").base_url == "https://example.invalid/v1"
    for bad in ("", "local:", "ftp://host/x", "local:/no/such/dir", "no-such-model"):
        with pytest.raises(ValueError, match="backend spec|model"):
            make_backend(bad)


def test_concurrent_calls_are_coalesced_and_give_each_call_its_own_results(tiny_varied, monkeypatch):
    """Threads calling at once share model.generate batches; a seeded call's completions do not depend on
    what it was batched with (each row has its own generator), so they equal the call made alone."""
    import threading

    model, tok = tiny_varied
    backend = LocalBackend(model, tok, batch_size=64)
    calls = [([c], SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=s)) for s, c in enumerate(CONVS * 3)]
    alone = [backend.generate(convs, params) for convs, params in calls]
    generate, batches = model.generate, []
    gate = threading.Event()

    def counting(*args, **kwargs):
        batches.append(kwargs["input_ids"].shape[0])
        gate.wait(10)  # the first batch holds until every thread has queued its call
        return generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counting)
    together = [None] * len(calls)

    def call(i):
        together[i] = backend.generate(*calls[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    while len(backend._pending) + sum(batches) // 2 < len(calls):
        threading.Event().wait(0.01)
    gate.set()
    for t in threads:
        t.join(30)
    assert together == alone
    assert len(batches) == 2 and sum(batches) == 2 * len(calls)  # the first call alone, then all the rest at once


def test_an_error_in_a_coalesced_batch_reaches_every_caller(tiny_varied, monkeypatch):
    import threading

    model, tok = tiny_varied
    backend = LocalBackend(model, tok)
    gate, batches = threading.Event(), []

    def broken(*args, **kwargs):
        batches.append(kwargs["input_ids"].shape[0])
        gate.wait(10)
        raise RuntimeError("device lost")

    monkeypatch.setattr(model, "generate", broken)
    errors = []

    def call(conv):
        try:
            backend.generate([conv], SamplingParams(max_tokens=4))
        except RuntimeError as err:
            errors.append(str(err))

    threads = [threading.Thread(target=call, args=(c,)) for c in CONVS]
    for t in threads:
        t.start()
    while len(backend._pending) < len(CONVS) - 1:
        threading.Event().wait(0.01)
    gate.set()
    for t in threads:
        t.join(30)
    assert errors == ["device lost"] * len(CONVS) and batches == [1, len(CONVS) - 1]
    monkeypatch.undo()  # the backend keeps working
    assert backend.generate(CONVS[:1], SamplingParams(temperature=0, max_tokens=3))[0][0].tokens == 3
