"""`autothink rl`: Step-SRPO on TRL's GRPOTrainer: forced modes, metrics, rewards/advantages wiring on a scripted
batch, bad input, and tiny end-to-end runs with resume (schedule: algorithms/test_schedule.py; the TRL contract:
contracts/test_trl.py)."""
import copy
import json

import pytest
import torch
import trl
from transformers import AutoModelForCausalLM

from autothink.algorithms import (
    SEG_JUDGE,
    SEG_RESPONSE,
    group_normalize,
    segment_advantages,
    segment_ids,
    step_srpo_rewards,
)
from autothink.algorithms.schedule import forced_modes
from autothink.config import parse_config
from autothink.format import MODE_TOKENS, THINK_OFF, add_autothink_tokens, forced_prefix, parse
from autothink.models import tiny_model
from autothink.records.jsonl import RecordError, write_jsonl
from autothink.records.rl_prompts import read_rl_prompts
from autothink.tasks import load_suite
from autothink.training.rl_metrics import srpo_metrics
from autothink.training.step_srpo import (
    LOSS_MASK,
    RLConfig,
    StepSRPOTrainer,
    run_rl,
    to_dataset,
)
from helpers import KillAtFirstCheckpoint, Killed, rl_prompt_rows
from reference import policy_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- forced modes and the schedule


def test_forced_modes_force_a_share_of_each_group_half_on_half_off():
    modes = forced_modes(16, 0, 4, 0.5, seed=0, step=3)
    for g in range(4):
        group = modes[4 * g: 4 * g + 4]
        assert group[:2] == [None, None] and sorted(group[2:]) == ["off", "on"]
    assert forced_modes(16, 0, 4, 0.5, seed=0, step=3) == modes  # deterministic (resume draws the same)
    # A second process continues the global numbering.
    assert forced_modes(8, 1, 4, 0.5, 0, 3) == modes[8:]
    # ρG = 1.5: one or two forced per group, 1.5 on average; ρ = 0 forces nothing.
    counts = [sum(m is not None for m in forced_modes(8, 0, 8, 0.1875, 0, step)) for step in range(400)]
    assert set(counts) == {1, 2} and abs(sum(counts) / len(counts) - 1.5) < 0.1
    assert forced_modes(8, 0, 4, 0.0, 0, 0) == [None] * 8


def test_srpo_metrics():
    m = srpo_metrics(modes=["on", "off", None, "on"], forced=[False, False, False, True],
                     well_formed=[True, True, False, True], correct=[True, False, False, True],
                     correct_mode=["on"] * 4, judge_reward=[1, 0, 0, 1], answer_reward=[1, 0, 0, 1],
                     domains=["math", "math", "code", "code"],
                     lengths={"judge": [3, 2, 0, 0], "think": [5, 0, 0, 4], "answer": [2, 2, 9, 2]})
    assert m["think_on_rate"] == 0.5 and m["judge_accuracy"] == pytest.approx(1 / 3)
    assert m["accuracy_on"] == 1.0 and m["accuracy_off"] == 0.0 and m["format_error_rate"] == 0.25
    assert m["accuracy"] == 0.5 and m["accuracy_well_formed"] == pytest.approx(2 / 3)  # the malformed one left out
    assert m["tokens_think"] == pytest.approx(5 / 3) and m["tokens_total"] == pytest.approx(29 / 4)
    assert m["domain/code/think_on_rate"] is None and m["domain/math/accuracy"] == 0.5


# --------------------------------------------------------------------------- data and bad input

TASKS = load_suite("arithmetic", n=4)


def _rows():
    return rl_prompt_rows(TASKS)


def _gold(task):
    return task.reference["entry"]["answer"]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "rl_prompts.jsonl"
    write_jsonl(path, _rows())
    return path


def test_run_rl_names_a_bad_row_before_loading_the_model(tmp_path):
    rows = _rows()
    del rows[1]["reference"]
    write_jsonl(tmp_path / "rl_prompts.jsonl", rows)
    with pytest.raises(RecordError, match=f"rl_prompts.jsonl:2: record {rows[1]['id']!r}: no `reference`"):
        run_rl(RLConfig(model="/nonexistent", data=str(tmp_path / "rl_prompts.jsonl"), output_dir=str(tmp_path / "out"),
                        report_to="none"))


def test_config_checks():
    with pytest.raises(ValueError, match="forced_fraction"):
        RLConfig(output_dir="x", forced_fraction=1.5)
    with pytest.raises(ValueError, match="sequence-level"):
        RLConfig(output_dir="x", loss_type="vespo")
    with pytest.raises(ValueError, match="scale_rewards"):
        RLConfig(output_dir="x", scale_rewards="batch")
    assert RLConfig(output_dir="x").delta is None  # TRL's two-sided clipping bound stays off; δ is mode_delta
    config = parse_config(RLConfig, ["--mode_delta", "0.1", "--stage1_steps", "5", "--history_resampling", "false",
                                     "--output_dir", "x"], prog="autothink rl")
    assert (config.mode_delta, config.stage1_steps, config.history_resampling, config.delta) == (0.1, 5, False, None)


# --------------------------------------------------------------------------- the wiring on a scripted batch


@pytest.fixture
def policy(tokenizer):
    model, tok = tiny_model(copy.deepcopy(tokenizer))
    add_autothink_tokens(tok, model)
    return model, tok


def _trainer(policy, prompts_file, tmp_path, **overrides):
    model, tok = policy
    args = RLConfig(**({"output_dir": str(tmp_path), "report_to": "none", "num_generations": 4,
                        "per_device_train_batch_size": 8, "max_completion_length": 16, "forced_fraction": 0.5,
                        "max_steps": 1, "seed": 0, "disable_tqdm": True} | overrides))
    return StepSRPOTrainer(model=model, args=args, train_dataset=to_dataset(read_rl_prompts(prompts_file)),
                           processing_class=tok)


def test_scripted_batch_gets_segment_advantages_of_the_core_functions(policy, prompts_file, tmp_path, monkeypatch):
    trainer = _trainer(policy, prompts_file, tmp_path, forced_judge="empty")
    tok = trainer.processing_class
    eos = tok.eos_token_id
    g0, g1 = _gold(TASKS[0]), _gold(TASKS[1])
    # Unforced rollouts by row; forced rollouts continue their prefill (which ends with <think> or <answer>).
    unforced = {0: f"<judge>easy</judge><think_off><answer>{g0}</answer>",  # off, correct
                1: "<judge>hard</judge><think_on><think>hmm</think><answer>999</answer>",  # on, wrong
                4: "gibberish without tags",  # malformed
                5: f"<judge>easy</judge><think_off><answer>{g1}</answer>"}  # off, correct
    forced = {(0, "on"): f"hmm</think><answer>{g0}</answer>", (0, "off"): "7</answer>",
              (1, "on"): f"ok</think><answer>{g1}</answer>", (1, "off"): f"{g1}</answer>"}
    prefix_of = {tuple(ids): m for m, ids in trainer.prefix_ids.items()}

    def scripted(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        out = []
        for i, ids in enumerate(prompt_ids):
            mode = prefix_of.get(tuple(ids[-len(trainer.prefix_ids["on"]):]))
            text = unforced[i] if mode is None else forced[(i // 4, mode)]
            out.append(tok(text, add_special_tokens=False).input_ids + [eos])
        return out, None

    monkeypatch.setattr(trl.GRPOTrainer, "_generate_single_turn", scripted)
    rows = list(trainer.train_dataset)
    inputs = [dict(rows[0]) for _ in range(4)] + [dict(rows[1]) for _ in range(4)]
    trainer.model.train()
    out = trainer._generate_and_score_completions(inputs)

    modes = forced_modes(8, 0, 4, 0.5, seed=0, step=0)
    assert modes[:2] == [None, None] and modes[4:6] == [None, None]
    texts = tok.batch_decode(out["completion_ids"], skip_special_tokens=True)
    for i, m in enumerate(modes):  # forced completions start with the prefill
        expected = forced_prefix(m) + forced[(i // 4, m)] if m else unforced[i]
        assert texts[i] == expected
    parsed = [parse(t) for t in texts]
    assert [p.mode for p in parsed] == ["off", "on", *modes[2:4], None, "off", *modes[6:]]
    correct = [True, False] + [modes[i] == "on" for i in (2, 3)] + [False, True, True, True]
    is_forced = [m is not None for m in modes]
    groups = [0] * 4 + [1] * 4
    r_j, r_a, m_star = step_srpo_rewards([p.mode for p in parsed], correct, is_forced,
                                         [p.well_formed for p in parsed], groups, gamma=0.5,
                                         prior_modes=[r["prior_mode"] for r in inputs])
    # By hand, group 0: p_on = p_off = 1/2 -> m* = off; the forced-on rollout is right in the wrong mode (γ).
    assert m_star[0] == "off" and r_j[:2].tolist() == [1.0, 0.0] and r_a[:2].tolist() == [1.0, 0.0]
    assert r_a[2 + modes[2:4].index("on")] == 0.5
    # The judge baseline is the whole group, forced rollouts included; forced rollouts get no judge advantage.
    a_j = group_normalize(r_j, groups) * torch.tensor([0.0 if f else 1.0 for f in is_forced])
    a_a = group_normalize(r_a, groups)
    segments, mask = segment_ids(out["completion_ids"], trainer.tag_ids, is_forced, out["completion_mask"],
                                 [(0, len(tok(forced_prefix(m), add_special_tokens=False).input_ids) if m else 0)
                                  for m in modes])
    torch.testing.assert_close(out["advantages"], segment_advantages(segments, a_j, a_a))
    assert torch.equal(out[LOSS_MASK].float(), mask) and "tool_mask" not in out  # TRL's key is left to tools
    # Judge tokens carry the judge advantage, the rest the answer advantage (row 0: unforced, judge != answer).
    assert out["advantages"][0][segments[0] == SEG_JUDGE].unique().tolist() == [pytest.approx(a_j[0].item())]
    assert out["advantages"][0][segments[0] == SEG_RESPONSE].unique().tolist() == [pytest.approx(a_a[0].item())]
    # Forced rollouts: the prefill, mode token included, has no loss; the rest is trained.
    mode_ids = {tok.convert_tokens_to_ids(t) for t in MODE_TOKENS.values()}
    for i, m in enumerate(modes):
        n = len(tok(forced_prefix(m), add_special_tokens=False).input_ids) if m else 0
        row, loss = out["completion_ids"][i], out[LOSS_MASK][i]
        assert loss[:n].sum() == 0 and loss[n:].sum() == out["completion_mask"][i, n:].sum()
        if m:
            assert row[2].item() in mode_ids and loss[2] == 0
    assert out["num_items_in_batch"] == mask.sum()
    metrics = {k: v for k, v in trainer._metrics["train"].items() if k.startswith("srpo/")}
    assert metrics["srpo/think_on_rate"] == [pytest.approx(1 / 3)] and metrics["srpo/format_error_rate"] == [0.125]

    # TRL's unchanged _compute_loss applies these exactly as the core's token-level clipped surrogate.
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    attn = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attn, out["completion_ids"].size(1))
    torch.manual_seed(0)
    out["old_per_token_logps"] = (logps + 0.3 * torch.randn_like(logps)).detach()
    trainer.current_gradient_accumulation_steps = 1
    expected, _ = policy_loss(logps, out["old_per_token_logps"], out["advantages"], mask)
    torch.testing.assert_close(trainer.compute_loss(trainer.model, out), expected)


def test_free_rollouts_all_in_the_wrong_mode_get_a_negative_judge_advantage(policy, prompts_file, tmp_path,
                                                                             monkeypatch):
    """The audit scenario: every free rollout thinks off and is wrong, the forced think-on rollout is right.
    A baseline over free rollouts only gave their mode tokens 0; the whole-group baseline pushes them down."""
    trainer = _trainer(policy, prompts_file, tmp_path, forced_judge="empty")
    tok = trainer.processing_class
    g0 = _gold(TASKS[0])
    prefix_of = {tuple(ids): m for m, ids in trainer.prefix_ids.items()}

    def scripted(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        out = []
        for ids in prompt_ids:
            mode = prefix_of.get(tuple(ids[-len(trainer.prefix_ids["on"]):]))
            text = {None: "<judge>easy</judge><think_off><answer>999</answer>", "on": f"x</think><answer>{g0}</answer>",
                    "off": "999</answer>"}[mode]
            out.append(tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id])
        return out, None

    monkeypatch.setattr(trl.GRPOTrainer, "_generate_single_turn", scripted)
    row = dict(list(trainer.train_dataset)[0])
    trainer.model.train()
    out = trainer._generate_and_score_completions([dict(row) for _ in range(8)])
    modes = forced_modes(8, 0, 4, 0.5, seed=0, step=0)
    off = tok.convert_tokens_to_ids(THINK_OFF)
    for i, m in enumerate(modes):
        if m is None:  # a free rollout: its own <think_off> is trained, with a negative advantage
            at = (out["completion_ids"][i] == off).nonzero()[0, 0]
            assert out[LOSS_MASK][i, at] == 1 and out["advantages"][i, at] < 0
    # Through TRL's loss: a gradient step lowers log p(<think_off>) where the free rollouts chose it.
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    attn = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attn, out["completion_ids"].size(1))
    out["old_per_token_logps"] = logps.detach()
    trainer.current_gradient_accumulation_steps = 1
    free = [i for i, m in enumerate(modes) if m is None]
    at = [(out["completion_ids"][i] == off).nonzero()[0, 0].item() for i in free]
    logps.retain_grad()
    expected, _ = policy_loss(logps, out["old_per_token_logps"], out["advantages"], out[LOSS_MASK].float())
    expected.backward()
    assert all(logps.grad[i, a] > 0 for i, a in zip(free, at))  # d loss / d log p > 0: descent lowers it
    torch.testing.assert_close(trainer.compute_loss(trainer.model, out), expected.detach())


def test_forced_rollouts_write_their_own_judge_before_the_forced_mode(policy, prompts_file, tmp_path, monkeypatch):
    """Two-phase generation through TRL's own `_generate_single_turn` (scripted like TRL: it stops at the first
    of `eos_token_ids`, after at most `generation_config.max_new_tokens`)."""
    trainer = _trainer(policy, prompts_file, tmp_path, judge_max_tokens=8, max_completion_length=24)
    tok = trainer.processing_class
    eos, ids_of = tok.eos_token_id, trainer.tag_ids
    enc = lambda text: tok(text, add_special_tokens=False).input_ids  # noqa: E731
    # What the policy writes for each row, whatever was forced (rows 2, 3, 6, 7 are): row 2 skips </judge>, row 5
    # has no tags, row 6 judges at length.
    natural = {0: "<judge>easy</judge><think_off><answer>1</answer>", 1: "<judge>sum</judge><think_on><think>a"
               "</think><answer>2</answer>", 2: "<judge>quick<think_off><answer>3</answer>", 3: "<judge>x</judge>"
               "<think_on><think>b</think><answer>4</answer>", 4: "<judge>y</judge><think_off><answer>5</answer>",
               5: "no tags at all", 6: "<judge>a b c d e f g h i j</judge><think_off><answer>6</answer>",
               7: "<judge>z</judge><think_off><answer>7</answer>"}
    after_forcing = {"on": enc("thought</think><answer>8</answer>"), "off": enc("9</answer>")}
    calls = []

    def scripted(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        calls.append((len(prompt_ids), self.generation_config.max_new_tokens, list(self.eos_token_ids)))
        out = []
        for i, ids in enumerate(prompt_ids):
            if len(calls) == 1:
                reply = enc(natural[i]) + [eos]
            else:
                forced = [k for k, m in ((ids[-2], "on"), (ids[-2], "off")) if k == ids_of[MODE_TOKENS[m]]]
                head = ids[len(prompts[i]):]
                reply = (after_forcing["on" if ids[-2] == ids_of["<think_on>"] else "off"] if forced
                         else (enc(natural[i]) + [eos])[len(head):]) + [eos]
            cut = next((j for j, t in enumerate(reply) if t in self.eos_token_ids), len(reply) - 1)
            out.append(reply[:min(cut + 1, self.generation_config.max_new_tokens)])
        return out, None

    monkeypatch.setattr(trl.GRPOTrainer, "_generate_single_turn", scripted)
    rows = list(trainer.train_dataset)
    inputs = [dict(rows[0]) for _ in range(4)] + [dict(rows[1]) for _ in range(4)]
    prompts = [tok.apply_chat_template(x["prompt"], tokenize=True, add_generation_prompt=True, return_dict=False)
               for x in inputs]
    eos_before = list(trainer.eos_token_ids)
    trainer.model.train()
    out = trainer._generate_and_score_completions(inputs)
    modes = forced_modes(8, 0, 4, 0.5, seed=0, step=0)
    assert [m is not None for m in modes] == [False, False, True, True] * 2
    # Phase 1: every rollout, at most judge_max_tokens, stopping at </judge> or any later tag; then restored.
    stops = {ids_of[t] for t in ("</judge>", "<think_on>", "<think_off>", "<think>", "<answer>", "</answer>")}
    assert calls[0][:2] == (8, 8) and set(calls[0][2]) == set(eos_before) | stops
    assert calls[1][0] == 8 and set(calls[1][2]) == set(eos_before) and trainer.eos_token_ids == eos_before
    texts = tok.batch_decode(out["completion_ids"], skip_special_tokens=True)
    tail = {"on": "<think_on><think>thought</think><answer>8</answer>", "off": "<think_off><answer>9</answer>"}
    for i in (0, 1, 4):  # free rollouts: two phases give the one-phase text
        assert texts[i] == natural[i], i
    assert texts[5] == "no tags at all"  # ended in phase 1; phase 2's output is dropped
    assert texts[2] == "<judge>quick</judge>" + tail[modes[2]]  # its own <think_off> dropped, </judge> written
    assert texts[3] == "<judge>x</judge>" + tail[modes[3]]
    assert texts[6] == "<judge>a b c d e f g</judge>" + tail[modes[6]]  # the judge cut at judge_max_tokens
    assert texts[7] == "<judge>z</judge>" + tail[modes[7]]
    # The tokens the forcing wrote (a </judge> it had to add, the mode token, <think>/<answer>) get no loss.
    for i, forced_count in ((2, 3), (3, 2), (6, 3), (7, 2)):
        row = out["completion_ids"][i].tolist()
        at = row.index(ids_of[MODE_TOKENS[modes[i]]])
        loss = out[LOSS_MASK][i]
        assert loss[at - forced_count + 2: at + 2].sum() == 0 and loss[: at - forced_count + 2].sum() == at - (
            forced_count - 2)
        assert loss[at + 2:].sum() == out["completion_mask"][i, at + 2:].sum()
        assert (out["advantages"][i][: at - forced_count + 2] == 0).all()  # a forced judge: advantage 0
    assert out["completion_ids"].size(1) <= 24


def test_a_directive_is_the_correct_mode_of_its_prompt(policy, prompts_file, tmp_path, monkeypatch):
    trainer = _trainer(policy, prompts_file, tmp_path, forced_fraction=0.0)
    tok = trainer.processing_class
    g0 = _gold(TASKS[0])

    def scripted(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        texts = [f"<judge>a</judge><think_on><think>x</think><answer>{g0}</answer>"] * 2 + [
            f"<judge>b</judge><think_off><answer>{g0}</answer>"] * 2
        return [tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id] for t in texts * 2], None

    monkeypatch.setattr(trl.GRPOTrainer, "_generate_single_turn", scripted)
    row = dict(list(trainer.train_dataset)[0])
    trainer.model.train()
    trainer._generate_and_score_completions([dict(row, directive="on") for _ in range(4)]
                                            + [dict(row, id="other", directive=None) for _ in range(4)])
    scored = trainer._scored
    assert scored.correct_mode == ["on"] * 4 + ["off"] * 4  # both modes right: the directive decides
    assert scored.judge.tolist() == [1, 1, 0, 0, 0, 0, 1, 1]


# --------------------------------------------------------------------------- end to end


def _sft_policy(tokenizer, path, steps=100):
    """A tiny policy taught the format with two fixed responses, half and half: think-off answering the first
    task's answer, think-on answering the second's (so each mode is right on one prompt and m* differs by prompt)."""
    model, tok = tiny_model(copy.deepcopy(tokenizer), seed=1)
    add_autothink_tokens(tok, model)
    responses = (f"<judge>easy</judge><think_off><answer>{_gold(TASKS[0])}</answer>",
                 f"<judge>hard</judge><think_on><think>hmm</think><answer>{_gold(TASKS[1])}</answer>")
    pairs = []
    for t in TASKS:
        p = tok.apply_chat_template(t.messages, tokenize=True, add_generation_prompt=True, return_dict=False)
        for response in responses:
            r = tok(response, add_special_tokens=False).input_ids + [tok.eos_token_id]
            pairs.append((p + r, [-100] * len(p) + r))
    width = max(len(ids) for ids, _ in pairs)
    ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x, _ in pairs])
    labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in pairs])
    attn = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in pairs])
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    target = labels[:, 1:]
    for _ in range(steps):  # logits of the response positions only: the 49k-token head dominates the cost
        hidden = model.model(input_ids=ids, attention_mask=attn).last_hidden_state[:, :-1]
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[target != -100]), target[target != -100])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return loss.item()


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("policy")
    assert _sft_policy(tokenizer, path) < 1.0
    return path


def _run_config(policy_dir, prompts_file, out, **overrides):
    return RLConfig(**({
        "model": str(policy_dir), "data": str(prompts_file), "output_dir": str(out), "report_to": "none",
        "num_generations": 4, "per_device_train_batch_size": 8, "max_completion_length": 16, "max_steps": 3,
        "learning_rate": 1e-3, "forced_fraction": 0.5, "stage1_steps": 1, "save_steps": 2, "seed": 0,
        "disable_tqdm": True} | overrides))


@pytest.fixture(scope="module")
def finished(policy_dir, prompts_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("rl") / "run"
    assert run_rl(_run_config(policy_dir, prompts_file, out)) == str(out)
    return out


STEP_KEYS = {"think_on_rate", "judge_accuracy", "accuracy", "accuracy_on", "accuracy_off", "tokens_judge",
             "tokens_think", "tokens_answer", "format_error_rate", "domain/math/accuracy", "domain/math/think_on_rate"}


@pytest.mark.slow
def test_tiny_run_writes_metrics_and_plots_and_learns(finished, policy_dir):
    out = finished
    rows = [json.loads(line) for line in (out / "rl_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and [r["stage"] for r in rows] == [1, 2, 2]
    assert all(STEP_KEYS <= set(r) for r in rows)
    assert rows[0]["prompts"] == 2 and rows[0]["forced_rate"] == 0.5
    assert all(r["format_error_rate"] < 1 for r in rows)  # the policy writes the format: rewards are not all zero
    assert rows[0]["domain/math/accuracy"] == 0 and any(r["accuracy"] > 0 for r in rows[1:])  # stage 1: hard ones
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [log for log in state["log_history"] if "srpo/judge_accuracy" in log]
    assert len(logged) == 3 and state["global_step"] == 3  # in the Trainer logs (-> report_to backends)
    for name in ("think_on_rate.png", "tokens.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert (out / "checkpoint-2" / "srpo_schedule.json").exists()
    summary = json.loads((out / "rl.json").read_text())
    assert summary["global_step"] == 3 and summary["stage1_prompts"] == 2 and summary["resumed_from"] is None
    before = AutoModelForCausalLM.from_pretrained(policy_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint(finished, policy_dir, prompts_file, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Killed, match="step 2"):
        run_rl(_run_config(policy_dir, prompts_file, out), callbacks=[KillAtFirstCheckpoint()])
    with open(out / "rl_metrics.jsonl", "a") as f:  # a step logged after the checkpoint, before the kill
        f.write(json.dumps({"step": 2, "stage": 2, "think_on_rate": 0.0}) + "\n")
    run_rl(_run_config(policy_dir, prompts_file, out))
    summary = json.loads((out / "rl.json").read_text())
    assert summary["resumed_from"] == str(out / "checkpoint-2") and summary["global_step"] == 3
    rows = [json.loads(line) for line in (out / "rl_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    # The schedule, the forced draws and the RNG state are restored: the resumed run is the uninterrupted one.
    straight = [json.loads(line) for line in (finished / "rl_metrics.jsonl").read_text().splitlines()]
    assert rows == straight
    resumed = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for name, tensor in AutoModelForCausalLM.from_pretrained(finished).state_dict().items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=0, msg=name)


@pytest.mark.slow
def test_history_resampling_decides_each_epoch_with_one_batch_in_flight(policy_dir, prompts_file, tmp_path):
    """The measured effect of deciding an epoch before the last batch is scored: the dataloader asks for
    the next batch one ahead, so exactly one generation batch (2 of the 4 prompts here) is unscored then."""
    out = tmp_path / "run"
    run_rl(_run_config(policy_dir, prompts_file, out, max_steps=5, stage1_steps=0, save_steps=50))
    summary = json.loads((out / "rl.json").read_text())
    assert summary["batches_in_flight_at_epoch_decisions"] == [1, 1] and len(summary["epochs"]) == 3


@pytest.mark.slow
def test_two_gloo_processes_train_one_model(finished, policy_dir, prompts_file, tmp_path):
    """`torchrun --nproc_per_node 2` on CPU: each process generates half of every batch; rewards, groups and
    metrics are gathered across both, gradients are averaged (DDP over gloo) and one process writes the outputs."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    flags = [f"--{k}={v}" for k, v in {
        "model": policy_dir, "data": prompts_file, "output_dir": out, "report_to": "none", "num_generations": 4,
        "per_device_train_batch_size": 4, "max_completion_length": 16, "max_steps": 3, "learning_rate": 1e-3,
        "forced_fraction": 0.5, "stage1_steps": 1, "save_steps": 2, "seed": 0, "disable_tqdm": True,
        "use_cpu": True}.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "autothink.cli", "rl", *flags], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("rl: 3 steps") == 1  # the summary line comes from one process
    rows = [json.loads(line) for line in (out / "rl_metrics.jsonl").read_text().splitlines()]
    # Two processes × 4 rollouts = the single-process run's 8: two groups of 4 per step, gathered in the metrics.
    assert [r["step"] for r in rows] == [0, 1, 2] and [r["stage"] for r in rows] == [1, 2, 2]
    single = [json.loads(line) for line in (finished / "rl_metrics.jsonl").read_text().splitlines()]
    assert [r["prompts"] for r in rows] == [r["prompts"] for r in single]
    assert rows[0]["forced_rate"] == 0.5  # ρ of the global batch, drawn with the global rollout numbering
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and json.loads((out / "rl.json").read_text())["global_step"] == 3
    before = AutoModelForCausalLM.from_pretrained(policy_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_lora_runs_step_srpo_and_saves_a_plain_merged_model(policy_dir, prompts_file, tmp_path):
    out = tmp_path / "lora"
    run_rl(_run_config(policy_dir, prompts_file, out, use_peft=True, lora_r=4, lora_alpha=8, max_steps=2,
                       stage1_steps=0, save_strategy="no"))
    assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    start = AutoModelForCausalLM.from_pretrained(policy_dir).state_dict()
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(merged[name], start[name])  # LoRA trained and merged in
    assert len((out / "rl_metrics.jsonl").read_text().splitlines()) == 2


# --------------------------------------------------------------------------- trie packing


def _group_rows(tok, generator):
    """Two groups of four rows in GRPO's layout: left-padded prompts, right-padded completions of mixed lengths."""
    prompts = [tok.apply_chat_template(t.messages, tokenize=True, add_generation_prompt=True, return_dict=False)
               for t in TASKS[:2]]
    width = max(map(len, prompts))
    ids, mask = [], []
    for prompt in prompts:
        for n in (12, 5, 12, 9):
            completion = torch.randint(len(tok), (n,), generator=generator).tolist()
            pad = [tok.pad_token_id] * (width - len(prompt)), [tok.pad_token_id] * (12 - n)
            ids.append(pad[0] + prompt + completion + pad[1])
            mask.append([0] * len(pad[0]) + [1] * (len(prompt) + n) + [0] * len(pad[1]))
    return torch.tensor(ids), torch.tensor(mask)


def test_trie_log_probs_and_entropies_are_trls_own(policy, prompts_file, tmp_path):
    trainer = _trainer(policy, prompts_file, tmp_path, temperature=0.7)
    ids, mask = _group_rows(trainer.processing_class, torch.Generator().manual_seed(0))
    results = {}
    for packing in ("none", "trie"):
        trainer.args.packing = packing
        trainer.model.zero_grad()
        logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, 12, batch_size=4, compute_entropy=True)
        (logps * mask[:, -12:]).sum().backward()
        results[packing] = logps, entropies, {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    (ref, ref_ent, ref_grads), (got, got_ent, grads) = results["none"], results["trie"]
    keep = mask[:, -12:].bool()
    torch.testing.assert_close(got[keep], ref[keep], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_ent[keep], ref_ent[keep], rtol=1e-5, atol=1e-5)
    assert (got[~keep] == 0).all() and (ref[~keep] == 0).all()  # TRL's fused head gives 0 off the mask, as we do
    for name, g in ref_grads.items():
        assert (grads[name] - g).norm() / g.norm().clamp_min(1e-30) <= 1e-5, name


def _plain_logps(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
                 compute_aux_loss=False, **multimodal):
    """The reference: TRL's log-prob pass written out, a log-softmax of the full logits in the model's dtype
    (TRL's fused head computes it in fp32 whatever the model's dtype)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -logits_to_keep - 1:-1]
    logsm = torch.log_softmax(logits / self.temperature, -1)
    keep = attention_mask[:, -logits_to_keep:]
    logps = logsm.gather(-1, input_ids[:, -logits_to_keep:, None])[..., 0] * keep
    return logps, (-(logsm.exp() * logsm).sum(-1) * keep if compute_entropy else None), None


@pytest.mark.slow
def test_a_trie_packed_step_gives_the_parameters_of_the_unpacked_step(policy_dir, prompts_file, tmp_path, monkeypatch):
    """One SGD step in fp64: trie packing equals the unpacked reference step to 1e-6, and TRL's own step to the
    precision of TRL's log-prob kernel, which runs in fp32 whatever the model's dtype (so in fp32 the two differ
    by ~1e-4 relative on parameters whose gradient cancels across a group's signed advantages)."""
    start = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float64).state_dict()
    updates = {}
    for run in ("trl", "trie", "reference"):
        if run == "reference":
            monkeypatch.setattr(trl.GRPOTrainer, "_get_per_token_logps_and_entropies", _plain_logps)
        out = tmp_path / run
        run_rl(_run_config(policy_dir, prompts_file, out, packing="trie" if run == "trie" else "none", max_steps=1,
                           stage1_steps=0, optim="sgd", learning_rate=1e4, max_grad_norm=0.0, save_strategy="no",
                           model_init_kwargs={"dtype": torch.float64}))
        after = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float64).state_dict()
        updates[run] = {name: after[name] - start[name] for name in start}
    moved = 0
    for name, ref in updates["reference"].items():
        moved += int(ref.norm() > 0)
        assert (updates["trie"][name] - ref).norm() <= 1e-6 * ref.norm(), name  # measured <= 1.2e-7
        assert (updates["trl"][name] - ref).norm() <= 5e-4 * ref.norm(), name  # TRL's fp32 kernel: <= 7.6e-5
    assert moved > len(start) // 2  # a step with real advantages, not a zero update


@pytest.mark.slow
def test_rl_with_trie_packing_runs_on_the_embedded_model(prompts_file, tmp_path):
    out = tmp_path / "rl"
    argv = ["--model", "smollm2-135m-instruct", "--data", str(prompts_file), "--output_dir", str(out),
            "--packing", "trie", "--max_steps", "1", "--num_generations", "4", "--per_device_train_batch_size", "8",
            "--max_completion_length", "8", "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no"]
    run_rl(parse_config(RLConfig, argv, prog="autothink rl"))
    summary = json.loads((out / "rl.json").read_text())
    assert summary["global_step"] == 1 and summary["config"]["packing"] == "trie"
    assert len((out / "rl_metrics.jsonl").read_text().splitlines()) == 1
