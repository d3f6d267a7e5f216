"""`autothink agent sft`: rows from trajectories (the error mask as labels), an equal step packed or not,
and collect -> agent sft -> collect with the trained model, on a tiny model and on the embedded one."""
import copy
import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from autothink.cli import main
from autothink.config import parse_config
from autothink.format import add_autothink_tokens
from autothink.models import tiny_model
from autothink.tasks.tool_calls import ensure_tool_template, renders_tools
from autothink.tasks.trajectory import llm_calls, load_trajectories, tokenize_calls
from autothink.training.agentic_sft import AgentSFTConfig, run_agent_sft, trajectory_rows
from autothink.training.sft import trainer_on


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """Reference-agent trajectories of 6 HumanEval tasks, every one with a real mistake and its correction."""
    out = tmp_path_factory.mktemp("collect")
    assert main(["agent", "collect", "--n", "6", "--noise", "1.0", "--output_dir", str(out)]) == 0
    return out / "trajectories.jsonl"


@pytest.fixture(scope="module")
def tool_tiny(tokenizer):
    model, tok = tiny_model(copy.deepcopy(tokenizer), seed=2)
    add_autothink_tokens(tok, model)
    ensure_tool_template(tok)
    return model, tok


@pytest.fixture(autouse=True)
def _in_a_temporary_dir(tmp_path, monkeypatch):
    """Trainers write into `output_dir` ("unused" below, relative): keep that out of the checkout."""
    monkeypatch.chdir(tmp_path)


def _config(**overrides):
    base = dict(output_dir="unused", report_to="none", disable_tqdm=True, logging_steps=1, save_strategy="no")
    return AgentSFTConfig(**{**base, **overrides})


def test_rows_carry_the_error_mask_as_labels(collected, tool_tiny):
    _, tok = tool_tiny
    trajectories = load_trajectories(collected)
    rows, stats = trajectory_rows(trajectories, tok, max_length=4096)
    assert stats["trajectories"] == 6 and stats["failed_calls"] == 6 and stats["trained_calls"] == 18
    assert stats["failed_tool_calls"] == 6 and stats["subtrajectories"] == len(rows) == 6
    for row, trajectory in zip(rows, trajectories):
        expected = tokenize_calls(llm_calls(trajectory), tok, trajectory.tools, 4096)
        assert row["input_ids"] == expected.sequences[0]
        assert row["labels"] == [t if w else -100 for t, w in zip(*expected.sequences, *expected.weights)]
        trained = tok.decode([t for t in row["labels"] if t != -100])
        mistake = trajectory.messages[1]
        assert (mistake.get("content") or "")[:20] not in trained or not mistake.get("content")
        assert "wrote solution.py" not in trained and "PASSED" not in trained  # tool outputs: no loss
        assert "The tests pass" in trained


def test_a_trie_packed_step_equals_the_unpacked_step(collected, tokenizer):
    """One SGD step on the same rows: trie packs over gradient accumulation vs one padded batch."""
    from datasets import Dataset

    step = dict(optim="sgd", learning_rate=1.0, max_grad_norm=0.0, max_steps=1, lr_scheduler_type="constant")
    updates = {}
    for packing in ("false", "trie"):
        model, tok = tiny_model(copy.deepcopy(tokenizer), seed=3)
        add_autothink_tokens(tok, model)
        ensure_tool_template(tok)
        rows, _ = trajectory_rows(load_trajectories(collected)[:3], tok, max_length=4096)
        if packing == "trie":
            config = _config(packing="trie", max_length=4096, per_device_train_batch_size=1, **step)
            packs = trainer_on(config, model, tok, Dataset.from_list(rows)).train_dataset
            config = _config(packing="trie", max_length=4096, per_device_train_batch_size=1,
                             gradient_accumulation_steps=len(packs), **step)
        else:
            config = _config(packing="false", max_length=4096, per_device_train_batch_size=len(rows), **step)
        trainer = trainer_on(config, model, tok, Dataset.from_list(rows))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainer.train()
        updates[packing] = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    assert trainer.packing_stats["ratio"] > 1.05  # the tool schemas' system prompt is shared
    for name, ref in updates["false"].items():
        err = (updates["trie"][name] - ref).norm() / ref.norm().clamp_min(1e-30)
        assert err <= 1e-5, f"{name}: relative update error {err:.2e}"


def test_config_defaults_and_bad_input(tmp_path, capsys):
    config = parse_config(AgentSFTConfig, [], prog="autothink agent sft")
    assert config.packing is True and config.packing_strategy == "trie" and config.max_length == 2048
    assert main(["agent", "sft", "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "messages": [{"role": "user", "content": "hi"}]}\n')
    assert main(["agent", "sft", "--data", str(bad), "--output_dir", str(tmp_path / "o")]) == 2
    assert "bad.jsonl:1: trajectory 'x': messages: no assistant message" in capsys.readouterr().err
    assert main(["agent", "sft", "--failure_rule", "no.such.module:f", "--data", str(bad)]) == 2


@pytest.mark.slow
def test_collect_then_agent_sft_then_collect_with_the_trained_embedded_model(collected, tmp_path):
    out = tmp_path / "agent-sft"
    argv = ["--data", str(collected), "--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size",
            "1", "--max_length", "4096", "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1",
            "--save_steps", "1"]
    run_agent_sft(parse_config(AgentSFTConfig, argv, prog="autothink agent sft"))
    summary = json.loads((out / "agent_sft.json").read_text())
    assert summary["model"] == "smollm2-135m-instruct" and summary["global_step"] == 1
    assert summary["first_loss"] > 0 and summary["data_stats"]["failed_calls"] == 6
    assert summary["data_stats"]["trie"]["ratio"] > 1.0 and (out / "checkpoint-1").is_dir()
    tok = AutoTokenizer.from_pretrained(out)
    assert renders_tools(tok)  # the saved template renders tool calls
    AutoModelForCausalLM.from_pretrained(out)
    held_out = tmp_path / "eval"
    assert main(["agent", "collect", "--backend", str(out), "--skip", "100", "--n", "1", "--max_turns", "2",
                 "--max_tokens", "24", "--temperature", "0", "--output_dir", str(held_out)]) == 0
    result = json.loads((held_out / "collect.json").read_text())
    assert result["episodes"] == 1 and result["errors"] == 0 and result["backend"] == str(out)
    (row,) = load_trajectories(held_out / "trajectories.jsonl")
    assert row.id == "HumanEval/100" and row.messages[-1]["role"] in ("assistant", "tool")
