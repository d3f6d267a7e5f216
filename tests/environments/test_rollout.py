"""Agent episodes: the reference agent's real mistakes and corrections, a hostile model's replies, and
`autothink agent collect` (summary, resume)."""
import json

import pytest

from autothink.cli import main
from autothink.environments.coding import CodingEnvironment
from autothink.environments.reference_agent import MISTAKES, ReferenceAgent
from autothink.environments.rollout import run_episode, tool_schemas
from autothink.inference.backend import Backend, Completion, SamplingParams
from autothink.tasks import load_suite
from autothink.tasks.trajectory import check_trajectory, llm_calls

PARAMS = SamplingParams(temperature=0, max_tokens=64)


@pytest.fixture(scope="module")
def tasks():
    return load_suite("humaneval", n=12)


class Scripted(Backend):
    """Replies with the given texts in turn (the last one repeated), recording the tools it was shown."""

    supports_tools = True

    def __init__(self, replies):
        self.replies, self.seen_tools, self.name = replies, [], "scripted"

    def _generate(self, conversations, params, thinking, tools=None):
        self.seen_tools.append(tools)
        turn = sum(m["role"] == "assistant" for m in conversations[0])
        text = self.replies[min(turn, len(self.replies) - 1)]
        return [[Completion(text=text, finish_reason="stop", tokens=len(text.split()))]]


def test_schemas_are_the_tool_methods_as_trl_sees_them():
    names = [s["function"]["name"] for s in tool_schemas(CodingEnvironment())]
    assert names == ["list_files", "read_file", "run_python", "run_tests", "write_file"]
    write = next(s for s in tool_schemas(CodingEnvironment()) if s["function"]["name"] == "write_file")
    assert write["function"]["parameters"]["required"] == ["path", "content"]


@pytest.mark.parametrize("mistake", MISTAKES)
def test_each_reference_mistake_really_fails_and_is_corrected(tasks, mistake, monkeypatch):
    monkeypatch.setattr("autothink.environments.reference_agent.MISTAKES", (mistake,))
    agent = ReferenceAgent(tasks, noise=1.0)
    trajectory = run_episode(agent, CodingEnvironment(), tasks[0], PARAMS)
    assert trajectory.outcome["passed"] and trajectory.outcome["end"] == "answered"
    assert trajectory.outcome["tool_errors"] == 1 and trajectory.outcome["turns"] == 4
    calls = llm_calls(check_trajectory(trajectory.to_dict()))
    assert [c.failed is not None for c in calls] == [True, False, False, False]  # the mistake, then corrections
    first_result = trajectory.messages[2]
    assert first_result["role"] == "tool" and (first_result.get("is_error") or first_result.get("exit_code") == 1)


def test_the_reference_agent_is_reproducible_and_noise_sets_the_mistake_share(tasks):
    plans = [ReferenceAgent(tasks, noise=0.5, seed=1).plan(t) for t in tasks]
    assert plans == [ReferenceAgent(tasks, noise=0.5, seed=1).plan(t) for t in tasks]
    assert {len(p) for p in (ReferenceAgent(tasks, noise=0.0).plan(t) for t in tasks)} == {3}
    assert {len(p) for p in (ReferenceAgent(tasks, noise=1.0).plan(t) for t in tasks)} == {4}


def test_a_hostile_model_gets_every_bad_call_answered_and_the_episode_bounded(tasks):
    replies = ['<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>',
               '<tool_call>\n{"name": "write_file", "arguments": {"path": "/etc/passwd", "content": ""}}\n</tool_call>',
               '<tool_call>\n{"name": "write_file", "arguments": {"nonsense": 1}}\n</tool_call>',
               '<tool_call>\n{"name": "run_tests", "arguments": {"extra": 1}}\n</tool_call>',
               "<tool_call>\n{not json\n</tool_call>",
               '<tool_call>\n{"name": "run_python", "arguments": {"code": "while True: pass"}}\n</tool_call>']
    backend = Scripted(replies)
    env = CodingEnvironment(timeout_s=1)
    trajectory = run_episode(backend, env, tasks[0], PARAMS, max_turns=len(replies))
    results = [m for m in trajectory.messages if m["role"] == "tool"]
    errors = [json.loads(r["content"])["error"] for r in results[:5]]
    assert errors[0].startswith("unknown tool 'rm_rf'") and "invalid path '/etc/passwd'" in errors[1]
    assert errors[2].startswith("bad arguments for write_file") and errors[3].startswith("bad arguments for run_tests")
    assert errors[4].startswith("could not parse the tool call: not JSON")
    assert all(r["is_error"] for r in results[:5]) and "timed out" in results[5]["content"]
    tokens = sum(len(r.split()) for r in replies)  # the scripted backend's tokens are words
    assert trajectory.outcome == {"reward": 0.0, "passed": False, "turns": 6, "tool_calls": 6, "tool_errors": 6,
                                  "tokens": tokens, "modes": [None] * 6, "end": "max_turns"}
    assert backend.seen_tools[0] == tool_schemas(env)  # the model was shown the tools every turn


def test_agent_collect_writes_trajectories_and_a_summary_and_resumes(tmp_path, capsys):
    out = tmp_path / "collect"
    argv = ["agent", "collect", "--n", "6", "--noise", "1.0", "--output_dir", str(out), "--workers", "2"]
    assert main(argv) == 0
    summary = json.loads((out / "collect.json").read_text())
    assert summary["episodes"] == 6 and summary["pass_rate"] == 1.0 and summary["errors"] == 0
    assert summary["tool_errors"] == 6 and summary["tool_error_rate"] == 6 / summary["tool_calls"]
    rows = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"HumanEval/{i}" for i in range(6)]
    for row in rows:
        check_trajectory(row)
    before = (out / "trajectories.jsonl").read_text()
    assert main(argv) == 0 and (out / "trajectories.jsonl").read_text() == before  # nothing redone
    assert main(["agent", "collect", "--tasks", "arithmetic", "--output_dir", str(tmp_path / "x")]) == 2
    assert "is not a coding task" in capsys.readouterr().err
