"""Stage-1 distillation: the loss pieces by hand, data and labels, a cross-vocabulary teacher,
precomputed top-k log-probs, CE equivalence, kill-and-resume, the CLI."""
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    TrainerCallback,
)

from autothink.algorithms.uld import (
    causal_lm_ce,
    mtp_distill_loss,
    pair_rows,
    prediction_bounds,
    shift_pairs,
    sorted_probs,
    uld_loss_sorted,
)
from autothink.cli import main
from autothink.format import THINK_OFF, THINK_ON, add_autothink_tokens
from autothink.models import load_tokenizer, tiny_model
from autothink.models.mtp import load_mtp
from autothink.records.jsonl import RecordError
from autothink.records.stage1 import load_stage1
from autothink.training.distill import (
    DistillConfig,
    build_dataset,
    build_trainer,
    run_distill,
    teacher_logits,
)
from helpers import small_teacher_tokenizer
from reference import uld_loss_aligned

# ----------------------------------------------------------------------------- the loss pieces


def test_shift_pairs_moves_the_student_side_and_drops_what_falls_off():
    s = torch.tensor([[4, 5, 7, -1], [0, 2, -1, -1]])
    t = torch.tensor([[1, 2, 3, -1], [0, 1, -1, -1]])
    s1, t1 = shift_pairs(s, t, 1)
    assert s1.tolist() == [[3, 4, 6, -1], [-1, 1, -1, -1]]
    assert t1.tolist() == [[1, 2, 3, -1], [-1, 1, -1, -1]]
    assert [x.tolist() for x in shift_pairs(s, t, 0)] == [s.tolist(), t.tolist()]
    with pytest.raises(ValueError):
        shift_pairs(s, t, -1)


def test_pair_rows_by_bytes_and_by_position():
    assert pair_rows([0, 2, 5, -1, 9], [0, 5, 7, 9], "bytes") == ([0, 2, 4], [0, 1, 3])
    assert pair_rows([0, 2, 5], [0, 5, 7, 9], "position") == ([0, 1, 2], [0, 1, 2])
    with pytest.raises(ValueError, match="alignment"):
        pair_rows([0], [0], "tokens")


def test_prediction_bounds_are_the_starts_of_the_predicted_tokens(tokenizer):
    text = "Hello world, 12 + 30 = 42"
    ids, bounds = prediction_bounds(text, tokenizer)
    assert len(bounds) == len(ids) + 1 and bounds[0] == 0 and bounds[-1] == len(text.encode())
    for r in range(1, len(ids) + 1):  # row r has read tokens 0..r-1: exactly bounds[r] bytes
        assert len(tokenizer.decode(ids[:r]).encode()) == bounds[r]


def test_sorted_teacher_probs_with_the_full_vocabulary_equal_the_aligned_loss():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 6, 11, generator=g, dtype=torch.float64)
    t = torch.randn(2, 5, 17, generator=g, dtype=torch.float64)
    si = torch.tensor([[0, 2, 3, -1], [1, 4, 5, 2]])
    ti = torch.tensor([[4, 0, 1, -1], [0, 1, 2, 3]])
    probs = sorted_probs(t[torch.arange(2)[:, None], ti.clamp(min=0)], temperature=2.0) * (ti >= 0)[..., None]
    got = uld_loss_sorted(s, si, probs, temperature=2.0)
    assert got.item() == pytest.approx(uld_loss_aligned(s, t, si, ti, temperature=2.0).item(), abs=1e-12)


def test_top_k_teacher_is_the_l1_over_its_top_k_mass():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(1, 1, 9, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)
    top = sorted_probs(t, top_k=3)
    assert top.shape == (3,) and torch.equal(top, torch.softmax(t, -1).sort(descending=True).values[:3])
    p_s = torch.softmax(s[0, 0], -1).sort(descending=True).values
    want = (p_s[:3] - top).abs().sum() + p_s[3:].sum()  # the teacher's tail counts as zeros
    assert uld_loss_sorted(s, torch.tensor([[0]]), top[None, None]).item() == pytest.approx(want.item(), abs=1e-12)


def _reference_total(logits, heads, labels, si, probs, w_ce, w_uld, lam):
    """Loops: per head k, CE against labels[i + k + 1]; ULD of head k at i - k vs the pair's teacher row."""
    def ce(x, shift):
        pairs = [(b, i) for b in range(labels.shape[0]) for i in range(labels.shape[1] - shift)
                 if labels[b, i + shift] >= 0]
        return sum(-torch.log_softmax(x[b, i], -1)[labels[b, i + shift]] for b, i in pairs) / len(pairs)

    def uld(x, k):
        per_sample = []
        for b in range(si.shape[0]):
            vals = []
            for p in range(si.shape[1]):
                i = int(si[b, p]) - k
                if si[b, p] >= 0 and i >= 0:
                    ps = torch.softmax(x[b, i], -1).sort(descending=True).values
                    pt = F.pad(probs[b, p], (0, max(0, ps.numel() - probs.shape[-1])))
                    ps = F.pad(ps, (0, max(0, pt.numel() - ps.numel())))
                    vals.append((ps - pt).abs().sum())
            if vals:
                per_sample.append(sum(vals) / len(vals))
        return sum(per_sample) / len(per_sample)

    total = w_ce * ce(logits, 1) + w_uld * uld(logits, 0)
    for k, x in enumerate(heads, start=1):
        total = total + lam / len(heads) * (w_ce * ce(x, k + 1) + w_uld * uld(x, k))
    return total


def test_mtp_distill_loss_matches_a_loop_reference():
    g = torch.Generator().manual_seed(2)
    b, t, v = 2, 9, 13
    logits = torch.randn(b, t, v, generator=g, dtype=torch.float64)
    heads = [torch.randn(b, t, v, generator=g, dtype=torch.float64) for _ in range(2)]
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, :3] = -100
    labels[1, 7:] = -100
    si = torch.tensor([[2, 3, 5, 6, 7], [2, 4, 5, -1, -1]])
    probs = sorted_probs(torch.randn(b, 5, 20, generator=g, dtype=torch.float64)) * (si >= 0)[..., None]
    out = mtp_distill_loss(logits, heads, labels, si, probs, w_ce=0.7, w_uld=1.3, mtp_weight=0.4)
    want = _reference_total(logits, heads, labels, si, probs, 0.7, 1.3, 0.4)
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-10)
    # with w_uld = 0: the main CE plus the MTP module's own (λ/D)·Σ CE_k
    plain = mtp_distill_loss(logits, heads, labels, w_uld=0.0, mtp_weight=0.4)
    mtp_ce = sum(causal_lm_ce(x, labels, shift=k + 1) for k, x in enumerate(heads, start=1))
    assert plain.loss.item() == pytest.approx((causal_lm_ce(logits, labels) + 0.4 / 2 * mtp_ce).item(), rel=1e-12)
    with pytest.raises(ValueError, match="w_uld"):
        mtp_distill_loss(logits, heads, labels, w_uld=1.0)


# ----------------------------------------------------------------------------- data and labels

QA = [
    ("What is 2+2?", "off", "4"),
    ("Compute 17*24.", "on", "17*24 = 340 + 68 = 408"),
    ("Say hi in French.", "off", "Bonjour ! 😊"),
    ("Is 91 prime?", "on", "91 = 7 * 13, so no."),
    ("Capital of Japan?", "off", "Tokyo (東京)"),
    ("Sum of 1..10?", "on", "n(n+1)/2 = 10*11/2 = 55"),
]


def stage1_row(i, question, mode, answer):
    body = (f"<think>{answer}</think><answer>{answer.split()[-1]}</answer>" if mode == "on"
            else f"<answer>{answer}</answer>")
    return {"id": f"q{i}", "prompt": [{"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": f"<think_{mode}>{body}"}], "mode": mode,
            "domain": "math", "difficulty": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "stage1.jsonl"
    path.write_text("".join(json.dumps(stage1_row(i, *qa), ensure_ascii=False) + "\n" for i, qa in enumerate(QA)))
    return path


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, tokenizer):
    model, tok = tiny_model(load_tokenizer(), layers=2, hidden=64)
    path = tmp_path_factory.mktemp("student")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def teacher_tokenizer():
    """Another tokenizer than the student's (Gemma's scheme, a 320-token vocabulary trained on the data)."""
    corpus = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n<think_on><think_off>{a}" for q, _, a in QA]
    return small_teacher_tokenizer(corpus)


def peaked_gemma3(vocab, seed=1):
    """A tiny Gemma3 whose distributions are sharp (a flat random teacher teaches nothing to ULD)."""
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=8, layer_types=["sliding_attention", "full_attention"],
        final_logit_softcapping=30.0,
    )
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():
        model.model.norm.weight.fill_(30.0)  # Gemma's RMSNorm scales by (1 + w)
    return model


def _teacher(path, tokenizer):
    peaked_gemma3(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, teacher_tokenizer):
    return _teacher(tmp_path_factory.mktemp("teacher"), teacher_tokenizer)


@pytest.fixture(scope="module")
def gemma_teacher_dir(tmp_path_factory):
    """A tiny teacher on Gemma-3's real tokenizer (262k tokens; converted once from the embedded GGUF)."""
    return _teacher(tmp_path_factory.mktemp("gemma_teacher"), load_tokenizer("gemma-3-270m"))


def config(tmp_path, student_dir, data, **kw):
    base = dict(student=str(student_dir), data=str(data), output_dir=str(tmp_path / "out"), max_steps=2,
                per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=1, save_strategy="no",
                report_to="none", mtp_heads=2, max_length=128, disable_tqdm=True)
    return DistillConfig(**{**base, **kw})


def test_trigger_gets_no_loss_and_the_response_does(tmp_path, student_dir, data):
    cfg = config(tmp_path, student_dir, data, w_uld=0.0)
    tok = load_tokenizer(student_dir)
    add_autothink_tokens(tok)
    dataset = build_dataset(cfg, tok)
    rows = load_stage1(data)
    assert len(dataset) == len(rows) == 6 and "student_index" not in dataset[0]
    trigger_ids = {tok.convert_tokens_to_ids(THINK_ON), tok.convert_tokens_to_ids(THINK_OFF)}
    for row, feature in zip(rows, (dataset[i] for i in range(len(dataset)))):
        ids, labels = feature["input_ids"], feature["labels"]
        at = next(i for i, x in enumerate(ids) if x in trigger_ids)
        assert ids[at] == tok.convert_tokens_to_ids(row["trigger"])
        assert all(label == -100 for label in labels[: at + 1])  # prompt and trigger: no loss
        assert labels[at + 1:] == ids[at + 1:] and labels[-1] == tok.eos_token_id
        assert tok.decode(labels[at + 1: -1]) == row["body"]


def test_bad_rows_are_named(tmp_path):
    good = stage1_row(0, "q", "off", "a")
    cases = [
        ({**good, "completion": [{"role": "assistant", "content": "<answer>a</answer>"}]},
         "must start with a regime trigger"),
        ({**good, "mode": "on"}, "contradicts"),
        ({k: v for k, v in good.items() if k != "id"}, "field 'id'"),
        ({**good, "prompt": 3}, "field 'prompt'"),
    ]
    for row, message in cases:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(good) .replace('"q0"', '"ok"') + "\n" + json.dumps(row) + "\n")
        with pytest.raises(RecordError, match=f"{path}:2: .*{message}"):
            load_stage1(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(RecordError, match="duplicate id 'q0'"):
        load_stage1(path)


@pytest.mark.parametrize("alignment", ["bytes", "position"])
def test_paired_rows_predict_the_same_bytes_across_tokenizers(tmp_path, student_dir, data, teacher_dir, alignment):
    _check_paired_rows(tmp_path, student_dir, data, teacher_dir, alignment)


@pytest.mark.slow
def test_paired_rows_on_gemmas_real_tokenizer(tmp_path, student_dir, data, gemma_teacher_dir):
    """The one test here on a real teacher vocabulary: Gemma-3's 262k-token tokenizer."""
    _check_paired_rows(tmp_path, student_dir, data, gemma_teacher_dir, "bytes")


def _check_paired_rows(tmp_path, student_dir, data, teacher_dir, alignment):
    cfg = config(tmp_path, student_dir, data, teacher=str(teacher_dir), alignment=alignment)
    tok = load_tokenizer(student_dir)
    add_autothink_tokens(tok)
    teacher_tok = load_tokenizer(teacher_dir)
    from autothink.format import install_chat_template

    install_chat_template(teacher_tok)
    dataset = build_dataset(cfg, tok, {"on": teacher_tok, "off": teacher_tok})
    same = 0
    for i in range(len(dataset)):
        f = dataset[i]
        s_start = next(j for j, x in enumerate(f["labels"]) if x != -100)
        t_start = f["teacher_index"][0] + 1  # row 0 sits just before the response
        assert len(f["student_index"]) == len(f["teacher_index"]) > 0
        for si, ti in zip(f["student_index"], f["teacher_index"]):
            s_text = tok.decode(f["input_ids"][s_start: si + 1]).encode()
            t_text = teacher_tok.decode(f["teacher_input_ids"][t_start: ti + 1]).encode()
            if alignment == "bytes":
                assert s_text == t_text  # both rows have read the same response bytes
            same += s_text == t_text
    if alignment == "position":
        assert same < sum(len(dataset[i]["student_index"]) for i in range(len(dataset)))  # the paper's pairing drifts


# ----------------------------------------------------------------------------- training


def batch_of_all(trainer):
    features = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    return trainer._prepare_inputs(trainer.data_collator(features))


def test_teacher_logits_put_only_the_paired_rows_through_the_head_and_keep_the_models_soft_capping():
    teacher = peaked_gemma3(300).eval()
    ids = torch.randint(0, 300, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[2, 6:] = 0
    positions = torch.tensor([[0, 4, 8], [3, -1, -1], [5, 2, -1]])
    seen = []
    hook = teacher.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    logits, valid = teacher_logits(teacher, ids, mask, positions)
    hook.remove()
    assert seen == [torch.Size([1, 6, 300])] and logits.shape == (6, 300)  # 6 rows through the head, not 3 x 9
    with torch.no_grad():
        full = teacher(input_ids=ids, attention_mask=mask).logits  # soft-capped by the model's own forward
    torch.testing.assert_close(logits, full[valid.nonzero(as_tuple=True)[0], positions[valid]])
    assert logits.abs().max() <= 30.0


@pytest.mark.slow
def test_a_live_teacher_cut_to_the_students_vocabulary_gives_the_full_sorts_loss(tmp_path, student_dir, data,
                                                                                  gemma_teacher_dir):
    trainer = build_trainer(config(tmp_path, student_dir, data, teacher=str(gemma_teacher_dir), temperature=2.0))
    batch = batch_of_all(trainer)
    width = trainer.model.base.config.vocab_size
    cut, full = trainer.teacher_probs(batch, width), trainer.teacher_probs(batch)
    assert cut.shape[-1] == width + 1 < full.shape[-1] == len(load_tokenizer(gemma_teacher_dir))
    with torch.no_grad():
        out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for logits in (out.logits, *out.mtp_logits):
        torch.testing.assert_close(uld_loss_sorted(logits, batch["student_index"], cut, 2.0),
                                   uld_loss_sorted(logits, batch["student_index"], full, 2.0), atol=2e-6, rtol=0)


@pytest.mark.slow
def test_a_few_steps_with_a_different_vocab_teacher_reduce_the_loss(tmp_path, student_dir, data, teacher_dir):
    cfg = config(tmp_path, student_dir, data, teacher=str(teacher_dir), max_steps=8, learning_rate=3e-3,
                 per_device_train_batch_size=3)
    trainer = build_trainer(cfg)
    assert len(trainer.teachers) == 1 and trainer.teachers[0].config.vocab_size != trainer.model.base.config.vocab_size
    batch = batch_of_all(trainer)
    before_params = {k: v.clone() for k, v in trainer.model.named_parameters()}
    with torch.no_grad():
        before = trainer.compute_loss(trainer.model, batch)
        parts_before = {k: v[-1] for k, v in trainer._parts.items()}
    trainer.train()
    with torch.no_grad():
        after = trainer.compute_loss(trainer.model, batch)
        parts_after = {k: v[-1] for k, v in trainer._parts.items()}
    assert after < before
    assert parts_after["uld"] < parts_before["uld"] and parts_after["mtp_uld"] < parts_before["mtp_uld"]
    assert parts_after["ce"] < parts_before["ce"]
    changed = [k for k, v in trainer.model.named_parameters() if not torch.equal(v, before_params[k])]
    assert any(k.startswith("heads.") for k in changed) and any(k.startswith("base.") for k in changed)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 8 and all({"ce", "uld", "mtp_ce", "mtp_uld"} <= set(entry) for entry in logged)
    # every parameter of the teacher is untouched
    assert all(not p.requires_grad and p.grad is None for p in trainer.teachers[0].parameters())


def test_main_head_with_w_uld_zero_is_plain_cross_entropy(tmp_path, student_dir, data):
    trainer = build_trainer(config(tmp_path, student_dir, data, w_uld=0.0, mtp_heads=0))
    batch = batch_of_all(trainer)
    assert not trainer.teachers and "student_index" not in batch
    with torch.no_grad():
        got = trainer.compute_loss(trainer.model, batch)
        want = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"]).loss
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_activation_checkpointing_and_continuing_from_a_student_with_heads(tmp_path, student_dir, data):
    first = config(tmp_path / "a", student_dir, data, w_uld=0.0, max_steps=1)
    run_distill(first)
    saved = load_student_dir(tmp_path / "a" / "out")
    cfg = config(tmp_path / "b", tmp_path / "a" / "out", data, w_uld=0.0, max_steps=1, activation_checkpointing=True)
    trainer = build_trainer(cfg)
    # the student dir's heads are loaded, not made anew
    assert torch.equal(trainer.model.heads.heads[1].proj.weight, saved.heads.heads[1].proj.weight)
    trainer.train()
    assert trainer.model.base.is_activation_checkpointing  # switched on by the Trainer through DistillStudent
    assert torch.isfinite(torch.tensor(trainer.state.log_history[0]["loss"]))
    with pytest.raises(ValueError, match="has 2 MTP heads; config asks for 1"):
        build_trainer(config(tmp_path / "c", tmp_path / "a" / "out", data, w_uld=0.0, mtp_heads=1))


@pytest.mark.slow
def test_precomputed_full_vocab_log_probs_give_the_live_teachers_loss(tmp_path, student_dir, data, teacher_dir, capsys):
    store = tmp_path / "teacher_lp"
    pre = config(tmp_path, student_dir, data, teacher=str(teacher_dir), teacher_logprobs=str(store),
                 precompute=True, top_k=0, temperature=2.0, teacher_batch_size=4)
    assert run_distill(pre) == {"teacher_logprobs": str(store), "samples": 6, "written": 6}
    assert run_distill(pre)["written"] == 0  # a rerun skips what is written
    assert "6 samples already written, 0 to go" in capsys.readouterr().out

    live = build_trainer(config(tmp_path, student_dir, data, teacher=str(teacher_dir), temperature=2.0))
    stored = build_trainer(config(tmp_path, student_dir, data, teacher_logprobs=str(store), temperature=2.0))
    assert not stored.teachers
    b_live, b_stored = batch_of_all(live), batch_of_all(stored)
    assert torch.equal(b_live["student_index"], b_stored["student_index"])
    p_live, p_stored = live.teacher_probs(b_live), b_stored["teacher_probs"]
    assert p_stored.shape == p_live.shape and p_live.shape[-1] == len(load_tokenizer(teacher_dir))
    torch.testing.assert_close(p_stored, p_live, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        loss_live = live.compute_loss(live.model, b_live)
        loss_stored = stored.compute_loss(stored.model, b_stored)
    assert loss_stored.item() == pytest.approx(loss_live.item(), rel=1e-5)

    with pytest.raises(ValueError, match="temperature 2.0"):
        build_trainer(config(tmp_path, student_dir, data, teacher_logprobs=str(store), temperature=1.0))


class KillAt(TrainerCallback):
    """Stands for a killed job: dies right after the checkpoint of `step` is written."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("killed")


def load_student_dir(path):
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return load_mtp(path, base)


@pytest.mark.slow
def test_kill_and_resume_equals_a_straight_run(tmp_path, student_dir, data, teacher_dir, capsys):
    common = dict(teacher=str(teacher_dir), max_steps=4, save_strategy="steps", save_steps=2, learning_rate=3e-3)
    straight = config(tmp_path / "a", student_dir, data, **common)
    run_distill(straight)
    killed = config(tmp_path / "b", student_dir, data, **common)
    with pytest.raises(KeyboardInterrupt):
        run_distill(killed, callbacks=[KillAt(2)])
    out = tmp_path / "b" / "out"
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-4").exists()
    # the same command again resumes from the last checkpoint (resume_from_checkpoint=auto)
    argv = ["distill", "--student", str(student_dir), "--teacher", str(teacher_dir), "--data", str(data),
            "--output_dir", str(out), "--max_steps", "4", "--save_steps", "2", "--learning_rate", "3e-3",
            "--per_device_train_batch_size", "2", "--logging_steps", "1", "--mtp_heads", "2", "--max_length", "128",
            "--report_to", "none", "--disable_tqdm", "true"]
    assert main(argv) == 0
    assert f"resuming from {out / 'checkpoint-2'}" in capsys.readouterr().out
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == [1, 2, 3, 4]
    want = json.loads((tmp_path / "a" / "out" / "trainer_state.json").read_text())
    assert [e["loss"] for e in state["log_history"] if "loss" in e] == pytest.approx(
        [e["loss"] for e in want["log_history"] if "loss" in e], rel=1e-5)
    a, b = load_student_dir(tmp_path / "a" / "out"), load_student_dir(out)
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(y, x, atol=1e-6, rtol=1e-5, msg=name)
    start = load_student_dir(out / "checkpoint-2")
    assert not torch.equal(start.heads.heads[0].proj.weight, b.heads.heads[0].proj.weight)
    # the final dir is a plain checkpoint with the AutoThink tokens; the heads load back beside it
    assert b.mtp_config.num_heads == 2
    tok = load_tokenizer(out)
    assert tok.convert_tokens_to_ids(THINK_ON) != tok.unk_token_id and len(tok) == b.base.config.vocab_size
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 4


def test_dual_teachers_each_supervise_their_regime(tmp_path, student_dir, data, teacher_dir, tokenizer):
    off_dir = tmp_path / "off_teacher"
    off, _ = tiny_model(tokenizer, layers=1, hidden=32, seed=5)
    off.save_pretrained(off_dir)
    tokenizer.save_pretrained(off_dir)
    trainer = build_trainer(config(tmp_path, student_dir, data, teacher_on=str(teacher_dir), teacher_off=str(off_dir)))
    assert [t.config.vocab_size for t in trainer.teachers] == [len(load_tokenizer(teacher_dir)), len(tokenizer)]
    batch = batch_of_all(trainer)
    rows = load_stage1(data)
    assert batch["teacher_id"].tolist() == [0 if r["regime"] == "on" else 1 for r in rows]
    probs = trainer.teacher_probs(batch)
    for b in range(len(rows)):
        teacher = trainer.teachers[int(batch["teacher_id"][b])]
        n = int((batch["teacher_index"][b] >= 0).sum())
        ids = batch["teacher_input_ids"][b: b + 1, : int(batch["teacher_attention_mask"][b].sum())]
        with torch.no_grad():
            logits = teacher(input_ids=ids).logits[0, batch["teacher_index"][b, :n]]
        want = sorted_probs(logits)
        torch.testing.assert_close(probs[b, :n, : want.shape[-1]], want)
        assert probs[b, :n, want.shape[-1]:].abs().sum() == 0
