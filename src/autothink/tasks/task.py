"""The task record: one query with what is needed to grade an answer to it, and its JSONL file."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from autothink.records.jsonl import RecordError, read_jsonl, write_jsonl
from autothink.records.messages import as_messages

DOMAINS = ("math", "code", "science", "general", "logic", "multi-turn", "tool-use")


@dataclass
class Task:
    """One query with what is needed to grade an answer to it.

    `reference` is whatever the verifier kind expects (a gold answer, test code, an option
    letter, a reasoning-gym entry); a query without `verifier` and `reference` cannot be graded
    by rule (the data pipeline then asks a judge). `difficulty` runs from 1 (easy) to 5 (hard);
    the tagger fills `difficulty` and `domain` when they are missing.
    """

    id: str
    messages: list[dict[str, str]]
    domain: str | None = None
    verifier: str | None = None
    reference: Any = None
    difficulty: int | None = None
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The last user message: the question itself."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        """Build a task from a JSON object, accepting `prompt` as a shorthand for `messages`.

        Raises:
            ValueError: a missing or ill-typed field, named in the message.
        """
        data = dict(data)
        if "messages" not in data and "prompt" in data:
            prompt = data.pop("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError("field 'prompt' must be a non-empty string")
            data["messages"] = [{"role": "user", "content": prompt}]
        for name in ("id", "messages"):
            if name not in data or data[name] is None:
                raise ValueError(f"missing field {name!r}" + (" (or 'prompt')" if name == "messages" else ""))
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}")
        task = cls(**data)
        task.validate()
        return task

    def validate(self) -> None:
        from autothink.verify import VERIFIERS

        if not isinstance(self.id, str) or not self.id:
            raise ValueError("field 'id' must be a non-empty string")
        as_messages(self.messages)
        if not any(m["role"] == "user" for m in self.messages):
            raise ValueError("field 'messages' has no user message")
        if self.verifier is not None and self.verifier not in VERIFIERS:
            raise ValueError(f"field 'verifier': unknown kind {self.verifier!r}; known: {', '.join(sorted(VERIFIERS))}")
        if (self.verifier is None) != (self.reference is None):
            missing = "reference" if self.reference is None else "verifier"
            raise ValueError(f"missing field {missing!r}: 'verifier' and 'reference' go together")
        if self.domain is not None and (not isinstance(self.domain, str) or not self.domain):
            raise ValueError("field 'domain' must be a non-empty string")
        if self.difficulty is not None and (
            isinstance(self.difficulty, bool) or not isinstance(self.difficulty, int) or not 1 <= self.difficulty <= 5
        ):
            raise ValueError(f"field 'difficulty' must be an integer from 1 to 5, got {self.difficulty!r}")


def load_tasks(path: str | os.PathLike, ignore_extra: bool = False) -> list[Task]:
    """Read tasks from JSONL. Raises `RecordError` naming file, line and field; ids must be unique.

    `ignore_extra` skips fields that are not Task fields (a later stage's additions, e.g. tags).
    """
    tasks, seen = [], {}
    for line, obj in read_jsonl(path):
        if ignore_extra and isinstance(obj, dict):
            obj = {k: v for k, v in obj.items() if k in Task.__dataclass_fields__ or k == "prompt"}
        try:
            task = Task.from_dict(obj)
        except (TypeError, ValueError) as err:
            raise RecordError(path, line, str(err)) from None
        if task.id in seen:
            raise RecordError(path, line, f"duplicate id {task.id!r} (first on line {seen[task.id]})")
        seen[task.id] = line
        tasks.append(task)
    return tasks


def save_tasks(tasks: list[Task], path: str | os.PathLike) -> int:
    return write_jsonl(path, (t.to_dict() for t in tasks))


# --- reasoning-gym, with difficulty tiers 1..5 ------------------------------------------------

