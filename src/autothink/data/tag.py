"""`autothink data tag`: difficulty (1-5), domain and regime (think-on / think-off) per query.

A judge backend labels each query as JSON; without a judge, or when the judge keeps failing, a
documented heuristic does. Labels already on a record (a graded suite's tier) are kept.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from autothink.data.agents import Agent, AgentError, Prompts
from autothink.data.common import (
    Backends,
    StageConfig,
    agent_factory,
    as_task,
    load_queries,
)
from autothink.data.runner import record_seed, run_records
from autothink.tasks import DOMAINS

_DOMAIN_WORDS = [
    ("code", r"```|\bdef \w+\(|\bfunction\b|\bpython\b|\bprogram\b|\bcode\b|\bimplement\b"),
    ("tool-use", r"\btool\b|\bfunction call|\bapi call"),
    ("math", r"\\frac|\\sqrt|\$|\bsolve\b|\bequation|\bcalculate\b|\bintegral|\bprobability\b|\d\s*[-+*/^]\s*\d"),
    ("science", r"\bphysics|\bchemi|\bbiolog|\bmolecule|\bvelocity|\benergy\b|\batom"),
    ("logic", r"\bknights?\b|\bknaves?\b|\bliars?\b|\bpremises?\b|\bconclusion\b|\blogic"),
]


def heuristic_domain(messages: list[dict]) -> str:
    """First matching keyword family of the last user message; several user turns: multi-turn."""
    if sum(m["role"] == "user" for m in messages) > 1:
        return "multi-turn"
    text = next(m["content"] for m in reversed(messages) if m["role"] == "user").lower()
    return next((domain for domain, rx in _DOMAIN_WORDS if re.search(rx, text)), "general")


def heuristic_difficulty(prompt: str) -> int:
    """1-5 from size and density: +1 each for > 40 words, > 120 words, > 4 numbers, math markup."""
    words = len(prompt.split())
    numbers = len(re.findall(r"\d+(?:\.\d+)?", prompt))
    return 1 + (words > 40) + (words > 120) + (numbers > 4) + bool(re.search(r"\\[a-z]+|\^|∫|∑", prompt))


def assign_regime(difficulty: int, verifiable: bool, threshold: int = 3) -> str:
    """Think-on from `threshold` up; exactly at the threshold only when an answer can be verified.

    Think-on data is kept only when verified, so a borderline query that cannot be verified is
    better spent as think-off data.
    """
    if difficulty > threshold or (difficulty == threshold and verifiable):
        return "on"
    return "off"


def validate_tag(obj: dict) -> dict:
    """Check a judge's JSON: difficulty an integer 1-5, domain one of DOMAINS."""
    difficulty = obj["difficulty"]
    if isinstance(difficulty, str) and difficulty.strip().isdigit():
        difficulty = int(difficulty)
    if isinstance(difficulty, bool) or not isinstance(difficulty, int) or not 1 <= difficulty <= 5:
        raise ValueError(f"difficulty must be an integer 1-5, got {obj['difficulty']!r}")
    domain = str(obj["domain"]).strip().lower().replace(" ", "-").replace("_", "-")
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, got {obj['domain']!r}")
    return {"difficulty": difficulty, "domain": domain, "reason": str(obj.get("reason", ""))[:300]}


@dataclass
class TagConfig(StageConfig):
    judge: str | None = field(default=None, metadata={"help": "backend spec of the judge; none: heuristic tagger"})
    threshold: int = field(default=3, metadata={"help": "difficulty from which queries are think-on"})
    retag: bool = field(default=False, metadata={"help": "ask the judge even when labels are given"})


def tag_record(record: dict, judge: Agent | None, prompts: Prompts, threshold: int, retag: bool) -> dict:
    task = as_task(record)
    given = record.get("difficulty") is not None and record.get("domain") is not None
    tag = {"by": "given"}
    difficulty, domain = record.get("difficulty"), record.get("domain")
    if judge is not None and (retag or not given):
        try:
            labels, attempts = judge.ask_json(
                prompts.messages("tagger", query=task.prompt), validate_tag, seed=record_seed(task.id, "tag")
            )
            difficulty, domain = labels["difficulty"], labels["domain"]
            tag = {"by": f"judge:{judge.backend.name}", "reason": labels["reason"], "attempts": len(attempts)}
        except AgentError as err:  # reported on the record; the heuristic stands in
            tag = {"by": "heuristic", "error": str(err), "attempts": len(err.attempts)}
            difficulty = domain = None
    if difficulty is None or domain is None:
        tag["by"] = "heuristic"  # a judge failure's error and attempts stay on the record
        difficulty = difficulty or heuristic_difficulty(task.prompt)
        domain = domain or heuristic_domain(task.messages)
    regime = assign_regime(difficulty, task.verifier is not None, threshold)
    return record | {"difficulty": difficulty, "domain": domain, "regime": regime, "tag": tag}


def run_tag(config: TagConfig, backends: Backends | None = None) -> list[dict]:
    """Tag every query of `config.input`; writes `tagged.jsonl` in `config.output_dir`."""
    records = load_queries(config)
    judge = agent_factory(config, backends)(config.judge) if config.judge else None
    prompts = Prompts(config.prompts_dir)
    return run_records(
        records, lambda r: tag_record(r, judge, prompts, config.threshold, config.retag),
        Path(config.output_dir) / "tagged.jsonl", workers=config.workers, desc="tag",
    )
