"""`autothink agent collect`: run a backend as an agent in a tool environment; write trajectories.

    autothink agent collect --backend reference-agent --tasks humaneval --n 64 --noise 0.5
    autothink agent collect --backend http://localhost:8000/v1 --tasks bfcl:base --max_turns 24
    autothink agent eval --backend runs/agent-sft --skip 140 --n 24     # held-out, greedy

Each task is one episode (`environments.rollout.run_episode`): the backend's replies are parsed
for `<tool_call>` blocks, every call really runs in the task's environment (the sandboxed
`CodingEnvironment` for coding tasks, BFCL's simulators for `bfcl:` tasks), and the reply, the
results and their status (`is_error`, `exit_code`) go into the trajectory. The backend is any
spec (`smollm2-135m-instruct`, a model dir, `http://...`) or `reference-agent`, the scripted
ground-truth agent with `--noise` mistakes (`environments.reference_agent`). Output:
`trajectories.jsonl` (append-only, resumes after a kill; episodes that raised are retried) and
`collect.json`: pass rate, tool-error rate (failed calls / calls), turns and how episodes ended.
`autothink agent eval` is the same run with evaluation defaults: a model as the backend, greedy
decoding, its own output dir.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from autothink.config import check_integers
from autothink.data.runner import record_seed, run_records
from autothink.environments.bfcl import bfcl_environment, load_bfcl_tasks
from autothink.environments.coding import CodingEnvironment
from autothink.environments.reference_agent import ReferenceAgent
from autothink.environments.rollout import run_episode
from autothink.inference.backend import SamplingParams
from autothink.inference.spec import make_backend
from autothink.tasks import load_suite, load_tasks
from autothink.tasks.tool_calls import ensure_tool_template


@dataclass
class CollectConfig:
    """`autothink agent collect`: agent episodes in the coding workspace, as trajectory JSONL."""

    backend: str = field(default="reference-agent", metadata={
        "help": "the agent: reference-agent (scripted from the tasks' solutions), a model name or dir, or http://..."})
    tasks: str = field(default="humaneval", metadata={
        "help": "humaneval, a coding tasks JSONL, or BFCL multi-turn: bfcl:base|miss_func|miss_param|long_context"})
    skip: int = field(default=0, metadata={"help": "tasks to skip first (held-out splits: --skip 128 --n 24)"})
    n: int | None = field(default=None, metadata={"help": "tasks to take after `skip` (default: all)"})
    output_dir: str = field(default="runs/agent/collect", metadata={"help": "trajectories.jsonl and collect.json"})
    max_turns: int = field(default=6, metadata={"help": "most assistant replies an episode may take"})
    max_tokens: int = field(default=384, metadata={"help": "token limit of each reply"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (0: greedy)"})
    noise: float = field(default=0.5, metadata={"help": "reference-agent: share of tasks with one mistake first"})
    seed: int = field(default=0, metadata={"help": "sampling and noise seed"})
    workers: int = field(default=8, metadata={"help": "episodes in flight at once (a local model batches them)"})
    timeout_s: float = field(default=10.0, metadata={"help": "wall-clock limit of each program run"})

    def __post_init__(self):
        check_integers(self, skip=0, n=1, max_turns=1, max_tokens=1, workers=1)
        if not 0 <= self.noise <= 1:
            raise ValueError(f"CollectConfig.noise must be in [0, 1], got {self.noise!r}")


def load_agent_tasks(spec: str, skip: int = 0, n: int | None = None):
    """Agent tasks: BFCL multi-turn (`bfcl` or `bfcl:<category>`), or coding tasks (verifier `code`, tests as
    the reference) from a suite name or a tasks file.

    Raises:
        ValueError: a task that is neither, or no task left after `skip`.
    """
    if spec == "bfcl" or spec.startswith("bfcl:"):
        tasks = load_bfcl_tasks(spec.partition(":")[2] or "base", n=n, skip=skip)
    else:
        tasks = load_tasks(spec) if spec.endswith(".jsonl") else load_suite(spec)
        tasks = tasks[skip:skip + n if n is not None else None]
        for task in tasks:
            if task.verifier != "code" or not isinstance(task.reference, str):
                raise ValueError(f"task {task.id!r} is not a coding task with test code (verifier 'code', reference "
                                 "the tests) nor a BFCL task (--tasks bfcl:base); agent collect needs one of those")
    if not tasks:
        raise ValueError(f"no tasks in {spec} after skipping {skip}")
    return tasks


def environment_for(task, timeout_s: float = 10.0):
    """A fresh environment for a task: its BFCL simulators, or the sandboxed coding workspace."""
    return bfcl_environment(task) if task.source == "bfcl" else CodingEnvironment(timeout_s=timeout_s)


def summarize_episodes(outcomes: list[dict]) -> dict:
    """Pass rate, tool-error rate and turns over episode outcomes."""
    episodes = len(outcomes)
    calls = sum(o["tool_calls"] for o in outcomes)
    ends = dict(Counter(o["end"] for o in outcomes))
    return {"episodes": episodes, "pass_rate": sum(o["passed"] for o in outcomes) / max(episodes, 1),
            "mean_reward": sum(o["reward"] for o in outcomes) / max(episodes, 1),
            "tool_calls": calls, "tool_errors": sum(o["tool_errors"] for o in outcomes),
            "tool_error_rate": sum(o["tool_errors"] for o in outcomes) / max(calls, 1),
            "mean_turns": sum(o["turns"] for o in outcomes) / max(episodes, 1), "ends": ends}


def run_collect(config: CollectConfig) -> dict:
    """Play every task once; returns the summary written to `collect.json`."""
    tasks = load_agent_tasks(config.tasks, config.skip, config.n)
    if config.backend.startswith("reference-agent"):
        backend = ReferenceAgent(tasks, noise=config.noise, seed=config.seed)
    else:
        backend = make_backend(config.backend)
        if getattr(backend, "tokenizer", None) is not None:
            ensure_tool_template(backend.tokenizer)  # a ChatML model without tool support gets the Hermes format
    by_id = {t.id: t for t in tasks}
    out = Path(config.output_dir)

    def play(record: dict) -> dict:
        task = by_id[record["id"]]
        params = SamplingParams(temperature=config.temperature, max_tokens=config.max_tokens,
                                seed=record_seed(task.id, "collect", config.seed))
        env = environment_for(task, config.timeout_s)
        return run_episode(backend, env, task, params, max_turns=config.max_turns).to_dict()

    rows = run_records([{"id": t.id} for t in tasks], play, out / "trajectories.jsonl", workers=config.workers,
                       desc="agent collect")
    failed = [r for r in rows if r.get("status") == "error"]
    done = [r["outcome"] for r in rows if r.get("status") != "error"]
    summary = {**summarize_episodes(done), "errors": len(failed), "backend": config.backend, "tasks": config.tasks,
               "skip": config.skip, "output": str(out / "trajectories.jsonl")}
    (out / "collect.json").write_text(json.dumps(summary, indent=2) + "\n")
    if failed:
        print(f"agent collect: {len(failed)} episodes raised (rerun to retry), e.g. {failed[0]['error']}")
    print(f"agent collect: {summary['episodes']} episodes, pass rate {summary['pass_rate']:.2f}, tool-error rate "
          f"{summary['tool_error_rate']:.2f} ({summary['tool_errors']}/{summary['tool_calls']} calls) -> {out}")
    return summary


@dataclass
class AgentEvalConfig(CollectConfig):
    """`autothink agent eval`: `agent collect` of a model on held-out tasks, greedy: pass rate and tool-error rate."""

    backend: str = field(default="smollm2-135m-instruct", metadata={"help": "the model: a name, a dir or http://..."})
    output_dir: str = field(default="runs/agent/eval", metadata={"help": "trajectories.jsonl and collect.json"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature (0: greedy)"})
