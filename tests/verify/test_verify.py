import threading
import time

import pytest
from math_verify import parse as mv_parse
from math_verify import verify as mv_verify

from autothink.format import render
from autothink.tasks import load_suite
from autothink.verify import Verdict, answer_text, verify, verify_many
from autothink.verify.choice import extract_choice


def math_verify_says(pred_latex: str, gold: str) -> bool:
    """The reference: math-verify called directly on the boxed prediction and the boxed gold."""
    return bool(mv_verify(mv_parse(f"\\boxed{{{gold}}}"), mv_parse(pred_latex)))


MATH_CASES = [
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
    ("\\boxed{(1, 2)}", "(1,2)"),
    ("\\boxed{x^2+2x+1}", "(x+1)^2"),
    ("\\boxed{3}", "4"),
    ("\\boxed{\\pi/2}", "\\frac{\\pi}{2}"),
    ("\\boxed{10\\%}", "0.1"),
    ("\\boxed{[0, 1)}", "[0,1)"),
    ("The answer is \\boxed{17}.", "17"),
    ("\\boxed{17}", "71"),
]


@pytest.mark.parametrize("pred, gold", MATH_CASES)
def test_math_agrees_with_math_verify(pred, gold):
    expected = math_verify_says(pred, gold)
    assert verify("math", pred, gold).passed == expected
    # The same answer inside an AutoThink response, with misleading numbers in the reasoning.
    response = render("on", f"So {pred}", judge="Needs algebra: 99.", think="First try 123, wrong.")
    assert verify("math", response, gold).passed == expected


def test_math_agrees_with_math_verify_on_math500():
    tasks = load_suite("math500", n=60)
    for i, task in enumerate(tasks):
        gold = task.reference
        wrong = tasks[(i + 1) % len(tasks)].reference  # another problem's answer
        for pred in (gold, wrong):
            response = render("off", f"Final: $\\boxed{{{pred}}}$", judge="Short computation.")
            assert verify("math", response, gold).passed == math_verify_says(f"\\boxed{{{pred}}}", gold), (pred, gold)


def test_math_answer_comes_from_answer_segment_not_reasoning():
    response = render("on", "\\boxed{5}", judge="j", think="maybe \\boxed{7}")
    assert verify("math", response, "5").passed
    assert not verify("math", response, "7").passed


def test_math_time_limit_holds_on_a_worker_thread():
    # A power tower that sympy cannot compare in reasonable time.
    pathological = "\\boxed{9^{9^{9^{9}}}}"
    results: list[Verdict] = []
    start = time.monotonic()
    worker = threading.Thread(target=lambda: results.append(verify("math", pathological, "2", timeout_s=1)))
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "verification hung on a worker thread"
    assert results and not results[0].passed
    assert time.monotonic() - start < 60
    # And the same thread can keep verifying afterwards.
    worker = threading.Thread(target=lambda: results.append(verify("math", "\\boxed{2}", "2")))
    worker.start()
    worker.join(timeout=60)
    assert results[-1].passed


def test_verify_many_matches_sequential_and_keeps_order():
    preds = [f"\\boxed{{{i}}}" for i in range(12)] + ["Answer: (C)", "The capital is Paris"]
    refs = [str(i if i % 3 else i + 1) for i in range(12)] + ["C", "Paris"]
    kinds = ["math"] * 12 + ["choice", "general"]
    parallel = verify_many(kinds, preds, refs, workers=2)
    sequential = [verify(k, p, r) for k, p, r in zip(kinds, preds, refs)]
    assert parallel == sequential
    assert [v.passed for v in parallel[:12]] == [i % 3 != 0 for i in range(12)]


def test_verify_many_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        verify_many("math", ["1", "2"], ["1"])


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown verifier kind 'maths'.*math"):
        verify("maths", "1", "1")


@pytest.mark.parametrize(
    "text, letter",
    [
        ("The answer is (B).", "B"),
        ("answer: d", "D"),
        ("C. Because the others are wrong", "C"),
        ("I pick (A) over (B)", "A"),
        ("Option E", "E"),
        ("no idea", None),
    ],
)
def test_extract_choice(text, letter):
    assert extract_choice(text) == letter


def test_choice_verdicts():
    assert verify("choice", render("off", "The answer is (B)."), "B").passed
    assert not verify("choice", render("off", "The answer is (B)."), "(C)").passed
    with pytest.raises(ValueError, match="one option letter"):
        verify("choice", "A", "apple")


def test_general_keyword_overlap():
    v = verify("general", "Paris is the capital and largest city.", "The capital of France is Paris.")
    assert v.score == pytest.approx(2 / 3) and v.passed  # capital, paris found; france missing
    assert not verify("general", "London", "The capital of France is Paris.").passed
    assert verify("general", "photosynthesis uses light", ["photosynthesis", "light"]).score == 1.0


def test_gym_uses_native_scorer():
    task = load_suite("knights_knaves", n=1, difficulty=2)[0]
    gold = task.reference["entry"]["answer"]
    assert verify("gym", render("off", gold), task.reference).passed
    terms = task.reference["entry"]["metadata"]["knight_knave_terms"]  # e.g. angel/devil
    good, bad = terms["a_knight"], terms["a_knave"]
    flipped = gold.replace(good, "\0").replace(bad, good).replace("\0", bad)
    assert flipped != gold
    assert not verify("gym", render("off", flipped), task.reference).passed
    with pytest.raises(ValueError, match="gym reference"):
        verify("gym", "x", {"entry": {}})


def test_gym_numeric_gold_in_a_sentence_scores_the_last_number():
    task = next(t for t in load_suite("arithmetic", n=20, difficulty=1) if t.reference["entry"]["answer"] != "0")
    gold = int(task.reference["entry"]["answer"])
    ref = task.reference
    assert verify("gym", render("off", f"The answer to this question is {gold}."), ref).passed
    assert verify("gym", f"{gold + 1} minus one gives {gold}", ref).passed
    assert not verify("gym", render("off", f"The answer is {gold + 1}."), ref).passed
    assert not verify("gym", render("off", f"{gold} or maybe {gold + 1}"), ref).passed  # the last number counts
    words = load_suite("knights_knaves", n=1)[0].reference  # a non-numeric gold keeps the native scorer alone
    assert verify("gym", "Alice is a knight 3", words).score == 0.0


def test_answer_text_strips_reasoning():
    assert answer_text("<think>scratch 7</think>The result is 5") == "The result is 5"
    assert answer_text(render("off", "42", judge="easy")) == "42"
    assert answer_text("plain 42") == "plain 42"
