"""`autothink agent rl`: a scripted batch (tool loop, loss mask, early termination and resampling, the
multi-ground-truth reward, rescaled advantages) against hand-computed values, bad input, and a tiny
end-to-end run with kill-and-resume."""
import copy
import difflib
import json

import pytest
import torch
import trl
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from autothink.algorithms.advantages import rescale_advantages
from autothink.cli import main
from autothink.data.collect import load_agent_tasks
from autothink.environments.coding import SOLUTION
from autothink.format import add_autothink_tokens
from autothink.models import tiny_model
from autothink.records.jsonl import write_jsonl
from autothink.tasks.tool_calls import ensure_tool_template, tool_call_text
from autothink.training.agentic_rl import (
    AgentRLConfig,
    AgentRLTrainer,
    agent_rl_rows,
    run_agent_rl,
    set_response_template,
)
from helpers import KillAtFirstCheckpoint, Killed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def agent_policy(tokenizer):
    model, tok = tiny_model(copy.deepcopy(tokenizer))
    add_autothink_tokens(tok, model)
    ensure_tool_template(tok)
    set_response_template(tok)
    return model, tok


def _config(tmp_path, **overrides):
    return AgentRLConfig(**({"output_dir": str(tmp_path), "report_to": "none", "num_generations": 4,
                             "per_device_train_batch_size": 8, "max_completion_length": 512, "max_steps": 1,
                             "seed": 0, "disable_tqdm": True, "lam": 0.0, "mu": 0.0} | overrides))


def _trainer(agent_policy, tmp_path, tasks, **overrides):
    model, tok = agent_policy
    config = _config(tmp_path, **overrides)
    rows, environments = agent_rl_rows(tasks, {}, config)
    return AgentRLTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok,
                          environments=environments)


WRONG = "def {entry}(*args):\n    return None\n"


def _scripted_policy(trainer, tasks, monkeypatch):
    """Per group of 4 rollouts: 0 solves the task (write, test, answer); 1 the same on task 0 and a wrong
    solution on task 1; 2 and 3 first call `list_files` (off every reference). Resampled rollouts alternate:
    the first one resampled solves, the next drifts again (and is terminated), and so on."""
    tok = trainer.processing_class
    eos = tok.eos_token_id
    fresh = {"calls": 0, "resampled": 0}

    def replies(task, wrong):
        solution = WRONG.format(entry=task.metadata["entry_point"]) if wrong else task.metadata["solution"]
        return [f"I'll write it.\n{tool_call_text('write_file', {'path': SOLUTION, 'content': solution})}",
                tool_call_text("run_tests", {}), "The tests pass."]

    def scripted(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        first_call = fresh["calls"] == 0
        fresh["calls"] += 1
        out = []
        for k, ids in enumerate(prompt_ids):
            text = tok.decode(ids)
            t = next(j for j, task in enumerate(tasks) if f"`{task.metadata['entry_point']}`" in text)
            rounds = text.count("<tool_response>")
            if rounds == 0 and first_call:
                drift = k % 4 in (2, 3)
            elif rounds == 0:
                drift = fresh["resampled"] % 2 == 1
                fresh["resampled"] += 1
            else:
                drift = False
            reply = tool_call_text("list_files", {}) if drift else replies(tasks[t], k % 4 == 1 and t == 1)[rounds]
            out.append(tok(reply, add_special_tokens=False).input_ids + [eos])
        return out, None

    monkeypatch.setattr(trl.GRPOTrainer, "_generate_single_turn", scripted)


def _batch(trainer):
    rows = list(trainer.train_dataset)
    return [dict(rows[0]) for _ in range(4)] + [dict(rows[1]) for _ in range(4)]


def test_scripted_batch_plays_terminates_resamples_and_rewards(agent_policy, tmp_path, monkeypatch):
    tasks = load_agent_tasks("humaneval", 0, 2)
    trainer = _trainer(agent_policy, tmp_path, tasks, tau=0.75, max_resamples=1)
    _scripted_policy(trainer, tasks, monkeypatch)
    tok = trainer.processing_class
    trainer.model.train()
    out = trainer._generate_and_score_completions(_batch(trainer))

    # Rollouts 2 and 6 drifted, were resampled and solved; 3 and 7 drifted again and were cut there.
    records = [e.record() for e in trainer._episodes]
    assert [r["resamples"] for r in records] == [0, 0, 1, 1] * 2
    assert [r["end"] for r in records] == ["answered", "answered", "answered", "terminated"] * 2
    assert [r["tool_calls"] for r in records] == [2, 2, 2, 0] * 2 and [r["turns"] for r in records] == [3, 3, 3, 1] * 2
    assert out["completion_ids"].size(0) == 8  # groups keep their size

    # Tool results get no loss; every token the model wrote does (TRL's own tool_mask).
    for i, episode in enumerate(trainer._episodes):
        trained = tok.decode([t for t, m in zip(episode.ids, episode.tool_mask) if m])
        masked = tok.decode([t for t, m in zip(episode.ids, episode.tool_mask) if not m])
        n = len(episode.ids)
        assert out["tool_mask"][i, :n].tolist() == episode.tool_mask
        assert out["completion_ids"][i, :n].tolist() == episode.ids
        if records[i]["end"] == "answered":
            assert "<tool_response>" in masked and ("PASSED" in masked or "FAILED" in masked)
            assert "<tool_response>" not in trained and "run_tests" in trained and "The tests pass." in trained
        else:
            assert masked == "" and "list_files" in trained and "write_file" not in trained

    # reward = test result - α · discrepancy, by hand: a solved rollout equals the ground-truth reference (d = 0);
    # the wrong solution differs in write_file's content (call distance 1/2 of 2 calls) and in its patch; the
    # terminated rollout's one call is off the reference's two (d = 1, no patch).
    wrong = WRONG.format(entry=tasks[1].metadata["entry_point"])
    patch = 1 - difflib.SequenceMatcher(None, wrong, tasks[1].metadata["solution"], autojunk=False).ratio()
    d_wrong = 0.5 * (0.5 / 2) + 0.5 * patch
    tests = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    d = [0, 0, 0, 1, 0, d_wrong, 0, 1]
    logged = trainer._logs["rewards"]
    assert list(logged["CodingEnvironment"]) == tests
    assert list(logged["reference_penalty"]) == pytest.approx([-0.2 * x for x in d])
    rewards = torch.tensor([t - 0.2 * x for t, x in zip(tests, d)])
    grouped = rewards.view(2, 4)
    expected = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
    torch.testing.assert_close(out["advantages"], expected)  # λ = μ = 0: TRL's GRPO advantages

    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k.startswith("agent/")}
    assert metrics["agent/pass_rate"] == 0.625 and metrics["agent/resampled"] == 4 and metrics["agent/terminated"] == 2
    assert metrics["agent/reward"] == pytest.approx(rewards.mean().item())
    # 12 calls, one failed: the wrong solution's run_tests (exit code 1, as `agent collect` records it)
    assert metrics["agent/tool_error_rate"] == pytest.approx(1 / 12) and metrics["agent/turns"] == 2.5


def test_trajectory_correction_splices_the_reference_after_the_last_good_call(agent_policy, tmp_path, monkeypatch):
    """Every rollout writes the solution, then drifts (`list_files` instead of `run_tests`: prefix distance 1/2 >
    τ = 0.4); with no resample left, the drifting reply is dropped and the reference's `run_tests` spliced in."""
    tasks = load_agent_tasks("humaneval", 0, 1)
    trainer = _trainer(agent_policy, tmp_path, tasks, num_generations=2, per_device_train_batch_size=2, tau=0.4,
                       max_resamples=0, trajectory_correction=True)
    tok = trainer.processing_class
    write = tool_call_text("write_file", {"path": SOLUTION, "content": tasks[0].metadata["solution"]})
    drift = tool_call_text("list_files", {})

    def scripted(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        return [tok(drift if "<tool_response>" in tok.decode(ids) else write, add_special_tokens=False).input_ids
                + [tok.eos_token_id] for ids in prompt_ids], None

    monkeypatch.setattr(trl.GRPOTrainer, "_generate_single_turn", scripted)
    trainer.model.train()
    out = trainer._generate_and_score_completions([dict(list(trainer.train_dataset)[0]) for _ in range(2)])
    episode = trainer._episodes[0]
    assert episode.record()["end"] == "corrected" and episode.record()["tool_calls"] == 1  # the model's own: write
    trained = tok.decode([t for t, m in zip(episode.ids, episode.tool_mask) if m])
    spliced = tok.decode([t for t, m in zip(episode.ids, episode.tool_mask) if not m])
    assert "write_file" in trained and "list_files" not in trained + spliced  # the drifting reply is gone
    assert "run_tests" in spliced and "PASSED" in spliced and "run_tests" not in trained
    assert [m.get("spliced", False) for m in episode.messages] == [False, False, True, True]
    assert list(trainer._logs["rewards"]["CodingEnvironment"]) == [1.0, 1.0]  # scored where the reference led
    assert list(trainer._logs["rewards"]["reference_penalty"]) == [0.0, 0.0]
    assert out["tool_mask"][0].sum() == len(tok(write, add_special_tokens=False).input_ids) + 1
    assert trainer._metrics["train"]["agent/corrected"][-1] == 2


def test_a_correction_that_does_not_fit_keeps_the_drifting_reply(agent_policy, tmp_path, monkeypatch):
    """The first reply drifts and the reference's `write_file` (the whole solution) does not fit the budget:
    nothing is spliced or executed, the rollout keeps its reply and ends terminated."""
    tasks = load_agent_tasks("humaneval", 0, 1)
    trainer = _trainer(agent_policy, tmp_path, tasks, num_generations=2, per_device_train_batch_size=2, tau=0.4,
                       max_resamples=0, trajectory_correction=True, max_completion_length=40)
    tok = trainer.processing_class

    def scripted(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        return [tok(tool_call_text("list_files", {}), add_special_tokens=False).input_ids + [tok.eos_token_id]
                for _ in prompt_ids], None

    monkeypatch.setattr(trl.GRPOTrainer, "_generate_single_turn", scripted)
    trainer.model.train()
    trainer._generate_and_score_completions([dict(list(trainer.train_dataset)[0]) for _ in range(2)])
    episode = trainer._episodes[0]
    assert episode.end == "terminated" and "list_files" in tok.decode(episode.ids) and all(episode.tool_mask)
    assert trainer.environments[0].files == {}  # the reference's call never ran


def test_rescaled_advantages_are_the_core_functions(agent_policy, tmp_path, monkeypatch):
    tasks = load_agent_tasks("humaneval", 0, 2)
    trainer = _trainer(agent_policy, tmp_path, tasks, lam=1.0, mu=0.5)
    _scripted_policy(trainer, tasks, monkeypatch)
    trainer.model.train()
    out = trainer._generate_and_score_completions(_batch(trainer))
    plain = torch.tensor(list(trainer._logs["advantages"]))  # TRL's, before the rescaling
    entropy = trainer._rollout_entropy(out, out["completion_mask"] * out["tool_mask"])
    tests = torch.tensor(list(trainer._logs["rewards"]["CodingEnvironment"]))
    expected = rescale_advantages(plain, [0] * 4 + [1] * 4, tests, entropy, 1.0, 0.5)
    torch.testing.assert_close(out["advantages"], expected)
    assert not torch.allclose(expected, plain)  # the harder group (task 1) weighs more


def test_trie_packed_log_probs_of_agent_rollouts_are_trls_own(agent_policy, tmp_path, monkeypatch):
    """A group's rollouts share the prompt (the tool schemas) and, up to where they part, their turns:
    `--packing trie` computes those once and gives TRL's log-probs on every trained token."""
    tasks = load_agent_tasks("humaneval", 0, 2)
    trainer = _trainer(agent_policy, tmp_path, tasks, packing="trie")
    _scripted_policy(trainer, tasks, monkeypatch)
    trainer.model.train()
    out = trainer._generate_and_score_completions(_batch(trainer))
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    keep = out["completion_ids"].size(1)
    results = {}
    for packing in ("none", "trie"):
        trainer.args.packing = packing
        results[packing] = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep, batch_size=8)[0]
    trained = (out["completion_mask"] * out["tool_mask"]).bool()
    torch.testing.assert_close(results["trie"][trained], results["none"][trained], rtol=1e-5, atol=1e-5)


def test_a_malformed_call_and_an_unknown_tool_come_back_as_errors(agent_policy, tmp_path, monkeypatch):
    tasks = load_agent_tasks("humaneval", 0, 1)
    trainer = _trainer(agent_policy, tmp_path, tasks, num_generations=2, per_device_train_batch_size=2, tau=1.0,
                       max_tool_calling_iterations=2)
    tok = trainer.processing_class
    hostile = ['<tool_call>\n{"name": "write_file", "arguments": {"path": "../../etc/x", "content": "x"}}\n'
               '</tool_call>\n<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>',
               "<tool_call>\n{not json\n</tool_call>", "never reached"]

    def scripted(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        return [tok(hostile[tok.decode(ids).count("<tool_response>") // 2], add_special_tokens=False).input_ids
                + [tok.eos_token_id] for ids in prompt_ids], None

    monkeypatch.setattr(trl.GRPOTrainer, "_generate_single_turn", scripted)
    trainer.model.train()
    out = trainer._generate_and_score_completions([dict(list(trainer.train_dataset)[0]) for _ in range(2)])
    episode = trainer._episodes[0]
    assert episode.record() == {"turns": 3, "tool_calls": 3, "tool_errors": 3, "tokens": sum(episode.tool_mask),
                                "resamples": 0, "end": "max_turns"}
    results = [m["content"] for m in episode.messages if m["role"] == "tool"]
    assert "invalid path" in results[0] and "unknown tool 'rm_rf'" in results[1] and "could not parse" in results[2]
    assert list(trainer._logs["rewards"]["CodingEnvironment"]) == [0.0, 0.0]
    assert trainer._metrics["train"]["tools/failure_frequency"][-1] == 1.0 and out["tool_mask"].sum() > 0


# --------------------------------------------------------------------------- bad input and options


def test_bfcl_miss_func_is_refused_with_the_reason():
    from autothink.environments.bfcl import load_bfcl_tasks

    with pytest.raises(ValueError, match="hides functions until a later turn"):
        agent_rl_rows(load_bfcl_tasks("miss_func", n=1), {}, AgentRLConfig(output_dir="x"))


def test_config_checks():
    with pytest.raises(ValueError, match="tau"):
        AgentRLConfig(output_dir="x", tau=1.5)
    with pytest.raises(ValueError, match="alpha"):
        AgentRLConfig(output_dir="x", alpha=-1)
    with pytest.raises(ValueError, match="max_resamples"):
        AgentRLConfig(output_dir="x", max_resamples=-1)
    with pytest.raises(ValueError, match="packing"):
        AgentRLConfig(output_dir="x", packing="dense")


def test_a_task_without_references_is_named_before_the_model_loads(tmp_path):
    rows = [{"id": "mine/0", "messages": [{"role": "user", "content": "Write f."}], "verifier": "code",
             "reference": "assert f() == 1", "metadata": {"entry_point": "f"}}]
    write_jsonl(tmp_path / "tasks.jsonl", rows)
    config = AgentRLConfig(model="/nonexistent", tasks=str(tmp_path / "tasks.jsonl"), output_dir=str(tmp_path / "o"),
                           report_to="none")
    with pytest.raises(ValueError, match="task 'mine/0' has no reference trajectory"):
        run_agent_rl(config)
    config.references = str(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError):
        run_agent_rl(config)
    assert main(["agent", "rl", "--model", "/nonexistent", "--tasks", str(tmp_path / "tasks.jsonl"),
                 "--output_dir", str(tmp_path / "o")]) == 2


# --------------------------------------------------------------------------- a tiny run, killed and resumed


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, tokenizer):
    model, tok = tiny_model(copy.deepcopy(tokenizer))
    add_autothink_tokens(tok, model)
    path = tmp_path_factory.mktemp("policy")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _run_config(policy_dir, out, **overrides):
    return AgentRLConfig(**({"model": str(policy_dir), "tasks": "humaneval", "n": 2, "output_dir": str(out),
                             "report_to": "none", "num_generations": 2, "per_device_train_batch_size": 4,
                             "max_completion_length": 24, "max_steps": 3, "save_steps": 2, "learning_rate": 1e-3,
                             "seed": 0, "disable_tqdm": True} | overrides))


@pytest.fixture(scope="module")
def finished(policy_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("agent-rl") / "run"
    assert run_agent_rl(_run_config(policy_dir, out)) == str(out)
    return out


@pytest.mark.slow
def test_tiny_run_writes_metrics_plots_and_a_model(finished, policy_dir):
    rows = [json.loads(line) for line in (finished / "agent_rl_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    for key in ("reward", "test_reward", "pass_rate", "discrepancy", "tool_error_rate", "turns", "tokens", "resampled",
                "terminated"):
        assert all(key in r for r in rows), key
    state = json.loads((finished / "trainer_state.json").read_text())
    assert sum("agent/pass_rate" in log for log in state["log_history"]) == 3
    for name in ("agent_rewards.png", "agent_tools.png"):
        assert (finished / name).read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((finished / "agent_rl.json").read_text())
    assert summary["global_step"] == 3 and summary["references"] == 2 and summary["resumed_from"] is None
    assert AutoModelForCausalLM.from_pretrained(finished) is not None


@pytest.mark.slow
def test_rollouts_that_differ_move_the_weights(policy_dir, tmp_path, monkeypatch):
    """The random policy's rollouts all get the same reward (no tool call: no advantage, no update); with
    replies drawn at random from solving, a wrong solution and drifting, the run learns."""
    tasks = load_agent_tasks("humaneval", 0, 2)
    tok = AutoTokenizer.from_pretrained(policy_dir)

    def scripted(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        out = []
        for ids in prompt_ids:
            text = tok.decode(ids)
            task = next(t for t in tasks if f"`{t.metadata['entry_point']}`" in text)
            rounds = text.count("<tool_response>")
            choice = int(torch.randint(3, ()))
            solution = task.metadata["solution"] if choice else WRONG.format(entry=task.metadata["entry_point"])
            script = [tool_call_text("write_file", {"path": SOLUTION, "content": solution}),
                      tool_call_text("run_tests", {}), "Done."]
            reply = tool_call_text("list_files", {}) if rounds == 0 and choice == 2 else script[rounds]
            out.append(tok(reply, add_special_tokens=False).input_ids + [tok.eos_token_id])
        return out, None

    monkeypatch.setattr(trl.GRPOTrainer, "_generate_single_turn", scripted)
    out = tmp_path / "run"
    run_agent_rl(_run_config(policy_dir, out, max_steps=2, max_completion_length=512, save_steps=50))
    rows = [json.loads(line) for line in (out / "agent_rl_metrics.jsonl").read_text().splitlines()]
    assert any(0 < r["pass_rate"] < 1 for r in rows) and sum(r["resampled"] for r in rows) > 0
    before = AutoModelForCausalLM.from_pretrained(policy_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint(finished, policy_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Killed, match="step 2"):
        run_agent_rl(_run_config(policy_dir, out), callbacks=[KillAtFirstCheckpoint()])
    with open(out / "agent_rl_metrics.jsonl", "a") as f:  # a step logged after the checkpoint, before the kill
        f.write(json.dumps({"step": 2, "reward": 9.0}) + "\n")
    run_agent_rl(_run_config(policy_dir, out))
    summary = json.loads((out / "agent_rl.json").read_text())
    assert summary["resumed_from"] == str(out / "checkpoint-2") and summary["global_step"] == 3
    rows = [json.loads(line) for line in (out / "agent_rl_metrics.jsonl").read_text().splitlines()]
    straight = [json.loads(line) for line in (finished / "agent_rl_metrics.jsonl").read_text().splitlines()]
    assert rows == straight
    resumed = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for name, tensor in AutoModelForCausalLM.from_pretrained(finished).state_dict().items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=0, msg=name)


def test_a_bfcl_task_rewards_its_ground_truth_calls(agent_policy, tmp_path, monkeypatch):
    """BFCL through the same loop: its simulators as the environment (one class per API combination), the
    first turn's ground-truth calls as the reference; playing them scores 1 with no penalty, a wrong one less."""
    from autothink.environments.bfcl import ground_truth_calls, load_bfcl_tasks

    task = load_bfcl_tasks("base", n=1)[0]
    trainer = _trainer(agent_policy, tmp_path, [task], num_generations=2, per_device_train_batch_size=2, tau=1.0)
    trainer.model.config.max_position_embeddings = 8192  # BFCL's schemas alone fill the tiny model's 2048
    tok = trainer.processing_class
    truth = ground_truth_calls(task, 0)

    def scripted(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        out = []
        for k, ids in enumerate(prompt_ids):
            done = tok.decode(ids).count("<tool_response>")
            if k == 1 and done == 0:  # rollout 1 answers at once, without a call
                reply = "Done."
            else:
                reply = tool_call_text(*truth[done]) if done < len(truth) else "Done."
            out.append(tok(reply, add_special_tokens=False).input_ids + [tok.eos_token_id])
        return out, None

    monkeypatch.setattr(trl.GRPOTrainer, "_generate_single_turn", scripted)
    trainer.model.train()
    rows = list(trainer.train_dataset)
    assert rows[0]["environment"].startswith("BFCL_") and json.loads(rows[0]["references"])[0]["calls"] == [
        list(c) for c in truth]
    trainer._generate_and_score_completions([dict(rows[0]) for _ in range(2)])
    env_column = next(k for k in trainer._logs["rewards"] if k.startswith("BFCL_"))
    assert list(trainer._logs["rewards"][env_column]) == [1.0, 0.0]
    assert list(trainer._logs["rewards"]["reference_penalty"]) == [0.0, pytest.approx(-0.2)]  # no call: d = 1
    assert [e.record()["end"] for e in trainer._episodes] == ["answered", "answered"]
    assert trainer._episodes[0].record()["tool_calls"] == len(truth)
