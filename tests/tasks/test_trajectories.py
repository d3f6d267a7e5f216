"""Agent trajectories: the record, the importers (on hand-written fixtures of each real format), failed
calls, the error mask token by token, and the sub-trajectories of rewritten contexts."""
import copy
import json
from pathlib import Path

import pytest

from autothink.cli import main
from autothink.records.jsonl import RecordError
from autothink.tasks.importers import import_trajectories
from autothink.tasks.tool_calls import chat_message, ensure_tool_template, parse_tool_calls, renders_tools
from autothink.tasks.trajectory import (
    check_trajectory,
    failure,
    llm_calls,
    load_trajectories,
    save_trajectories,
    tokenize_calls,
)

FIXTURES = Path(__file__).parent / "fixtures"
CALL = {"id": "c1", "type": "function", "function": {"name": "run_python", "arguments": '{"code": "print(1/0)"}'}}
FIX = {"id": "c2", "type": "function", "function": {"name": "run_python", "arguments": '{"code": "print(1)"}'}}
TOOLS = [{"type": "function", "function": {"name": "run_python", "description": "Run Python code.", "parameters": {
    "type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}}]
RUN = {"id": "t1", "tools": TOOLS, "messages": [
    {"role": "user", "content": "Print 1."},
    {"role": "assistant", "content": "Trying.", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "c1", "name": "run_python", "content": "ZeroDivisionError", "exit_code": 1},
    {"role": "assistant", "content": "Fixed the bug.", "tool_calls": [FIX]},
    {"role": "tool", "tool_call_id": "c2", "name": "run_python", "content": "1", "exit_code": 0},
    {"role": "assistant", "content": "It prints 1."}]}


@pytest.fixture(scope="module")
def tool_tokenizer(tokenizer):
    from autothink.format import install_chat_template

    tok = copy.deepcopy(tokenizer)
    install_chat_template(tok)
    assert ensure_tool_template(tok) and renders_tools(tok)
    return tok


# --------------------------------------------------------------------------- importers


def test_openai_import_reads_nebius_and_swe_smith_rows(tmp_path):
    first, second = import_trajectories(FIXTURES / "openai.jsonl", "openai")
    assert first.id == "astropy__astropy-12907" and first.outcome == {"passed": True}
    assert [t["function"]["name"] for t in first.tools] == ["execute_bash", "str_replace_editor"]  # from a JSON string
    assert first.messages[1]["content"].startswith("<uploaded_files>")  # text parts joined
    assert first.messages[3]["content"].endswith("[The command completed with exit code 0.]")
    assert first.metadata["model_patch"].startswith("diff --git")
    assert second.id == "swe-smith-0001" and second.outcome == {"reward": 1.0}
    assert [c.failed for c in llm_calls(first)] == [None, "ERROR:", None, "exit code", None]


def test_openhands_import_pairs_calls_results_and_condensation():
    (run,) = import_trajectories(FIXTURES / "openhands.json", "openhands")
    roles = [m["role"] for m in run.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "tool", "assistant", "tool",
                     "assistant"]
    assert run.tools and run.tools[0]["function"]["name"] == "execute_bash"
    two = run.messages[4]  # one LLM response with two calls becomes one assistant message
    assert [c["id"] for c in two["tool_calls"]] == ["call_B", "call_C"]
    assert run.messages[3]["exit_code"] == 1 and run.messages[6]["is_error"] is True
    assert run.messages[5].get("exit_code") is None  # a read observation has no exit code
    (event,) = run.events
    assert event["type"] == "condensation" and event["at"] == 7
    # events 3..6 forgotten; their orphaned results dropped; the summary at offset 2
    assert [m["role"] for m in event["context"]] == ["system", "user", "user"]
    assert event["context"][2]["content"].startswith("Tests fail with ZeroDivisionError")
    calls = llm_calls(run)
    assert [c.failed for c in calls] == ["exit_code 1", "is_error", None, None]
    assert calls[2].context == event["context"] and calls[2].segment == 1
    assert calls[3].context == event["context"] + run.messages[7:9]


def test_claude_code_import_follows_the_chain_through_compaction_and_splits_sidechains():
    main_run, side = import_trajectories(FIXTURES / "claude_code.jsonl", "claude-code")
    assert main_run.id == "5f1c2a9e-claude-session" and side.id == "5f1c2a9e-claude-session:sidechain0"
    first = main_run.messages[1]  # two lines of one reply (thinking, then the tool use) joined
    assert first["reasoning_content"] == "I should read cli.py first." and first["tool_calls"][0]["id"] == "toolu_r1"
    results = [m for m in main_run.messages if m["role"] == "tool"]
    assert [r.get("rejected", False) for r in results] == [False, True, False, False, False]
    assert [r.get("is_error") for r in results] == [None, None, True, None, None]
    (event,) = main_run.events
    assert event["type"] == "compaction" and event["context"] == []
    assert main_run.messages[event["at"]]["content"].startswith("This session is being continued")
    calls = llm_calls(main_run)
    assert [c.failed for c in calls] == [None, None, "is_error", None, None, None]  # the rejection is no failure
    assert calls[1].rejected and llm_calls(main_run, mask_rejections=True)[1].failed == "rejected"
    assert calls[4].context == [main_run.messages[event["at"]]]
    assert {t["function"]["name"] for t in main_run.tools} == {"Bash", "Edit", "Read", "Task"}
    assert [m["role"] for m in side.messages] == ["user", "assistant", "tool", "assistant"]
    assert side.tools[0]["function"]["parameters"]["properties"] == {"pattern": {"type": "string"},
                                                                      "path": {"type": "string"}}


@pytest.mark.parametrize("fmt, name", [("openai", "openai.jsonl"), ("openhands", "openhands.json"),
                                       ("claude-code", "claude_code.jsonl")])
def test_every_importer_round_trips_its_fixture_through_the_record_file(tmp_path, fmt, name, capsys):
    imported = import_trajectories(FIXTURES / name, fmt)
    out = tmp_path / "t.jsonl"
    assert main(["agent", "import", str(FIXTURES / name), "--format", fmt, "--output", str(out)]) == 0
    loaded = load_trajectories(out)
    assert [t.to_dict() for t in loaded] == [t.to_dict() for t in imported]
    save_trajectories(loaded, tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()
    assert f"{len(imported)} trajectories" in capsys.readouterr().out


def test_bad_logs_and_records_name_file_line_and_field(tmp_path, capsys):
    bad = copy.deepcopy(RUN)
    bad["messages"][3]["tool_calls"][0]["function"]["name"] = ""
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(RUN) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"bad.jsonl:2: .*'t1'.*messages\[3\]\.tool_calls\[0\]\.function\.name"):
        load_trajectories(path)
    orphan = copy.deepcopy(RUN)
    orphan["messages"][2]["tool_call_id"] = "nope"
    with pytest.raises(ValueError, match=r"messages\[2\]\.tool_call_id: 'nope' answers no pending tool call"):
        check_trajectory(orphan)
    late = {**copy.deepcopy(RUN), "events": [{"type": "compaction", "at": 99, "context": []}]}
    with pytest.raises(ValueError, match=r"events\[0\]\.at"):
        check_trajectory(late)
    with pytest.raises(ValueError, match="unknown trajectory format 'sweagent'"):
        import_trajectories(FIXTURES / "openai.jsonl", "sweagent")
    (tmp_path / "hist.jsonl").write_text('{"instance_id": "x"}\n')
    assert main(["agent", "import", str(tmp_path / "hist.jsonl"), "--format", "openhands"]) == 2
    assert "hist.jsonl:1: expected a `history` list" in capsys.readouterr().err


# --------------------------------------------------------------------------- failures


def test_failure_reads_explicit_flags_first_then_markers_then_the_rule():
    assert failure({"content": "all fine", "is_error": True}) == "is_error"
    assert failure({"content": "x", "exit_code": 2}) == "exit_code 2"
    assert failure({"content": "[The command completed with exit code 1.]", "exit_code": 0}) is None  # flag wins
    assert failure({"content": "[The command completed with exit code 1.]"}) == "exit code"
    assert failure({"content": "[The command completed with exit code 0.]"}) is None
    assert failure({"content": "ERROR:\nInvalid `path` parameter"}) == "ERROR:"
    assert failure({"content": "no ERROR: here"}) is None  # only at a line start
    assert failure({"content": '{"error": "No such file"}'}) == "error object"
    assert failure({"content": "Traceback (most recent call last):\n  File"}) == "traceback"
    rule = lambda message, call: "denied" in message["content"]  # noqa: E731
    assert failure({"content": "access denied"}, rule=rule) == "rule" and failure({"content": "access denied"}) is None


# --------------------------------------------------------------------------- error mask and sub-trajectories


def _reference_weights(trajectory, tokenizer):
    """Weights from the last call's rendering alone: a token is trained iff its text lies in a trained completion."""
    calls = llm_calls(trajectory)
    spans = []
    for call in calls:
        context = [chat_message(m) for m in call.context]
        start = len(tokenizer.apply_chat_template(context, tools=TOOLS, tokenize=False, add_generation_prompt=True))
        end = len(tokenizer.apply_chat_template(context + [chat_message(call.completion)], tools=TOOLS,
                                                tokenize=False))
        spans.append((start, end, call.trained))
    text = tokenizer.apply_chat_template([chat_message(m) for m in trajectory.messages], tools=TOOLS, tokenize=False)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    weights = [float(any(ok and end > start and a < stop for start, stop, ok in spans))
               for a, end in encoding["offset_mapping"]]
    return encoding["input_ids"], weights, text


def test_error_mask_token_by_token_on_a_failed_call_and_its_correction(tool_tokenizer):
    trajectory = check_trajectory(RUN)
    calls = llm_calls(trajectory)
    assert [c.failed for c in calls] == ["exit_code 1", None, None]
    out = tokenize_calls(calls, tool_tokenizer, TOOLS)
    ids, weights, text = _reference_weights(trajectory, tool_tokenizer)
    assert out.sequences == [ids] and out.weights == [weights]  # one sub-trajectory, the same mask
    trained = tool_tokenizer.decode([i for i, w in zip(ids, weights) if w])
    assert "Trying." not in trained and "1/0" not in trained  # the failed call: no loss
    assert "Fixed the bug." in trained and '"print(1)"' in trained and "It prints 1." in trained  # the correction
    assert "ZeroDivisionError" not in trained and "<tool_response>" not in trained  # tool output: never
    assert "Print 1." not in trained and trained.count("<|im_end|>") == 2  # each turn learns to stop
    stats = out.stats
    assert (stats["calls"], stats["trained_calls"], stats["failed_calls"], stats["subtrajectories"]) == (3, 2, 1, 1)
    assert stats["masked_tokens"] + sum(weights) == stats["completion_tokens"]


def test_a_compaction_starts_a_sub_trajectory_with_the_context_the_model_saw(tool_tokenizer):
    run = copy.deepcopy(RUN)
    summary = {"role": "user", "content": "Summary: the first attempt divided by zero."}
    run["events"] = [{"type": "compaction", "at": 3, "context": [summary]}]
    calls = llm_calls(check_trajectory(run))
    out = tokenize_calls(calls, tool_tokenizer, TOOLS)
    assert out.stats["subtrajectories"] == 2 and out.stats["rewrites"] == 1
    seen = tool_tokenizer.apply_chat_template([chat_message(summary)], tools=TOOLS, tokenize=False,
                                              add_generation_prompt=True)
    second = tool_tokenizer.decode(out.sequences[1])
    assert second.startswith(seen) and "Trying." not in second  # the rewritten context, not the old history
    assert "Fixed the bug." in second and "It prints 1." in second  # both later calls continue one piece
    total = sum(sum(w) for w in out.weights)  # each completion trained exactly once across the pieces
    unmasked = tokenize_calls([c for c in calls if c.trained], tool_tokenizer, TOOLS)
    assert total == sum(sum(w) for w in unmasked.weights) > 0


def test_a_template_that_drops_earlier_reasoning_splits_the_trajectory(tool_tokenizer):
    tok = copy.deepcopy(tool_tokenizer)  # Qwen3-style: reasoning shown on the last assistant turn only
    tok.chat_template = (
        "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
        "{%- if m.role == 'assistant' and m.reasoning_content and loop.last %}<think>{{ m.reasoning_content }}"
        "</think>{% endif %}{{ m.content }}<|im_end|>\n{%- endfor %}"
        "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}")
    run = {"id": "r", "messages": [{"role": "user", "content": "a"},
                                   {"role": "assistant", "content": "b", "reasoning_content": "why b"},
                                   {"role": "user", "content": "c"},
                                   {"role": "assistant", "content": "d", "reasoning_content": "why d"}]}
    out = tokenize_calls(llm_calls(check_trajectory(run)), tok)
    assert out.stats["subtrajectories"] == 2
    first, second = (tok.decode(s) for s in out.sequences)
    assert "<think>why b</think>b" in first and "why b" not in second and "<think>why d</think>d" in second


def test_calls_longer_than_max_length_are_left_out_and_counted(tool_tokenizer):
    calls = llm_calls(check_trajectory(RUN))
    full = tokenize_calls(calls, tool_tokenizer, TOOLS)
    cut = tokenize_calls(calls, tool_tokenizer, TOOLS, max_length=len(full.sequences[0]) - 1)
    assert cut.stats["too_long_calls"] == 1 and cut.stats["trained_calls"] == 1
    assert full.sequences[0][:len(cut.sequences[0])] == cut.sequences[0]


def test_parse_tool_calls_reads_hermes_blocks_and_reports_bad_ones():
    content, calls, errors = parse_tool_calls(
        'Let me run it.\n<tool_call>\n{"name": "run_python", "arguments": {"code": "print(2)"}}\n</tool_call>')
    assert content == "Let me run it." and errors == {}
    assert calls[0]["function"] == {"name": "run_python", "arguments": '{"code": "print(2)"}'}
    _, calls, errors = parse_tool_calls('<tool_call>{"name": "x", "arguments": [1]}</tool_call><tool_call>{"na')
    assert [c["function"]["name"] for c in calls] == ["invalid_tool_call", "invalid_tool_call"]
    assert errors == {0: "arguments must be a JSON object", 1: "not JSON (Unterminated string starting at at column 2)"}
