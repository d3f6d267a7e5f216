import json

import pytest

from autothink.cli import main
from autothink.records.jsonl import RecordError
from autothink.tasks import SUITES, Task, load_suite, load_tasks, save_tasks
from autothink.verify import verify

GOOD = {"id": "q1", "prompt": "What is 2+2?", "domain": "math", "verifier": "math", "reference": "4", "difficulty": 1}


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("suite", ["arithmetic", "gsm_symbolic", "propositional_logic", "knights_knaves"])
def test_graded_gym_suites(suite):
    tasks = load_suite(suite, n=10, seed=3)
    assert [t.difficulty for t in tasks] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert len({t.id for t in tasks}) == 10
    assert all(t.verifier == "gym" and t.reference["dataset"] for t in tasks)
    assert [t.id for t in load_suite(suite, n=10, seed=3)] == [t.id for t in tasks]  # reproducible
    assert load_suite(suite, n=10, seed=3)[0].prompt == tasks[0].prompt
    assert load_suite(suite, n=10, seed=4)[0].prompt != tasks[0].prompt
    assert {t.difficulty for t in load_suite(suite, n=3, difficulty=4)} == {4}


def test_arithmetic_gold_answers_are_right():
    for task in load_suite("arithmetic", n=100):
        entry = task.reference["entry"]
        assert eval(entry["metadata"]["expression"]) == pytest.approx(float(entry["answer"])), task.id


def test_arithmetic_tiers_get_harder():
    def mean_length(tier):
        return sum(len(t.prompt) for t in load_suite("arithmetic", n=30, difficulty=tier)) / 30

    assert mean_length(1) < mean_length(3) < mean_length(5)


def test_fixed_suites_sizes_and_gold_answers_verify():
    assert len(load_suite("math500")) == 311
    assert len(load_suite("aime24")) == 30
    assert len(load_suite("aime25")) == 15
    assert len(load_suite("humaneval")) == 164
    for task in load_suite("aime24") + load_suite("aime25"):
        assert verify("math", f"\\boxed{{{task.reference}}}", task.reference).passed, task.id
    with pytest.raises(ValueError, match="no difficulty tiers"):
        load_suite("aime24", difficulty=2)


def test_jsonl_round_trip(tmp_path):
    tasks = load_suite("arithmetic", n=5) + load_suite("math500", n=3) + load_suite("humaneval", n=2)
    path = tmp_path / "tasks.jsonl"
    assert save_tasks(tasks, path) == 10
    assert load_tasks(path) == tasks
    assert load_suite(str(path), difficulty=1) == [t for t in tasks if t.difficulty == 1]


def test_prompt_shorthand_becomes_messages(tmp_path):
    (task,) = load_tasks(write(tmp_path / "t.jsonl", [json.dumps(GOOD)]))
    assert task.messages == [{"role": "user", "content": "What is 2+2?"}]
    assert task.prompt == "What is 2+2?"


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": "q2", "prompt": "x"', r"t\.jsonl:2: invalid JSON"),
        ("[1, 2]", r"t\.jsonl:2: expected a JSON object, got list"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "reference"} | {"id": "q2"}),
         r"t\.jsonl:2: missing field 'reference'"),
        (json.dumps({"id": "q2", "domain": "math"}), r"t\.jsonl:2: missing field 'messages' \(or 'prompt'\)"),
        (json.dumps(GOOD | {"id": "q2", "verifier": "maths"}), r"t\.jsonl:2: field 'verifier': unknown kind 'maths'"),
        (json.dumps(GOOD | {"id": "q2", "difficulty": 9}),
         r"t\.jsonl:2: field 'difficulty' must be an integer from 1 to 5"),
        (json.dumps(GOOD | {"id": "q2", "colour": "red"}), r"t\.jsonl:2: unknown field\(s\) \['colour'\]"),
        (json.dumps(GOOD), r"t\.jsonl:2: duplicate id 'q1' \(first on line 1\)"),
        (json.dumps(GOOD | {"id": "q2", "prompt": ""}), r"t\.jsonl:2: field 'prompt' must be a non-empty string"),
        (
            json.dumps({k: v for k, v in GOOD.items() if k != "prompt"} | {"id": "q2", "messages": [{"role": "bot"}]}),
            r"t\.jsonl:2: field 'messages': message 0 must be an object with a role",
        ),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, line, message):
    path = write(tmp_path / "t.jsonl", [json.dumps(GOOD), line])
    with pytest.raises(RecordError, match=message) as err:
        load_tasks(path)
    assert err.value.line == 2


def test_unknown_suite_lists_known_ones():
    with pytest.raises(ValueError, match="unknown task suite 'gsm8k'.*arithmetic"):
        load_suite("gsm8k")


def test_cli_tasks_list_and_export(tmp_path, capsys):
    assert main(["tasks", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in SUITES)
    target = tmp_path / "gsm.jsonl"
    assert main(["tasks", "export", "gsm_symbolic", "--n", "6", "--difficulty", "2", "-o", str(target)]) == 0
    tasks = load_tasks(target)
    assert len(tasks) == 6 and {t.difficulty for t in tasks} == {2}
    bad = write(tmp_path / "bad.jsonl", [json.dumps(GOOD), "{oops"])
    assert main(["tasks", "export", str(bad), "-o", str(tmp_path / "x.jsonl")]) == 2
    assert "bad.jsonl:2: invalid JSON" in capsys.readouterr().err


def test_query_without_reference_is_a_valid_task(tmp_path):
    (task,) = load_tasks(write(tmp_path / "q.jsonl", [json.dumps({"id": "q", "prompt": "Write a haiku."})]))
    assert (task.verifier, task.reference, task.domain, task.difficulty) == (None, None, None, None)


def test_task_needs_a_user_message():
    record = {k: v for k, v in GOOD.items() if k != "prompt"} | {"messages": [{"role": "system", "content": "hi"}]}
    with pytest.raises(ValueError, match="has no user message"):
        Task.from_dict(record)


def test_directives_suite_asks_each_question_four_ways():
    from autothink.format import DIRECTIVES, detect_directive
    from autothink.tasks.suites import DIRECTIVE_VARIANTS, HELD_OUT_DIRECTIVES

    tasks = load_suite("directives", n=16)
    assert len(tasks) == 16 and {t.difficulty for t in tasks} == {1, 4}
    by_base = {}
    for t in tasks:
        by_base.setdefault(t.metadata["base"], []).append(t)
    for group in by_base.values():
        assert [t.metadata["variant"] for t in group] == list(DIRECTIVE_VARIANTS)
        assert [t.metadata["directive"] for t in group] == [None, None, "off", "on"]
        plain = group[0].prompt
        assert all(plain in t.prompt and t.reference == group[0].reference for t in group)
    # Held out: no training phrase; and the regex both misses paraphrases and fires on near-misses,
    # which is why the model, not the regex, decides by default.
    training = {p.lower() for phrases in DIRECTIVES.values() for p in phrases}
    assert not training & {p.lower() for phrases in HELD_OUT_DIRECTIVES.values() for p in phrases}
    missed = [t for t in tasks if t.metadata["directive"] and detect_directive(t.prompt) != t.metadata["directive"]]
    fired = [t for t in tasks if t.metadata["variant"] == "near_miss" and detect_directive(t.prompt)]
    assert missed and fired
