import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autothink.format import (
    DIRECTIVES,
    SPECIAL_TOKENS,
    add_autothink_tokens,
    detect_directive,
    forced_prefix,
    parse,
    render,
)
from helpers import varied_tiny

# Text that holds no AutoThink tag, though it may hold angle brackets and tag-like words.
plain = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60).filter(
    lambda s: not any(t in s for t in SPECIAL_TOKENS)
)


@given(mode=st.sampled_from(["on", "off"]), judge=plain, think=plain, answer=plain)
def test_render_parse_round_trip(mode, judge, think, answer):
    think = think if mode == "on" else ""
    parsed = parse(render(mode, answer, judge=judge, think=think))
    assert parsed.well_formed, parsed.errors
    assert (parsed.mode, parsed.judge, parsed.answer) == (mode, judge, answer)
    assert parsed.think == (think if mode == "on" else None)


tagged_text = st.lists(st.one_of(st.sampled_from(SPECIAL_TOKENS), st.text(max_size=8)), max_size=14).map("".join)


@settings(max_examples=500)
@given(text=st.one_of(st.text(), tagged_text))
def test_parse_never_raises_and_flags_malformed(text):
    parsed = parse(text)
    assert parsed.well_formed == (not parsed.errors)
    assert parsed.mode in ("on", "off", None)
    if parsed.well_formed:  # a well-formed parse re-renders to the same text, modulo whitespace
        again = render(parsed.mode, parsed.answer, judge=parsed.judge, think=parsed.think or "")
        assert "".join(again.split()) == "".join(text.split())


def test_parse_non_string_input():
    assert parse(None).errors == ["expected a string, got NoneType"]


@pytest.mark.parametrize(
    "text, error",
    [
        ("<judge>j</judge><think_on><answer>a</answer>", "think-on response has no <think> segment"),
        ("<judge>j</judge><think_off><think>t</think><answer>a</answer>", "think-off response has a <think> segment"),
        ("<judge>j</judge><answer>a</answer>", "missing mode token (<think_on> or <think_off>)"),
        ("<judge>j</judge><think_off><answer>a", "unterminated <answer>"),
        ("<judge>j</judge><think_off><think_on><answer>a</answer>", "2 mode tokens; the first (<think_off>) was used"),
        ("pre<judge>j</judge><think_off><answer>a</answer>", "text outside segments: 'pre'"),
        ("<judge>j</judge><think_off><answer>a</answer>post", "text outside segments: 'post'"),
        ("<judge>j</judge>x<think_off><answer>a</answer>", "text outside segments: 'x'"),
        ("<think_off><answer>a</answer><judge>j</judge>",
         "tags out of order: <think_off><answer></answer><judge></judge>"),
    ],
)
def test_parse_reports_what_is_wrong(text, error):
    parsed = parse(text)
    assert not parsed.well_formed
    assert error in parsed.errors


def test_lenient_fields_from_broken_output():
    parsed = parse("<judge>hard one<think_on><think>x = 2</think><answer>2")
    assert (parsed.judge, parsed.mode, parsed.think, parsed.answer) == ("hard one", "on", "x = 2", "2")
    assert "unterminated <judge>" in parsed.errors


def test_render_rejects_bad_input():
    with pytest.raises(ValueError, match="mode"):
        render("maybe", "a")
    with pytest.raises(ValueError, match="think-off"):
        render("off", "a", think="reasoning")
    with pytest.raises(ValueError, match="answer"):
        render("on", "a</answer>")


@pytest.mark.parametrize(
    "prompt, mode",
    [
        ("What is 2+2? DO NOT THINK", "off"),
        ("don't think, just tell me the capital of France", "off"),
        ("Answer directly: 3*7?", "off"),
        ("Solve x^2=4. /no_think", "off"),
        ("Prove it. Think deeper.", "on"),
        ("Please think step-by-step about this puzzle", "on"),
        ("reason carefully before you answer", "on"),
        ("/think what is 17*23", "on"),
        ("I think the answer is 4, am I right?", None),
        ("What do you think about cats?", None),
        ("DO NOT THINK. Actually, think carefully.", "on"),
    ],
)
def test_detect_directive(prompt, mode):
    assert detect_directive(prompt) == mode


def test_every_listed_directive_is_detected():
    for mode, phrases in DIRECTIVES.items():
        for phrase in phrases:
            assert detect_directive(f"What is 12*12? {phrase}") == mode, phrase


def test_new_tags_start_as_the_mean_of_their_pieces_in_both_embedding_tables(tokenizer):
    model, tok = varied_tiny(tokenizer)  # untied head: the input and output tables differ
    pieces = {t: tok(t, add_special_tokens=False)["input_ids"] for t in SPECIAL_TOKENS}
    add_autothink_tokens(tok, model)
    for table in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        for token, ids in pieces.items():
            assert len(ids) > 1
            torch.testing.assert_close(table[tok.convert_tokens_to_ids(token)], table[ids].mean(0))


def test_add_tokens_resizes_model_and_template_forces_modes(tiny):
    import copy

    model, tokenizer = copy.deepcopy(tiny[0]), copy.deepcopy(tiny[1])
    before = len(tokenizer)
    assert add_autothink_tokens(tokenizer, model) == len(SPECIAL_TOKENS)
    assert add_autothink_tokens(tokenizer, model) == 0  # idempotent
    assert len(tokenizer) == before + len(SPECIAL_TOKENS)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    for token in SPECIAL_TOKENS:  # each tag is one atomic token that survives decoding
        ids = tokenizer(f"a{token}b", add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_tokens_to_ids(token) in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == f"a{token}b"
    messages = [{"role": "user", "content": "What is 2+2?"}]
    auto = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, thinking="auto")
    plain_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert auto == plain_prompt
    for mode in ("on", "off"):
        forced = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, thinking=mode)
        assert forced == plain_prompt + forced_prefix(mode)
    with pytest.raises(Exception, match="thinking must be"):
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, thinking="maybe")
