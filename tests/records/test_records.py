"""Records: the one message check, the keyed append-only log that resumes after a kill, atomic writes."""
import json
import re

import pytest

from autothink.records import (
    RecordError,
    as_messages,
    load_done,
    read_jsonl,
    write_jsonl,
)
from autothink.records.messages import message_text


def test_as_messages_normalises_and_names_what_is_wrong():
    got = as_messages([{"role": "user", "content": "Hi", "name": "x"}, {"role": "assistant", "content": ""}])
    assert got == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]
    assert as_messages("Hi", "prompt", string_role="user") == [{"role": "user", "content": "Hi"}]
    cases = [
        (None, {}, "field 'messages' must be a non-empty list of {role, content} messages (missing)"),
        ([], {}, "(empty)"),
        ("Hi", {}, "(a str)"),
        ("  ", {"string_role": "user"}, "field 'messages' is an empty string"),
        ([{"role": "user", "content": 3}], {}, "field 'messages': message 0 must be an object with a role"),
        ([{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}], {}, "message 1"),
        ([{"role": "tool", "content": "b"}], {"roles": ("user",)}, "a role (user)"),
    ]
    for value, options, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            as_messages(value, **options)
    assert message_text([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a\nb"


def test_load_done_cuts_a_torn_line_and_the_last_record_of_a_key_wins(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps({"id": "a", "v": 1}) + "\n" + json.dumps({"id": "a", "v": 2}) + "\n" + '{"id": "b", "v"')
    assert load_done(path) == {"a": {"id": "a", "v": 2}}
    assert path.read_text().endswith("\n") and len(path.read_text().splitlines()) == 2  # the torn tail is gone
    assert load_done(tmp_path / "missing.jsonl") == {}
    steps = tmp_path / "steps.jsonl"
    write_jsonl(steps, [{"step": 1, "x": 0}, {"step": 1, "x": 1}, {"step": 0, "x": 2}])
    assert load_done(steps, key="step") == {1: {"step": 1, "x": 1}, 0: {"step": 0, "x": 2}}
    with pytest.raises(RecordError, match="cannot resume"):
        load_done(steps, key="id")


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n[1, 2]\n')
    with pytest.raises(RecordError, match=rf"{path}:3: expected a JSON object, got list"):
        list(read_jsonl(path))
    path.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(RecordError, match=rf"{path}:2: invalid JSON"):
        list(read_jsonl(path))
