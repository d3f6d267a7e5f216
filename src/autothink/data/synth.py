"""`autothink data synth`: stage-1 distillation data in both regimes.

- think-off: every teacher answers directly, k samples each (rejection sampling); verified-
  correct answers are kept; a query with no verifier gets the judge's pick among them.
- think-on: a solver drafts, a critic checks logical consistency and accepts or sends the draft
  back, a thinker reflects and improves it (up to `rounds` times). Only a result that is
  verified (or, with no verifier, accepted by the critic) is kept, as long-CoT data.

Each output sample puts the regime trigger first in the completion (`<think_off>` or
`<think_on>`); stage-1 training gives the trigger no loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from autothink.config import check_integers
from autothink.data.agents import AgentError, Prompts, split_final_answer, strip_tags
from autothink.data.common import (
    Backends,
    StageConfig,
    agent_factory,
    as_task,
    check,
    load_tagged,
)
from autothink.data.runner import record_seed, run_records
from autothink.format import ANSWER, ANSWER_END, THINK, THINK_END, THINK_OFF, THINK_ON
from autothink.records.jsonl import write_jsonl


@dataclass
class SynthConfig(StageConfig):
    input: str = field(default="runs/data/tagged.jsonl", metadata={"help": "tagged queries (`data tag` output)"})
    teachers: list[str] = field(default_factory=lambda: ["smollm2-135m-instruct"],
                                metadata={"help": "backend specs that answer think-off queries"})
    k: int = field(default=2, metadata={"help": "think-off samples per teacher"})
    solver: str | None = field(default=None, metadata={"help": "think-on solver backend (default: first teacher)"})
    thinker: str | None = field(default=None, metadata={"help": "think-on thinker backend (default: solver)"})
    critic: str | None = field(default=None, metadata={"help": "think-on critic backend (default: solver)"})
    judge: str | None = field(default=None,
                              metadata={"help": "picks among unverifiable answers (default: first teacher)"})
    rounds: int = field(default=2, metadata={"help": "most critic/thinker rounds per think-on query"})

    def __post_init__(self):
        super().__post_init__()
        check_integers(self, k=1, rounds=1)


def _validate_pick(count: int):
    def validate(obj: dict) -> dict:
        best = int(obj["best"])
        if not 1 <= best <= count:
            raise ValueError(f"best must be 1..{count}, got {best}")
        return {"best": best}

    return validate


def synth_off(record: dict, agents: dict, prompts: Prompts, k: int) -> dict:
    task = as_task(record)
    candidates, verified, provenance = [], [], []
    for teacher in agents["teachers"]:
        try:
            replies = teacher.ask(prompts.messages("think_off", query=task.prompt), n=k,
                                  seed=record_seed(task.id, "off", teacher.backend.name))
        except Exception as err:
            provenance.append({"backend": teacher.backend.name, "error": f"{type(err).__name__}: {err}"})
            continue
        for reply in replies:
            passed, detail = check(task, reply)
            candidates.append(reply)
            verified.append(passed)
            provenance.append({"backend": teacher.backend.name, "passed": passed, "detail": detail[:200]})
    if not candidates:
        return {"id": task.id, "status": "rejected", "reason": "every teacher failed", "attempts": provenance}
    if task.verifier is not None:
        kept = [c for c, ok in zip(candidates, verified) if ok]
        if not kept:
            return {"id": task.id, "status": "rejected", "reason": "no verified answer", "attempts": provenance}
        chosen, how = kept[0], "verified"
    else:
        listing = "\n\n".join(f"Candidate {i + 1}:\n{c}" for i, c in enumerate(candidates))
        try:
            pick, _ = agents["judge"].ask_json(prompts.messages("judge_select", query=task.prompt, candidates=listing),
                                               _validate_pick(len(candidates)), seed=record_seed(task.id, "pick"))
        except AgentError as err:
            return {"id": task.id, "status": "rejected", "reason": f"judge failed: {err}", "attempts": provenance}
        chosen, how = candidates[pick["best"] - 1], f"judge picked {pick['best']} of {len(candidates)}"
    completion = f"{THINK_OFF}{ANSWER}{strip_tags(chosen)}{ANSWER_END}"
    return _kept(record, "off", completion, how, provenance)


def synth_on(record: dict, agents: dict, prompts: Prompts, rounds: int) -> dict:
    task = as_task(record)
    seed = record_seed(task.id, "on")
    log: list[dict] = [{role: agents[role].backend.name for role in ("solver", "thinker", "critic")}]
    try:
        draft = agents["solver"].ask(prompts.messages("solver", query=task.prompt), seed=seed)[0]
        trace = [draft]
        for round_ in range(rounds + 1):
            passed, detail = check(task, split_final_answer(draft)[1] or draft)
            verdict, _ = agents["critic"].ask_json(
                prompts.messages("critic", query=task.prompt, solution=draft), _validate_critique,
                seed=seed + 100 + round_
            )
            log.append({"round": round_, "passed": passed, "detail": detail[:200], "critic": verdict})
            if passed or (passed is None and verdict["accept"]):
                break
            if round_ == rounds:
                reason = "not verified" if passed is False else "critic never accepted"
                return {"id": task.id, "status": "rejected", "reason": f"{reason} after {rounds} rounds", "rounds": log}
            draft = agents["thinker"].ask(
                prompts.messages("thinker", query=task.prompt, draft=draft, remarks=verdict["issues"] or "none"),
                seed=seed + 200 + round_,
            )[0]
            trace.append(f"Wait, let me check this again. {verdict['issues']}".strip() + "\n" + draft)
    except AgentError as err:
        return {"id": task.id, "status": "rejected", "reason": f"critic failed: {err}", "rounds": log}
    except Exception as err:
        return {"id": task.id, "status": "rejected", "reason": f"backend failed: {type(err).__name__}: {err}",
                "rounds": log}
    reasoning, answer = split_final_answer("\n\n".join(trace))
    completion = f"{THINK_ON}{THINK}{strip_tags(reasoning)}{THINK_END}{ANSWER}{strip_tags(answer or draft)}{ANSWER_END}"
    return _kept(record, "on", completion, f"accepted in round {len(log) - 2}", log)


def _validate_critique(obj: dict) -> dict:
    accept = obj["accept"]
    if isinstance(accept, str):
        accept = {"true": True, "false": False}.get(accept.strip().lower(), accept)
    if not isinstance(accept, bool):
        raise ValueError(f"accept must be true or false, got {obj['accept']!r}")
    return {"accept": accept, "issues": str(obj.get("issues", ""))[:500]}


def _kept(record: dict, mode: str, completion: str, how: str, provenance: list) -> dict:
    return {
        "id": record["id"], "status": "kept", "mode": mode, "how": how, "provenance": provenance,
        "prompt": record["messages"], "completion": [{"role": "assistant", "content": completion}],
        "domain": record["domain"], "difficulty": record["difficulty"],
    }


def run_synth(config: SynthConfig, backends: Backends | None = None) -> list[dict]:
    """Synthesize stage-1 data for tagged queries; writes `synth.records.jsonl` and `stage1.jsonl`."""
    records = load_tagged(config)
    agent = agent_factory(config, backends)
    solver = config.solver or config.teachers[0]
    agents = {
        "teachers": [agent(spec) for spec in config.teachers],
        "judge": agent(config.judge or config.teachers[0]),
        "solver": agent(solver), "thinker": agent(config.thinker or solver), "critic": agent(config.critic or solver),
    }
    prompts = Prompts(config.prompts_dir)

    def process(record: dict) -> dict:
        if record["regime"] == "off":
            return synth_off(record, agents, prompts, config.k)
        return synth_on(record, agents, prompts, config.rounds)

    out = Path(config.output_dir)
    results = run_records(records, process, out / "synth.records.jsonl", workers=config.workers, desc="synth")
    keys = ("id", "prompt", "completion", "mode", "domain", "difficulty")
    write_jsonl(out / "stage1.jsonl", ({k: r[k] for k in keys} for r in results if r["status"] == "kept"))
    return results
