"""`autothink distill`: stage 1 — distil teachers into a student with MTP heads (ULD + CE).

Data: stage-1 JSONL (`autothink data synth`): `{"id", "prompt": [messages], "completion":
[{"role": "assistant", "content": "<think_on>..."}], "mode", ...}`. The student reads its chat
template of the prompt, the regime trigger (`<think_on>`/`<think_off>`, no loss) and the rest
of the completion plus EOS (the loss). Each teacher reads the same text with its own tokenizer
and chat template. Think-on and think-off rows may have different teachers.

Teachers: live (any local HF causal LM, any tokenizer; run under no_grad) or a directory of
precomputed top-k log-probs (`--precompute`, for teachers too large to sit beside the student).
With top-k, the tail of each teacher distribution counts as zeros: the ULD term is the L1 over
the teacher's top-k mass (`algorithms.uld.uld_loss_sorted`); with k = the vocabulary it equals
the live teacher's loss.

Loss (`algorithms.uld.mtp_distill_loss`): w_ce·CE + w_uld·ULD for the main head plus
(λ/D)·Σ_k (w_ce·CE_k + w_uld·ULD_k) for the D MTP heads; head k is paired with the teacher row
that predicts the same future token. Rows are paired by byte offsets (`alignment: bytes`) or in
order (`alignment: position`, the ULD paper).

`--mtp_only` gives a model that has no heads (or weak ones) heads worth drafting with: the
student is frozen and only the heads learn, by CE on the student's own greedy replies to the
prompts of `--data`, which is the text they draft at inference (`inference.speculative`).

Training is the HF `Trainer` (checkpoints, `resume_from_checkpoint` — by default the rerun of a
killed command resumes from its last checkpoint —, `report_to`, `torchrun` / `accelerate
launch`); the output dir gets the student (a plain checkpoint that
`AutoModelForCausalLM.from_pretrained` loads alone) with `mtp_heads.safetensors` beside it
(`autothink.mtp.load_mtp`), its tokenizer, `trainer_state.json` and `metrics.json`.

    autothink distill --student smollm2-135m-instruct --teacher gemma-3-270m --data runs/data/stage1.jsonl
    autothink distill --precompute --teacher big-model-dir --data stage1.jsonl --teacher_logprobs runs/teacher
    autothink distill --mtp_only --student runs/rl --data prompts.jsonl --output_dir runs/rl-mtp   # heads only
    torchrun --nproc_per_node 8 $(which autothink) distill --config distill.yaml   # DDP (CPU: --use_cpu true)
"""
from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import Trainer, TrainingArguments

from autothink.algorithms.uld import (
    IGNORE_INDEX,
    mtp_distill_loss,
    pair_rows,
    prediction_bounds,
    sorted_probs,
)
from autothink.format import install_chat_template
from autothink.models import load_model, load_student, resolve
from autothink.models.card import write_model_card
from autothink.models.mtp import (
    HEADS_FILE,
    MTPConfig,
    MTPModel,
    has_mtp,
    load_mtp,
    save_mtp,
)
from autothink.records.stage1 import load_stage1
from autothink.training.args import TrainerDefaults, resume_point

STORE_FORMAT = "autothink-teacher-topk/1"
SHARD_SIZE = 256  # samples per precomputed shard (the unit of resumption)


@dataclass
class DistillConfig(TrainerDefaults, TrainingArguments):
    """Stage-1 distillation options plus every HF `TrainingArguments` field (lr, steps, save_steps, ...)."""

    student: str = field(default="smollm2-135m-instruct", metadata={"help": "embedded name, model dir or hub id"})
    teacher: str | None = field(default=None,
                                metadata={"help": "teacher for both regimes (model dir, embedded name, hub id)"})
    teacher_on: str | None = field(default=None, metadata={"help": "teacher of think-on rows (default: --teacher)"})
    teacher_off: str | None = field(default=None, metadata={"help": "teacher of think-off rows (default: --teacher)"})
    teacher_logprobs: str | None = field(default=None, metadata={
        "help": "dir of precomputed teacher top-k log-probs: written by --precompute, read instead of live teachers"})
    data: str = field(default="runs/data/stage1.jsonl", metadata={"help": "stage-1 JSONL (autothink data synth)"})
    n: int | None = field(default=None, metadata={"help": "use only the first N rows"})
    mtp_heads: int = field(default=1, metadata={"help": "D, the number of MTP heads (0: none)"})
    mtp_weight: float = field(default=0.3, metadata={"help": "λ in (λ/D)·Σ_k (CE_k + ULD_k)"})
    w_ce: float = field(default=1.0, metadata={"help": "weight of the cross-entropy terms"})
    w_uld: float = field(default=1.0, metadata={"help": "weight of the ULD terms (0: plain SFT, no teacher)"})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature of both sides in ULD"})
    alignment: Literal["bytes", "position"] = field(default="bytes", metadata={
        "help": "pair student and teacher rows by byte offsets or in order (ULD paper)"})
    max_length: int = field(default=1024,
                            metadata={"help": "tokens per sequence (each side); the response tail is cut"})
    top_k: int = field(default=64, metadata={"help": "--precompute keeps the teacher's top k log-probs (0: all)"})
    teacher_dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16, float16"})
    teacher_batch_size: int = field(default=4, metadata={"help": "batch size of --precompute"})
    add_tokens: bool = field(default=True, metadata={"help": "add the AutoThink tokens to the student"})
    precompute: bool = field(default=False,
                             metadata={"help": "only write teacher top-k log-probs to --teacher_logprobs"})
    mtp_only: bool = field(default=False, metadata={
        "help": "freeze the student and train only its MTP heads, on its own greedy replies to the prompts of "
                "--data (any JSONL of prompt/messages): heads for self-speculative decoding"})
    reply_tokens: int = field(default=256, metadata={"help": "--mtp_only: tokens per generated reply"})
    draft_vocab: int = field(default=8192, metadata={
        "help": "--mtp_only: the heads draft among the N tokens most frequent in the replies (0: the whole "
                "vocabulary); on a CPU the output head is most of a draft's cost"})
    # TrainingArguments fields whose defaults differ here
    output_dir: str | None = field(default="runs/distill", metadata={"help": "checkpoints and the final student"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "keep False: the collator needs every field"})
    logging_steps: float = field(default=10, metadata={"help": "log every N steps"})

    def __post_init__(self):
        super().__post_init__()
        if self.mtp_heads < 0 or self.temperature <= 0 or self.top_k < 0 or self.max_length < 2:
            raise ValueError("need mtp_heads >= 0, temperature > 0, top_k >= 0 and max_length >= 2")
        if self.alignment not in ("bytes", "position"):
            raise ValueError(f"alignment must be 'bytes' or 'position'; got {self.alignment!r}")
        if self.mtp_only and (self.mtp_heads < 1 or self.teacher or self.teacher_on or self.teacher_off
                              or self.teacher_logprobs or self.precompute):
            raise ValueError("--mtp_only trains MTP heads (--mtp_heads >= 1) on the student's own replies: "
                             "it takes no teacher, --teacher_logprobs or --precompute")
        if self.reply_tokens < 1 or self.draft_vocab < 0:
            raise ValueError(f"need --reply_tokens >= 1 and --draft_vocab >= 0; got {self.reply_tokens}, "
                             f"{self.draft_vocab}")

    def teachers(self) -> dict[str, str | None]:
        return {"on": self.teacher_on or self.teacher, "off": self.teacher_off or self.teacher}


# --------------------------------------------------------------------------- data


def _ensure_template(tokenizer, name: str) -> None:
    if tokenizer.chat_template is None:
        print(f"distill: {name} has no chat template; using ChatML")
        install_chat_template(tokenizer)


def encode(tokenizer, row: dict, max_length: int) -> dict:
    """One side's tokens: chat-templated prompt + trigger (no loss) + body + EOS, cut to max_length.

    Returns:
        `{"input_ids", "start", "bounds"}`: the response starts at `start`; prediction row r sits
        at position start - 1 + r and `bounds[r]` is the byte where its target starts
        (`prediction_bounds`), for the rows whose target survived the cut.
    """
    text = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    head = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and (not head or head[0] != bos) and tokenizer("a")["input_ids"][:1] == [bos]:
        head = [bos] + head  # the tokenizer wants a BOS that the template did not write
    head += tokenizer(row["trigger"], add_special_tokens=False)["input_ids"]
    body, bounds = prediction_bounds(row["body"], tokenizer)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = (head + body + eos)[:max_length]
    rows = max(0, min(len(body) + len(eos), len(ids) - len(head)))
    return {"input_ids": ids, "start": len(head), "bounds": bounds[:rows]}


class TeacherStore:
    """Precomputed teacher rows: `meta.json` + `shard-NNNNN.safetensors` (per sample j of a shard:
    `logprobs.j` `[M, K]` sorted descending and `bounds.j` `[M]`; ids and hashes in the metadata)."""

    def __init__(self, directory: str | os.PathLike):
        from safetensors import safe_open

        self.dir = Path(directory)
        if not (self.dir / "meta.json").exists():
            raise FileNotFoundError(f"{self.dir}/meta.json not found: write it with `autothink distill --precompute`")
        self.meta = json.loads((self.dir / "meta.json").read_text())
        if self.meta.get("format") != STORE_FORMAT:
            raise ValueError(f"{self.dir}/meta.json: format {self.meta.get('format')!r}, expected {STORE_FORMAT!r}")
        self.index: dict[str, tuple[Path, int, str]] = {}
        for path in sorted(self.dir.glob("shard-*.safetensors")):
            with safe_open(str(path), "pt") as f:
                meta = f.metadata()
            for j, (key, sha) in enumerate(zip(json.loads(meta["ids"]), json.loads(meta["shas"]))):
                self.index[key] = (path, j, sha)

    def _get(self, row: dict, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if row["id"] not in self.index:
            raise ValueError(f"{self.dir} has no teacher log-probs for sample {row['id']!r}: "
                             "run --precompute on this data")
        path, j, sha = self.index[row["id"]]
        if sha != row["sha"]:
            raise ValueError(f"sample {row['id']!r} changed since its teacher log-probs were computed ({path})")
        with safe_open(str(path), "pt") as f:
            return f.get_tensor(f"{name}.{j}")

    def bounds(self, row: dict) -> list[int]:
        return self._get(row, "bounds").tolist()

    def probs(self, row: dict, rows: list[int]) -> torch.Tensor:
        """`[len(rows), K]` teacher probabilities (sorted descending) of the given rows."""
        return self._get(row, "logprobs")[rows].float().exp()


class DistillDataset(torch.utils.data.Dataset):
    """Tokenized samples; precomputed teacher rows are read from the store when an item is taken."""

    def __init__(self, features: list[dict], store: TeacherStore | None = None, skipped: list[str] = ()):
        self.features, self.store, self.skipped = features, store, list(skipped)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        feature = dict(self.features[i])
        if self.store is not None and "row" in feature:
            feature["teacher_probs"] = self.store.probs(feature.pop("row"), feature.pop("teacher_rows"))
        return feature


def build_dataset(config: DistillConfig, tokenizer, teacher_tokenizers: dict[str, object] | None = None,
                  store: TeacherStore | None = None) -> DistillDataset:
    """Student tokens and labels (-100 on prompt and trigger) and, when w_uld > 0, the paired rows.

    Args:
        teacher_tokenizers: regime ("on"/"off") -> tokenizer of its live teacher; or `store`.
    """
    features, skipped = [], []
    specs = config.teachers()
    ids_of = {spec: i for i, spec in enumerate(dict.fromkeys(s for s in specs.values() if s))}
    for row in load_stage1(config.data, config.n):
        s = encode(tokenizer, row, config.max_length)
        if not s["bounds"]:  # the prompt fills max_length: nothing to learn
            skipped.append(row["id"])
            continue
        labels = [IGNORE_INDEX] * s["start"] + s["input_ids"][s["start"]:]
        feature = {"input_ids": s["input_ids"], "labels": labels}
        if config.w_uld:
            if store is not None:
                t = {"bounds": store.bounds(row)}
            else:
                t = encode(teacher_tokenizers[row["regime"]], row, config.max_length)
            s_rows, t_rows = pair_rows(s["bounds"], t["bounds"], config.alignment)
            feature["student_index"] = [s["start"] - 1 + r for r in s_rows]
            if store is not None:
                feature.update(row=row, teacher_rows=t_rows)
            else:
                feature.update(teacher_input_ids=t["input_ids"], teacher_index=[t["start"] - 1 + r for r in t_rows],
                               teacher_id=ids_of[specs[row["regime"]]])
        features.append(feature)
    if skipped:
        print(f"distill: skipped {len(skipped)} rows whose prompt fills max_length={config.max_length} "
              f"(e.g. {skipped[0]!r})")
    if not features:
        raise ValueError(f"{config.data}: no usable rows (max_length={config.max_length})")
    return DistillDataset(features, store, skipped)


REPLIES_FILE = "own_replies.jsonl"


def own_replies(config: DistillConfig, model, tokenizer) -> DistillDataset:
    """`--mtp_only` data: the model's greedy replies to the prompts of `config.data` (its default
    mode, `reply_tokens` at most): the prompt's tokens as the backend feeds them and the reply's
    text tokenized again (EOS appended when the model ended it), labels on the reply. The replies
    are kept in `output_dir/own_replies.jsonl`, written after each batch: a rerun (a resume)
    trains on the same ones and generates only those missing or whose prompt changed.
    """
    from autothink.inference.backend import SamplingParams
    from autothink.inference.commands import read_conversations
    from autothink.inference.local import LocalBackend
    from autothink.records.jsonl import read_jsonl, write_jsonl

    conversations = read_conversations(config.data)[: config.n]
    if not conversations:
        raise ValueError(f"{config.data}: no prompts")
    path = Path(config.output_dir, REPLIES_FILE)
    backend = LocalBackend(model, tokenizer, batch_size=16, speculative="off")
    prompts = dict(zip([key for key, _ in conversations], backend._encode([c for _, c in conversations], None)))
    done = {r["id"]: r for _, r in read_jsonl(path)} if path.exists() else {}
    done = {key: r for key, r in done.items() if prompts.get(key) == r["prompt_ids"]}
    todo = [(key, c) for key, c in conversations if key not in done]
    params = SamplingParams(temperature=0.0, max_tokens=config.reply_tokens)
    for lo in range(0, len(todo), 16):
        chunk = todo[lo: lo + 16]
        for (key, _), [reply] in zip(chunk, backend.generate([c for _, c in chunk], params)):
            prompt = prompts[key]
            ids = tokenizer(reply.text, add_special_tokens=False)["input_ids"]
            if reply.finish_reason == "stop" and reply.stop_reason is None:
                ids.append(backend.eos_ids[0])
            done[key] = {"id": key, "prompt_ids": prompt, "reply_ids": ids, "text": reply.text}
        write_jsonl(path, done.values())
        print(f"distill --mtp_only: {len(done)}/{len(conversations)} replies -> {path}")
    features = []
    for key, _ in conversations:
        prompt, reply = done[key]["prompt_ids"], done[key]["reply_ids"]
        ids = (prompt + reply)[: config.max_length]
        if len(ids) > len(prompt):
            features.append({"input_ids": ids, "labels": [IGNORE_INDEX] * len(prompt) + ids[len(prompt):]})
    if not features:
        raise ValueError(f"{config.data}: no reply fits in max_length={config.max_length}")
    return DistillDataset(features)


def _pad(seqs: list, value, dtype=torch.long) -> torch.Tensor:
    out = torch.full((len(seqs), max(len(x) for x in seqs)), value, dtype=dtype)
    for b, x in enumerate(seqs):
        out[b, : len(x)] = torch.as_tensor(x, dtype=dtype)
    return out


@dataclass
class DistillCollator:
    """Right-padded `[B, T]` student tensors; `student_index` `[B, N]` (-1 = no pair); then either
    `teacher_probs` `[B, N, K]` (precomputed) or the teachers' `[B, Tt]` inputs, `teacher_index`
    `[B, N]` and `teacher_id` `[B]`."""

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids = [f["input_ids"] for f in features]
        batch = {"input_ids": _pad(ids, self.pad_token_id), "attention_mask": _pad([[1] * len(x) for x in ids], 0),
                 "labels": _pad([f["labels"] for f in features], IGNORE_INDEX)}
        if "student_index" not in features[0]:
            return batch
        batch["student_index"] = _pad([f["student_index"] for f in features], -1)
        if "teacher_probs" in features[0]:
            probs = [f["teacher_probs"] for f in features]
            out = torch.zeros(len(probs), batch["student_index"].shape[1], max(p.shape[-1] for p in probs))
            for b, p in enumerate(probs):
                out[b, : p.shape[0], : p.shape[1]] = p
            batch["teacher_probs"] = out
            return batch
        t_ids = [f["teacher_input_ids"] for f in features]
        batch.update(teacher_input_ids=_pad(t_ids, 0), teacher_attention_mask=_pad([[1] * len(x) for x in t_ids], 0),
                     teacher_index=_pad([f["teacher_index"] for f in features], -1),
                     teacher_id=torch.tensor([f["teacher_id"] for f in features]))
        return batch


# --------------------------------------------------------------------------- teachers


@torch.no_grad()
def teacher_logits(teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor):
    """Teacher logits of the paired rows: `([P, V] logits, [B, N] valid)` for `positions` `[B, N]` (-1 =
    none), the P valid ones in row-major order (`logits[k]` is the k-th True of `valid`).

    Only those P hidden states go through the output head, which matters for 256k-token
    vocabularies: a forward pre-hook on the head hands it the paired rows, so the model's own code
    after the head (Gemma's final-logit soft-capping, ...) still applies.
    """
    width = int(attention_mask.sum(1).max())
    valid = positions >= 0
    rows = valid.nonzero(as_tuple=True)[0], positions[valid]
    handle = teacher.get_output_embeddings().register_forward_pre_hook(lambda head, args: (args[0][rows][None],))
    try:
        logits = teacher(input_ids=input_ids[:, :width], attention_mask=attention_mask[:, :width],
                         use_cache=False).logits[0]  # (P, V)
    finally:
        handle.remove()
    return logits, valid


def teacher_sorted_probs(logits: torch.Tensor, valid: torch.Tensor, temperature: float,
                         width: int | None = None) -> torch.Tensor:
    """`[B, N, K]` sorted probabilities of `teacher_logits`' rows (zeros where not valid). With the
    student's vocabulary `width` < the teacher's, K = width + 1: the top `width` probabilities and the
    rest of the mass in one column, which gives the ULD loss of the full sort (`sorted_probs`)."""
    probs = sorted_probs(logits, temperature, top_k=width, tail=True)
    out = probs.new_zeros(*valid.shape, probs.shape[-1])
    out[valid] = probs
    return out


class DistillTrainer(Trainer):
    """The HF Trainer with the stage-1 loss. `teachers[i]` serves samples with `teacher_id == i`.

    Overrides `compute_loss` and `log` (adds the loss parts), and two short private methods so
    that an `MTPModel` student checkpoints as base files + heads (`_save`) and resumes from them
    (`_load_from_checkpoint`); tests/contracts/test_transformers.py pins them, and the
    kill-and-resume test of tests/training/test_distill.py exercises them.
    """

    def __init__(self, *args, teachers: list | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teachers = [t.to(self.args.device).eval().requires_grad_(False) for t in teachers or []]
        self.loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean
        self._parts: dict[str, list[float]] = defaultdict(list)

    def teacher_probs(self, inputs: dict, width: int | None = None) -> torch.Tensor:
        """`[B, N, K]` sorted teacher probabilities per pair (zeros where padded); a live teacher's are cut
        to the student's vocabulary `width` plus a tail column (`teacher_sorted_probs`)."""
        if "teacher_probs" in inputs:
            return inputs["teacher_probs"]
        index = inputs["teacher_index"]
        parts = []
        for i, teacher in enumerate(self.teachers):
            sel = (inputs["teacher_id"] == i).nonzero(as_tuple=True)[0]
            if len(sel) and (index[sel] >= 0).any():
                logits, valid = teacher_logits(teacher, inputs["teacher_input_ids"][sel],
                                               inputs["teacher_attention_mask"][sel], index[sel])
                parts.append((sel, teacher_sorted_probs(logits, valid, self.args.temperature, width)))
        out = index.new_zeros(*index.shape, max([p.shape[-1] for _, p in parts] or [1]), dtype=torch.float32)
        for sel, probs in parts:
            out[sel, :, : probs.shape[-1]] = probs
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        use_uld = bool(args.w_uld) and "student_index" in inputs
        parts = mtp_distill_loss(
            out.logits, getattr(out, "mtp_logits", None) or [], inputs["labels"], inputs.get("student_index"),
            self.teacher_probs(inputs, out.logits.shape[-1]) if use_uld else None, w_ce=args.w_ce,
            w_uld=args.w_uld if use_uld else 0.0,
            mtp_weight=args.mtp_weight, temperature=args.temperature,
        )
        values = torch.stack([parts.ce, parts.uld, parts.mtp_ce, parts.mtp_uld]).detach().float()[None]
        for name, value in zip(("ce", "uld", "mtp_ce", "mtp_uld"), self.accelerator.gather(values).mean(0).tolist()):
            self._parts[name].append(value)
        return (parts.loss, out) if return_outputs else parts.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._parts:
            logs.update({name: sum(v) / len(v) for name, v in self._parts.items()})
            self._parts.clear()
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, MTPModel):
            return super()._save(output_dir, state_dict)
        from transformers.trainer import TRAINING_ARGS_NAME

        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        base_state = ({k[len("base."):]: v for k, v in state_dict.items() if k.startswith("base.")}
                      if state_dict else None)
        model.base.save_pretrained(output_dir, state_dict=base_state)
        save_mtp(model.heads, output_dir)
        if state_dict:  # gathered by DeepSpeed/FSDP: the heads' own tensors may be shards
            from safetensors.torch import save_file

            heads = {k[len("heads."):]: v.contiguous().cpu() for k, v in state_dict.items() if k.startswith("heads.")}
            save_file(heads, os.path.join(output_dir, HEADS_FILE), metadata={"format": "autothink-mtp/1"})
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = model or self.model
        if not isinstance(model, MTPModel) or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(resume_from_checkpoint, dtype=next(model.parameters()).dtype)
        model.base.load_state_dict(saved.state_dict())
        model.heads.load_state_dict(load_mtp(resume_from_checkpoint, saved).heads.state_dict())


# --------------------------------------------------------------------------- the commands


class DistillStudent(MTPModel):
    """`MTPModel` plus what the HF Trainer asks of a model: activation checkpointing (of the base)."""

    def activation_checkpointing_enable(self, **kwargs) -> None:
        self.base.activation_checkpointing_enable(**kwargs)


def build_student(config: DistillConfig):
    """`(model, tokenizer)`: the student (`models.load_student`), wrapped in `MTPModel` when D > 0
    (its saved heads are loaded when the student dir has them)."""
    # --mtp_only keeps the student exactly as it is: no new tokens
    add_tokens = config.add_tokens and not config.mtp_only
    base, tokenizer = load_student(config.student, seed=config.seed, add_tokens=add_tokens)
    if not config.mtp_heads:
        return base, tokenizer
    if config.mtp_only:
        base.requires_grad_(False)  # the optimizer then holds the heads alone
    source = resolve(config.student)
    if has_mtp(source):
        model = load_mtp(source, base)
        if model.mtp_config.num_heads != config.mtp_heads:
            raise ValueError(f"{source} has {model.mtp_config.num_heads} MTP heads; config asks for {config.mtp_heads}")
        return DistillStudent(base, heads=model.heads), tokenizer
    return DistillStudent(base, MTPConfig(num_heads=config.mtp_heads, loss_weight=config.mtp_weight)), tokenizer


def _live_teachers(config: DistillConfig, regimes: set[str]):
    """Load each distinct teacher once: `(models in teacher_id order, regime -> tokenizer)`."""
    specs = config.teachers()
    missing = sorted(r for r in regimes if not specs[r])
    if missing:
        raise ValueError(f"think-{missing[0]} rows need a teacher: set --teacher or --teacher_{missing[0]} "
                         "(or --teacher_logprobs, or --w_uld 0 for plain SFT)")
    models, tokenizers = {}, {}
    for spec in dict.fromkeys(s for s in specs.values() if s):
        model, tokenizer = load_model(spec, device=str(config.device), dtype=config.teacher_dtype)
        _ensure_template(tokenizer, spec)
        models[spec], tokenizers[spec] = model, tokenizer
    return list(models.values()), {r: tokenizers[s] for r, s in specs.items() if s}


def build_trainer(config: DistillConfig, callbacks: list | None = None) -> DistillTrainer:
    """The student, the teachers (or the store), the dataset and the trainer; nothing trained yet."""
    model, tokenizer = build_student(config)
    store, teachers, teacher_tokenizers = None, [], {}
    if config.mtp_only:
        dataset = own_replies(config, model.base, tokenizer)
        if config.draft_vocab:
            counts = Counter(t for f in dataset.features for t, y in zip(f["input_ids"], f["labels"])
                             if y != IGNORE_INDEX)
            model.heads.set_draft_vocab(sorted(t for t, _ in counts.most_common(config.draft_vocab)))
    else:
        if config.w_uld and config.teacher_logprobs:
            store = TeacherStore(config.teacher_logprobs)
            if store.meta["temperature"] != config.temperature:
                raise ValueError(f"{store.dir} holds teacher log-probs at temperature {store.meta['temperature']}, "
                                 f"config asks for {config.temperature}")
        elif config.w_uld:
            regimes = {r["regime"] for r in load_stage1(config.data, config.n)}
            teachers, teacher_tokenizers = _live_teachers(config, regimes)
        dataset = build_dataset(config, tokenizer, teacher_tokenizers, store)
    return DistillTrainer(model=model, args=config, train_dataset=dataset,
                          data_collator=DistillCollator(tokenizer.pad_token_id),
                          processing_class=tokenizer, teachers=teachers, callbacks=callbacks)


def run_distill(config: DistillConfig, callbacks: list | None = None) -> dict:
    """Train (resuming per `resume_from_checkpoint`), save the student and `metrics.json`; or, with
    `config.precompute`, only write the teacher log-probs. Returns the metrics."""
    if config.precompute:
        return precompute_teacher(config)
    trainer = build_trainer(config, callbacks)
    resume = resume_point(config.resume_from_checkpoint, config.output_dir)
    if resume:
        print(f"distill: resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    trainer.save_state()
    metrics = {**result.metrics, "global_step": trainer.state.global_step, "samples": len(trainer.train_dataset),
               "skipped": len(trainer.train_dataset.skipped), "output_dir": config.output_dir}
    if trainer.args.should_save:
        Path(config.output_dir, "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        teachers = {r: t for r, t in config.teachers().items() if t}
        write_model_card(config.output_dir, config.student, "distill", {
            "stage": "MTP heads on the model's own replies (base frozen)" if config.mtp_only
            else "stage-1 distillation (ULD + MTP heads)", "data": config.data, "samples": metrics["samples"],
            "teachers": ", ".join(f"think-{r}: {t}" for r, t in teachers.items()) or config.teacher_logprobs,
            "MTP heads": config.mtp_heads, "steps": trainer.state.global_step,
            "learning rate": config.learning_rate})
    return metrics


def precompute_teacher(config: DistillConfig) -> dict:
    """Write the teachers' top-k log-probs of every response row of `config.data` to
    `config.teacher_logprobs`, one shard per 256 samples; a rerun skips the samples already written."""
    from safetensors.torch import save_file

    if not config.teacher_logprobs:
        raise ValueError("--precompute writes to --teacher_logprobs DIR; give one")
    out = Path(config.teacher_logprobs)
    rows = load_stage1(config.data, config.n)
    specs = {r: s for r, s in config.teachers().items() if any(row["regime"] == r for row in rows)}
    if not all(specs.values()):
        raise ValueError("--precompute needs a teacher for every regime in the data (--teacher or --teacher_on/off)")
    meta = {"format": STORE_FORMAT, "teachers": specs, "temperature": config.temperature, "top_k": config.top_k,
            "max_length": config.max_length}
    if (out / "meta.json").exists():
        old = json.loads((out / "meta.json").read_text())
        if {k: old.get(k) for k in meta} != meta:
            raise ValueError(f"{out} holds log-probs from other settings ({old}); use another directory")
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / "meta.json").write_text(json.dumps({**meta, "data": config.data}, indent=2) + "\n")
    done = set(TeacherStore(out).index)
    todo = [row for row in rows if row["id"] not in done]
    print(f"precompute: {len(done)} samples already written, {len(todo)} to go -> {out}")
    shard = len(list(out.glob("shard-*.safetensors")))
    for spec in dict.fromkeys(specs.values()):
        group = [row for row in todo if specs[row["regime"]] == spec]
        if not group:
            continue
        teacher, tokenizer = load_model(spec, dtype=config.teacher_dtype)
        _ensure_template(tokenizer, spec)
        device = next(teacher.parameters()).device
        for lo in range(0, len(group), SHARD_SIZE):
            chunk, tensors = group[lo: lo + SHARD_SIZE], {}
            for b0 in range(0, len(chunk), config.teacher_batch_size):
                batch = chunk[b0: b0 + config.teacher_batch_size]
                encs = [encode(tokenizer, row, config.max_length) for row in batch]
                ids = [e["input_ids"] for e in encs]
                positions = _pad([[e["start"] - 1 + r for r in range(len(e["bounds"]))] for e in encs], -1)
                logits, valid = teacher_logits(teacher, _pad(ids, 0).to(device),
                                               _pad([[1] * len(x) for x in ids], 0).to(device),
                                               positions.to(device))
                logp = torch.log_softmax(logits.float() / config.temperature, dim=-1)  # (P, V), sorted below
                logp = logp.topk(min(config.top_k or logp.shape[-1], logp.shape[-1]), dim=-1).values
                per_sample = logp.split(valid.sum(1).tolist())  # the valid rows of each sample, in order
                for j, e in enumerate(encs):
                    tensors[f"logprobs.{b0 + j}"] = per_sample[j].cpu().contiguous()
                    tensors[f"bounds.{b0 + j}"] = torch.tensor(e["bounds"], dtype=torch.long)
            path, tmp = out / f"shard-{shard:05d}.safetensors", out / f".shard-{shard:05d}.tmp"
            save_file(tensors, str(tmp), metadata={"ids": json.dumps([r["id"] for r in chunk]),
                                                   "shas": json.dumps([r["sha"] for r in chunk])})
            os.replace(tmp, path)
            shard += 1
            print(f"precompute: {lo + len(chunk)}/{len(group)} samples of {spec}")
        del teacher
    return {"teacher_logprobs": str(out), "samples": len(rows), "written": len(todo)}
