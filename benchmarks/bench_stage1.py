"""Stage 1 (distillation): step time of KD+MTP+ULD vs plain SFT, and KD vs KD+MTP quality.

    .venv/bin/python benchmarks/bench_stage1.py step [--rounds 10] [--profile 3] [--threads 1]
    .venv/bin/python benchmarks/bench_stage1.py quality [--steps 48] [--batch 4] [--eval_tasks 40]

Student: SmolLM2-135M-Instruct (embedded, fp32, with the AutoThink tokens); teacher: Gemma-3-270M
(embedded, fp32, 262k-token vocabulary, a different tokenizer: rows paired by byte offsets).
Data: stage-1 rows built from reasoning-gym (no teacher generation involved): half
`arithmetic` items as think-off (`<think_off><answer>{gold}</answer>`), half `gsm_symbolic`
items as think-on with the dataset's own short solution as the reasoning
(`<think_on><think>{answer_cot}</think><answer>{gold}</answer>`), alternating, so every batch
holds both regimes. Everything goes through `autothink.training.distill.build_trainer` and
`DistillTrainer.training_step` (the HF Trainer's own step: `compute_loss` + backward), then
gradient clipping, AdamW and the LR schedule as the Trainer's loop does them.

`step`: time of one optimizer step (forward + backward + clip + AdamW) on the same batches,
the variants interleaved within each round (batch r goes through every variant in round r, so
background load and batch length hit them alike); median over rounds after one warm-up round:

- "SFT": `w_uld=0, mtp_heads=0` (CE only, no teacher, no heads);
- "KD+MTP+ULD, live teacher": `w_uld=1, mtp_heads=1`, Gemma-3-270M run in the step (no_grad);
- "KD+MTP+ULD, top-k teacher": the same with the teacher's top-64 log-probs precomputed
  (`--precompute`; its one-off cost is printed separately).

Then one instrumented step per variant (a copy of `compute_loss` with timers) says where the
time goes: teacher forward, teacher softmax + top-Vs over 262k, student forward (MTP head part
measured by hooks), loss (student softmax + sort or top-k for ULD, CE), backward, optimizer; for
the live teacher it also counts the teacher rows through its output head and checks the loss
against the full sort (see `instrumented_step`). On a shared machine pass
`--threads 1`: with more threads than free cores, torch's OpenMP threads wait on each other and
one step can take 5x longer.

`quality`: KD (ULD + CE, no MTP) vs KD+MTP (1 head, λ=0.3) from the same init, the same
batches, the same number of steps (the two trainings interleaved step by step), ULD against the
precomputed top-64 teacher. Before and after: main-head next-token CE on held-out stage-1 rows
(both regimes) and greedy accuracy on held-out reasoning-gym arithmetic tasks with the
`<think_off>` trigger, graded by `autothink.verify` ("gym"). A 135M model on a few dozen CPU
steps shows small differences: read them with the printed sizes.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from autothink.algorithms.uld import IGNORE_INDEX, mtp_distill_loss
from autothink.format import THINK_OFF, THINK_ON
from autothink.models import resolve
from autothink.tasks import load_suite
from autothink.training.distill import (
    DistillCollator,
    DistillConfig,
    build_dataset,
    build_trainer,
    encode,
    precompute_teacher,
    teacher_logits,
    teacher_sorted_probs,
)
from autothink.verify import verify

STUDENT, TEACHER = "smollm2-135m-instruct", "gemma-3-270m"


# --------------------------------------------------------------------------- data


def _think_on_row(task) -> dict:
    entry = task.reference["entry"]
    reasoning = entry["metadata"]["answer_cot"].split("####")[0].strip()
    body = f"<think>{reasoning}</think><answer>{entry['answer']}</answer>"
    return {"id": task.id, "prompt": task.prompt, "completion": [{"role": "assistant", "content": THINK_ON + body}],
            "mode": "on"}


def _think_off_row(task) -> dict:
    body = f"<answer>{task.reference['entry']['answer']}</answer>"
    return {"id": task.id, "prompt": task.prompt, "completion": [{"role": "assistant", "content": THINK_OFF + body}],
            "mode": "off"}


def stage1_rows(n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    """n stage-1 rows, alternating think-off (arithmetic) and think-on (gsm_symbolic); prompts in
    `exclude` are skipped (held-out sets must not repeat training questions)."""
    off = [t for t in load_suite("arithmetic", n=n + 40, seed=seed) if t.prompt not in exclude]
    on = [t for t in load_suite("gsm_symbolic", n=n // 2 + 20, seed=seed) if t.prompt not in exclude]
    rows = []
    for i in range(n):
        rows.append(_think_off_row(off[i // 2]) if i % 2 == 0 else _think_on_row(on[i // 2]))
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), load average {load:.1f} at start")


def make_config(out: Path, data: Path, **kw) -> DistillConfig:
    base = {"student": STUDENT, "data": str(data), "output_dir": str(out), "report_to": "none",
            "save_strategy": "no", "disable_tqdm": True, "learning_rate": 5e-5, "max_steps": 100,
            "per_device_train_batch_size": 4, "max_length": 256, "mtp_weight": 0.3, "seed": 0, "logging_steps": 1000}
    return DistillConfig(**{**base, **kw})


class Arm:
    """One trainer and what a manual Trainer-style step needs (optimizer, schedule, batches)."""

    def __init__(self, name: str, config: DistillConfig, steps: int):
        self.name = name
        with contextlib.redirect_stdout(open(os.devnull, "w")):  # "no chat template; using ChatML"
            self.trainer = build_trainer(config)
        self.trainer.create_optimizer_and_scheduler(num_training_steps=steps)
        self.trainer.current_gradient_accumulation_steps = 1  # set by Trainer's own loop
        self.model = self.trainer.model
        self.collate = self.trainer.data_collator
        self.dataset = self.trainer.train_dataset

    def batch(self, r: int, size: int) -> dict:
        if len(self.dataset) < (r + 1) * size:
            raise SystemExit(f"{self.name}: only {len(self.dataset)} usable samples (rows whose prompt fills "
                             "max_length are skipped): raise --max_length")
        return self.collate([self.dataset[i] for i in range(r * size, (r + 1) * size)])

    def step(self, batch: dict) -> float:
        t = self.trainer
        loss = t.training_step(self.model, batch)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.args.max_grad_norm)
        t.optimizer.step()
        t.lr_scheduler.step()
        self.model.zero_grad(set_to_none=True)
        return float(loss)


# --------------------------------------------------------------------------- step time


def instrumented_step(arm: Arm, batch: dict) -> tuple[dict[str, float], dict[str, float]]:
    """`DistillTrainer.compute_loss` + backward + optimizer, spelled out with timers.

    Returns (seconds per phase, notes). With a live teacher the notes count the teacher rows that go
    through its output head (the paired rows only, `teacher_logits`) and give the ULD loss of the
    trainer's teacher side (top-Vs probabilities plus a tail column, `teacher_sorted_probs`) against
    the full sort over the teacher's vocabulary, computed aside (the printed difference is fp32 rounding).
    """
    t, args, model = arm.trainer, arm.trainer.args, arm.model
    times: dict[str, float] = {}
    notes: dict[str, float] = {}
    mark = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        times[name] = times.get(name, 0.0) + now - mark[0]
        mark[0] = now

    heads = getattr(model, "heads", None)
    hooks, head_time = [], [0.0, 0.0]
    if heads is not None:
        hooks.append(heads.register_forward_pre_hook(lambda *a: head_time.__setitem__(0, time.perf_counter())))
        hooks.append(heads.register_forward_hook(
            lambda *a: head_time.__setitem__(1, head_time[1] + time.perf_counter() - head_time[0])))
    model.train()
    use_uld = bool(args.w_uld) and "student_index" in batch
    probs = logits = None
    width = model.base.config.vocab_size if hasattr(model, "base") else model.config.vocab_size
    if use_uld and "teacher_probs" not in batch:
        logits, valid = teacher_logits(t.teachers[0], batch["teacher_input_ids"], batch["teacher_attention_mask"],
                                       batch["teacher_index"])
        lap("teacher forward (output head at the paired rows)")
        probs = teacher_sorted_probs(logits, valid, args.temperature, width)
        lap(f"teacher softmax + top-{width} of {logits.shape[-1]}")
    elif use_uld:
        probs = batch["teacher_probs"]
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    lap("student forward")
    if heads is not None:
        times["  of which MTP head forward"] = head_time[1]
    mtp_logits = getattr(out, "mtp_logits", None) or []
    kw = {"w_ce": args.w_ce, "w_uld": args.w_uld if use_uld else 0.0, "mtp_weight": args.mtp_weight,
          "temperature": args.temperature}
    parts = mtp_distill_loss(out.logits, mtp_logits, batch["labels"], batch.get("student_index"), probs, **kw)
    lap("loss (CE; ULD: student softmax + sort or top-k)")
    parts.loss.backward()
    lap("backward")
    torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    t.optimizer.step()
    t.lr_scheduler.step()
    model.zero_grad(set_to_none=True)
    lap("clip + AdamW")
    for h in hooks:
        h.remove()
    if logits is not None:  # the full sort over the teacher's vocabulary, aside: the loss it gives
        full_probs = teacher_sorted_probs(logits, valid, args.temperature)
        with torch.no_grad():
            detached = [x.detach() for x in mtp_logits]
            uld = {**kw, "w_ce": 0.0, "w_uld": 1.0}
            call = (out.logits.detach(), detached, batch["labels"], batch["student_index"])
            full, cut = mtp_distill_loss(*call, full_probs, **uld), mtp_distill_loss(*call, probs, **uld)
        notes["|ULD loss difference|, cut teacher vs full sort"] = abs(float(full.loss - cut.loss))
        notes["teacher output-head rows (the paired rows)"] = int(valid.sum())
        notes["  of B x N pair slots"] = valid.numel()
    return times, notes


def workdir(args) -> Path:
    """--work DIR (kept: a rerun on the same data reuses its teacher top-k store) or a fresh temp dir."""
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        return Path(args.work)
    return Path(tempfile.mkdtemp(prefix="bench-stage1-"))


def bench_step(args) -> None:
    work = workdir(args)
    n = (args.rounds + 1) * args.batch
    data = write_jsonl(stage1_rows(n, seed=0), work / "stage1.jsonl")
    resolve(STUDENT), resolve(TEACHER)
    steps = args.rounds + 3  # schedule length: the LR never reaches 0 here
    common = {"per_device_train_batch_size": args.batch, "max_length": args.max_length, "max_steps": steps}
    start = time.perf_counter()
    precompute_cfg = make_config(work / "p", data, teacher=TEACHER, precompute=True, top_k=args.top_k,
                                 teacher_logprobs=str(work / "topk"), teacher_batch_size=args.batch, **common)
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        written = precompute_teacher(precompute_cfg)["written"]
    precompute_s = time.perf_counter() - start
    arms = [
        Arm("SFT (CE only)", make_config(work / "a", data, w_uld=0.0, mtp_heads=0, **common), steps),
        Arm("KD+MTP+ULD, live teacher", make_config(work / "b", data, teacher=TEACHER, mtp_heads=1, **common), steps),
        Arm(f"KD+MTP+ULD, top-{args.top_k} teacher",
            make_config(work / "c", data, teacher_logprobs=str(work / "topk"), mtp_heads=1, **common), steps),
    ]
    print(f"stage-1 step time: student {STUDENT}, teacher {TEACHER}; {machine()}")
    batches = [[arm.batch(r, args.batch) for arm in arms] for r in range(args.rounds + 1)]
    tokens = [int(b[0]["attention_mask"].sum()) for b in batches]
    resp = [int((b[0]["labels"] != IGNORE_INDEX).sum()) for b in batches]
    print(f"batch {args.batch}, max_length {args.max_length}; per batch: {statistics.mean(tokens):.0f} tokens, "
          f"{statistics.mean(resp):.0f} response tokens, padded width "
          f"{statistics.mean(b[0]['input_ids'].shape[1] for b in batches):.0f} (mean of {len(batches)} batches)")
    times: dict[str, list[float]] = {arm.name: [] for arm in arms}
    took: dict[str, float] = {}
    for r, round_batches in enumerate(batches):
        for arm, batch in zip(arms, round_batches):
            t0 = time.perf_counter()
            arm.step(batch)
            took[arm.name] = time.perf_counter() - t0
            if r:  # round 0 warms up (allocations, AdamW state)
                times[arm.name].append(took[arm.name])
        print(f"  round {r}{' (warm-up, not counted)' if r == 0 else ''}: " + ", ".join(
            f"{arm.name.split(',')[-1].strip()} {took[arm.name]:.2f}s" for arm in arms), flush=True)
    base = statistics.median(times[arms[0].name])
    best = min(times[arms[0].name])
    print(f"\n{'variant':<32} {'median s/step':>13} {'min':>6} {'max':>6} {'median vs SFT':>13} "
          f"{'min vs SFT':>10} {'median per-round ratio':>22}")
    for arm in arms:
        ts = times[arm.name]
        ratios = [a / b for a, b in zip(ts, times[arms[0].name])]
        print(f"{arm.name:<32} {statistics.median(ts):>13.2f} {min(ts):>6.2f} {max(ts):>6.2f} "
              f"{statistics.median(ts) / base:>12.2f}x {min(ts) / best:>9.2f}x {statistics.median(ratios):>21.2f}x")
    print(f"one-off top-{args.top_k} precompute of the {n} samples (loading the teacher, its forward, log-softmax, "
          f"top-k, writing): " + (f"{precompute_s:.1f}s" if written else "reused from --work"))
    if args.profile:
        print(f"\nwhere the time goes (one instrumented step per variant, median of {args.profile} rounds, "
              "interleaved):")
        prof: dict[str, list] = {arm.name: [] for arm in arms}
        for r in range(args.profile):
            for arm, batch in zip(arms, batches[1 + r % args.rounds]):
                prof[arm.name].append(instrumented_step(arm, batch))
        for arm in arms:
            runs = prof[arm.name]
            med = {k: statistics.median(times[k] for times, _ in runs) for k in runs[0][0]}
            total = sum(v for k, v in med.items() if not k.startswith(" "))
            print(f"  {arm.name}:")
            for k, v in med.items():
                print(f"    {k:<44} {v:6.2f}s {100 * v / total:5.1f}%")
            print(f"    {'total':<44} {total:6.2f}s")
            for k in runs[0][1]:
                v = statistics.median(notes[k] for _, notes in runs)
                print(f"    {k:<58} {v:.2g}" if isinstance(v, float) else f"    {k:<58} {v}")


# --------------------------------------------------------------------------- KD vs KD+MTP


def heldout_ce(model, features: list[dict], collate, batch: int = 4) -> dict[str, float]:
    """Main-head next-token CE over the response tokens of held-out samples (token mean), per regime."""
    sums: dict[str, list[float]] = {"all": [0.0, 0], "off": [0.0, 0], "on": [0.0, 0]}
    base = getattr(model, "base", model)
    base.eval()
    with torch.no_grad():
        for lo in range(0, len(features), batch):
            chunk = features[lo: lo + batch]
            b = collate([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in chunk])
            logits = base(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), b["labels"][:, 1:],
                                                   ignore_index=IGNORE_INDEX, reduction="none")  # (B, T-1)
            for j, f in enumerate(chunk):
                mask = b["labels"][j, 1:] != IGNORE_INDEX
                for key in ("all", f["regime"]):
                    sums[key][0] += float(ce[j][mask].sum())
                    sums[key][1] += int(mask.sum())
    base.train()
    return {k: s / max(c, 1) for k, (s, c) in sums.items()}


def accuracy(model, tokenizer, tasks, max_new_tokens: int, batch: int = 8) -> tuple[float, list[str]]:
    """Greedy decode with the stage-1 `<think_off>` trigger after the chat prompt; graded by verify()."""
    base = getattr(model, "base", model)
    base.eval()
    outputs = []
    with torch.no_grad():
        for lo in range(0, len(tasks), batch):
            heads = []
            for task in tasks[lo: lo + batch]:
                enc = encode(tokenizer, {"prompt": task.messages, "trigger": THINK_OFF, "body": ""}, 10_000)
                heads.append(enc["input_ids"][: enc["start"]])
            width = max(len(h) for h in heads)
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(h)) + h for h in heads])
            mask = torch.tensor([[0] * (width - len(h)) + [1] * len(h) for h in heads])
            gen = base.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            outputs += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    base.train()
    passed = [verify(t.verifier, o, t.reference).passed for t, o in zip(tasks, outputs)]
    return sum(passed) / len(tasks), outputs


def bench_quality(args) -> None:
    work = workdir(args)
    train_rows = stage1_rows(args.steps * args.batch, seed=args.data_seed)
    seen = {r["prompt"] for r in train_rows}
    held_rows = stage1_rows(args.heldout, seed=args.data_seed + 1, exclude=seen)
    tasks = []  # tiers 1-3 (a 135M model gets next to nothing right on 4-5), evenly, no training question
    for tier, count in zip((1, 2, 3), (args.eval_tasks - 2 * (args.eval_tasks // 3), args.eval_tasks // 3,
                                       args.eval_tasks // 3)):
        pool = load_suite("arithmetic", n=count + 30, difficulty=tier, seed=args.data_seed + 2)
        fresh = {t.prompt: t for t in pool if t.prompt not in seen and t.prompt not in {u.prompt for u in tasks}}
        tasks += list(fresh.values())[:count]
    data = write_jsonl(train_rows, work / "train.jsonl")
    held = write_jsonl(held_rows, work / "heldout.jsonl")
    resolve(STUDENT), resolve(TEACHER)
    common = {"per_device_train_batch_size": args.batch, "max_length": args.max_length, "max_steps": args.steps,
              "learning_rate": args.lr, "warmup_steps": args.steps // 10, "seed": args.seed}
    print(f"stage-1 KD vs KD+MTP: student {STUDENT}, teacher {TEACHER} (top-{args.top_k}, precomputed); {machine()}")
    print(f"{args.steps} steps x batch {args.batch} ({len(train_rows)} rows, half think-off arithmetic, half think-on "
          f"gsm_symbolic), max_length {args.max_length}, lr {args.lr} linear, warm-up {args.steps // 10}, "
          f"AdamW, clip 1.0, seed {args.seed}, data seed {args.data_seed}; held-out: {len(held_rows)} rows, "
          f"{len(tasks)} arithmetic tasks (tiers {sorted({t.difficulty for t in tasks})})")
    start = time.perf_counter()
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        written = precompute_teacher(make_config(work / "p", data, teacher=TEACHER, precompute=True, top_k=args.top_k,
                                                 teacher_logprobs=str(work / "topk"), teacher_batch_size=args.batch,
                                                 **common))["written"]
    print(f"teacher top-{args.top_k} precompute: " + (f"{time.perf_counter() - start:.0f}s" if written else
                                                      "reused from --work"), flush=True)
    # made before the trainers: building a TrainingArguments resets the accelerator state they hold
    eval_config = make_config(work / "e", held, w_uld=0.0, mtp_heads=0, **common)
    arms = [
        Arm("KD (ULD+CE)", make_config(work / "kd", data, teacher_logprobs=str(work / "topk"), mtp_heads=0, **common),
            args.steps),
        Arm("KD+MTP (1 head)", make_config(work / "mtp", data, teacher_logprobs=str(work / "topk"), mtp_heads=1,
                                           **common), args.steps),
    ]
    bases = [getattr(a.model, "base", a.model).state_dict() for a in arms]
    assert all(torch.equal(bases[0][k], bases[1][k]) for k in bases[0]), "the two students must start equal"
    del bases
    tokenizer = arms[0].trainer.processing_class
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        eval_set = build_dataset(eval_config, tokenizer)
    regime = {r["id"]: r["mode"] for r in held_rows}
    feats = [{**f, "regime": regime[r["id"]]} for f, r in zip(eval_set.features, held_rows)]
    assert len(feats) == len(held_rows), "a held-out row was skipped (prompt longer than max_length)"
    collate = DistillCollator(tokenizer.pad_token_id)

    def evaluate(arm: Arm) -> dict:
        t0 = time.perf_counter()
        ce = heldout_ce(arm.model, feats, collate)
        acc, outs = accuracy(arm.model, tokenizer, tasks, args.max_new_tokens)
        return {"ce": ce, "acc": acc, "outputs": outs, "seconds": time.perf_counter() - t0}

    before = evaluate(arms[0])  # both start from the same base weights; the MTP head does not touch the main head
    ce = before["ce"]
    print(f"before: held-out CE {ce['all']:.4f} (off {ce['off']:.4f}, on {ce['on']:.4f}), "
          f"accuracy {before['acc']:.3f}  [{before['seconds']:.0f}s]", flush=True)
    losses = {arm.name: [] for arm in arms}
    seconds = {arm.name: [] for arm in arms}
    for step in range(args.steps):
        for arm in arms:
            batch = arm.batch(step, args.batch)
            t0 = time.perf_counter()
            losses[arm.name].append(arm.step(batch))
            seconds[arm.name].append(time.perf_counter() - t0)
        if (step + 1) % max(1, args.steps // 8) == 0 or step + 1 == args.steps:
            print(f"  step {step + 1}: " + ", ".join(
                f"{a.name} loss {statistics.mean(losses[a.name][-5:]):.3f}" for a in arms), flush=True)
    after = {arm.name: evaluate(arm) for arm in arms}
    print(f"\n{'':<18} {'held-out CE':>11} {'think-off':>9} {'think-on':>9} {'accuracy':>9} {'s/step':>7}")
    print(f"{'initial student':<18} {ce['all']:>11.4f} {ce['off']:>9.4f} {ce['on']:>9.4f} "
          f"{before['acc']:>9.3f} {'':>7}")
    for arm in arms:
        a = after[arm.name]
        print(f"{arm.name:<18} {a['ce']['all']:>11.4f} {a['ce']['off']:>9.4f} {a['ce']['on']:>9.4f} {a['acc']:>9.3f} "
              f"{statistics.median(seconds[arm.name]):>7.2f}")
    kd, mtp = (after[a.name] for a in arms)
    n_right = [round(x["acc"] * len(tasks)) for x in (kd, mtp)]
    print(f"\nKD+MTP vs KD: held-out CE {mtp['ce']['all'] - kd['ce']['all']:+.4f} "
          f"({100 * (mtp['ce']['all'] / kd['ce']['all'] - 1):+.2f}%), accuracy {mtp['acc'] - kd['acc']:+.3f} "
          f"({n_right[1]} vs {n_right[0]} of {len(tasks)} tasks); step time "
          f"{statistics.median(seconds[arms[1].name]) / statistics.median(seconds[arms[0].name]):.2f}x")
    if args.show:
        for t, o_kd, o_mtp in list(zip(tasks, kd["outputs"], mtp["outputs"]))[: args.show]:
            print(f"  {t.prompt!r} gold {t.reference['entry']['answer']}: KD {o_kd!r} | KD+MTP {o_mtp!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    step = sub.add_parser("step", help="step time of KD+MTP+ULD vs plain SFT")
    step.add_argument("--rounds", type=int, default=10, help="timed rounds (plus one warm-up)")
    step.add_argument("--profile", type=int, default=3, help="instrumented rounds for the breakdown (0: none)")
    quality = sub.add_parser("quality", help="KD vs KD+MTP: held-out CE and task accuracy")
    quality.add_argument("--steps", type=int, default=48)
    quality.add_argument("--lr", type=float, default=1e-4)
    quality.add_argument("--heldout", type=int, default=48, help="held-out stage-1 rows for the CE")
    quality.add_argument("--eval_tasks", type=int, default=40, help="held-out arithmetic tasks for the accuracy")
    quality.add_argument("--max_new_tokens", type=int, default=16)
    quality.add_argument("--seed", type=int, default=0, help="init (new token embeddings, MTP head)")
    quality.add_argument("--data_seed", type=int, default=0, help="reasoning-gym seed of the training rows")
    quality.add_argument("--show", type=int, default=0, help="print the first N decoded answers")
    for p in (step, quality):
        p.add_argument("--batch", type=int, default=4)
        p.add_argument("--max_length", type=int, default=256)
        p.add_argument("--top_k", type=int, default=64, help="precomputed teacher's top k")
        p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
        p.add_argument("--work", help="work dir to keep (default: a new temp dir); reruns on the same data reuse "
                                      "its precomputed teacher log-probs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.manual_seed(0)
    (bench_step if args.bench == "step" else bench_quality)(args)


if __name__ == "__main__":
    main()
