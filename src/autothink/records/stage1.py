"""`stage1.jsonl` (written by `autothink data synth`, read by `autothink distill`).

    {"id", "prompt": [messages] | str, "completion": [{"role": "assistant", "content": "<think_on>..."}], "mode"}

The completion starts with its regime trigger (`<think_on>` / `<think_off>`); `mode`, when
present, must agree with it.
"""
from __future__ import annotations

import hashlib
import json
import os

from autothink.format import MODE_TOKENS
from autothink.records.jsonl import RecordError, read_jsonl
from autothink.records.messages import as_messages

REGIMES = {token: mode for mode, token in MODE_TOKENS.items()}  # "<think_on>" -> "on"


def load_stage1(path: str | os.PathLike, n: int | None = None) -> list[dict]:
    """Stage-1 rows as `{"id", "prompt", "regime", "trigger", "body", "sha"}` (the first `n`).

    Raises:
        FileNotFoundError: no such file. RecordError: a bad row (file, line, field named): no
            trigger at the start of the completion, a `mode` that contradicts it, a duplicate id.
    """
    rows, seen = [], {}
    for line, obj in read_jsonl(path):
        try:
            if not isinstance(obj.get("id"), (str, int)):
                raise ValueError("field 'id': missing (a string or an integer)")
            prompt = as_messages(obj.get("prompt"), "prompt", string_role="user")
            completion = as_messages(obj.get("completion"), "completion", string_role="assistant")
            if len(completion) != 1 or completion[0]["role"] != "assistant":
                raise ValueError("field 'completion': expected exactly one assistant message")
            content = completion[0]["content"].lstrip()
            trigger = next((t for t in REGIMES if content.startswith(t)), None)
            if trigger is None:
                raise ValueError(f"field 'completion': must start with a regime trigger {' or '.join(REGIMES)}")
            if obj.get("mode") not in (None, REGIMES[trigger]):
                raise ValueError(f"field 'mode': {obj['mode']!r} contradicts the completion's trigger {trigger}")
        except ValueError as err:
            raise RecordError(path, line, str(err)) from None
        key = str(obj["id"])
        if key in seen:
            raise RecordError(path, line, f"duplicate id {key!r} (first on line {seen[key]})")
        seen[key] = line
        sha = hashlib.sha256(json.dumps([prompt, content], ensure_ascii=False).encode()).hexdigest()[:16]
        rows.append({"id": key, "prompt": prompt, "regime": REGIMES[trigger], "trigger": trigger,
                     "body": content[len(trigger):], "sha": sha})
    return rows[:n]
