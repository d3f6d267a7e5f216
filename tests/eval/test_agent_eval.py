"""Agentic suites in `autothink eval`: episodes in the coding sandbox scored as `agent collect` scores them, the
think-on rate per turn, and the report's agent plot."""
import json

import pytest

from autothink.data.collect import CollectConfig, load_agent_tasks, run_collect
from autothink.environments.reference_agent import ReferenceAgent
from autothink.eval.run import EvalConfig, run_eval


class ThinkingFirst(ReferenceAgent):
    """The reference agent in the AutoThink format: thinks on its first reply, answers directly after."""

    def _generate(self, conversations, params, thinking, tools=None):
        out = super()._generate(conversations, params, thinking, tools)
        wrapped = []
        for conversation, completions in zip(conversations, out):
            first = not any(m["role"] == "assistant" for m in conversation)
            c = completions[0]
            mode = "<think_on><think>Plan the function first.</think>" if first else "<think_off>"
            c.text = f"<judge>{'new task' if first else 'next step'}</judge>{mode}<answer>{c.text}</answer>"
            wrapped.append([c] * params.n)
        return wrapped


def test_agentic_suite_scores_episodes_like_agent_collect(tmp_path):
    tasks = load_agent_tasks("humaneval", 0, 4)
    collected = run_collect(CollectConfig(n=4, noise=0.5, output_dir=str(tmp_path / "collect"), workers=2))
    config = EvalConfig(model="reference-agent", suites=["agent:humaneval"], n=4, modes=["auto"],
                        output_dir=str(tmp_path / "eval"), batch_size=2, max_turns=6)
    metrics = run_eval(config, backend=ReferenceAgent(tasks, noise=0.5))
    m = metrics["suites"]["agent:humaneval"]["auto"]
    assert m["n"] == 4 and m["accuracy"] == collected["pass_rate"] == 1.0
    assert m["tool_error_rate"] == pytest.approx(collected["tool_error_rate"]) and m["tool_error_rate"] > 0
    assert m["turns"] == pytest.approx(collected["mean_turns"])
    assert m["think_on_rate_by_turn"][0] == 0.0  # no AutoThink tags: no mode
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert {s["task_id"] for s in samples} == {t.id for t in tasks} and all(s["agent"]["end"] == "answered"
                                                                           for s in samples)
    assert "<tool_call>" in samples[0]["response"] and samples[0]["tokens"]["total"] > 0
    assert (tmp_path / "eval" / "agent_turns.png").read_bytes()[:4] == b"\x89PNG"
    assert "tool errors" in (tmp_path / "eval" / "report.html").read_text()


def test_the_think_on_rate_per_turn_and_a_held_out_split(tmp_path):
    tasks = load_agent_tasks("humaneval", 10, 3)
    config = EvalConfig(model="reference-agent", suites=["agent:humaneval"], n=3, skip=10, modes=["auto"],
                        output_dir=str(tmp_path / "eval"), batch_size=3)
    metrics = run_eval(config, backend=ThinkingFirst(tasks, noise=0.0))
    m = metrics["suites"]["agent:humaneval"]["auto"]
    assert m["accuracy"] == 1.0 and m["turns"] == 3.0  # write, test, answer
    assert m["think_on_rate_by_turn"] == [1.0, 0.0, 0.0] and m["think_on_rate"] == 1.0  # the first reply's mode
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert sorted(s["task_id"] for s in samples) == sorted(t.id for t in tasks)  # HumanEval/10..12
    assert all(s["agent"]["modes"] == ["on", "off", "off"] for s in samples)
    assert all(s["parsed"]["well_formed"] for s in samples) and samples[0]["tokens"]["think"] > 0


def test_agentic_suites_take_one_episode_per_task():
    with pytest.raises(ValueError, match="one episode per task"):
        EvalConfig(suites=["agent:humaneval"], samples=2, temperature=0.7)


def test_a_run_from_before_the_agentic_settings_resumes(tmp_path):
    """settings.json written before `skip` and `max_turns` existed: their defaults are what it used."""
    from autothink.eval.run import SAMPLE_SETTINGS

    tasks = load_agent_tasks("humaneval", 0, 2)
    config = EvalConfig(model="reference-agent", suites=["agent:humaneval"], n=2, modes=["auto"],
                        output_dir=str(tmp_path))
    run_eval(config, backend=ReferenceAgent(tasks, noise=0.0))
    settings = json.loads((tmp_path / "settings.json").read_text())
    old = {k: v for k, v in settings.items() if k not in ("skip", "max_turns")}
    (tmp_path / "settings.json").write_text(json.dumps(old))
    assert set(SAMPLE_SETTINGS) - set(old) == {"skip", "max_turns"}
    assert run_eval(config, backend=ReferenceAgent(tasks, noise=0.0))["samples"] == 2
    with pytest.raises(ValueError, match="max_turns=6, not 2"):
        run_eval(EvalConfig(model="reference-agent", suites=["agent:humaneval"], n=2, modes=["auto"], max_turns=2,
                            output_dir=str(tmp_path)), backend=ReferenceAgent(tasks, noise=0.0))
