"""Multi-ground-truth RFT distances (`algorithms.references`) against hand-computed cases, and hostile calls."""
import json

import pytest

from autothink.algorithms.references import (
    aligned_step,
    call_distance,
    canonical_arguments,
    closest_reference,
    discrepancy,
    drifted,
    patch_distance,
    prefix_distance,
    sequence_distance,
)

A1 = ("cd", {"folder": "docs"})
A2 = ("cd", {"folder": "src"})
B = ("ls", {})
C = ("mv", {"source": "a", "destination": "b"})


def test_call_distance_matches_arguments_per_call():
    assert call_distance(A1, A1) == 0.0
    assert call_distance(A1, B) == 1.0  # another tool
    assert call_distance(A1, A2) == 1.0  # its one argument differs
    assert call_distance(C, ("mv", {"source": "a", "destination": "c"})) == 0.5  # one of two
    assert call_distance(("f", {"a": 1}), ("f", {"a": 1, "b": 2})) == 0.5  # a missing argument is a mismatch
    assert call_distance(("f", {"x": 2.0, "y": {"p": 1, "q": [1.0]}}), ("f", {"y": {"q": [1], "p": 1}, "x": 2})) == 0
    assert call_distance(("f", json.dumps({"a": "x", "b": [1, 2]})), ("f", {"b": [1, 2], "a": "x"})) == 0  # JSON text
    assert call_distance(("f", {"a": [1, 2]}), ("f", {"a": [2, 1]})) == 1.0  # order inside a value matters
    assert call_distance(("f", {}), ("f", "")) == 0.0


def test_sequence_distance_is_a_normalised_edit_distance():
    assert sequence_distance([], []) == 0.0
    assert sequence_distance([], [A1, B]) == 1.0
    assert sequence_distance([A1, B], [A1, B]) == 0.0
    assert sequence_distance([A2, B], [A1, B]) == 0.5  # one substitution of cost 1, over 2
    assert sequence_distance([A1, C, B], [A1, B]) == pytest.approx(1 / 3)  # one insertion, over 3
    half = ("mv", {"source": "a", "destination": "z"})
    assert sequence_distance([half], [C]) == 0.5  # substitution 0.5 beats deletion + insertion (2)
    assert sequence_distance([B, A1], [A1, B]) == 1.0  # a swap: two edits of cost 1, over 2


def test_prefix_distance_aligns_to_the_best_prefix():
    assert prefix_distance([], [A1, B]) == 0.0
    assert prefix_distance([A1], [A1, B, C]) == 0.0  # on track: the steps not reached are no penalty
    assert prefix_distance([A1, C], [A1, B, C]) == 0.5  # ED([A1, C], [A1, B]) = ED([A1, C], [A1]) = 1, over 2
    assert prefix_distance([B], [A1, C]) == 1.0
    assert prefix_distance([A1, B, C, C], [A1, B]) == 0.5  # two calls beyond the reference's end


def test_patch_distance_and_the_blend():
    assert patch_distance("abc", "abc") == 0.0
    assert patch_distance("abc", "abd") == pytest.approx(1 / 3)  # ratio 2·2/6
    assert discrepancy([A1], [A1], "abc", "abd", patch_weight=0.5) == pytest.approx(1 / 6)
    assert discrepancy([A2], [A1], "abc", "abc", patch_weight=0.5) == 0.5
    assert discrepancy([A2], [A1], None, "abc", patch_weight=0.5) == 1.0  # no patch on one side: calls alone
    assert discrepancy([A2], [A1], "x", "abc", patch_weight=0.0) == 1.0


def test_closest_reference_and_drift():
    references = [{"calls": [A1, B]}, {"calls": [A2, B, C]}, {"calls": [C]}]
    assert closest_reference([A2, B], references) == (pytest.approx(1 / 3), 1)
    assert closest_reference([C], references) == (0.0, 2)
    assert closest_reference([], references) == (1.0, 0)  # doing nothing is as far as can be
    with pytest.raises(ValueError, match="no reference"):
        closest_reference([A1], [])
    assert not drifted([A2], references, tau=0.5)  # on track for the second reference
    assert drifted([B], references, tau=0.5)
    assert not drifted([A1, C], [{"calls": [A1, B]}], tau=0.5)  # exactly τ is not beyond it
    assert drifted([A1, C], [{"calls": [A1, B]}], tau=0.49)
    assert not drifted([B], [], tau=0.0)  # no reference: nothing to drift from


def test_aligned_step_is_where_the_closest_reference_continues():
    references = [{"calls": [A1, B]}, {"calls": [A2, B, C]}]
    assert aligned_step([], references) == (0, 0)  # nothing done: start the first reference from its start
    assert aligned_step([A2], references) == (1, 1)
    assert aligned_step([A2, B], references) == (1, 2)  # continues with C
    assert aligned_step([A1, B, C], references) == (0, 2)  # past the end of the first: nothing left to splice
    with pytest.raises(ValueError, match="no reference"):
        aligned_step([A1], [])


def test_hostile_arguments_do_not_break_the_distances():
    deep = "[" * 5000 + "]" * 5000
    assert canonical_arguments('{"a": ' + deep + "}") == {"": '{"a": ' + deep + "}"}  # too deep: compared as text
    assert canonical_arguments("not json") == {"": "not json"}
    assert canonical_arguments('["a", "list"]') == {"": '["a", "list"]'}
    assert call_distance(("f", "not json"), ("f", "not json")) == 0.0
    assert call_distance(("f", "not json"), ("f", {"a": 1})) == 1.0
    assert call_distance(("f", {"a": float("nan")}), ("f", {"a": 1})) == 1.0
    many = [("x", {"i": i}) for i in range(300)]
    assert sequence_distance(many, [A1]) == 1.0
