"""Importers of agent logs into trajectory records (`tasks.trajectory`): `autothink agent import`.

- `openai`: JSONL rows with a chat list in `messages` (or `trajectory`, `conversation`) and
  optional `tools` (a list or its JSON string): SWE-smith, SWE-Gym and nebius dumps. Content as a
  list of text parts is joined; `resolved` / `passed` / `reward` become the outcome.
- `openhands`: an OpenHands event log (a JSON array of events, or JSONL rows with a `history`
  of events, as its eval output writes). Actions with `tool_call_metadata` become assistant tool
  calls (one assistant message per LLM response), observations become tool messages with
  `exit_code` from `extras.metadata.exit_code` and `is_error` for `"observation": "error"`; a
  `condensation` action becomes an event whose context is the kept messages with the summary
  inserted at `summary_offset`.
- `claude-code`: a Claude Code session JSONL. The main chain is the `parentUuid` path to the last
  message (a `compact_boundary` continues through `logicalParentUuid` and becomes a compaction
  event whose summary message starts the new context); each sidechain (subagent) is a trajectory
  of its own. `tool_result.is_error` is the failure flag, except for user rejections and
  permission denials, which are marked `rejected`. Tool schemas are not logged: they are
  inferred from the calls (names and argument types).

Every importer raises `RecordError` naming the file, the line (or event) and the field.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from autothink.records.jsonl import RecordError, read_jsonl
from autothink.tasks.trajectory import Trajectory, check_trajectory, save_trajectories

FORMATS = ("openai", "openhands", "claude-code")


def _text(content) -> str:
    """Text of a content field: a string, or a list of `{"type": "text", "text"}` parts (others dropped)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def _finish(path, where, data: dict) -> Trajectory:
    try:
        return check_trajectory(data)
    except ValueError as err:
        raise RecordError(path, where, f"trajectory {data.get('id')!r}: {err}") from None


# --------------------------------------------------------------------------- OpenAI-style JSONL


def import_openai(path) -> list[Trajectory]:
    out = []
    for line, row in read_jsonl(path):
        key = next((k for k in ("messages", "trajectory", "conversation", "conversations") if k in row), None)
        if key is None:
            raise RecordError(path, line, "no chat list: expected a `messages` (or `trajectory`) field")
        messages = row[key]
        if isinstance(messages, str):
            try:
                messages = json.loads(messages)
            except json.JSONDecodeError:
                raise RecordError(path, line, f"field {key!r} is a string that is not JSON") from None
        if not isinstance(messages, list):
            raise RecordError(path, line, f"field {key!r}: expected a list of messages")
        messages = [{**m, "content": _text(m.get("content")) if m.get("content") is not None
                     or m.get("role") != "assistant" else None} if isinstance(m, dict) else m for m in messages]
        tools = row.get("tools") or []
        if isinstance(tools, str):
            try:
                tools = json.loads(tools)
            except json.JSONDecodeError:
                raise RecordError(path, line, "field 'tools' is a string that is not JSON") from None
        outcome = {}
        for name, target in (("resolved", "passed"), ("passed", "passed"), ("reward", "reward")):
            if isinstance(row.get(name), (bool, int, float)):
                outcome[target] = row[name]
        rid = next((row[k] for k in ("id", "instance_id", "trajectory_id") if isinstance(row.get(k), str)), None)
        metadata = {k: row[k] for k in ("instance_id", "exit_status", "model_patch") if k in row}
        out.append(_finish(path, line, {"id": rid or f"line{line}", "messages": messages, "tools": tools,
                                        "outcome": outcome, "source": "openai", "metadata": metadata}))
    return out


# --------------------------------------------------------------------------- OpenHands events


def _openhands_events(path) -> list[tuple[str, int, list]]:
    """(trajectory id, line, events) of each log in the file."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            events = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecordError(path, err.lineno, f"invalid JSON ({err.msg})") from None
        return [(Path(path).stem, 0, events)]
    out = []
    for line, row in read_jsonl(path):
        if not isinstance(row.get("history"), list):
            raise RecordError(path, line, "expected a `history` list of OpenHands events (or a JSON array file)")
        out.append((str(row.get("instance_id") or row.get("id") or f"line{line}"), line, row["history"]))
    return out


def _condense(view: list[tuple[dict, object]], event: dict) -> list[tuple[dict, object]]:
    """The model's view after a condensation: the events it keeps, the summary at `summary_offset`."""
    args = event.get("args") or {}
    forgotten = set(args.get("forgotten_event_ids") or [])
    if args.get("forgotten_events_start_id") is not None and args.get("forgotten_events_end_id") is not None:
        forgotten |= set(range(args["forgotten_events_start_id"], args["forgotten_events_end_id"] + 1))
    if not forgotten and not args.get("summary"):
        raise ValueError("args: a condensation that forgets no events and has no summary")
    kept = [(m, origin) for m, origin in view if origin not in forgotten]
    issued = {c.get("id") for m, _ in kept for c in m.get("tool_calls") or []}
    kept = [(m, o) for m, o in kept if m["role"] != "tool" or m.get("tool_call_id") in issued]  # as OpenHands does
    if args.get("summary"):
        offset = args.get("summary_offset")
        offset = len(kept) if not isinstance(offset, int) else max(0, min(offset, len(kept)))
        kept.insert(offset, ({"role": "user", "content": args["summary"]}, None))
    return kept


def _openhands_trajectory(tid: str, events: list, path, line) -> Trajectory:
    messages: list[dict] = []  # every message in order, as the trajectory records them
    view: list[tuple[dict, object]] = []  # what the model sees now, with the event each message came from
    rewrites: list[dict] = []
    tools: list[dict] = []
    responses: set[str] = set()
    for n, event in enumerate(events):
        where = f"history[{n}]"
        if not isinstance(event, dict):
            raise RecordError(path, line, f"trajectory {tid!r}: {where}: expected an event object")
        eid, action, source = event.get("id", n), event.get("action"), event.get("source")
        meta = event.get("tool_call_metadata") or {}
        try:
            if action == "system":
                args = event.get("args") or {}
                tools = args.get("tools") or tools
                message = {"role": "system", "content": _text(args.get("content") or event.get("message"))}
            elif action == "condensation":
                view = _condense(view, event)
                rewrites.append({"type": "condensation", "at": len(messages), "context": [m for m, _ in view]})
                continue
            elif action is not None and meta:
                response = meta.get("model_response") or {}
                key = response.get("id") or f"event{eid}"
                if key in responses:
                    continue  # one assistant message per LLM response, however many actions it made
                responses.add(key)
                choice = ((response.get("choices") or [{}])[0] or {}).get("message") or {}
                calls = choice.get("tool_calls") or [{
                    "id": meta.get("tool_call_id"), "type": "function",
                    "function": {"name": meta.get("function_name") or action,
                                 "arguments": json.dumps(event.get("args") or {})}}]
                message = {"role": "assistant", "content": _text(choice.get("content")) or None,
                           "tool_calls": [{"id": c.get("id"), "type": "function", "function": c.get("function")}
                                          for c in calls]}
            elif action == "message":
                message = {"role": "assistant" if source == "agent" else "user",
                           "content": _text((event.get("args") or {}).get("content") or event.get("message"))}
            elif event.get("observation") is not None and meta:
                extras = event.get("extras") or {}
                message = {"role": "tool", "tool_call_id": meta.get("tool_call_id"),
                           "name": meta.get("function_name"), "content": _text(event.get("content"))}
                exit_code = (extras.get("metadata") or {}).get("exit_code")
                if isinstance(exit_code, int) and exit_code >= 0:  # -1: OpenHands did not get one
                    message["exit_code"] = exit_code
                if event.get("observation") == "error":
                    message["is_error"] = True
            else:
                continue  # state changes, recalls, and other events the model never saw
        except (TypeError, ValueError, AttributeError) as err:
            raise RecordError(path, line, f"trajectory {tid!r}: {where}: {err}") from None
        messages.append(message)
        view.append((message, eid))
    return _finish(path, line, {"id": tid, "messages": messages, "tools": tools, "events": rewrites,
                                "source": "openhands"})


def import_openhands(path) -> list[Trajectory]:
    return [_openhands_trajectory(tid, events, path, line) for tid, line, events in _openhands_events(path)]


# --------------------------------------------------------------------------- Claude Code sessions

REJECTION_MARKERS = ("The user doesn't want to proceed with this tool use", "[Request interrupted by user",
                     "requested permissions to", "Permission to use")


def _infer_tools(messages: list[dict]) -> list[dict]:
    """Tool schemas from the calls (Claude Code does not log them): names and argument types."""
    kinds = {str: "string", bool: "boolean", int: "integer", float: "number", list: "array", dict: "object"}
    tools: dict[str, dict] = {}
    for message in messages:
        for call in message.get("tool_calls") or []:
            props = tools.setdefault(call["function"]["name"], {})
            for key, value in json.loads(call["function"]["arguments"]).items():
                props.setdefault(key, {"type": kinds.get(type(value), "string")})
    return [{"type": "function", "function": {"name": name, "description": "",
                                              "parameters": {"type": "object", "properties": props}}}
            for name, props in sorted(tools.items())]


def _claude_messages(entry: dict) -> list[dict]:
    """The chat messages of one session line (a user line may hold several tool results)."""
    message = entry.get("message") or {}
    content = message.get("content")
    if entry.get("type") == "assistant":
        blocks = content if isinstance(content, list) else [{"type": "text", "text": _text(content)}]
        text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
        thinking = "".join(b.get("thinking", "") for b in blocks if b.get("type") == "thinking")
        calls = [{"id": b["id"], "type": "function", "function": {"name": b["name"],
                                                                  "arguments": json.dumps(b.get("input") or {})}}
                 for b in blocks if b.get("type") == "tool_use"]
        out = {"role": "assistant", "content": text or (None if calls else "")}
        if calls:
            out["tool_calls"] = calls
        if thinking:
            out["reasoning_content"] = thinking
        return [out]
    if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
        out = []
        for block in content:
            if block.get("type") != "tool_result":
                continue
            text = _text(block.get("content"))
            result = {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}
            if any(marker in text for marker in REJECTION_MARKERS):
                result["rejected"] = True
            elif isinstance(block.get("is_error"), bool):
                result["is_error"] = block["is_error"]
            out.append(result)
        return out
    return [{"role": "user", "content": _text(content)}]


def _merge_assistant(messages: list[tuple[dict, dict]]) -> list[tuple[dict, dict]]:
    """Claude Code writes one line per content block of a reply: join lines of one `message.id`."""
    out: list[tuple[dict, dict]] = []
    for entry, message in messages:
        previous = out[-1] if out else None
        same = (previous is not None and message["role"] == "assistant" and previous[1]["role"] == "assistant"
                and (entry.get("message") or {}).get("id") is not None
                and (entry.get("message") or {}).get("id") == (previous[0].get("message") or {}).get("id"))
        if not same:
            out.append((entry, message))
            continue
        merged = dict(previous[1])
        merged["content"] = ((merged.get("content") or "") + (message.get("content") or "")) or None
        merged["tool_calls"] = (merged.get("tool_calls") or []) + (message.get("tool_calls") or [])
        if not merged["tool_calls"]:
            del merged["tool_calls"]
            merged["content"] = merged["content"] or ""
        if message.get("reasoning_content"):
            merged["reasoning_content"] = (merged.get("reasoning_content") or "") + message["reasoning_content"]
        out[-1] = (previous[0], merged)
    return out


def _claude_trajectory(tid: str, chain: list[tuple[int, dict]], path) -> Trajectory:
    messages, events, pending_compaction = [], [], False
    pairs = []
    for line, entry in chain:
        if entry.get("type") == "system" and entry.get("subtype") == "compact_boundary":
            pending_compaction = True
            continue
        if entry.get("type") not in ("user", "assistant"):
            continue
        for message in _claude_messages(entry):
            pairs.append(({**entry, "_compact": pending_compaction, "_line": line}, message))
            pending_compaction = False
    for entry, message in _merge_assistant(pairs):
        if entry["_compact"] or entry.get("isCompactSummary"):
            if not events or events[-1]["at"] != len(messages):
                events.append({"type": "compaction", "at": len(messages), "context": []})
        messages.append(message)
    first = chain[0][0] if chain else 0
    return _finish(path, first, {"id": tid, "messages": messages, "tools": _infer_tools(messages), "events": events,
                                 "source": "claude-code"})


def import_claude_code(path) -> list[Trajectory]:
    entries = [(line, e) for line, e in read_jsonl(path)]
    by_uuid = {e["uuid"]: (line, e) for line, e in entries if isinstance(e.get("uuid"), str)}
    session = next((e.get("sessionId") for _, e in entries if e.get("sessionId")), Path(path).stem)

    def chain_to(line_entry) -> list[tuple[int, dict]]:
        chain, seen = [], set()
        while line_entry is not None:
            line, entry = line_entry
            if entry.get("uuid") in seen:
                raise RecordError(path, line, f"parentUuid cycle at uuid {entry.get('uuid')!r}")
            seen.add(entry.get("uuid"))
            chain.append(line_entry)
            parent = entry.get("parentUuid") or entry.get("logicalParentUuid")
            if parent is not None and parent not in by_uuid:
                raise RecordError(path, line, f"parentUuid {parent!r} names no message in the session")
            line_entry = by_uuid.get(parent) if parent else None
        return chain[::-1]

    def conversational(e):
        return e.get("type") in ("user", "assistant")

    main = [(line, e) for line, e in entries if conversational(e) and not e.get("isSidechain")]
    out = []
    if main:
        out.append(_claude_trajectory(str(session), chain_to(main[-1]), path))
    side = [(line, e) for line, e in entries if conversational(e) and e.get("isSidechain")]
    parents = {e.get("parentUuid") for _, e in side}
    leaves = [(line, e) for line, e in side if e.get("uuid") not in parents]
    for n, leaf in enumerate(leaves):
        chain = [c for c in chain_to(leaf) if c[1].get("isSidechain")]
        out.append(_claude_trajectory(f"{session}:sidechain{n}", chain, path))
    if not out:
        raise RecordError(path, 0, "no user or assistant messages in this session log")
    return out


IMPORTERS = {"openai": import_openai, "openhands": import_openhands, "claude-code": import_claude_code}


def import_trajectories(path: str | os.PathLike, fmt: str) -> list[Trajectory]:
    """Trajectories from one log file (or every file of a directory) in format `fmt` (`FORMATS`).

    Raises:
        ValueError: an unknown format. FileNotFoundError: no such path. RecordError: a bad log.
    """
    if fmt not in IMPORTERS:
        raise ValueError(f"unknown trajectory format {fmt!r}; choose from {', '.join(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {path}")
    files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl")) if path.is_dir() else [path]
    return [t for f in files for t in IMPORTERS[fmt](f)]


@dataclass
class ImportConfig:
    """`autothink agent import`: agent logs (OpenAI-style JSONL, OpenHands, Claude Code) to trajectory JSONL."""

    POSITIONAL = ("input",)
    input: str = field(default=None, metadata={"help": "a log file, or a directory of them"})
    format: str = field(default="openai", metadata={"help": "openai | openhands | claude-code"})
    output: str = field(default="runs/agent/trajectories.jsonl", metadata={"help": "trajectory JSONL to write"})


def run_import(config: ImportConfig) -> dict:
    """Import, check, and write the trajectories; returns counts (trajectories, messages, tool calls, events)."""
    if not config.input:
        raise ValueError("agent import needs an input file or directory")
    trajectories = import_trajectories(config.input, config.format)
    ids = Counter(t.id for t in trajectories)
    duplicated = [i for i, n in ids.items() if n > 1]
    if duplicated:
        raise ValueError(f"{config.input}: duplicate trajectory ids {duplicated[:5]} (one id per run)")
    save_trajectories(trajectories, config.output)
    counts = {"trajectories": len(trajectories), "messages": sum(len(t.messages) for t in trajectories),
              "tool_calls": sum(len(m.get("tool_calls") or []) for t in trajectories for m in t.messages),
              "events": sum(len(t.events) for t in trajectories), "output": config.output}
    print(f"agent import: {counts['trajectories']} trajectories, {counts['tool_calls']} tool calls, "
          f"{counts['events']} context rewrites -> {config.output}")
    return counts
