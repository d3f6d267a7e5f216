"""Reference trajectories of agent tasks, for the multi-ground-truth reward (`algorithms.references`).

    references = task_references(task)             # from the task's ground truth
    supplied = load_references("trajectories.jsonl")  # from `agent collect` (passed runs), by task id

A reference is `{"calls": [[name, arguments], ...], "patch": final code or None, "source": ...}`:
- a coding task with a solution (`metadata.solution`): write `solution.py`, run the tests; the
  patch is the solution;
- a BFCL task: the first turn's ground-truth calls (an RL rollout plays the first turn);
- a supplied trajectory (`--references`, `agent collect` output): the calls of a run that passed,
  up to its second user turn (an RL rollout plays the first), without the calls that failed (the
  error mask's rule: a mistake is no part of a reference).
"""
from __future__ import annotations

import json
from collections import defaultdict

from autothink.environments.coding import SOLUTION
from autothink.tasks import Task
from autothink.tasks.trajectory import failure, load_trajectories


def calls_of(messages: list[dict], skip_failed: bool = False) -> list[list]:
    """The `[name, arguments]` of every assistant tool call in order; `skip_failed` drops the calls whose
    result failed."""
    results = {m.get("tool_call_id"): m for m in messages if m.get("role") == "tool"}
    calls = []
    for message in (m for m in messages if m.get("role") == "assistant"):
        for call in message.get("tool_calls") or []:
            result = results.get(call.get("id"))
            if skip_failed and result is not None and failure(result) is not None:
                continue
            function = call.get("function", call)
            calls.append([function.get("name", ""), _decoded(function.get("arguments") or {})])
    return calls


def _decoded(arguments):
    """Arguments as an object where their JSON text is one (as the model wrote them otherwise)."""
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments)
        except (json.JSONDecodeError, RecursionError):
            return arguments
        return value if isinstance(value, dict) else arguments
    return arguments


def final_patch(calls: list[list]) -> str | None:
    """The last content written to `solution.py` by the calls, or None."""
    patch = None
    for name, arguments in calls:
        arguments = _decoded(arguments)
        if name == "write_file" and isinstance(arguments, dict) and arguments.get("path") == SOLUTION:
            patch = arguments.get("content")
    return patch if isinstance(patch, str) else None


def task_references(task: Task) -> list[dict]:
    """The references the task's own ground truth gives (none for a task without one)."""
    if task.source == "bfcl":
        from autothink.environments.bfcl import ground_truth_calls

        return [{"calls": [list(c) for c in ground_truth_calls(task, 0)], "patch": None, "source": "ground truth"}]
    solution = task.metadata.get("solution")
    if isinstance(solution, str) and solution.strip():
        calls = [["write_file", {"path": SOLUTION, "content": solution}], ["run_tests", {}]]
        return [{"calls": calls, "patch": solution, "source": "ground truth"}]
    return []


def load_references(path: str) -> dict[str, list[dict]]:
    """References by task id from a trajectory file: each run that passed (or has no outcome) is one.

    Raises:
        FileNotFoundError, RecordError: as `load_trajectories`.
    """
    out = defaultdict(list)
    for trajectory in load_trajectories(path):
        if trajectory.outcome and not trajectory.outcome.get("passed"):
            continue
        users = [k for k, m in enumerate(trajectory.messages) if m["role"] == "user"]
        first_turn = trajectory.messages[:users[1]] if len(users) > 1 else trajectory.messages
        calls = calls_of(first_turn, skip_failed=True)
        if calls:
            out[trajectory.id].append({"calls": calls, "patch": final_patch(calls),
                                       "source": trajectory.source or path})
    return dict(out)
