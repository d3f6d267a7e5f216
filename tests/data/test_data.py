"""The data pipeline: vote and labels, judge replies, each stage's logic, bad input, kill + resume."""
import json
import shutil
import signal
import subprocess
import sys
from collections import Counter

import pytest

from autothink.algorithms.rewards import vote_mode
from autothink.data.agents import (
    Agent,
    AgentError,
    Prompts,
    first_sentences,
    parse_json_reply,
    split_final_answer,
)
from autothink.data.coldstart import ColdstartConfig, choose_label, coldstart_record
from autothink.data.common import StageConfig, load_queries
from autothink.data.runner import run_records
from autothink.data.synth import synth_off, synth_on
from autothink.data.tag import assign_regime, tag_record, validate_tag
from autothink.format import DIRECTIVES, detect_directive, parse
from autothink.inference.backend import (
    Backend,
    BackendError,
    Completion,
    SamplingParams,
)
from autothink.inference.reference import arithmetic_steps, reference_solution
from autothink.inference.spec import make_backend
from autothink.records.jsonl import RecordError, write_jsonl
from autothink.tasks import load_suite

PROMPTS = Prompts()
MATH = {"id": "m1", "messages": [{"role": "user", "content": "What is 6*7?"}], "domain": "math", "verifier": "math",
        "reference": "42", "difficulty": 2, "regime": "off"}
OPEN = {"id": "o1", "messages": [{"role": "user", "content": "Name a color."}], "domain": "general", "verifier": None,
        "reference": None, "difficulty": 1, "regime": "off"}


class ScriptedBackend(Backend):
    """A real Backend whose replies come from `rule(prompt_text, index)`: pipeline logic without a model."""

    def __init__(self, rule, name="scripted"):
        self.rule, self.name, self.calls = rule, name, 0

    def _generate(self, conversations, params, thinking):
        self.calls += 1
        return [[Completion(self.rule(c[-1]["content"], i), "stop", 5) for i in range(params.n)] for c in conversations]


def agent(rule, retries=2):
    return Agent(ScriptedBackend(rule), retries=retries)


# -- vote and labels -------------------------------------------------------------------------
@pytest.mark.parametrize("p_on, p_off, delta, mode", [
    (0.5, 0.5, 0.0, "off"), (0.75, 0.5, 0.0, "on"), (0.75, 0.5, 0.25, "off"), (0.75, 0.5, 0.2, "on"),
    (0.0, 0.0, 0.0, "off"), (1.0, 0.0, 0.0, "on"), (0.25, 1.0, 0.0, "off"),
])
def test_vote_mode(p_on, p_off, delta, mode):
    assert vote_mode(p_on, p_off, delta) == mode


def test_labels_directives_random_and_prior():
    directive = choose_label("q", 1.0, 0.0, "on", 0.0, random_fraction=0.0, directive_fraction=1.0)
    assert directive["source"] == "directive" and directive["directive"] in DIRECTIVES[directive["mode"]]
    assert detect_directive("What is 2+2? " + directive["directive"]) == directive["mode"]
    assert choose_label("q", 1.0, 0.0, "off", 0.0, 1.0, 0.0)["source"] == "random"
    assert choose_label("q", None, None, "on", 0.0, 0.0, 0.0) == {"mode": "on", "source": "prior", "directive": None}
    assert choose_label("q", 1.0, 0.0, "off", 0.0, 0.0, 0.0)["mode"] == "on"
    # 1% random, drawn per id: stable across calls, close to the fraction over many ids.
    sources = Counter(choose_label(f"q{i}", 0.0, 1.0, "off", 0.0, 0.01, 0.1)["source"] for i in range(4000))
    assert 15 <= sources["random"] <= 70 and 300 <= sources["directive"] <= 500
    assert [choose_label(f"q{i}", 0, 1, "off", 0, 0.5, 0.5) for i in range(50)] == \
           [choose_label(f"q{i}", 0, 1, "off", 0, 0.5, 0.5) for i in range(50)]
    random_modes = Counter(choose_label(f"r{i}", 0.0, 1.0, "off", 0.0, 1.0, 0.0)["mode"] for i in range(400))
    assert random_modes["on"] > 150 and random_modes["off"] > 150  # random means both modes, not the vote


# -- judge replies ---------------------------------------------------------------------------
@pytest.mark.parametrize("reply, expected", [
    ('{"difficulty": 3, "domain": "math"}', {"difficulty": 3, "domain": "math"}),
    ('Sure! ```json\n{"difficulty": 2, "domain": "code", "reason": "a {nested} brace"}\n```',
     {"difficulty": 2, "domain": "code"}),
    ('I think {not json} then {"difficulty": "4", "domain": "Tool use"}', {"difficulty": 4, "domain": "tool-use"}),
])
def test_judge_json_is_found_and_validated(reply, expected):
    tag = validate_tag(parse_json_reply(reply))
    assert {k: tag[k] for k in expected} == expected


@pytest.mark.parametrize("reply, error", [
    ("difficulty: 3", "no JSON object"),
    ('{"difficulty": 7, "domain": "math"}', "difficulty must be an integer 1-5"),
    ('{"difficulty": "hard", "domain": "math"}', "difficulty must be an integer 1-5"),
    ('{"difficulty": true, "domain": "math"}', "difficulty must be an integer 1-5"),
    ('{"difficulty": 2, "domain": "cooking"}', "domain must be one of"),
    ('{"domain": "math"}', "difficulty"),
    ('[1, 2, 3]', "no JSON object"),
])
def test_malformed_judge_replies_are_rejected(reply, error):
    with pytest.raises((ValueError, KeyError), match=error):
        validate_tag(parse_json_reply(reply))


def test_ask_json_retries_then_succeeds_or_reports():
    replies = iter(["no idea", '{"difficulty": 9, "domain": "math"}', '{"difficulty": 2, "domain": "math"}'])
    judge = agent(lambda prompt, i: next(replies))
    tag, attempts = judge.ask_json([{"role": "user", "content": "x"}], validate_tag, seed=0)
    assert tag["difficulty"] == 2 and len(attempts) == 3 and attempts[0]["error"].startswith("no JSON object")
    with pytest.raises(AgentError, match="no valid reply after 2 attempts") as err:
        agent(lambda p, i: "nope", retries=1).ask_json([{"role": "user", "content": "x"}], validate_tag, seed=0)
    assert [a["reply"] for a in err.value.attempts] == ["nope", "nope"]

    def broken(prompt, i):
        raise ConnectionError("server down")

    with pytest.raises(AgentError, match="server down"):
        agent(broken).ask_json([{"role": "user", "content": "x"}], validate_tag, seed=0)


def test_split_final_answer():
    assert split_final_answer("6*7 = 42\nFinal answer: 42") == ("6*7 = 42", "42")
    assert split_final_answer("so \\boxed{42}") == ("so \\boxed{42}", "\\boxed{42}")
    assert split_final_answer("no answer here") == ("no answer here", None)


# -- stages -----------------------------------------------------------------------------------
def test_tag_keeps_given_labels_and_falls_back_when_the_judge_fails():
    tagged = tag_record(MATH, None, PROMPTS, threshold=3, retag=False)
    got = (tagged["difficulty"], tagged["domain"], tagged["regime"], tagged["tag"]["by"])
    assert got == (2, "math", "off", "given")
    failing = agent(lambda p, i: "I cannot answer in JSON")
    record = {**OPEN, "difficulty": None, "domain": None}
    tagged = tag_record(record, failing, PROMPTS, threshold=3, retag=False)
    assert tagged["tag"]["by"] == "heuristic" and "no valid reply after 3 attempts" in tagged["tag"]["error"]
    assert tagged["domain"] == "general" and 1 <= tagged["difficulty"] <= 5
    judge = agent(lambda p, i: '{"difficulty": 5, "domain": "math", "reason": "olympiad"}')
    tagged = tag_record(MATH, judge, PROMPTS, threshold=3, retag=True)
    assert (tagged["difficulty"], tagged["regime"], tagged["tag"]["by"]) == (5, "on", "judge:scripted")


def test_regime_from_difficulty_and_verifiability():
    assert [assign_regime(d, True) for d in range(1, 6)] == ["off", "off", "on", "on", "on"]
    assert [assign_regime(d, False) for d in range(1, 6)] == ["off", "off", "off", "on", "on"]


def test_think_off_rejection_sampling_keeps_verified_answers():
    teachers = [agent(lambda p, i: "Final answer: 41"), agent(lambda p, i: ["Final answer: 40", "Final answer: 42"][i])]
    out = synth_off(MATH, {"teachers": teachers, "judge": None}, PROMPTS, k=2)
    assert out["status"] == "kept" and out["how"] == "verified"
    assert out["completion"][0]["content"] == "<think_off><answer>Final answer: 42</answer>"
    assert [a["passed"] for a in out["provenance"]] == [False, False, False, True]
    wrong = synth_off(MATH, {"teachers": teachers[:1], "judge": None}, PROMPTS, k=2)
    assert wrong["status"] == "rejected" and wrong["reason"] == "no verified answer"


def test_think_off_without_verifier_asks_the_judge():
    teachers = [agent(lambda p, i: ["Blue.", "Red."][i])]
    judge = agent(lambda p, i: '{"best": 2, "reason": "more vivid"}')
    out = synth_off(OPEN, {"teachers": teachers, "judge": judge}, PROMPTS, k=2)
    assert out["completion"][0]["content"] == "<think_off><answer>Red.</answer>" and "judge picked 2" in out["how"]


def test_think_on_multi_agent_loop():
    record = {**MATH, "regime": "on"}
    solver = agent(lambda p, i: "6*7 = 48\nFinal answer: 48")
    thinker = agent(lambda p, i: "Recheck: 6*7 = 42\nFinal answer: 42")
    critiques = iter(['{"accept": false, "issues": "6*7 is not 48"}', '{"accept": true, "issues": ""}'])
    critic = agent(lambda p, i: next(critiques))
    out = synth_on(record, {"solver": solver, "thinker": thinker, "critic": critic}, PROMPTS, rounds=2)
    assert out["status"] == "kept" and [r["passed"] for r in out["provenance"][1:]] == [False, True]
    assert out["provenance"][0] == {"solver": "scripted", "thinker": "scripted", "critic": "scripted"}
    assert out["how"] == "accepted in round 1"
    text = out["completion"][0]["content"]
    assert text.startswith("<think_on><think>")
    parsed = parse("<judge></judge>" + text)
    assert parsed.well_formed and parsed.answer == "42"
    assert "6*7 = 48" in parsed.think and "6*7 is not 48" in parsed.think and "Recheck" in parsed.think
    stubborn = agent(lambda p, i: '{"accept": false, "issues": "wrong"}')
    out = synth_on(record, {"solver": solver, "thinker": solver, "critic": stubborn}, PROMPTS, rounds=1)
    assert out["status"] == "rejected" and out["reason"] == "not verified after 1 rounds"


def test_coldstart_votes_and_renders_judge_then_answer():
    on = agent(lambda p, i: "6 sevens: 42\nFinal answer: 42")
    off = agent(lambda p, i: ["Final answer: 42", "Final answer: 40"][i])
    judge = agent(lambda p, i: "It needs a multiplication <think> only.")
    config = ColdstartConfig(samples=2, random_fraction=0.0, directive_fraction=0.0)
    out = coldstart_record(MATH, {"on": on, "off": off, "judge": judge}, PROMPTS, config)
    assert out["pass_rates"] == {"on": 1.0, "off": 0.5} and out["mode"] == "on" and out["label"]["source"] == "vote"
    assert out["provenance"]["off"] == {"backend": "scripted", "verdicts": [True, False]}
    parsed = parse(out["messages"][-1]["content"])
    assert parsed.well_formed and (parsed.mode, parsed.answer, parsed.think) == ("on", "42", "6 sevens: 42")
    assert parsed.judge == "It needs a multiplication  only."  # tags stripped from agent text
    tie = coldstart_record(MATH, {"on": off, "off": off, "judge": judge}, PROMPTS, config)
    assert tie["mode"] == "off" and parse(tie["messages"][-1]["content"]).answer == "42"
    config = ColdstartConfig(samples=2, random_fraction=0.0, directive_fraction=1.0)
    directed = coldstart_record(MATH, {"on": on, "off": on, "judge": judge}, PROMPTS, config)
    assert detect_directive(directed["messages"][0]["content"]) == directed["mode"] == directed["label"]["mode"]
    assert out["prior_mode"] == "on" and tie["prior_mode"] == "off"
    # The RL prior is the vote, whatever a directive or the random draw made the SFT row's mode.
    for fractions in ({"directive_fraction": 1.0}, {"random_fraction": 1.0}):
        for seed in range(8):
            config = ColdstartConfig(samples=2, **{"random_fraction": 0.0, "directive_fraction": 0.0, **fractions},
                                     seed=seed)
            labelled = coldstart_record(MATH, {"on": on, "off": off, "judge": judge}, PROMPTS, config)
            assert labelled["label"]["source"] != "vote" and labelled["prior_mode"] == "on"


def test_the_judge_sees_the_chosen_response_and_the_directive():
    asked = []

    def judge_reply(prompt, i):
        asked.append(prompt)
        return "It is a single product."

    on = agent(lambda p, i: "6 sevens: 42\nFinal answer: 42")
    off = agent(lambda p, i: "Final answer: 40")
    out = coldstart_record(MATH, {"on": on, "off": off, "judge": agent(judge_reply)}, PROMPTS,
                           ColdstartConfig(samples=2, random_fraction=0.0, directive_fraction=0.0))
    assert out["mode"] == "on" and "6 sevens: 42\nFinal answer: 42" in asked[-1]
    assert "the user also wrote" not in asked[-1]
    directed = coldstart_record(MATH, {"on": on, "off": on, "judge": agent(judge_reply)}, PROMPTS,
                                ColdstartConfig(samples=2, random_fraction=0.0, directive_fraction=1.0))
    assert f'the user also wrote: "{directed["label"]["directive"]}"' in asked[-1]


def test_judge_rationale_keeps_two_sentences_of_the_first_paragraph():
    assert first_sentences("Needs two steps. The sum is small! Then more? Yes.\n\nSecond paragraph.") == \
        "Needs two steps. The sum is small!"
    assert first_sentences("One line, no period") == "One line, no period"
    rambling = agent(lambda p, i: "Easy. A direct sum. In one or two sentences, explain why...")
    out = coldstart_record(MATH,
                           {"on": agent(lambda p, i: "Final answer: 42"), "off": agent(lambda p, i: "Final answer: 42"),
                                  "judge": rambling}, PROMPTS, ColdstartConfig(samples=1, random_fraction=0.0,
                                                                               directive_fraction=0.0))
    assert parse(out["messages"][-1]["content"]).judge == "Easy. A direct sum."


def test_coldstart_fallback_answers_only_where_the_samples_fail(tmp_path):
    wrong = agent(lambda p, i: "Final answer: 40")
    judge = agent(lambda p, i: "Needs care.")
    reference = make_backend("reference:" + str(_tasks_file(tmp_path)))
    fallback = Agent(reference)
    config = ColdstartConfig(samples=2, random_fraction=0.0, directive_fraction=0.0, fallback="reference:x")
    agents = {"on": wrong, "off": wrong, "judge": judge, "fallback": fallback}
    # Neither mode solved it: the tagged regime labels it ("on"), and the worked solution becomes the thinking.
    hard = coldstart_record(GSM | {"regime": "on"}, agents, PROMPTS, config)
    parsed = parse(hard["messages"][-1]["content"])
    assert hard["label"] == {"mode": "on", "source": "prior", "directive": None, "response": "fallback"}
    assert parsed.well_formed and parsed.answer == GSM_GOLD and parsed.think == GSM_COT
    assert hard["provenance"]["fallback"] == reference.name
    easy = coldstart_record(GSM | {"regime": "off"}, agents, PROMPTS, config)
    assert (easy["mode"], parse(easy["messages"][-1]["content"]).answer) == ("off", GSM_GOLD)
    # Where the samples solve it, the vote stands and the fallback is not asked.
    right_off = agent(lambda p, i: f"Final answer: {GSM_GOLD}")
    unasked = agent(lambda p, i: pytest.fail("the fallback was asked"))
    voted = coldstart_record(GSM | {"regime": "on"}, agents | {"off": right_off, "fallback": unasked}, PROMPTS, config)
    assert voted["label"] == {"mode": "off", "source": "vote", "directive": None}
    assert "fallback" not in voted["provenance"]
    # A think-on fallback without reasoning is not kept (no empty <think>).
    bare = coldstart_record(MATH | {"regime": "on"}, agents, PROMPTS, config)
    assert bare["status"] == "rejected"
    # Without a fallback a 0-0 vote is a tie (think-off) and nothing is kept, as before.
    plain = coldstart_record(GSM | {"regime": "on"}, {"on": wrong, "off": wrong, "judge": judge}, PROMPTS,
                             ColdstartConfig(samples=2, random_fraction=0.0, directive_fraction=0.0))
    assert plain["status"] == "rejected" and plain["label"]["mode"] == "off"


def test_the_reference_judge_writes_the_rationale_from_the_worked_solution(tmp_path):
    reference = Agent(make_backend("reference:" + str(_tasks_file(tmp_path))))
    steps = len(GSM_COT.splitlines())
    solved = agent(lambda p, i: f"Final answer: {GSM_GOLD}")
    config = ColdstartConfig(samples=1, random_fraction=0.0, directive_fraction=0.0)
    out = coldstart_record(GSM, {"on": solved, "off": solved, "judge": reference}, PROMPTS, config)
    assert out["mode"] == "off" and parse(out["messages"][-1]["content"]).judge == (
        f"The question takes {steps} steps of working, so the answer can be given directly without "
        "step-by-step reasoning.")
    assert reference.backend.rationale(GSM["messages"][0]["content"], "on").endswith(
        "so it is worth reasoning step by step before the answer.")
    assert reference.backend.rationale(GSM["messages"][0]["content"], "off", "DO NOT THINK") == \
        'The user wrote "DO NOT THINK", so I answer directly.'
    with pytest.raises(BackendError, match="no known task question"):
        reference.backend.rationale("What is the capital of France?", "on")


def test_reference_backend_answers_known_questions_only(tmp_path):
    backend = make_backend("reference:" + str(_tasks_file(tmp_path)))
    out = backend.generate([PROMPTS.messages("think_on", query=GSM["messages"][0]["content"])], SamplingParams(n=2))
    assert [c.text for c in out[0]] == [f"{GSM_COT}\nFinal answer: {GSM_GOLD}"] * 2
    with pytest.raises(BackendError, match="no known task question"):
        backend.generate([[{"role": "user", "content": "What is the capital of France?"}]], SamplingParams())
    empty = tmp_path / "open.jsonl"
    write_jsonl(empty, [{"id": "o", "prompt": "Name a color."}])
    with pytest.raises(ValueError, match="none of the 1 tasks has a reference answer"):
        make_backend(f"reference:{empty}")


def test_reference_works_out_arithmetic_one_operation_per_line():
    assert arithmetic_steps("-( 12 + -5 ) * 3 / 7") == "12 + -5 = 7\n-(7) = -7\n-7 * 3 = -21\n-21 / 7 = -3"
    assert arithmetic_steps("7 / 2 + 1") == ""  # a fraction on the way: no worked solution
    assert arithmetic_steps("__import__('os')") == ""
    # Every generated item of every tier is worked out to its gold answer.
    for task in load_suite("arithmetic", n=25):
        steps, gold = reference_solution(task)
        assert steps.splitlines()[-1].rsplit("= ", 1)[1] == gold, task.prompt


_GSM_TASK = load_suite("gsm_symbolic", n=1, difficulty=2)[0]
GSM = _GSM_TASK.to_dict() | {"regime": "on"}
GSM_GOLD = _GSM_TASK.reference["entry"]["answer"]
GSM_COT = _GSM_TASK.reference["entry"]["metadata"]["answer_cot"].split("####")[0].strip()
ARITH = load_suite("arithmetic", n=1, difficulty=3)[0].to_dict() | {"regime": "on"}


def _tasks_file(tmp_path):
    path = tmp_path / "tagged.jsonl"
    math = {"id": "m1", "prompt": MATH["messages"][0]["content"], "verifier": "math", "reference": "42"}
    write_jsonl(path, [GSM | {"tag": {"by": "given"}}, ARITH, math])  # extra fields of earlier stages are ignored
    return path


# -- runner, bad input -------------------------------------------------------------------------
def test_failing_backend_is_reported_per_record(tmp_path):
    def process(record):
        if record["id"] == "b":
            raise ConnectionError("teacher unreachable")
        return {"id": record["id"], "status": "kept"}

    out = run_records([{"id": i} for i in "abc"], process, tmp_path / "out.jsonl", workers=2)
    assert [r["status"] for r in out] == ["kept", "error", "kept"]
    assert out[1]["error"] == "ConnectionError: teacher unreachable"
    assert [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == ["a", "b", "c"]


def test_runner_skips_done_records_and_cuts_a_torn_line(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "a", "v": 1}\n{"id": "b", "v"')
    seen = []
    out = run_records([{"id": i} for i in "abc"], lambda r: seen.append(r["id"]) or {"id": r["id"], "v": 2}, path)
    assert seen == ["b", "c"] and [r["v"] for r in out] == [1, 2, 2]


def test_bad_query_files_name_file_and_line(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"id": "a", "prompt": "hi"}\n{"id": "b", "prompt": \n')
    with pytest.raises(RecordError, match=r"q\.jsonl:2: invalid JSON"):
        load_queries(StageConfig(input=str(bad)))
    bad.write_text('{"id": "a", "prompt": "hi"}\n{"id": "b", "domain": "math"}\n')
    with pytest.raises(RecordError, match=r"q\.jsonl:2: missing field 'messages' \(or 'prompt'\)"):
        load_queries(StageConfig(input=str(bad)))
    with pytest.raises(FileNotFoundError, match="neither a file nor a built-in suite"):
        load_queries(StageConfig(input=str(tmp_path / "missing.jsonl")))


def test_bad_config_key_is_named(tmp_path):
    from autothink.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("judg: local:x\n")
    assert main(["data", "tag", "--config", str(config)]) == 2


# -- end to end with a real (tiny) model, killed and resumed -----------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny):
    from autothink.format import add_autothink_tokens

    model, tokenizer = tiny
    import copy

    model, tokenizer = copy.deepcopy(model), copy.deepcopy(tokenizer)
    add_autothink_tokens(tokenizer, model)
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# `autothink data ...` whose cold-start stage kills its own process (SIGKILL, as the OOM killer would) when the
# 4th record starts: with one worker exactly 3 records are on disk, every run.
KILLED_ON_FOURTH_RECORD = """
import os, signal, sys
import autothink.data.coldstart as stage
from autothink.cli import main
calls, record = [], stage.coldstart_record
def dying(*args, **kwargs):
    calls.append(1)
    if len(calls) == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return record(*args, **kwargs)
stage.coldstart_record = dying
sys.exit(main(sys.argv[1:]))
"""


def test_pipeline_killed_and_resumed_equals_uninterrupted(tmp_path, tiny_dir):
    queries = tmp_path / "queries.jsonl"
    from autothink.tasks import load_suite, save_tasks

    save_tasks(load_suite("arithmetic", n=6), queries)
    with open(queries, "a") as f:  # unverifiable queries are labelled by their prior, so some are kept
        f.writelines(json.dumps({"id": f"open-{i}", "prompt": f"Name {i} colors."}) + "\n" for i in range(4))
    common = ["--on_backend", f"local:{tiny_dir}", "--samples", "2", "--max_tokens", "12", "--workers", "2",
              "--directive_fraction", "0.3"]
    from autothink.cli import main

    assert main(["data", "tag", "--input", str(queries), "--output_dir", str(tmp_path / "tagged")]) == 0
    runs = {}
    for name in ("straight", "resumed"):
        out = tmp_path / name
        out.mkdir()
        shutil.copy(tmp_path / "tagged" / "tagged.jsonl", out / "tagged.jsonl")
        args = ["data", "coldstart", "--input", str(out / "tagged.jsonl"), "--output_dir", str(out), *common]
        if name == "resumed":  # killed by SIGKILL on its 4th record, one record in flight at a time
            proc = subprocess.run([sys.executable, "-c", KILLED_ON_FOURTH_RECORD, *args, "--workers", "1"],
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
            assert len((out / "coldstart.records.jsonl").read_text().splitlines()) == 3
        assert main(args) == 0  # the straight run, or the same command again after the kill
        runs[name] = {f: (out / f).read_text() for f in ("coldstart.records.jsonl", "coldstart.jsonl",
                                                         "rl_prompts.jsonl")}
    assert runs["resumed"] == runs["straight"]
    records = [json.loads(line) for line in runs["straight"]["coldstart.records.jsonl"].splitlines()]
    assert len(records) == 10 and len({r["id"] for r in records}) == 10
    assert len(runs["straight"]["rl_prompts.jsonl"].splitlines()) == 6  # only verifiable queries
    # A query given a directive keeps it in its RL prompt, and RL is told which mode it asks for.
    by_id = {r["id"]: r for r in records}
    rl = [json.loads(line) for line in runs["straight"]["rl_prompts.jsonl"].splitlines()]
    directed = [r for r in rl if by_id[r["id"]]["label"]["directive"]]
    assert directed and all(r["directive"] == by_id[r["id"]]["label"]["mode"]
                            and r["prompt"][-1]["content"].endswith(by_id[r["id"]]["label"]["directive"])
                            for r in directed)
    assert all(r["directive"] is None for r in rl if r not in directed)
    assert {r["status"] for r in records if r["id"].startswith("open-")} == {"kept"}
    from datasets import load_dataset

    out = tmp_path / "straight"
    for name in ("coldstart.jsonl", "rl_prompts.jsonl"):
        rows = load_dataset("json", data_files=str(out / name), split="train")
        assert len(rows) == len((out / name).read_text().splitlines()) > 0
    assert parse(rows[0]["prompt"][0]["content"]).answer is None and json.loads(rows[0]["reference"])["dataset"]


def test_run_synth_writes_stage1_data_that_datasets_loads(tmp_path):
    from datasets import load_dataset

    from autothink.data.common import Backends
    from autothink.data.synth import SynthConfig, run_synth

    class Scripted(Backends):
        def get(self, spec):
            if spec == "critic":
                return ScriptedBackend(lambda p, i: '{"accept": true, "issues": ""}')
            return ScriptedBackend(lambda p, i: "6*7 = 42\nFinal answer: 42")

    tagged = tmp_path / "tagged.jsonl"
    rows = [MATH, {**MATH, "id": "m2", "regime": "on", "difficulty": 4}, {**MATH, "id": "m3", "reference": "41"}]
    tagged.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = SynthConfig(input=str(tagged), output_dir=str(tmp_path), teachers=["teacher"], critic="critic", k=1)
    results = run_synth(config, Scripted())
    assert [r["status"] for r in results] == ["kept", "kept", "rejected"]
    data = load_dataset("json", data_files=str(tmp_path / "stage1.jsonl"), split="train")
    assert data["mode"] == ["off", "on"] and data["id"] == ["m1", "m2"]
    assert data[1]["completion"][0]["content"].startswith("<think_on><think>6*7 = 42")


def test_edited_prompt_templates_are_used(tmp_path):
    (tmp_path / "critic.txt").write_text("Judge harshly: $solution")
    prompts = Prompts(tmp_path)
    assert prompts.render("critic", query="q", solution="1+1=3") == "Judge harshly: 1+1=3"
    assert "Question:\nq" in prompts.render("solver", query="q")  # not overridden: the packaged default
    (tmp_path / "solver.txt").write_text("Solve $question")
    with pytest.raises(ValueError, match=r"uses \$question"):
        Prompts(tmp_path).render("solver", query="q")
    with pytest.raises(ValueError, match="does not exist"):
        Prompts(tmp_path / "missing")


def test_report_counts_and_plots(tmp_path):
    from autothink.data.report import stats, write_report

    tagged = [{**MATH, "id": f"q{i}", "regime": "on" if i < 2 else "off", "difficulty": 1 + i % 3,
               "tag": {"by": "heuristic"}} for i in range(5)]
    (tmp_path / "tagged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tagged))
    synth = [{"id": "q0", "status": "kept"},
             {"id": "q1", "status": "rejected", "reason": "not verified after 2 rounds"},
             {"id": "q2", "status": "kept"}, {"id": "q3", "status": "error", "error": "ConnectionError: down"},
             {"id": "q4", "status": "rejected", "reason": "no verified answer"}]
    (tmp_path / "synth.records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in synth))
    s = stats(tmp_path)
    assert s["regime"] == {"on": 2, "off": 3} and s["difficulty"] == {1: 2, 2: 2, 3: 1}
    assert s["stages"]["synth"]["yield_by_regime"] == {"on": 0.5, "off": pytest.approx(1 / 3)}
    assert s["stages"]["synth"]["reasons"] == {"not verified after N rounds": 1, "ConnectionError": 1,
                                               "no verified answer": 1}
    report = write_report(tmp_path).read_text()
    assert "## Stage: synth" in report and "| no verified answer | 1 |" in report
    assert (tmp_path / "report.png").stat().st_size > 10_000
