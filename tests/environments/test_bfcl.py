"""BFCL's multi-turn simulators as environments: the ground truth scores 1, anything else does not, every
bad call is answered, hidden functions stay hidden, and every API combination has schemas TRL can read."""
import json

import pytest

from autothink.environments.bfcl import CATEGORIES, bfcl_environment, ground_truth_calls, load_bfcl_tasks
from autothink.environments.reference_agent import ReferenceAgent
from autothink.environments.rollout import execute, run_episode, tool_schemas, tools_of
from autothink.inference.backend import SamplingParams
from autothink.tasks.trajectory import check_trajectory, failure, llm_calls


def _replay(env, task, skip=None):
    """Play the ground truth through the tools, as a model would, leaving out call `skip` (turn, index)."""
    turns = len(task.metadata["ground_truth"])
    for t in range(turns):
        for k, (name, arguments) in enumerate(ground_truth_calls(task, t)):
            if (t, k) != skip:
                getattr(env, name)(**arguments)
        if t < turns - 1:
            env._next_question()


@pytest.mark.parametrize("category", CATEGORIES)
def test_the_ground_truth_scores_one_on_every_task(category):
    tasks = load_bfcl_tasks(category)
    assert len(tasks) == 200 and len({t.id for t in tasks}) == 200
    for task in tasks[:50]:
        env = bfcl_environment(task)
        env.reset(**task.to_dict())
        _replay(env, task)
        assert env.get_reward() == 1.0, task.id


def test_a_missing_or_extra_call_fails_the_state_check():
    task = load_bfcl_tasks("base", n=1)[0]
    assert task.metadata["ground_truth"][0][2].startswith("mv(")
    env = bfcl_environment(task)
    env.reset(**task.to_dict())
    _replay(env, task, skip=(0, 2))  # the file never moved
    assert env.get_reward() == 0.0
    env.reset(**task.to_dict())
    _replay(env, task)
    env.mkdir(dir_name="not_asked_for")
    assert env.get_reward() == 0.0
    env.reset(**task.to_dict())
    assert env.get_reward() == 0.0  # doing nothing is no pass either (every turn has calls to make)


def test_bad_calls_are_answered_as_errors():
    task = next(t for t in load_bfcl_tasks("base") if t.metadata["involved_classes"] == ["GorillaFileSystem"])
    env = bfcl_environment(task)
    env.reset(**task.to_dict())
    result = execute(env, {"id": "1", "function": {"name": "cd", "arguments": json.dumps({"folder": "no_such_dir"})}})
    assert "error" in json.loads(result["content"]) and failure(result) == "error object"
    result = execute(env, {"id": "2", "function": {"name": "cd", "arguments": json.dumps({"folder": ["a", "b"]})}})
    assert result["is_error"] and "cd failed" in json.loads(result["content"])["error"]
    result = execute(env, {"id": "3", "function": {"name": "os_system", "arguments": "{}"}})
    assert result["is_error"] and "unknown tool 'os_system'" in result["content"]
    with pytest.raises(ValueError, match="needs"):
        env.reset(id="x")
    other = next(t for t in load_bfcl_tasks("base") if "TradingBot" in t.metadata["involved_classes"])
    with pytest.raises(ValueError, match="this environment has"):
        env.reset(**other.to_dict())


def test_a_missed_function_is_documented_only_from_its_turn():
    task = next(t for t in load_bfcl_tasks("miss_func") if t.metadata["missed_function"])
    turn, names = next(iter(task.metadata["missed_function"].items()))
    env = bfcl_environment(task)
    env.reset(**task.to_dict())
    shown = {s["function"]["name"] for s in env._tool_schemas()}
    assert not set(names) & shown and len(shown) == len(tools_of(env)) - len(names)
    for _ in range(int(turn)):
        assert env._next_question() is not None
    assert set(names) <= {s["function"]["name"] for s in env._tool_schemas()}
    assert task.metadata["questions"][int(turn)] == []  # the turn that documents it asks nothing new


def test_every_api_combination_has_tool_schemas_trl_can_build():
    combos = {tuple(sorted(t.metadata["involved_classes"])): t for c in CATEGORIES for t in load_bfcl_tasks(c)}
    assert len(combos) == 20
    for task in combos.values():
        env = bfcl_environment(task)
        schemas = tool_schemas(env)  # transformers' get_json_schema, as TRL's environment_factory builds them
        assert len(schemas) == len(tools_of(env)) > 10
        assert all(s["function"]["description"] and s["function"]["parameters"]["type"] == "object" for s in schemas)


def test_the_reference_agent_plays_every_turn_with_real_mistakes():
    tasks = load_bfcl_tasks("base", n=8)
    agent = ReferenceAgent(tasks, noise=1.0)
    for task in tasks:
        trajectory = run_episode(agent, bfcl_environment(task), task, SamplingParams(), max_turns=60)
        assert trajectory.outcome["passed"] and trajectory.outcome["end"] == "answered", task.id
        users = [m["content"] for m in trajectory.messages if m["role"] == "user"]
        assert users == [q[0]["content"] for q in task.metadata["questions"] if q]  # every turn was asked
        calls = llm_calls(check_trajectory(trajectory.to_dict()))
        bogus = [c for c in calls if c.failed == "is_error"]
        assert len(bogus) == 1 and "dry_run" in bogus[0].completion["tool_calls"][0]["function"]["arguments"]
