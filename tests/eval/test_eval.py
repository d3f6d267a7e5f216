"""`autothink eval`: metrics against hand-computed sample sets, a scripted end-to-end run with exact
numbers, resume, early errors, and tiny-model runs (in process, and over HTTP through the CLI)."""
import copy
import json
import time
from dataclasses import replace

import pytest

from autothink.cli import main
from autothink.config import parse_config
from autothink.eval.run import (
    EvalConfig,
    group_metrics,
    overthinking_score,
    parse_suite,
    run_eval,
    suite_label,
    tokens_per_correct,
)
from autothink.format import forced_prefix, render
from autothink.inference.backend import Backend, BackendError, Completion
from autothink.inference.local import LocalBackend
from autothink.models import tiny_model
from autothink.serve import running_server
from autothink.tasks.suites import HELD_OUT_DIRECTIVES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sample(passed, mode="off", well_formed=True, finish="stop", judge=0, think=0, answer=0, total=0):
    return {"passed": passed, "finish_reason": finish, "parsed": {"mode": mode, "well_formed": well_formed},
            "tokens": {"judge": judge, "think": think, "answer": answer, "total": total}}


def test_group_metrics_by_hand():
    samples = [
        sample(True, "off", judge=2, answer=3, total=6),
        sample(True, "on", judge=4, think=30, answer=2, total=40),
        sample(False, "on", judge=4, think=150, answer=1, total=160, finish="length"),
        sample(False, None, well_formed=False, answer=5, total=10),
    ]
    m = group_metrics(samples, think_budget=100)
    assert m["n"] == 4
    assert m["accuracy"] == 0.5
    assert m["accuracy_well_formed"] == pytest.approx(2 / 3)  # over the three well-formed replies
    assert group_metrics([sample(True, well_formed=False)], 10)["accuracy_well_formed"] is None
    assert m["think_on_rate"] == 0.5
    assert m["format_rate"] == 0.75
    assert m["truncated_rate"] == 0.25
    assert m["judge_tokens"] == 2.5  # (2 + 4 + 4 + 0) / 4
    assert m["think_tokens"] == 45  # (0 + 30 + 150 + 0) / 4
    assert m["answer_tokens"] == 2.75  # (3 + 2 + 1 + 5) / 4
    assert m["total_tokens"] == 54  # 216 / 4
    assert m["tokens_per_correct"] == 108  # 216 tokens / 2 correct
    # correct × max(0, 1 - think/100): 1, 0.7, 0 (wrong; also past the budget), 0
    assert m["overthinking"] == pytest.approx(1.7 / 4)


def test_overthinking_and_tokens_per_correct_edges():
    assert overthinking_score([sample(True, think=250)], budget=100) == 0  # clamped, not negative
    assert overthinking_score([sample(True, think=50), sample(True, think=0)], budget=200) == pytest.approx(0.875)
    assert tokens_per_correct([sample(False, total=9)]) is None
    with pytest.raises(ValueError, match="no samples"):
        group_metrics([], 10)


def test_suite_syntax(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("")
    assert parse_suite("arithmetic") == ("arithmetic", None)
    assert parse_suite("gsm_symbolic:5") == ("gsm_symbolic", 5)
    assert parse_suite(f"{path}:2") == (str(path), 2)
    assert suite_label(f"{path}:2") == "mine:2" and suite_label("math500") == "math500"
    with pytest.raises(ValueError, match=r"unknown suite 'arith'.*arithmetic, gsm_symbolic.*math500"):
        parse_suite("arith")
    with pytest.raises(ValueError, match="humaneval has no tiers"):
        parse_suite("humaneval:2")
    with pytest.raises(ValueError, match="tiers run from 1 to 5"):
        parse_suite("arithmetic:6")
    with pytest.raises(ValueError, match="no such tasks file"):
        parse_suite(str(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(suites=["arithmetc"]), "unknown suite 'arithmetc'; valid suites: arithmetic"),
    (dict(modes=["auto", "maybe"]), "modes must be distinct values of auto, on, off"),
    (dict(modes=[]), "modes must be"),
    (dict(samples=4), "samples > 1 needs temperature > 0"),
    (dict(max_tokens=0), "max_tokens must be an integer >= 1"),
    (dict(suites=["arithmetic:1", "arithmetic:1"]), "more than once"),
])
def test_bad_config_fails_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(**kwargs)


# --- scripted end-to-end -------------------------------------------------------------------

TASKS = [
    {"id": "q1", "prompt": "What is 2+3?", "verifier": "math", "reference": "5", "difficulty": 1},
    {"id": "q2", "prompt": "What is 6*7?", "verifier": "math", "reference": "42", "difficulty": 2},
]
# (prompt, thinking) -> (completion text after the forced prefix, generated tokens, finish reason); this
# backend cannot continue replies, so forced modes are the template's empty-judge prefix
REPLIES = {
    ("What is 2+3?", "auto"): ("<judge>easy</judge><think_off><answer>5</answer>", 12, "stop"),
    ("What is 6*7?", "auto"): ("<judge>hard</judge><think_on><think>a a a a</think><answer>42</answer>", 20, "stop"),
    ("What is 2+3?", "on"): ("a a</think><answer>5</answer>", 8, "stop"),
    ("What is 6*7?", "on"): ("a a a a a a a a a a a a</think><answer>41</answer>", 18, "stop"),
    ("What is 2+3?", "off"): ("5</answer>", 3, "stop"),
    ("What is 6*7?", "off"): ("I do not know", 5, "length"),
}


class Scripted(Backend):
    """Known replies per (prompt, thinking); records every generate call."""

    name = "scripted"

    def __init__(self):
        self.calls = []

    def _generate(self, conversations, params, thinking):
        self.calls.append((len(conversations), thinking))
        return [[Completion(*_reply(c, thinking))] for c in conversations]


def _reply(conversation, thinking):
    text, tokens, finish = REPLIES[conversation[-1]["content"], thinking]
    return text, finish, tokens


@pytest.fixture
def tasks_file(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    return path


def scripted_config(tasks_file, out, **kw):
    return EvalConfig(model="scripted", suites=[f"{tasks_file}:1", f"{tasks_file}:2"], n=None,
                      think_budget=10, output_dir=str(out), **kw)


# Hand-computed from REPLIES (token counts of the embedded tokenizer: "easy", "hard", "5" are one
# token, "a a a a" four, "42" and "41" two, "I do not know" four). Budget 10.
EXPECTED_ALL = {
    "auto": dict(n=2, accuracy=1.0, accuracy_well_formed=1.0, think_on_rate=0.5, format_rate=1.0, truncated_rate=0.0,
                 judge_tokens=1.0, think_tokens=2.0, answer_tokens=1.5, total_tokens=16.0, tokens_per_correct=16.0,
                 overthinking=0.8, directive_obedience=None, near_miss_agreement=None),  # (1 + (1 - 4/10)) / 2
    "on": dict(n=2, accuracy=0.5, accuracy_well_formed=0.5, think_on_rate=1.0, format_rate=1.0, truncated_rate=0.0,
               judge_tokens=0.0, think_tokens=7.0, answer_tokens=1.5, total_tokens=13.0, tokens_per_correct=26.0,
               overthinking=0.4, directive_obedience=None, near_miss_agreement=None),  # ((1 - 2/10) + 0) / 2
    "off": dict(n=2, accuracy=0.5, accuracy_well_formed=1.0, think_on_rate=0.0, format_rate=0.5, truncated_rate=0.5,
                judge_tokens=0.0, think_tokens=0.0, answer_tokens=2.5, total_tokens=4.0, tokens_per_correct=8.0,
                overthinking=0.5, directive_obedience=None, near_miss_agreement=None),
}


def test_tokenizer_counts_behind_the_expected_numbers(tokenizer):
    def count(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    assert [count(s) for s in ("easy", "hard", "5", "a a", "a a a a", "42", "41", "I do not know")] == [
        1, 1, 1, 2, 4, 2, 2, 4]
    assert count(" ".join(["a"] * 12)) == 12


def test_scripted_run_exact_metrics_and_outputs(tasks_file, tmp_path):
    out = tmp_path / "eval"
    metrics = run_eval(scripted_config(tasks_file, out), backend=Scripted())
    assert metrics["model"] == "scripted" and metrics["samples"] == 6
    for mode, expected in EXPECTED_ALL.items():
        got = dict(metrics["all"][mode])
        cis = got.pop("accuracy_ci"), got.pop("think_on_rate_ci")
        assert got == pytest.approx(expected), mode
        # 95% Wilson intervals of 2 samples: 2/2 -> [0.342, 1], 1/2 -> [0.095, 0.905], 0/2 -> [0, 0.658]
        by_rate = {1.0: [0.342, 1.0], 0.5: [0.095, 0.905], 0.0: [0.0, 0.658]}
        for ci, rate in zip(cis, (expected["accuracy"], expected["think_on_rate"])):
            assert ci == pytest.approx(by_rate[rate], abs=1e-3), mode
    assert set(metrics["suites"]) == {"tasks:1", "tasks:2"}
    assert metrics["suites"]["tasks:1"]["auto"]["think_on_rate"] == 0
    assert metrics["suites"]["tasks:2"]["auto"]["overthinking"] == pytest.approx(0.6)
    assert metrics["suites"]["tasks:2"]["on"]["tokens_per_correct"] is None
    assert json.loads((out / "metrics.json").read_text()) == metrics

    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["suite"], r["mode"], r["task_id"]) for r in rows] == [
        (s, m, q) for s, q in (("tasks:1", "q1"), ("tasks:2", "q2")) for m in ("auto", "on", "off")]
    on2 = rows[4]
    assert on2["response"] == "<judge></judge><think_on><think>" + REPLIES["What is 6*7?", "on"][0]
    assert on2["tier"] == 2 and on2["parsed"]["answer"] == "41" and on2["parsed"]["mode"] == "on"
    assert on2["tokens"] == {"judge": 0, "think": 12, "answer": 2, "total": 18}
    assert on2["passed"] is False and on2["detail"]
    off2 = rows[5]
    assert not off2["parsed"]["well_formed"] and "unterminated <answer>" in off2["parsed"]["errors"]

    page = (out / "report.html").read_text()
    assert "<table>" in page and "tokens auto / on" in page and page.count("data:image/png;base64,") == 2
    assert "<td>tasks:2</td><td>on</td><td>1</td><td>0.000</td><td>[0.00, 0.79]</td>" in page  # with its 95% CI
    # Example replies: per mode the first correct and the first wrong one (auto got both right: one shown).
    examples = page[page.index("<h2>Example replies</h2>"):]
    assert examples.count("<details>") == 5 and "auto: tasks:1 q1 — correct" in examples
    assert "off: tasks:2 q2 — wrong, malformed: unterminated &lt;answer&gt;" in examples
    for name in ("think_tokens.png", "accuracy_tokens.png", "settings.json"):
        assert (out / name).stat().st_size > 0


def test_compare_puts_runs_side_by_side(tasks_file, tmp_path, capsys):
    before = tmp_path / "before"
    metrics = run_eval(scripted_config(tasks_file, before), backend=Scripted())
    capsys.readouterr()
    after = copy.deepcopy(metrics)  # "after RL": fewer think-on replies on tier 2, no forced-off run
    after["model"] = "rl"
    after["suites"]["tasks:2"]["auto"].update(think_on_rate=0.0, accuracy=1.0)
    for by_mode in (*after["suites"].values(), after["all"]):
        del by_mode["off"]
    (tmp_path / "after").mkdir()
    (tmp_path / "after" / "metrics.json").write_text(json.dumps(after))
    assert main(["eval", "compare", str(before), str(tmp_path / "after")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"[1] {before} (model scripted)", f"[2] {tmp_path / 'after'} (model rl)"]
    cells = {tuple(line.split()[:2]): line.split()[2:] for line in lines[3:]}
    assert len(cells) == 2 * 3 + 3  # (2 suites + all) x 3 modes
    auto2 = metrics["suites"]["tasks:2"]["auto"]
    # accuracy [1] [2], think-on [1] [2], well-formed [1] [2], think tok [1] [2], total tok [1] [2]
    assert cells["tasks:2", "auto"][:4] == [f"{auto2['accuracy']:.3f}", "1.000", f"{auto2['think_on_rate']:.3f}",
                                            "0.000"]
    assert cells["tasks:1", "off"][1::2] == ["-"] * 5
    assert main(["eval", "compare", str(before), str(tmp_path / "missing")]) == 2
    assert "missing: no metrics.json" in capsys.readouterr().err


def test_resume_reuses_finished_samples(tasks_file, tmp_path):
    out = tmp_path / "eval"
    first = run_eval(scripted_config(tasks_file, out), backend=Scripted())
    again = Scripted()
    assert run_eval(scripted_config(tasks_file, out), backend=again) == first
    assert again.calls == []

    # Killed mid-run: the last two samples are missing and a line was torn mid-write.
    lines = (out / "samples.jsonl").read_text().splitlines(keepends=True)
    (out / "samples.jsonl").write_text("".join(lines[:-2]) + lines[-2][:30])
    resumed = Scripted()
    assert run_eval(scripted_config(tasks_file, out), backend=resumed) == first
    assert resumed.calls == [(1, "on"), (1, "off")]

    # A new mode is added: only it is sampled; changed sampling settings are refused up front.
    more = Scripted()
    run_eval(scripted_config(tasks_file, out, modes=["auto", "on"]), backend=more)
    assert more.calls == []
    with pytest.raises(ValueError, match="holds samples made with max_tokens=512, not 64"):
        run_eval(scripted_config(tasks_file, out, max_tokens=64), backend=Scripted())


def test_unreachable_endpoint_fails_before_sampling(tasks_file, tmp_path):
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"cannot reach http://127.0.0.1:9/v1 .*is the server running"):
        run_eval(EvalConfig(model="http://127.0.0.1:9/v1#x", suites=[str(tasks_file)], output_dir=str(tmp_path / "o")))
    assert time.monotonic() - start < 5  # no retry loop
    assert not (tmp_path / "o").exists()


def test_ungraded_tasks_are_refused(tmp_path):
    path = tmp_path / "open.jsonl"
    path.write_text(json.dumps({"id": "x", "prompt": "Write a poem."}) + "\n")
    with pytest.raises(ValueError, match="1 tasks have no verifier"):
        run_eval(EvalConfig(suites=[str(path)], output_dir=str(tmp_path / "o")), backend=Scripted())


# --- tiny model -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_backend(tokenizer):
    model, tok = tiny_model(copy.deepcopy(tokenizer))
    return LocalBackend(model, tok, name="tiny")


def test_tiny_model_in_process(tiny_backend, tmp_path):
    config = EvalConfig(model="tiny", suites=["arithmetic:1"], n=2, max_tokens=6, primer=True,
                        output_dir=str(tmp_path / "empty"), forced_judge="empty")
    metrics = run_eval(config, backend=tiny_backend)
    rows = [json.loads(line) for line in (tmp_path / "empty" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and metrics["samples"] == 6
    for r in rows:
        assert 1 <= r["tokens"]["total"] <= 6
        if r["mode"] != "auto":  # forced modes: the response starts with the forced prefix
            assert r["parsed"]["mode"] == r["mode"]
    assert metrics["all"]["on"]["think_on_rate"] == 1 and metrics["all"]["off"]["think_on_rate"] == 0
    # The default: the model writes its own judge first (this random one never closes it in 6 tokens).
    run_eval(replace(config, output_dir=str(tmp_path / "own"), forced_judge="model"), backend=tiny_backend)
    rows = [json.loads(line) for line in (tmp_path / "own" / "samples.jsonl").read_text().splitlines()]
    forced = [r for r in rows if r["mode"] != "auto"]
    assert len(forced) == 4 and all(r["response"].startswith("<judge>") and r["tokens"]["total"] == 6
                                    and r["parsed"]["mode"] is None for r in forced)


def test_cli_over_http_and_yaml_errors(tiny_backend, tmp_path, capsys):
    with running_server(tiny_backend) as url:
        with pytest.raises(BackendError, match="does not serve model 'other'; it serves: tiny"):
            run_eval(EvalConfig(model=f"{url}/v1#other", suites=["arithmetic:1"], output_dir=str(tmp_path / "x")))
        code = main(["eval", "--model", f"{url}/v1#tiny", "--suites", "arithmetic:1", "--n", "2",
                     "--modes", "auto", "off", "--max_tokens", "4", "--output_dir", str(tmp_path / "cli")])
    assert code == 0
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["model"] == "tiny" and set(metrics["all"]) == {"auto", "off"}
    assert "eval: model=tiny samples=4" in capsys.readouterr().out

    config = tmp_path / "eval.yaml"
    config.write_text("modes: [auto, on, off]\nsuites: [arithmetic:2]\n")  # YAML reads on/off as booleans
    assert parse_config(EvalConfig, ["--config", str(config)], prog="x").modes == ["auto", "on", "off"]
    config.write_text("suits: [arithmetic]\n")
    assert main(["eval", "--config", str(config)]) == 2
    assert "unknown option 'suits' for EvalConfig; did you mean 'suites'?" in capsys.readouterr().err
    assert main(["eval", "--suites", "arith", "--modes", "auto"]) == 2
    assert "unknown suite 'arith'; valid suites: arithmetic" in capsys.readouterr().err


def _sample(variant, mode, directive=None, base="b1", control="auto", k=0):
    return {"variant": variant, "directive": directive, "base": base, "mode": control, "sample": k, "passed": True,
            "finish_reason": "stop", "parsed": {"mode": mode, "well_formed": True},
            "tokens": {"judge": 1, "think": 0, "answer": 1, "total": 3}}


def test_constrained_eval_of_a_backend_that_cannot_is_refused_before_sampling(tasks_file, tmp_path):
    backend = Scripted()
    with pytest.raises(ValueError, match="--constrained needs a local model"):
        run_eval(scripted_config(tasks_file, tmp_path / "c", constrained=True), backend=backend)
    assert backend.calls == [] and not (tmp_path / "c" / "samples.jsonl").exists()


def test_directive_obedience_and_near_miss_agreement_by_hand():
    samples = [
        _sample("plain", "on"), _sample("near_miss", "on"), _sample("off", "off", "off"), _sample("on", "off", "on"),
        _sample("plain", "off", base="b2"), _sample("near_miss", "on", base="b2"),
        _sample("off", "off", "off", base="b2"), _sample("on", "on", "on", base="b2"),
    ]
    m = group_metrics(samples, think_budget=10)
    assert m["directive_obedience"] == 3 / 4  # b1's "on" directive was answered think-off
    assert m["near_miss_agreement"] == 1 / 2  # b2's near-miss flipped the plain question's mode
    assert group_metrics(samples[:1], 10)["directive_obedience"] is None


def test_directives_suite_feeds_obedience_into_the_metrics(tmp_path):
    """A model that thinks only when a held-out "on" paraphrase asks: obedience 1, near-misses unchanged."""

    class Obeys(Backend):
        name = "obeys"

        def _generate(self, conversations, params, thinking):
            replies = []
            for c in conversations:
                prompt = c[-1]["content"]
                mode = "on" if any(p in prompt for p in HELD_OUT_DIRECTIVES["on"]) else "off"
                text = render(mode, "0", judge="j", think="t" if mode == "on" else "")
                replies.append([Completion(text.removeprefix(forced_prefix(thinking or "auto")), "stop", 5)])
            return replies

    metrics = run_eval(EvalConfig(model="obeys", suites=["directives"], n=8, modes=["auto"],
                                  output_dir=str(tmp_path)), backend=Obeys())
    auto = metrics["all"]["auto"]
    assert auto["directive_obedience"] == 1.0 and auto["near_miss_agreement"] == 1.0 and auto["n"] == 8
