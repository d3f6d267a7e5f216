"""`autothink.inference`: replies with mode control and a thinking budget (scripted backend for exact
texts and counts, the tiny model for the real LocalBackend), reply prefixes and streaming of
LocalBackend, the reasoning/content split, and the `generate` / `chat` commands."""
import io
import json
import threading
import time

import pytest

from autothink.cli import main
from autothink.format import parse
from autothink.inference.backend import Backend, Completion, SamplingParams
from autothink.inference.commands import chat
from autothink.inference.constrained import state_after
from autothink.inference.local import LocalBackend
from autothink.inference.respond import (
    ReasoningSplitter,
    respond,
    respond_stream,
    split_reasoning,
)
from helpers import varied_tiny
from scripted import SCRIPT, Scripted

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Q = [{"role": "user", "content": "Solve 3x = 36."}]
GREEDY = SamplingParams(temperature=0, max_tokens=64)


def one(backend, conv=Q, params=GREEDY, **kw):
    return respond(backend, [conv], params, **kw)[0][0]


# -- respond on a scripted backend: exact texts and counts ------------------------------------
def test_auto_without_budget_is_one_call_that_stops_at_answer_end():
    backend = Scripted()
    r = one(backend)
    assert r.text == SCRIPT and r.parts.well_formed and r.mode == "on" and r.thinking == "auto"
    assert (r.judge_tokens, r.think_tokens, r.answer_tokens, r.reasoning_tokens) == (4, 12, 3, 16)
    assert r.completion_tokens == 26 and r.finish_reason == "stop" and not r.budget_hit
    assert len(backend.calls) == 1 and backend.calls[0][1].stop == ("</answer>",)


def test_budget_cuts_think_at_exactly_n_tokens_and_the_answer_follows():
    backend = Scripted()
    r = one(backend, thinking_budget=5)
    assert r.text == ("<judge>Two steps of algebra. </judge><think_on><think>3 x = 36 so </think>"
                      "<answer>x = 12 </answer>")
    assert r.think_tokens == 5 and r.budget_hit and r.parts.well_formed
    assert r.parts.answer == "x = 12 " and r.answer_tokens == 3
    # judge stage (8 tokens up to <think>), think stage (5), answer stage (3 + </answer>)
    assert r.completion_tokens == 8 + 5 + 4
    stages = [(call[1].stop, call[1].max_tokens, call[3]) for call in backend.calls]
    assert stages[0] == (("<think>", "</answer>"), 64, None)
    assert stages[1][:2] == (("</think>",), 5)
    assert stages[2][0] == ("</answer>",) and stages[2][1] == 64 - 13 and stages[2][2][0].endswith("</think><answer>")


@pytest.mark.parametrize("budget, hit", [(11, True), (12, True), (13, False), (100, False)])
def test_budget_at_the_edge(budget, hit):
    r = one(Scripted(), thinking_budget=budget)
    assert r.budget_hit == hit and r.think_tokens == min(budget, 12) and r.parts.well_formed
    if not hit:
        assert r.text == SCRIPT  # the think segment closed by itself


def test_forced_modes_follow_the_models_own_judge():
    backend = Scripted()
    on = one(backend, thinking="on", thinking_budget=3)
    assert on.text == "<judge>Two steps of algebra. </judge><think_on><think>3 x = </think><answer>x = 12 </answer>"
    assert (on.thinking, on.mode, on.judge_tokens, on.think_tokens) == ("on", "on", 4, 3) and on.parts.well_formed
    # The judge stage renders the plain prompt and continues `<judge>`; it stops at </judge> or any later tag.
    (convs, params, thinking, prefixes) = backend.calls[0]
    assert thinking == "auto" and prefixes == ["<judge>"] and "</judge>" in params.stop and "<think_off>" in params.stop
    off = one(Scripted(), thinking="off")
    assert off.text == "<judge>Two steps of algebra. </judge><think_off><answer>x = 12 </answer>"
    assert off.think_tokens == 0 and off.parts.well_formed and off.completion_tokens == 5 + 4
    # A judge that runs into a mode token of its own: the model's token is dropped, the forced one follows.
    skip = one(Scripted("<judge>Easy. <think_off><answer>4</answer>"), thinking="on")
    assert skip.text.startswith("<judge>Easy. </judge><think_on><think>") and skip.mode == "on"
    # The measured fallback: an empty judge (asked for, or all a backend without prefixes can do).
    empty = one(Scripted(), thinking="on", thinking_budget=3, forced_judge="empty")
    assert empty.text == "<judge></judge><think_on><think>3 x = </think><answer>x = 12 </answer>"
    assert empty.judge_tokens == 0
    plain = NoPrefix()
    assert one(plain, thinking="off").text == "<judge></judge><think_off><answer>x"
    assert plain.seen == ["off"]
    with pytest.raises(ValueError, match="forced_judge must be"):
        one(Scripted(), thinking="on", forced_judge="none")


def test_directives_are_left_to_the_model_unless_forced():
    ask = [{"role": "user", "content": "Solve 3x = 36. DO NOT THINK"}]
    r = one(Scripted(), ask)  # the scripted model thinks whatever it is told
    assert (r.thinking, r.directive, r.mode) == ("auto", "off", "on")
    forced = one(Scripted(), ask, force_directives=True)
    assert (forced.thinking, forced.directive, forced.mode) == ("off", "off", "off")
    assert one(Scripted(), ask, thinking="on", force_directives=True).mode == "on"  # an explicit mode wins
    # The regex's near-miss: not a directive, but read as one; forced only under the flag.
    near = [{"role": "user", "content": "I do not think this is right: what is 3+4?"}]
    assert one(Scripted(), near).thinking == "auto"
    deeper = one(Scripted(), [{"role": "user", "content": "Think deeper: 3x = 36?"}], thinking_budget=2,
                 force_directives=True)
    assert deeper.thinking == "on" and deeper.think_tokens == 2 and deeper.judge_tokens == 4


def test_max_tokens_bounds_all_stages_together():
    r = one(Scripted(), params=SamplingParams(temperature=0, max_tokens=10), thinking_budget=5)
    assert r.completion_tokens == 10 and r.finish_reason == "length" and not r.budget_hit
    assert r.text.endswith("<think>3 x ") and not r.parts.well_formed
    short = one(Scripted(), params=SamplingParams(temperature=0, max_tokens=13), thinking_budget=5)
    assert short.finish_reason == "length" and short.text.endswith("so ") and not short.budget_hit


def test_caller_stop_strings_end_the_reply():
    r = one(Scripted(), params=SamplingParams(temperature=0, stop=["36"]), thinking_budget=20)
    assert r.stop_reason == "36" and r.finish_reason == "stop" and r.text.endswith("<think>3 x = ")


def test_batches_n_samples_and_conversations_per_stage():
    backend = Scripted()
    convs = [Q, [{"role": "user", "content": "Another one, please"}], [{"role": "user", "content": "DO NOT THINK"}]]
    replies = respond(backend, convs, SamplingParams(n=3, temperature=0, max_tokens=64), thinking_budget=4,
                      force_directives=True)
    assert [len(g) for g in replies] == [3, 3, 3]
    assert all(r.think_tokens == 4 and r.budget_hit for g in replies[:2] for r in g)
    assert all(r.mode == "off" for r in replies[2])
    assert [r.prompt_tokens for r in (replies[0][0], replies[1][0], replies[2][0])] == [4, 3, 3]
    # one call per stage: judge (2 conversations, n=3), think (6 rows), answer (6); the forced-off one: its own
    # judge (1 conversation, n=3), then its answer (3 rows)
    shapes = [(len(call[0]), call[1].n, call[3]) for call in backend.calls]
    assert shapes == [(2, 3, None), (1, 3, ["<judge>"]), (6, 1, shapes[2][2]), (3, 1, shapes[3][2]),
                      (6, 1, shapes[4][2])]


def test_respond_stream_matches_respond():
    for kw in ({}, {"thinking_budget": 5}, {"thinking": "off"}, {"thinking": "on", "thinking_budget": 2}):
        pieces = list(respond_stream(Scripted(), Q, GREEDY, **kw))
        reply = pieces.pop()
        assert reply == one(Scripted(), **kw)
        assert "".join(pieces) == reply.text and len(pieces) >= 5


def test_counts_without_a_tokenizer_are_split_by_characters():
    r = one(Scripted(tokenizer=False), thinking_budget=5)
    assert r.completion_tokens == 17 and r.budget_hit
    assert r.think_tokens > r.answer_tokens > 0 and r.judge_tokens + r.think_tokens + r.answer_tokens <= 17


class NoPrefix(Backend):
    def __init__(self):
        self.seen = []

    def _generate(self, conversations, params, thinking):
        self.seen.append(thinking)
        return [[Completion("x", "stop", 1)] * params.n for _ in conversations]


def test_bad_arguments():
    with pytest.raises(ValueError, match="thinking must be"):
        respond(Scripted(), [Q], GREEDY, thinking="maybe")
    for budget in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="thinking_budget must be an integer >= 1"):
            respond(Scripted(), [Q], GREEDY, thinking_budget=budget)
    with pytest.raises(ValueError, match="needs a backend that continues replies"):
        respond(NoPrefix(), [Q], GREEDY, thinking_budget=4)
    with pytest.raises(ValueError, match="cannot continue a reply from a prefix"):
        NoPrefix().generate([Q], GREEDY, prefix="abc")
    with pytest.raises(ValueError, match="one string per conversation"):
        Scripted().generate([Q, Q], GREEDY, prefix=["a"])
    with pytest.raises(ValueError, match="one reply"):
        next(respond_stream(Scripted(), Q, SamplingParams(n=2)))
    assert one(NoPrefix()).text == "x"  # without a budget no prefix is needed


# -- the reasoning / content split ------------------------------------------------------------
@pytest.mark.parametrize("text, reasoning, content", [
    (SCRIPT, "Two steps of algebra. \n\n3 x = 36 so x = 36 / 3 = 12 ", "x = 12 "),
    ("<judge></judge><think_off><answer>4</answer>", "", "4"),
    ("<judge>easy</judge><think_off><answer>a < b and <b>", "easy", "a < b and <b>"),
    ("<judge></judge><think_on><think>still thinking", "still thinking", ""),
    ("plain text <answer>not the format", "", "plain text <answer>not the format"),
    ("<jud", "", "<jud"),
    ("", "", ""),
])
def test_split_reasoning_whole_and_piece_by_piece(text, reasoning, content):
    assert split_reasoning(text) == (reasoning, content)
    splitter = ReasoningSplitter()
    parts = [splitter.feed(ch) for ch in text] + [splitter.finish()]
    assert ("".join(r for r, _ in parts), "".join(c for _, c in parts)) == (reasoning, content)


# -- the real LocalBackend: prefixes, streaming, budgets --------------------------------------
@pytest.fixture(scope="module")
def local(tokenizer):
    """LocalBackend over a tiny AutoThink model with an untied random head (prompt-dependent output)."""
    model, tok = varied_tiny(tokenizer, autothink=True)
    return LocalBackend(model, tok, name="tiny")


def test_local_prefix_is_appended_to_the_rendered_prompt(local):
    tok, model = local.tokenizer, local.model
    prefix = "<judge>hm</judge><think_on><think>let me see"
    got = local.generate([Q], SamplingParams(temperature=0, max_tokens=8), thinking="auto", prefix=prefix)[0][0]
    text = local.render(Q, "auto") + prefix
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert got.prompt_tokens == ids.input_ids.shape[1]
    assert got.text == tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
    # Per conversation; an empty prefix is the plain prompt.
    both = local.generate([Q, Q], SamplingParams(temperature=0, max_tokens=8), prefix=["", prefix])
    assert both[0][0] == local.generate([Q], SamplingParams(temperature=0, max_tokens=8))[0][0]
    assert both[1][0].text == got.text


def test_local_stop_reason(local):
    free = local.generate([Q], SamplingParams(temperature=0, max_tokens=12))[0][0]
    word = free.text.split()[3]
    stopped = local.generate([Q], SamplingParams(temperature=0, max_tokens=12, stop=("zzz", word)))[0][0]
    assert stopped.stop_reason == word and stopped.finish_reason == "stop" and free.text.startswith(stopped.text)
    assert free.stop_reason is None


def test_local_stream_is_incremental_and_equals_generate(local):
    for params in (SamplingParams(temperature=0, max_tokens=24),
                   SamplingParams(temperature=0, max_tokens=24, stop=("ing",)),
                   SamplingParams(temperature=0.8, max_tokens=16, seed=5)):
        items = list(local.stream(Q, params, thinking="off"))
        final = items.pop()
        assert final == local.generate([Q], params, thinking="off")[0][0]
        assert "".join(items) == final.text and len(items) >= min(final.tokens, 10) // 2
        assert params.stop or len(items) >= 10  # a piece per token or two, not one at the end


def test_local_stream_stops_when_closed(local):
    params = SamplingParams(temperature=0, max_tokens=1500)
    start = time.monotonic()
    items = local.stream([{"role": "user", "content": "Hi"}], params)
    first = next(items)
    items.close()
    assert isinstance(first, str) and time.monotonic() - start < 3
    assert not [t for t in threading.enumerate() if t.name == "local-stream"]
    assert local.generate([Q], SamplingParams(temperature=0, max_tokens=2))[0][0].tokens == 2  # the lock is free


def test_local_budget(local):
    seen = []
    original = local.generate

    def spy(conversations, params, thinking=None, prefix=None):
        out = original(conversations, params, thinking, prefix)
        seen.append((params.max_tokens, params.stop, out[0][0]))
        return out

    local.generate = spy
    try:
        # the empty-judge prefix: this random model never closes a judge of its own
        r = one(local, thinking="on", thinking_budget=4, params=SamplingParams(temperature=0, max_tokens=20),
                forced_judge="empty")
    finally:
        del local.generate
    assert r.budget_hit and r.thinking == "on" and r.mode == "on"
    think_stage = seen[0]
    assert think_stage[:2] == (4, ("</think>",)) and think_stage[2].tokens == 4
    assert r.text == "<judge></judge><think_on><think>" + think_stage[2].text + "</think><answer>" + seen[1][2].text
    assert r.completion_tokens == 20 and r.finish_reason == "length"
    stream = list(respond_stream(local, Q, SamplingParams(temperature=0, max_tokens=20), "on", 4,
                                 forced_judge="empty"))
    assert stream[-1] == r and "".join(stream[:-1]) == r.text


# -- generate and chat commands ---------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(local, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-autothink")
    local.model.save_pretrained(path)
    local.tokenizer.save_pretrained(path)
    return str(path)


def test_generate_command(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "q1", "prompt": "What is 2+2? DO NOT THINK"}) + "\n\n"
                       + json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": "Hi"}]}) + "\n")
    code = main(["generate", "Solve 3x = 36.", "--input", str(prompts), "--model", model_dir, "--max-tokens", "12",
                 "--thinking-budget", "3"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == ["1", "q1", "3"]
    assert rows[1]["thinking"] == "auto" and rows[1]["directive"] == "off"  # the model decides
    assert rows[1]["text"] == one(LocalBackend.from_pretrained(model_dir, device="cpu"), rows and [
        {"role": "user", "content": "What is 2+2? DO NOT THINK"}], SamplingParams(temperature=0, max_tokens=12),
        thinking_budget=3).text
    for row in rows:
        assert row["tokens"]["completion"] <= 12 and row["finish_reason"] in ("stop", "length")
        assert parse(row["text"]).mode == row["mode"] and set(row["tokens"]) == {"judge", "think", "answer",
                                                                                  "completion", "prompt"}
    # Forced on with a budget of 3, written to a file; the same greedy reply as in process.
    out = tmp_path / "out.jsonl"
    assert main(["generate", "Solve 3x = 36.", "--model", model_dir, "--max-tokens", "12", "--thinking", "on",
                 "--thinking-budget", "3", "--n", "2", "-o", str(out), "--forced-judge", "empty"]) == 0
    assert "wrote 2 replies" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["sample"] for r in rows] == [0, 1] and all(r["budget_hit"] and r["mode"] == "on" for r in rows)
    assert rows[0]["text"] == one(LocalBackend.from_pretrained(model_dir, device="cpu"), thinking="on",
                                  thinking_budget=3, params=SamplingParams(temperature=0, max_tokens=12),
                                  forced_judge="empty").text
    # A directive forced by its flag; constrained decoding keeps even this random model's reply in the grammar.
    assert main(["generate", "What is 2+2? DO NOT THINK", "--model", model_dir, "--max-tokens", "12",
                 "--force-directives", "--constrained"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["thinking"] == "off" and row["text"].startswith("<judge>")
    assert state_after(row["text"]).where in ("judge", "answer", "end")  # a prefix of the grammar, no stray tag


def test_generate_command_errors(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"question": "?"}) + "\n")
    assert main(["generate", "--input", str(bad), "--model", model_dir]) == 2
    assert f"{bad}:2: missing field 'prompt'" in capsys.readouterr().err
    bad.write_text(json.dumps({"messages": [{"role": "user"}]}) + "\n")
    assert main(["generate", "--input", str(bad), "--model", model_dir]) == 2
    assert f"{bad}:1: field 'messages'" in capsys.readouterr().err
    assert main(["generate", "--model", model_dir]) == 2
    assert "no prompts" in capsys.readouterr().err
    assert main(["generate", "hi", "--model", model_dir, "--thinking-budget", "0"]) == 2
    assert "thinking_budget must be an integer >= 1" in capsys.readouterr().err
    assert main(["generate", "hi", "--model", model_dir, "--max-tokens", "0"]) == 2
    assert "max_tokens" in capsys.readouterr().err


def test_chat_command(model_dir, monkeypatch, capsys):
    script = ["Hi", "/mode off", "What next?", "/budget 2", "/mode on", "Go on", "/budget nope", "/reset",
              "/mode auto", "Fresh start. DO NOT THINK", "/quit", "never read"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(script) + "\n"))
    assert main(["chat", "--model", model_dir, "--max-tokens", "10", "--force-directives", "--forced-judge",
                 "empty"]) == 0
    out = capsys.readouterr().out
    status = [line for line in out.splitlines() if line.startswith("[mode")]
    assert len(status) == 4
    assert "(thinking off)" in status[1] and "<judge></judge><think_off><answer>" in out
    assert "(thinking on)" in status[2] and "think 2," in status[2] and "budget hit" in status[2]
    assert "(thinking off, forced by a directive)" in status[3]
    assert "(thinking budget: 2)" in out and "(conversation cleared)" in out and "unknown command" in out


def test_chat_keeps_answers_in_the_history():
    backend = Scripted()
    written = []
    replies = chat(backend, GREEDY, ["Solve 3x = 36.", "And 4x = 48?", "/reset", "Hi"], written.append)
    assert len(replies) == 3 and "".join(written).count("[mode on (thinking auto) | judge 4, think 12, answer 3") == 3
    assert "".join(written).startswith(SCRIPT)
    conversations = [call[0][0] for call in backend.calls]
    assert conversations[1] == [{"role": "user", "content": "Solve 3x = 36."},
                                {"role": "assistant", "content": "x = 12 "},
                                {"role": "user", "content": "And 4x = 48?"}]
    assert conversations[2] == [{"role": "user", "content": "Hi"}]
