"""SFT data (`coldstart.jsonl`, written by `autothink data coldstart`, read by `autothink sft`).

    {"id", "messages": [..., {"role": "assistant", "content": "<judge>..</judge><think_on|off>..</answer>"}], "mode"}

The last message is the assistant's well-formed AutoThink response (the training target); the
messages before it are the prompt. `mode`, when present, must agree with the response.
"""
from __future__ import annotations

import os

from autothink.format import parse
from autothink.records.jsonl import bad_records_error, read_jsonl
from autothink.records.messages import as_messages


def check_record(record: dict) -> str | None:
    """What is wrong with one SFT row, or None when it is usable."""
    try:
        messages = as_messages(record.get("messages"))
    except ValueError as err:
        return str(err)
    last = len(messages) - 1
    if messages[last]["role"] != "assistant":
        return (f"the last message must be the assistant's response; "
                f"messages[{last}] has role {messages[last]['role']!r}")
    if last == 0:
        return "no prompt: the assistant response is the only message"
    parsed = parse(messages[last]["content"])
    if not parsed.well_formed:
        return (f"messages[{last}] (assistant) is not a well-formed AutoThink response: " + "; ".join(parsed.errors))
    mode = record.get("mode")
    if mode is not None and mode != parsed.mode:
        return f"`mode` is {mode!r} but the response is think-{parsed.mode}"
    return None


def read_sft_data(path: str | os.PathLike) -> list[dict]:
    """Rows of an SFT file as TRL conversational prompt-completion examples.

    Returns:
        `[{"id", "mode", "prompt": [messages...], "completion": [assistant message]}]` in file order.

    Raises:
        FileNotFoundError: no such file.
        RecordError (a ValueError): invalid JSON, or records not in the format; the message names the
            file, the line and the record id of the first bad record, what is wrong, and how many
            more bad records there are (nothing is skipped silently).
        ValueError: the file holds no records.
    """
    examples, bad = [], []
    for line, record in read_jsonl(path):
        problem = check_record(record)
        if problem:
            bad.append((line, record.get("id"), problem))
            continue
        messages = as_messages(record["messages"])
        examples.append({"id": str(record.get("id", f"line{line}")), "mode": parse(messages[-1]["content"]).mode,
                         "prompt": messages[:-1], "completion": messages[-1:]})
    if bad:
        raise bad_records_error(path, bad)
    if not examples:
        raise ValueError(f"{path}: no SFT records")
    return examples
