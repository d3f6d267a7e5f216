"""`autothink sft`: response-only loss, exact packing, a tiny run that learns, resume, config, bad input."""
import copy
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from autothink.config import parse_config
from autothink.format import (
    MODE_TOKENS,
    SPECIAL_TOKENS,
    add_autothink_tokens,
    forced_prefix,
    render,
)
from autothink.models import tiny_model
from autothink.models.card import add_eval_table
from autothink.records.jsonl import write_jsonl
from autothink.records.sft import read_sft_data
from autothink.training.sft import (
    SFTConfig,
    build_trainer,
    check_packing,
    data_stats,
    run_sft,
)
from helpers import KillAtFirstCheckpoint, Killed


def _user(text):
    return {"role": "user", "content": text}


def _bot(text):
    return {"role": "assistant", "content": text}


ROWS = [
    {"id": "add", "mode": "off", "messages": [
        _user("What is 2+2?"), _bot(render("off", "4", judge="Simple arithmetic."))]},
    {"id": "eq", "mode": "on", "messages": [
        _user("Solve 3x + 5 = 20."),
        _bot(render("on", "x = 5", judge="A linear equation.", think="Subtract 5: 3x = 15. Divide by 3."))]},
    {"id": "sys", "mode": "off", "messages": [
        {"role": "system", "content": "You are terse."}, _user("Capital of France?"),
        _bot(render("off", "Paris", judge="A fact to recall."))]},
    {"id": "multi", "mode": "on", "messages": [
        _user("Hi"), _bot("Hello! How can I help?"), _user("Is 91 prime? Think deeper."),
        _bot(render("on", "No, 91 = 7 * 13.", judge="Needs a factor check.", think="Try 7: 7 * 13 = 91."))]},
    {"id": "directive", "mode": "off", "messages": [
        _user("Sum of the first 100 integers? DO NOT THINK"),
        _bot(render("off", "5050", judge="The user asked for a direct answer."))]},
    {"id": "code", "mode": "on", "messages": [
        _user("Write a function that reverses a string."),
        _bot(render("on", "def rev(s):\n    return s[::-1]", judge="Code: plan.", think="Slice, step -1."))]},
]


@pytest.fixture(autouse=True)
def _in_a_temporary_dir(tmp_path, monkeypatch):
    """Trainers write into `output_dir` ("unused" below, relative): keep that out of the checkout."""
    monkeypatch.chdir(tmp_path)


def _config(**overrides):
    base = dict(output_dir="unused", report_to="none", disable_tqdm=True, max_length=512, seed=0)
    return SFTConfig(**(base | overrides))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "coldstart.jsonl"
    write_jsonl(path, [row | {"domain": "math", "difficulty": 0.5, "label_source": "vote"} for row in ROWS])
    return path


@pytest.fixture(scope="module")
def examples(data_file):
    return read_sft_data(data_file)


@pytest.fixture
def student(tokenizer):
    """A fresh tiny student with the AutoThink tokens (the trainer patches the model it is given)."""
    model, tok = tiny_model(copy.deepcopy(tokenizer))
    add_autothink_tokens(tok, model)
    return model, tok


def test_read_sft_data_splits_prompt_and_final_response(examples):
    assert [e["id"] for e in examples] == [r["id"] for r in ROWS]
    multi = examples[3]
    assert multi["completion"] == ROWS[3]["messages"][-1:] and multi["prompt"] == ROWS[3]["messages"][:-1]
    assert [e["mode"] for e in examples] == [r["mode"] for r in ROWS]


def test_only_the_final_response_is_trained_from_judge_to_eos(student, examples):
    model, tok = student
    trainer = build_trainer(_config(packing=False), model, tok, examples)
    token = tok.convert_tokens_to_ids
    assert len(trainer.train_dataset) == len(examples)
    for example, row in zip(examples, trainer.train_dataset):
        ids, labels = row["input_ids"], row["labels"]
        prompt = tok(tok.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False).input_ids
        n = len(prompt)
        assert ids[:n] == prompt  # the prompt (with the earlier assistant turn of "multi") ...
        assert set(labels[:n]) == {-100}  # ... gets no loss
        assert labels[n:] == ids[n:]  # every response token does
        trained = labels[n:]
        assert tok.decode(trained) == example["completion"][0]["content"] + tok.eos_token + "\n"
        assert trained[0] == token("<judge>")
        assert token(MODE_TOKENS[example["mode"]]) in trained
        assert trained[trained.index(token("</answer>")) + 1] == tok.eos_token_id


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_equals_the_samples_run_one_by_one(student, examples, attn):
    model, tok = student
    model.set_attn_implementation(attn)
    unpacked = build_trainer(_config(packing=False), model, tok, examples).train_dataset
    trainer = build_trainer(_config(packing=True, max_length=160, per_device_train_batch_size=len(examples)),
                            model, tok, examples)
    assert len(trainer.train_dataset) < len(examples)  # several samples share a packed row
    batch = next(iter(trainer.get_train_dataloader()))  # the batch TRL trains on: one flattened row
    assert "attention_mask" not in batch
    ids, labels, pos = batch["input_ids"], batch["labels"], batch["position_ids"]
    starts = (pos[0] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
    segments = list(zip(starts[:-1], starts[1:]))
    assert sorted(ids[0, a:b].tolist() for a, b in segments) == sorted(row["input_ids"] for row in unpacked)
    assert (labels != -100).sum() == sum((torch.tensor(r["labels"][1:]) != -100).sum() for r in unpacked)

    with torch.no_grad():
        packed_logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
        fused = model(**batch, fused_lm_head=True)  # the forward SFTTrainer.compute_loss runs
        loss = trainer.compute_loss(model, dict(batch))
        leaky = model(input_ids=ids, use_cache=False).logits[0]  # positions not restarted: one long sequence
        nll, count = 0.0, 0
        for a, b in segments:
            alone = model(input_ids=ids[:, a:b], use_cache=False).logits[0]
            torch.testing.assert_close(packed_logits[a:b], alone, atol=1e-5, rtol=0)
            target = labels[0, a + 1 : b]
            torch.testing.assert_close(F.cross_entropy(packed_logits[a : b - 1], target, ignore_index=-100),
                                       F.cross_entropy(alone[:-1], target, ignore_index=-100), atol=1e-5, rtol=0)
            alone_lp = model(input_ids=ids[:, a:b], labels=labels[:, a:b], fused_lm_head=True).log_probs[0]
            torch.testing.assert_close(fused.log_probs[0, a : b - 1], alone_lp, atol=1e-5, rtol=0)
            if b < ids.shape[1]:
                assert fused.log_probs[0, b - 1] == 0  # no loss for predicting the next sample's first token
            nll, count = nll - alone_lp.sum(), count + int((target != -100).sum())
    torch.testing.assert_close(loss, nll / count, atol=1e-5, rtol=0)
    # the control: without restarting positions a later sample sees the earlier ones, and the check above would fail
    a, b = segments[1]
    assert (leaky[a:b] - packed_logits[a:b]).abs().max() > 1e-3


# Dual-regime rows: every prompt answered in both modes, so pairs share their whole prompt.
DUAL = ROWS + [
    {"id": "add-on", "mode": "on", "messages": [
        _user("What is 2+2?"), _bot(render("on", "4", judge="Check it.", think="2 and 2 make 4."))]},
    {"id": "eq-off", "mode": "off", "messages": [
        _user("Solve 3x + 5 = 20."), _bot(render("off", "x = 5", judge="Easy."))]},
    {"id": "multi-off", "mode": "off", "messages": [
        *ROWS[3]["messages"][:-1], _bot(render("off", "No.", judge="7*13."))]},
]


def _sgd_step(config, model, tok, examples):
    trainer = build_trainer(config, model, tok, examples)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    return trainer, {n: p.detach() - before[n] for n, p in model.named_parameters()}


def test_a_trie_packed_step_equals_the_unpacked_step(tokenizer, tmp_path):
    """One SGD step over every sample: trie packs (several, over gradient accumulation) vs one padded batch."""
    from datasets import Dataset

    examples = [{"id": r["id"], "mode": r["mode"], "prompt": r["messages"][:-1], "completion": r["messages"][-1:]}
                for r in DUAL]
    step = dict(optim="sgd", learning_rate=1.0, max_grad_norm=0.0, max_steps=1, lr_scheduler_type="constant")
    updates = {}
    for packing in ("false", "trie"):
        model, tok = tiny_model(copy.deepcopy(tokenizer), seed=3)
        add_autothink_tokens(tok, model)
        if packing == "trie":
            config = _config(packing="trie", max_length=128, per_device_train_batch_size=1, **step)
            packs = build_trainer(config, model, tok, examples).train_dataset
            config = _config(packing="trie", max_length=128, per_device_train_batch_size=1,
                             gradient_accumulation_steps=len(packs), **step)
        else:
            config = _config(packing=False, per_device_train_batch_size=len(examples), **step)
        trainer, updates[packing] = _sgd_step(config, model, tok, examples)
    stats = trainer.packing_stats
    assert isinstance(trainer.train_dataset, Dataset) and stats["packs"] == len(packs) > 1
    assert stats["sequences"] == len(examples) and stats["ratio"] > 1.1  # shared prompts computed once
    assert stats["unpacked_tokens"] == sum(len(r["input_ids"]) for r in
                                           build_trainer(_config(packing=False), model, tok, examples).train_dataset)
    for name, ref in updates["false"].items():
        err = (updates["trie"][name] - ref).norm() / ref.norm().clamp_min(1e-30)
        assert err <= 1e-5, f"{name}: relative update error {err:.2e}"


def test_trie_packing_run_on_the_embedded_model(data_file, tmp_path):
    """`autothink sft --packing trie` end to end: the embedded model, resumable checkpoints, the ratio reported."""
    out = tmp_path / "run"
    argv = ["--data", str(data_file), "--output_dir", str(out), "--packing", "trie", "--max_length", "128",
            "--max_steps", "2", "--save_steps", "1", "--per_device_train_batch_size", "1", "--report_to", "none",
            "--disable_tqdm", "true", "--learning_rate", "1e-4", "--logging_steps", "1"]
    run_sft(parse_config(SFTConfig, argv, prog="autothink sft"))
    summary = json.loads((out / "sft.json").read_text())
    assert summary["model"] == "smollm2-135m-instruct" and summary["packing_strategy"] == "trie"
    assert summary["global_step"] == 2 and summary["first_loss"] > 0 and summary["last_loss"] > 0
    trie = summary["data_stats"]["trie"]
    assert trie["sequences"] == len(ROWS) and trie["trie_tokens"] <= trie["unpacked_tokens"]
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-1", "checkpoint-2"}
    AutoModelForCausalLM.from_pretrained(out)


def test_data_stats_count_modes_and_truncated_samples(student, examples):
    _, tok = student
    stats = data_stats(examples, tok, max_length=None)
    assert stats["records"] == 6 and stats["modes"] == {"off": 3, "on": 3} and stats["truncated"] == 0
    cut = data_stats(examples, tok, max_length=stats["max_tokens"] - 1)
    assert cut["truncated"] >= 1 and cut["tokens"] == stats["tokens"]


def test_packing_refuses_an_attention_that_would_mix_samples():
    fake = SimpleNamespace(config=SimpleNamespace(_attn_implementation="paged|sdpa"))
    with pytest.raises(ValueError, match="keeps packed samples apart"):
        check_packing(fake, _config(packing=True))
    check_packing(fake, _config(packing=False))  # unpacked batches use the padding mask: fine


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    """A tiny random Llama saved as a plain checkpoint, without the AutoThink tokens."""
    model, tok = tiny_model(copy.deepcopy(tokenizer), seed=1)
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _run_config(tiny_dir, data_file, out, **overrides):
    return _config(model=str(tiny_dir), data=str(data_file), output_dir=str(out), max_steps=4, learning_rate=1e-2,
                   logging_steps=1, save_steps=2, per_device_train_batch_size=2, max_length=128, **overrides)


@pytest.fixture(scope="module")
def finished(tiny_dir, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    assert run_sft(_run_config(tiny_dir, data_file, out, eval_data=str(data_file))) == str(out)
    return out


def test_tiny_run_learns_and_saves_a_checkpoint_with_the_thinking_template(finished, tiny_dir, tokenizer):
    out = finished
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [log["loss"] for log in state["log_history"] if "loss" in log]
    assert state["global_step"] == 4 and len(losses) == 4
    assert losses[-1] < losses[0] - 0.5, losses
    summary = json.loads((out / "sft.json").read_text())
    assert summary["data_stats"]["records"] == len(ROWS) and summary["data_stats"]["modes"] == {"off": 3, "on": 3}
    assert summary["packing"] is True and summary["attn_implementation"] == "sdpa" and summary["resumed_from"] is None
    assert summary["metrics"]["eval_loss"] < losses[0]  # evaluated after training, on the (same) eval file
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-2", "checkpoint-4"}
    # Saved for generation: the KV cache is on (decoding without it is several times slower).
    assert json.loads((out / "config.json").read_text())["use_cache"] is True

    tok = AutoTokenizer.from_pretrained(out)
    msgs = [_user("What is 2+2?")]
    for thinking in ("off", "on"):
        text = tok.apply_chat_template(msgs, thinking=thinking, add_generation_prompt=True, tokenize=False)
        assert text.endswith("<|im_start|>assistant\n" + forced_prefix(thinking))
    assert [len(tok(t, add_special_tokens=False).input_ids) for t in SPECIAL_TOKENS] == [1] * len(SPECIAL_TOKENS)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == len(tokenizer) + len(SPECIAL_TOKENS)
    before = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert not torch.equal(model.model.layers[0].mlp.down_proj.weight, before.model.layers[0].mlp.down_proj.weight)


def test_the_model_card_explains_the_model_and_takes_the_eval_table(finished, tiny_dir):
    card = (finished / "README.md").read_text()
    assert "fine-tuned version of [None]" not in card and "<judge>" in card and 'thinking="auto"' in card
    assert f"`{tiny_dir}`" in card and "| steps | 4 |" in card
    m = {"n": 2, "accuracy": 0.5, "think_on_rate": 1.0, "format_rate": 1.0, "think_tokens": 3.0, "total_tokens": 9.0}
    metrics = {"suites": {"arithmetic:1": {"auto": m}}, "all": {"auto": m}}
    add_eval_table(finished, metrics)
    add_eval_table(finished, metrics)  # a second eval replaces the table
    card = (finished / "README.md").read_text()
    row = "| arithmetic:1 | auto | 2 | 0.500 | 1.000 | 1.000 | 3.0 | 9.0 |"
    assert card.count("## Evaluation") == 1 and row in card
    assert add_eval_table(tiny_dir, metrics) is None  # a model autothink did not train keeps its card


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_weights(finished, tiny_dir, data_file, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Killed, match="step 2"):
        run_sft(_run_config(tiny_dir, data_file, out), callbacks=[KillAtFirstCheckpoint()])
    assert not (out / "sft.json").exists()
    run_sft(_run_config(tiny_dir, data_file, out))
    assert json.loads((out / "sft.json").read_text())["resumed_from"] == str(out / "checkpoint-2")
    resumed = AutoModelForCausalLM.from_pretrained(out).state_dict()
    straight = AutoModelForCausalLM.from_pretrained(finished).state_dict()
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=0, msg=name)


# --------------------------------------------------------------------------- config and bad input


def test_config_from_yaml_and_flags(tmp_path):
    yaml_file = tmp_path / "sft.yaml"
    yaml_file.write_text("model: runs/upscale\ndata: d.jsonl\nlearning_rate: 1.0e-4\nmax_length: 256\n")
    config = parse_config(SFTConfig, ["--config", str(yaml_file), "--max_length", "128", "--packing", "false",
                                      "--output_dir", str(tmp_path / "o"), "--report_to", "none"], prog="autothink sft")
    assert (config.model, config.data, config.learning_rate) == ("runs/upscale", "d.jsonl", 1e-4)
    assert config.max_length == 128  # the flag wins over the YAML
    assert config.packing is False and config.output_dir == str(tmp_path / "o")
    assert config.bf16 is False and config.gradient_checkpointing is False  # CPU defaults
    assert config.completion_only_loss is None and config.packing_strategy == "bfd"


@pytest.mark.parametrize("overrides, message", [
    ({"packing_strategy": "wrapped"}, "attend to each other"),
    ({"assistant_only_loss": True}, "final assistant message"),
    ({"packing": "tree"}, "bfd \\(true\\), trie or false"),
    ({"packing": "trie", "max_length": None}, "each pack's token budget"),
])
def test_config_refuses_modes_that_break_the_loss(overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(**overrides)


GOOD = json.dumps(ROWS[0])
BAD = [
    ({"id": "q1", "messages": [_user("2+2?")]}, "the last message must be the assistant's response"),
    ({"id": "q1", "messages": [_user("2+2?"), _bot("<judge>x</judge><answer>4</answer>")]},
     "messages[1] (assistant) is not a well-formed AutoThink response: missing mode token"),
    ({"id": "q1", "messages": [_user("2+2?"), _bot("4")]}, "missing <judge> segment"),
    ({"id": "q1", "mode": "on", "messages": ROWS[0]["messages"]}, "`mode` is 'on' but the response is think-off"),
    ({"id": "q1", "prompt": "2+2?", "completion": "4"}, "field 'messages' must be a non-empty list"),
    ({"id": "q1", "messages": [_bot(render("off", "4"))]}, "no prompt"),
    ({"id": "q1", "messages": [{"role": "user"}, _bot(render("off", "4"))]},
     "field 'messages': message 0 must be an object"),
]


@pytest.mark.parametrize("record, message", BAD)
def test_bad_records_are_named_with_file_line_and_id(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([GOOD, json.dumps(record), GOOD, json.dumps(record)]) + "\n")
    with pytest.raises(ValueError) as err:
        run_sft(_config(model="no-such-model", data=str(path)))  # fails on the data, before loading a model
    text = str(err.value)
    assert text.startswith(f"{path}:2: record 'q1': ") and message in text, text
    assert "1 more bad records, at lines 4" in text


def test_invalid_json_and_empty_files(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(GOOD + "\n{not json\n")
    with pytest.raises(ValueError, match=rf"{path}:2: invalid JSON"):
        read_sft_data(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no SFT records"):
        read_sft_data(empty)
    with pytest.raises(FileNotFoundError):
        read_sft_data(tmp_path / "missing.jsonl")


def test_cli_reports_a_bad_record(tmp_path, capsys):
    from autothink.cli import main

    path = tmp_path / "bad.jsonl"
    path.write_text(GOOD + "\n" + json.dumps(BAD[0][0]) + "\n")
    assert main(["sft", "--data", str(path), "--output_dir", str(tmp_path / "out")]) == 2
    assert f"{path}:2: record 'q1'" in capsys.readouterr().err


def test_lora_trains_adapters_and_the_new_token_rows_and_saves_a_plain_merged_model(tiny_dir, data_file, tmp_path):
    out = tmp_path / "lora"
    run_sft(_run_config(tiny_dir, data_file, out, use_peft=True, lora_r=4, lora_alpha=8, save_strategy="no"))
    assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)  # a plain checkpoint, as without LoRA
    start = AutoModelForCausalLM.from_pretrained(tiny_dir)
    start_tok = AutoTokenizer.from_pretrained(tiny_dir)
    add_autothink_tokens(start_tok, start)  # what training started from
    new = start_tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    old = [i for i in range(len(start_tok)) if i not in set(new)]
    emb, start_emb = merged.get_input_embeddings().weight, start.get_input_embeddings().weight
    assert torch.equal(emb[old], start_emb[old])  # the old vocabulary's rows are untouched
    assert not torch.equal(emb[new], start_emb[new])  # the AutoThink tokens' rows were trained
    down, start_down = merged.model.layers[0].mlp.down_proj.weight, start.model.layers[0].mlp.down_proj.weight
    assert not torch.equal(down, start_down)  # the adapters were trained and merged in


def test_report_to_tensorboard_works_after_the_setup(tiny_dir, data_file, tmp_path):
    out = tmp_path / "tb"
    run_sft(_run_config(tiny_dir, data_file, out, report_to=["tensorboard"], save_strategy="no"))
    assert list(out.rglob("events.out.tfevents.*")), "no TensorBoard event file"
