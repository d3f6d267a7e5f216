"""`rl_prompts.jsonl` (written by `autothink data coldstart`, read by `autothink rl`).

    {"id", "prompt": [messages] | str, "verifier", "reference": <JSON-encoded string>, "difficulty", "domain",
     "prior_mode": "on" | "off" | null, "directive": "on" | "off" | null}

`directive` is the mode a directive in the prompt asks for ("DO NOT THINK" -> "off"); Step-SRPO
rewards obeying it (its correct mode is the directive). Optional, like `prior_mode`.

A row without a verifier or reference, or with a reference that is not JSON, is an error naming
the file, the line and the id (nothing is skipped).
"""
from __future__ import annotations

import json
import os

from autothink.format import MODES
from autothink.records.jsonl import bad_records_error, read_jsonl
from autothink.records.messages import as_messages


def _check_record(record: dict) -> str | None:
    """What is wrong with one RL prompt row, or None when it is usable."""
    from autothink.verify import VERIFIERS

    rid = record.get("id")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid) == "":
        return "`id` must be a non-empty string"
    try:
        prompt = as_messages(record.get("prompt"), "prompt", string_role="user")
    except ValueError as err:
        return str(err)
    if not any(m["role"] == "user" for m in prompt):
        return "`prompt` has no user message"
    if prompt[-1]["role"] == "assistant":
        return "`prompt` ends with an assistant message; RL prompts end with the user's turn"
    if record.get("verifier") is None:
        return "no `verifier`: RL prompts need a verifier kind and a reference to be rewarded"
    if record["verifier"] not in VERIFIERS:
        return f"unknown `verifier` {record['verifier']!r}; known kinds: {', '.join(sorted(VERIFIERS))}"
    if record.get("reference") is None:
        return "no `reference`: RL prompts need a reference answer for their verifier"
    if isinstance(record["reference"], str):
        try:
            json.loads(record["reference"])
        except json.JSONDecodeError:
            return (f"`reference` {record['reference'][:60]!r} is not JSON-encoded; write json.dumps(reference) "
                    "(as `autothink data coldstart` does), e.g. \"\\\"42\\\"\" for the string 42")
    difficulty = record.get("difficulty")
    if difficulty is not None and (isinstance(difficulty, bool) or not isinstance(difficulty, (int, float))):
        return f"`difficulty` must be a number or null, got {difficulty!r}"
    for name in ("prior_mode", "directive"):
        if record.get(name) not in (*MODES, None):
            return f"`{name}` must be 'on', 'off' or null, got {record.get(name)!r}"
    if record.get("domain") is not None and not isinstance(record["domain"], str):
        return f"`domain` must be a string or null, got {record['domain']!r}"
    return None


def read_rl_prompts(path: str | os.PathLike) -> list[dict]:
    """Rows of an RL prompts file, checked and normalised.

    Returns:
        `[{"id": str, "prompt": [messages], "verifier": str, "reference": str (JSON),
        "difficulty": float | None, "domain": str, "prior_mode" and "directive": "on" | "off" | None}]` in
        file order (the reference stays JSON-encoded: one string column, whatever its kind).

    Raises:
        FileNotFoundError: no such file.
        RecordError (a ValueError): invalid JSON or a bad row; names the file, the line and
            the record id of the first bad row, what is wrong, and how many more there are.
        ValueError: no rows.
    """
    rows, bad, seen = [], [], {}
    for line, record in read_jsonl(path):
        problem = _check_record(record)
        rid = str(record.get("id"))
        if problem is None and rid in seen:
            problem = f"duplicate id (first at line {seen[rid]})"
        if problem:
            bad.append((line, record.get("id"), problem))
            continue
        seen[rid] = line
        reference = record["reference"]
        rows.append({
            "id": rid,
            "prompt": as_messages(record["prompt"], "prompt", string_role="user"),
            "verifier": record["verifier"],
            "reference": reference if isinstance(reference, str) else json.dumps(reference),
            "difficulty": None if record.get("difficulty") is None else float(record["difficulty"]),
            "domain": record.get("domain") or "unknown",
            "prior_mode": record.get("prior_mode"),
            "directive": record.get("directive"),
        })
    if bad:
        raise bad_records_error(path, bad)
    if not rows:
        raise ValueError(f"{path}: no RL prompts")
    return rows


