"""Format-constrained decoding: the grammar's states, the tokens it bans (tags spelled in pieces
included), an adversarial model kept in the grammar, and freedom inside segments untouched."""
import pytest
import torch

from autothink.format import SPECIAL_TOKENS, forced_prefix, parse
from autothink.inference.backend import SamplingParams
from autothink.inference.constrained import (
    BROKEN,
    FormatGrammar,
    FormatLogitsProcessor,
    State,
    state_after,
)
from autothink.inference.http import HTTPBackend
from autothink.inference.local import LocalBackend
from autothink.inference.respond import ControlOptions
from autothink.serve import create_app
from helpers import varied_tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tokenizer):
    model, tok = varied_tiny(tokenizer, autothink=True)
    return LocalBackend(model, tok, name="tiny")


@pytest.mark.parametrize("text, state", [
    ("", State("start")),
    ("<judge>easy", State("judge")),
    ("<judge>easy <thi", State("judge", "<thi")),
    ("<judge>x</judge>", State("judged")),
    ("<judge>x</judge>\n<think_on>", State("on")),  # whitespace between segments is well formed
    (forced_prefix("on"), State("think")),
    (forced_prefix("off"), State("answer")),
    ("<judge>x</judge><think_on><think>a</think><answer>4 </", State("answer", "</")),
    ("<judge>x</judge><think_off><answer>4</answer>", State("end")),
    ("<judge>x</judge><think_off><think>", State(BROKEN)),
    ("Sure! <judge>", State(BROKEN)),
])
def test_state_after(text, state):
    assert state_after(text) == state


def test_banned_and_allowed_tokens(tiny):
    tok = tiny.tokenizer
    grammar = FormatGrammar(tok, tiny.eos_ids)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    assert grammar.allowed(State("start")) == [ids["<judge>"]]
    assert sorted(grammar.allowed(State("judged"))) == sorted([ids["<think_on>"], ids["<think_off>"]])
    assert grammar.allowed(State("end")) == tiny.eos_ids and grammar.allowed(State("judge")) is None
    banned = set(grammar.banned(State("judge")).tolist())
    assert ids["</judge>"] not in banned and set(tiny.eos_ids) <= banned
    assert set(ids.values()) - {ids["</judge>"]} <= banned
    # Spelled in pieces: after "<ans", any token starting "wer>" would complete "<answer>".
    texts = grammar.texts
    finishing = [i for i, t in enumerate(texts) if t.startswith(">") and i not in ids.values()]
    assert finishing and set(finishing) <= set(grammar.banned(State("answer", "</answer")).tolist())
    plain = set(grammar.banned(State("answer")).tolist())
    assert not plain & set(finishing)  # a lone ">" is text when no tag is pending
    after_lt = set(grammar.banned(State("answer", "<")).tolist())
    answer_end = [i for i, t in enumerate(texts) if t.startswith("/answer>")]
    assert set(answer_end) <= after_lt


def _decode_adversarially(grammar, tok, start: State, steps: int, seed: int) -> str:
    """Greedy decoding of a "model" whose favourite tokens are tags, EOS and tag pieces, in random order,
    through the processor; the closer of each segment becomes its favourite after a while."""
    g = torch.Generator().manual_seed(seed)
    tempting = list(grammar.tag_of) + grammar.eos_ids + [
        i for i, t in enumerate(grammar.texts) if t and (t in "<think_on>" or t in "</answer>")][:200]
    processor = FormatLogitsProcessor(grammar, [start])
    ids, text = [0], ""
    for step in range(steps):
        scores = torch.randn(1, len(tok), generator=g)
        scores[0, tempting] += 10 + torch.rand(len(tempting), generator=g) * 5
        state = processor.states[0]
        if step > steps // 2 and state.where in ("judge", "think", "answer"):
            closer = {"judge": "</judge>", "think": "</think>", "answer": "</answer>"}[state.where]
            scores[0, grammar.ids_of[closer]] += 100
        choice = int(processor(torch.tensor([ids]), scores.clone()).argmax())
        ids.append(choice)
        if choice in grammar.eos_ids:
            break
        text += grammar.texts[choice] if choice not in grammar.tag_of else grammar.tag_of[choice]
        assert state_after(text).where != BROKEN, text
    return text


@pytest.mark.parametrize("seed", range(4))
def test_an_adversarial_model_stays_in_the_grammar(tiny, seed):
    grammar = tiny.grammar()
    text = _decode_adversarially(grammar, tiny.tokenizer, State("start"), 80, seed)
    assert parse(text).well_formed, parse(text).errors


def test_constrained_greedy_equals_free_greedy_until_the_grammar_intervenes(tiny):
    """Inside a segment the model's choice stands: the outputs agree up to the first token the grammar bans."""
    convs = [[{"role": "user", "content": "Tell me about dragons."}], [{"role": "user", "content": "2+2?"}]]
    grammar = tiny.grammar()
    for thinking in ("on", "off"):
        free = tiny.generate(convs, SamplingParams(temperature=0, max_tokens=24), thinking=thinking)
        held = tiny.generate(convs, SamplingParams(temperature=0, max_tokens=24, constrained=True),
                             thinking=thinking)
        for (f,), (h,) in zip(free, held):
            ids = tiny.tokenizer(f.text, add_special_tokens=False).input_ids
            state, agree = state_after(forced_prefix(thinking)), 0
            for token in ids:
                if token in grammar.banned(state).tolist():
                    break
                state, agree = grammar.advance(state, token), agree + 1
            prefix = tiny.tokenizer.decode(ids[:agree])
            assert h.text.startswith(prefix) and state_after(forced_prefix(thinking) + h.text).where != BROKEN
            if agree == len(ids):
                assert h.text == f.text


def test_sampling_with_the_grammar_is_seeded_and_stays_in_it(tiny):
    params = SamplingParams(n=3, temperature=1.0, max_tokens=16, seed=3, constrained=True)
    conv = [[{"role": "user", "content": "Hi"}]]
    first = tiny.generate(conv, params)
    assert first == tiny.generate(conv, params)
    for c in first[0]:
        assert state_after(c.text).where != BROKEN


def test_backends_that_cannot_constrain_refuse(tiny):
    http = HTTPBackend("http://127.0.0.1:9/v1", model="x", max_retries=0)
    with pytest.raises(ValueError, match="cannot constrain decoding"):
        http.generate([[{"role": "user", "content": "hi"}]], SamplingParams(constrained=True))
    with pytest.raises(ValueError, match="--constrained needs a local model"):
        create_app(http, controls=ControlOptions(constrained=True))
    with pytest.raises(ValueError, match="constrained must be a boolean"):
        SamplingParams(constrained="yes")


def test_serve_constrained_keeps_every_reply_in_the_grammar(tiny):
    import openai

    from autothink.serve import running_server

    with running_server(create_app(tiny, controls=ControlOptions(constrained=True, forced_judge="empty"))) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        for extra in ({}, {"thinking": "on"}, {"thinking": "off"}):
            r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=24,
                                          temperature=0, extra_body=extra)
            thinking = extra.get("thinking", "auto")
            raw = r.choices[0].raw_content
            assert state_after(forced_prefix(thinking) + raw).where != BROKEN, raw
    # Unconstrained, this random model's reply is out of the grammar from its first token.
    free = tiny.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(temperature=0, max_tokens=24))[0][0]
    assert state_after(free.text).where == BROKEN
