"""What every data stage shares: its config fields, loading queries, backends and verification."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from autothink.config import check_integers
from autothink.data.agents import Agent
from autothink.format import MODES
from autothink.inference.backend import Backend
from autothink.inference.spec import make_backend
from autothink.records.jsonl import RecordError, read_jsonl
from autothink.tasks import SUITES, Task, load_suite, parse_suite
from autothink.verify import verify


@dataclass
class StageConfig:
    """Fields common to the data stages (each stage's config extends these)."""

    input: str = field(default="runs/data/tagged.jsonl", metadata={
        "help": "a tasks/queries JSONL file, or built-in suites with optional tiers: 'arithmetic:1,gsm_symbolic'"})
    output_dir: str = field(default="runs/data", metadata={"help": "where the stage writes its files"})
    n: int | None = field(default=None, metadata={"help": "number of queries to take from a built-in suite"})
    workers: int = field(default=4, metadata={"help": "records in flight at once"})
    prompts_dir: str | None = field(default=None, metadata={"help": "directory of edited prompt templates"})
    max_tokens: int = field(default=384, metadata={"help": "token limit of each agent reply"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature of the agents"})
    retries: int = field(default=2, metadata={"help": "extra attempts for an unusable agent reply"})

    def __post_init__(self):
        check_integers(self, n=1, workers=1, max_tokens=1, retries=0)


def load_queries(config: StageConfig) -> list[dict]:
    """Input records: a built-in suite, or a JSONL of tasks (extra fields of earlier stages kept).

    Raises:
        FileNotFoundError: no such file. RecordError: a bad line (file, line and field named).
    """
    specs = [parse_suite(s.strip()) for s in config.input.split(",")] if _is_suite_mix(config.input) else None
    if specs:  # e.g. "arithmetic:1,gsm_symbolic": n tasks of each
        return [task.to_dict() for name, tier in specs for task in load_suite(name, n=config.n, difficulty=tier)]
    path = Path(config.input)
    if not path.exists():
        raise FileNotFoundError(f"input {path} is neither a file nor a built-in suite ({', '.join(SUITES)})")
    records, seen = [], {}
    for line, obj in read_jsonl(path):
        try:
            task = Task.from_dict({k: v for k, v in obj.items() if k in TASK_FIELDS})
        except (TypeError, ValueError) as err:
            raise RecordError(path, line, str(err)) from None
        if task.id in seen:
            raise RecordError(path, line, f"duplicate id {task.id!r} (first on line {seen[task.id]})")
        seen[task.id] = line
        records.append(task.to_dict() | {k: v for k, v in obj.items() if k not in TASK_FIELDS})
    return records[: config.n]


def _is_suite_mix(text: str) -> bool:
    return all(s.strip().rpartition(":")[0] in SUITES or s.strip() in SUITES for s in text.split(","))


def load_tagged(config: StageConfig) -> list[dict]:
    """Queries that `autothink data tag` has labelled (each with a regime)."""
    records = load_queries(config)
    untagged = [r["id"] for r in records if r.get("regime") not in MODES]
    if untagged:
        raise ValueError(f"{len(untagged)} queries have no regime (e.g. {untagged[0]!r}); "
                         "run `autothink data tag` first")
    return records


TASK_FIELDS = {"prompt", *Task.__dataclass_fields__}


def as_task(record: dict) -> Task:
    """The task fields of a (possibly tagged) record."""
    return Task(**{k: record.get(k) for k in ("id", "messages", "domain", "verifier", "reference", "difficulty")})


def check(task: Task, response: str) -> tuple[bool | None, str]:
    """Verify a response with the task's verifier; None when the task has no verifier."""
    if task.verifier is None:
        return None, "no verifier"
    verdict = verify(task.verifier, response, task.reference)
    return verdict.passed, verdict.detail


def agent_factory(config: StageConfig, backends: "Backends | None" = None) -> Callable[[str], Agent]:
    """`spec -> Agent` with the stage's sampling settings, sharing one backend per spec."""
    backends = backends or Backends()
    return lambda spec: Agent(backends.get(spec), config.temperature, config.max_tokens, config.retries)


class Backends:
    """One backend per spec, loaded once (a local model is large) and shared by every agent."""

    def __init__(self, **options: Any):
        self._options, self._backends, self._lock = options, {}, threading.Lock()

    def get(self, spec: str) -> Backend:
        with self._lock:
            if spec not in self._backends:
                self._backends[spec] = make_backend(spec, **self._options)
            return self._backends[spec]
