"""Agent trajectories (KAT-Coder §2.1): the record, its LLM calls, failed tool calls, and tokens to train on.

A trajectory file is JSONL, one run per line, in OpenAI chat form:

    {"id": "run-1",
     "tools": [{"type": "function", "function": {"name", "description", "parameters"}}],
     "messages": [{"role": "system" | "user", "content"},
                  {"role": "assistant", "content", "tool_calls": [{"id", "type": "function",
                                                                    "function": {"name", "arguments"}}]},
                  {"role": "tool", "tool_call_id", "name", "content",
                   "is_error": bool, "exit_code": int, "rejected": bool},     # the last three optional
                  ...],
     "events": [{"type": "compaction" | "condensation" | "truncation" | "mode_switch",
                 "at": 7, "context": [messages]}],                             # optional
     "outcome": {"passed": bool, "reward": float}, "source": "...", "metadata": {...}}  # optional

An event rewrites the history: from `messages[at]` on, the model saw `context` in place of
`messages[:at]` (a summary after a compaction, the kept events after a condensation, a new system
prompt after a mode switch). `llm_calls` turns a trajectory into what the model actually did:
one `LLMCall` per assistant message, with the exact context it saw. `tokenize_calls` renders
those with the model's own chat template and `tools=` and cuts them into sub-trajectories (TST):
a call whose rendered context extends the previous call's tokens continues its sub-trajectory,
any rewrite (an event, or a template that drops earlier reasoning) starts a new one; in the
prefix trie the pieces are branches of one tree. Each completion gets loss exactly once.

Error-masked SFT: a completion that issued a failed tool call gets no loss (it stays in the
context of the calls after it, so the self-correction that follows is trained). A call failed
when, in this order: its tool message says so (`is_error`, a non-zero `exit_code`); else the
result's text has a failure marker (`exit code N` with N != 0, a line starting `ERROR:`, a JSON
`{"error": ...}`, a Python traceback); else a user rule says so. A user rejection (`rejected`) is
not a failure unless asked. Tool outputs never get loss.
"""
from __future__ import annotations

import copy
import importlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from autothink.records.jsonl import RecordError, read_jsonl, write_jsonl
from autothink.tasks.tool_calls import chat_message

logger = logging.getLogger(__name__)

EVENT_TYPES = ("compaction", "condensation", "truncation", "mode_switch")
_ROLES = ("system", "user", "assistant", "tool")
# Markers of a failed call in a tool result's text (the explicit flags are read first).
FAILURE_MARKERS = (
    ("exit code", re.compile(r"exit code:?\s*(-?[1-9]\d*)", re.IGNORECASE)),
    ("ERROR:", re.compile(r"^\s*ERROR:", re.MULTILINE)),
    ("traceback", re.compile(r"^Traceback \(most recent call last\):", re.MULTILINE)),
)
FailureRule = Callable[[dict, dict], "bool | None"]


@dataclass
class Trajectory:
    """One agent run: OpenAI chat messages, tool schemas, context rewrites, and how it ended."""

    id: str
    messages: list[dict]
    tools: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    outcome: dict = field(default_factory=dict)
    source: str = ""
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"id": self.id, "messages": self.messages, "tools": self.tools}
        for name in ("events", "outcome", "source", "metadata"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        return out


@dataclass
class LLMCall:
    """One assistant turn: the context the model saw and what it wrote.

    `failed` names why a tool call of this turn failed (None: none did); `segment` counts the
    context rewrites (events) before it.
    """

    index: int
    context: list[dict]
    completion: dict
    failed: str | None = None
    rejected: bool = False
    segment: int = 0

    @property
    def trained(self) -> bool:
        return self.failed is None


# --------------------------------------------------------------------------- validation


def _check_message(message, where: str) -> None:
    if not isinstance(message, dict):
        raise ValueError(f"{where}: expected an object, got {type(message).__name__}")
    role = message.get("role")
    if role not in _ROLES:
        raise ValueError(f"{where}.role: expected one of {', '.join(_ROLES)}, got {role!r}")
    content = message.get("content")
    calls = message.get("tool_calls")
    if role == "assistant" and calls:
        if content is not None and not isinstance(content, str):
            raise ValueError(f"{where}.content: expected a string or null")
        if not isinstance(calls, list):
            raise ValueError(f"{where}.tool_calls: expected a list")
        for j, call in enumerate(calls):
            at = f"{where}.tool_calls[{j}]"
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                raise ValueError(f"{at}.function: missing (expected {{name, arguments}})")
            if not isinstance(function.get("name"), str) or not function["name"]:
                raise ValueError(f"{at}.function.name: expected a non-empty string")
            if not isinstance(function.get("arguments", {}), (str, dict)):
                raise ValueError(f"{at}.function.arguments: expected a JSON string or an object")
            if "id" in call and not isinstance(call["id"], str):
                raise ValueError(f"{at}.id: expected a string")
    elif not isinstance(content, str):
        raise ValueError(f"{where}.content: expected a string")
    if role == "tool":
        for name, kind in (("is_error", bool), ("rejected", bool), ("exit_code", int), ("tool_call_id", str)):
            value = message.get(name)
            if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
                raise ValueError(f"{where}.{name}: expected {kind.__name__}, got {value!r}")


def check_trajectory(data: dict) -> Trajectory:
    """A `Trajectory` from a JSON object.

    Raises:
        ValueError: a missing or ill-typed field, named by its path (`messages[3].tool_calls[0].function.name`).
    """
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    unknown = set(data) - set(Trajectory.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}")
    if not isinstance(data.get("id"), str) or not data["id"]:
        raise ValueError("id: expected a non-empty string")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages: expected a non-empty list")
    for i, message in enumerate(messages):
        _check_message(message, f"messages[{i}]")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("messages: no assistant message (nothing to train on)")
    tools = data.get("tools", [])
    if not isinstance(tools, list):
        raise ValueError("tools: expected a list of tool schemas")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError(f"tools[{i}]: expected {{type: function, function: {{name, description, parameters}}}}")
    events = data.get("events", [])
    if not isinstance(events, list):
        raise ValueError("events: expected a list")
    last = 0
    for i, event in enumerate(events):
        if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
            raise ValueError(f"events[{i}].type: expected one of {', '.join(EVENT_TYPES)}")
        at = event.get("at")
        if isinstance(at, bool) or not isinstance(at, int) or not last <= at <= len(messages):
            raise ValueError(f"events[{i}].at: expected an index from {last} to {len(messages)} (events in order), "
                             f"got {at!r}")
        last = at
        context = event.get("context")
        if not isinstance(context, list):
            raise ValueError(f"events[{i}].context: expected the list of messages the model saw instead")
        for j, message in enumerate(context):
            _check_message(message, f"events[{i}].context[{j}]")
    for name, kind in (("outcome", dict), ("metadata", dict), ("source", str)):
        if name in data and not isinstance(data[name], kind):
            raise ValueError(f"{name}: expected {'an object' if kind is dict else 'a string'}")
    trajectory = Trajectory(**{k: copy.deepcopy(v) for k, v in data.items()})
    _pair_tool_messages(trajectory)
    return trajectory


def _pair_tool_messages(trajectory: Trajectory) -> None:
    """Give every tool message the id of the call it answers (formats that omit it answer in order).

    Raises:
        ValueError: a tool message that answers no pending call.
    """
    pending: list[str] = []
    for i, message in enumerate(trajectory.messages):
        if message["role"] == "assistant":
            pending = []
            for j, call in enumerate(message.get("tool_calls") or []):
                call.setdefault("id", f"call_{i}_{j}")
                call.setdefault("type", "function")
                pending.append(call["id"])
        elif message["role"] == "tool":
            wanted = message.get("tool_call_id")
            if wanted is None and pending:
                message["tool_call_id"] = wanted = pending[0]
            if wanted not in pending:
                raise ValueError(f"messages[{i}].tool_call_id: {wanted!r} answers no pending tool call of the "
                                 f"assistant message before it (pending: {pending or 'none'})")
            pending.remove(wanted)
        else:
            pending = []


def load_trajectories(path: str | os.PathLike) -> list[Trajectory]:
    """Read a trajectory JSONL file.

    Raises:
        FileNotFoundError: no such file.
        RecordError: a bad line, naming the file, the line, the trajectory id and the field; or a
            duplicate id; or a file with no trajectories.
    """
    out, seen, raised = [], {}, []
    for line, data in read_jsonl(path):
        if data.get("status") == "error" and "messages" not in data:
            raised.append(data.get("id"))  # an `agent collect` episode that raised: reported, retried on rerun
            continue
        try:
            trajectory = check_trajectory(data)
        except ValueError as err:
            raise RecordError(path, line, f"trajectory {data.get('id')!r}: {err}") from None
        if trajectory.id in seen:
            raise RecordError(path, line, f"duplicate id {trajectory.id!r} (first on line {seen[trajectory.id]})")
        seen[trajectory.id] = line
        out.append(trajectory)
    if raised:
        logger.warning("%s: %d episodes that raised are left out (e.g. %r); rerun `agent collect` to retry them",
                       path, len(raised), raised[0])
    if not out:
        raise RecordError(path, 0, "no trajectories")
    return out


def save_trajectories(trajectories: list[Trajectory], path: str | os.PathLike) -> int:
    return write_jsonl(path, (t.to_dict() for t in trajectories))


# --------------------------------------------------------------------------- failed calls and LLM calls


def load_rule(spec: str | None) -> FailureRule | None:
    """A user failure rule from `"package.module:function"`: `rule(tool_message, tool_call) -> bool | None`
    (None: no opinion). Raises ValueError when it cannot be imported."""
    if not spec:
        return None
    module, _, name = spec.partition(":")
    try:
        rule = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"failure_rule {spec!r}: cannot import it ({err}); "
                         "expected 'package.module:function'") from None
    if not callable(rule):
        raise ValueError(f"failure_rule {spec!r} is not callable")
    return rule


def failure(tool_message: dict, tool_call: dict | None = None, rule: FailureRule | None = None) -> str | None:
    """Why a tool call failed, from its result message, or None when it did not.

    Explicit flags first (`is_error`, `exit_code`), then the text markers, then `rule`.
    """
    if tool_message.get("is_error") is True:
        return "is_error"
    if tool_message.get("exit_code") not in (None, 0):
        return f"exit_code {tool_message['exit_code']}"
    if tool_message.get("is_error") is False or tool_message.get("exit_code") == 0:
        return None
    text = tool_message.get("content") or ""
    try:
        parsed = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        parsed = None
    if isinstance(parsed, dict) and "error" in parsed:
        return "error object"
    for name, pattern in FAILURE_MARKERS:
        if pattern.search(text):
            return name
    if rule is not None and rule(tool_message, tool_call or {}):
        return "rule"
    return None


def llm_calls(trajectory: Trajectory, rule: FailureRule | None = None, mask_rejections: bool = False) -> list[LLMCall]:
    """One `LLMCall` per assistant message, each with the context the model saw (events applied)."""
    events = {e["at"]: e for e in trajectory.events}
    context: list[dict] = []
    calls: list[LLMCall] = []
    results: dict[str, dict] = {m["tool_call_id"]: m for m in trajectory.messages if m["role"] == "tool"}
    segment = 0
    for i, message in enumerate(trajectory.messages):
        if i in events:
            context, segment = list(events[i]["context"]), segment + 1
        if message["role"] == "assistant":
            call = LLMCall(index=i, context=list(context), completion=message, segment=segment)
            for tool_call in message.get("tool_calls") or []:
                result = results.get(tool_call["id"])
                if result is None:
                    continue  # the run ended before the result came back
                if result.get("rejected"):
                    call.rejected = True
                    if not mask_rejections:
                        continue
                    call.failed = call.failed or "rejected"
                call.failed = call.failed or failure(result, tool_call, rule)
            calls.append(call)
        context.append(message)
    return calls


# --------------------------------------------------------------------------- rendering and tokens


@dataclass
class Tokenized:
    """A trajectory's training sequences (one per sub-trajectory) and what went into them."""

    sequences: list[list[int]]
    weights: list[list[float]]
    stats: Counter


def tokenize_calls(calls: list[LLMCall], tokenizer, tools: list[dict] | None = None,
                   max_length: int | None = None) -> Tokenized:
    """Render each call with the tokenizer's chat template and cut the calls into sub-trajectories.

    Each call is rendered once as context + completion (`apply_chat_template`, `tools=`) and
    tokenised once; its completion tokens are those after the rendered generation prompt (weight
    1, or 0 for a failed call), everything before is context (weight 0). A call whose tokens
    start with the previous sub-trajectory's tokens extends it, else it starts a new one.

    Stats: `calls`, `trained_calls`, `failed_calls`, `rejected_calls`, `completion_tokens`,
    `masked_tokens` (completion tokens of failed calls), `subtrajectories`, `rewrites` (calls that
    started a new sub-trajectory after the first), `too_long_calls` (longer than `max_length`:
    left out, their context cannot be trained whole).

    Raises:
        ValueError: a template whose rendering of a call does not start with its generation prompt.
    """
    tools = tools or None
    sequences: list[list[int]] = []
    weights: list[list[float]] = []
    stats: Counter = Counter()
    for call in calls:
        context = [chat_message(m) for m in call.context]
        prompt = tokenizer.apply_chat_template(context, tools=tools, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(context + [chat_message(call.completion)], tools=tools, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError(f"messages[{call.index}]: the chat template renders this assistant turn differently from "
                             "the generation prompt it follows; its completion cannot be located")
        encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoding["input_ids"])
        completion = [end > len(prompt) for _, end in encoding["offset_mapping"]]
        stats["calls"] += 1
        stats["failed_calls"] += call.failed is not None
        stats["rejected_calls"] += call.rejected
        stats["completion_tokens"] += sum(completion)
        if max_length is not None and len(ids) > max_length:
            stats["too_long_calls"] += 1
            continue
        weight = [float(c and call.trained) for c in completion]
        stats["trained_calls"] += call.trained
        stats["masked_tokens"] += 0 if call.trained else sum(completion)
        last = sequences[-1] if sequences else None
        if last is not None and len(ids) >= len(last) and ids[:len(last)] == last:
            sequences[-1] = ids
            weights[-1] = weights[-1] + weight[len(last):]
            continue
        stats["rewrites"] += last is not None
        sequences.append(ids)
        weights.append(weight)
    stats["subtrajectories"] = len(sequences)
    return Tokenized(sequences, weights, stats)


def tool_stats(trajectory: Trajectory, rule: FailureRule | None = None) -> dict[str, Any]:
    """Tool calls made, failed (by the same rule as the mask) and rejected in one trajectory."""
    results = {m["tool_call_id"]: m for m in trajectory.messages if m["role"] == "tool"}
    counts = Counter()
    for message in trajectory.messages:
        for call in message.get("tool_calls") or []:
            counts["tool_calls"] += 1
            result = results.get(call["id"])
            if result is not None and result.get("rejected"):
                counts["rejected_tool_calls"] += 1
            elif result is not None and failure(result, call, rule):
                counts["failed_tool_calls"] += 1
    return dict(counts)
