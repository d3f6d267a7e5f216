"""Reference trajectories of agent tasks: from the ground truth (they score 1 when replayed), and from
collected runs (passed ones only, without the calls that failed)."""
import json

import pytest

from autothink.cli import main
from autothink.data.collect import environment_for, load_agent_tasks
from autothink.environments.bfcl import load_bfcl_tasks
from autothink.environments.coding import SOLUTION
from autothink.environments.references import calls_of, final_patch, load_references, task_references
from autothink.environments.rollout import execute
from autothink.records.jsonl import RecordError
from autothink.tasks.tool_calls import tool_call_text


def _replay(task, calls) -> float:
    env = environment_for(task)
    env.reset(**task.to_dict())
    for k, (name, arguments) in enumerate(calls):
        call = {"id": f"c{k}", "function": {"name": name, "arguments": json.dumps(arguments)}}
        assert not execute(env, call).get("is_error"), (task.id, name)
    return env.get_reward()


def test_ground_truth_references_score_one_when_replayed():
    for task in load_agent_tasks("humaneval", 0, 3) + load_bfcl_tasks("base", n=5):
        (reference,) = task_references(task)
        assert reference["calls"] and _replay(task, reference["calls"]) == 1.0, task.id
        if task.source != "bfcl":
            assert reference["calls"][0] == ["write_file", {"path": SOLUTION, "content": task.metadata["solution"]}]
            assert reference["patch"] == task.metadata["solution"] == final_patch(reference["calls"])


def test_collected_references_keep_passed_runs_without_their_mistakes(tmp_path):
    out = tmp_path / "collect"
    assert main(["agent", "collect", "--n", "5", "--noise", "1.0", "--output_dir", str(out)]) == 0
    path = out / "trajectories.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    failed = dict(rows[0], id=rows[0]["id"], outcome={**rows[0]["outcome"], "passed": False})
    rows[0] = failed  # a run that did not pass is no reference
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    references = load_references(str(path))
    tasks = {t.id: t for t in load_agent_tasks("humaneval", 0, 5)}
    assert sorted(references) == sorted(r["id"] for r in rows[1:])
    for task_id, (reference,) in references.items():
        # Every run made one real mistake; without it the run is the ground truth's two calls.
        assert reference["calls"] == task_references(tasks[task_id])[0]["calls"], task_id
    assert len(calls_of(rows[1]["messages"])) == 3 and len(calls_of(rows[1]["messages"], skip_failed=True)) == 2


def test_bad_reference_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_references(str(tmp_path / "none.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"id": "x", "messages": "not a list"}\n')
    with pytest.raises(RecordError, match="bad.jsonl:1"):
        load_references(str(tmp_path / "bad.jsonl"))


def test_final_patch_is_the_last_solution_written():
    calls = [["write_file", {"path": SOLUTION, "content": "a"}], ["write_file", {"path": "notes.md", "content": "b"}],
             ["write_file", json.dumps({"path": SOLUTION, "content": "c"})], ["run_tests", {}]]
    assert final_patch(calls) == "c"
    assert final_patch([["write_file", "{not json"], ["run_tests", {}]]) is None
    assert final_patch([["write_file", {"path": SOLUTION, "content": 3}]]) is None
    assert tool_call_text("run_tests", {})  # the calls above are what a model's <tool_call> blocks parse to


def test_a_collected_bfcl_run_gives_its_first_turn(tmp_path):
    """An RL rollout plays a BFCL task's first user turn: a supplied reference stops at the second."""
    from autothink.environments.bfcl import ground_truth_calls

    out = tmp_path / "collect"
    assert main(["agent", "collect", "--tasks", "bfcl:base", "--n", "2", "--noise", "0", "--max_turns", "40",
                 "--output_dir", str(out)]) == 0
    references = load_references(str(out / "trajectories.jsonl"))
    for task in load_bfcl_tasks("base", n=2):
        assert len(task.metadata["ground_truth"]) > 1  # several turns were played
        assert references[task.id][0]["calls"] == [list(c) for c in ground_truth_calls(task, 0)]
