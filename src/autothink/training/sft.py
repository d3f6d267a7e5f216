"""`autothink sft`: cold-start SFT (stage 2) on AutoThink-format chat data with TRL's SFTTrainer.

Input: a JSONL file of `{"id", "messages": [..., {"role": "assistant", "content": response}], ...}`
rows (`autothink data coldstart` writes `coldstart.jsonl`), where the final assistant message is a
well-formed AutoThink response (`<judge>..</judge><think_on|off>..<answer>..</answer>`).

- Loss on the final assistant message only. Each row becomes a TRL conversational
  prompt-completion example (prompt = every message but the last, completion = the last), so
  TRL's completion-only loss applies: prompt tokens get label -100, and every response token is
  trained, from `<judge>` through the mode token and `</answer>` to the template's end-of-turn
  token (SmolLM2: `<|im_end|>`, its EOS). Earlier assistant turns are context, not targets.
- Packing (on by default) is TRL's best-fit-decreasing packing, which is padding-free: the
  samples of a batch are concatenated into one row whose position ids restart at 0 per sample.
  With no attention mask and no KV cache, transformers builds a block-diagonal causal mask from
  those position ids for the `sdpa`, `eager` and `flex_attention` implementations (all run on
  CPU; `flex_attention` compiles for tens of seconds there), and the flash-attention kernels
  read TRL's `cu_seq_lens` instead; so no token attends across samples and a packed batch gives
  the per-sample logits and losses of the samples run one by one (tests/test_sft.py checks
  this at 1e-5 in fp32). Other attention implementations are refused with packing on.
- The student gets the AutoThink tokens (`format.add_autothink_tokens`: embeddings resized,
  chat template with the `thinking` kwarg), and the tokenizer is saved with every checkpoint.
- Checkpoints every `save_steps`; a rerun with the same `output_dir` resumes from the last one.

>>> # config = parse_config(SFTConfig, ["--data", "runs/data/coldstart.jsonl"], prog="autothink sft")
>>> # run_sft(config)  # -> "runs/sft"
"""
from __future__ import annotations

import copy
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import trl

from autothink.format import add_autothink_tokens, parse
from autothink.jsonl import RecordError, read_jsonl

logger = logging.getLogger(__name__)

# Attention implementations that keep packed samples apart: the first three get a block-diagonal
# mask from the restarting position ids (transformers' masking_utils), flash attention reads
# TRL's `cu_seq_lens_q/k`.
PACKING_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")


@dataclass
class SFTConfig(trl.SFTConfig):
    """`autothink sft`: TRL's `SFTConfig` (so every `TrainingArguments` flag) plus the model and data.

    Defaults differ from TRL's where a 2-core CPU run needs it: fp32 unless a bf16 GPU is present,
    no gradient checkpointing, small batches, packing on, checkpoints every 100 steps (last 2 kept).
    `resume_from_checkpoint`: unset resumes from the last checkpoint in `output_dir` if any, a
    path resumes from that checkpoint, `no` starts afresh.
    """

    model: str = field(default="smollm2-135m-instruct",
                       metadata={"help": "student: embedded model name, model dir or hub id"})
    data: str = field(default="runs/data/coldstart.jsonl", metadata={
        "help": "SFT data: JSONL rows with `messages` ending in an AutoThink assistant response"})
    eval_data: str | None = field(default=None, metadata={"help": "optional held-out file in the same format"})
    output_dir: str | None = field(default="runs/sft", metadata={"help": "checkpoints, final model and sft.json"})

    # TrainingArguments / TRL defaults overridden for small CPU runs
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 mixed precision; default: on for a CUDA GPU that supports it, off elsewhere (fp32 on CPU)"})
    gradient_checkpointing: bool | None = field(default=None, metadata={
        "help": "deprecated alias of activation_checkpointing (off unless one of them is set)"})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "batch size (packed rows when packing)"})
    per_device_eval_batch_size: int = field(default=4, metadata={"help": "eval batch size"})
    logging_steps: float = field(default=5, metadata={"help": "log every N optimizer steps"})
    save_steps: float = field(default=100, metadata={"help": "save a checkpoint every N optimizer steps"})
    save_total_limit: int | None = field(default=2, metadata={"help": "keep only the last N checkpoints"})
    packing: bool = field(default=True, metadata={
        "help": "pack samples into rows of max_length tokens without cross-sample attention (bfd, padding-free)"})

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = (not self.fp16 and not self.use_cpu and torch.cuda.is_available()
                         and torch.cuda.is_bf16_supported())
        super().__post_init__()
        if self.packing and self.packing_strategy != "bfd":
            raise ValueError(
                f"packing_strategy {self.packing_strategy!r} is not supported: 'wrapped' lets samples attend to each "
                "other and 'bfd_split' trains on a response's tail without its prompt; use 'bfd' (the default)")
        if self.assistant_only_loss:
            raise ValueError("assistant_only_loss is not needed: autothink sft trains on the final assistant message "
                             "only (prompt-completion loss); leave it off")


# --------------------------------------------------------------------------- data


def check_record(record: dict) -> str | None:
    """What is wrong with one SFT row, or None when it is usable."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        got = ("missing" if messages is None else "empty" if isinstance(messages, list)
               else f"a {type(messages).__name__}")
        return f"`messages` must be a non-empty list of {{role, content}} messages ({got})"
    for i, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            return f"messages[{i}] must be an object with string `role` and `content`"
    last = len(messages) - 1
    if messages[last]["role"] != "assistant":
        return (f"the last message must be the assistant's response; "
                f"messages[{last}] has role {messages[last]['role']!r}")
    if last == 0:
        return "no prompt: the assistant response is the only message"
    parsed = parse(messages[last]["content"])
    if not parsed.well_formed:
        return (f"messages[{last}] (assistant) is not a well-formed AutoThink response: " + "; ".join(parsed.errors))
    mode = record.get("mode")
    if mode is not None and mode != parsed.mode:
        return f"`mode` is {mode!r} but the response is think-{parsed.mode}"
    return None


def read_sft_data(path: str | os.PathLike) -> list[dict]:
    """Rows of an SFT file as TRL conversational prompt-completion examples.

    Returns:
        `[{"id", "mode", "prompt": [messages...], "completion": [assistant message]}]` in file order.

    Raises:
        FileNotFoundError: no such file.
        RecordError (a ValueError): invalid JSON, or records not in the format; the message names the
            file, the line and the record id of the first bad record, what is wrong, and how many
            more bad records there are (nothing is skipped silently).
        ValueError: the file holds no records.
    """
    examples, bad = [], []
    for line, record in read_jsonl(path):
        problem = check_record(record)
        if problem:
            bad.append((line, record.get("id"), problem))
            continue
        messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
        examples.append({"id": str(record.get("id", f"line{line}")), "mode": parse(messages[-1]["content"]).mode,
                         "prompt": messages[:-1], "completion": messages[-1:]})
    if bad:
        line, record_id, problem = bad[0]
        more = f" ({len(bad) - 1} more bad records, at lines {', '.join(str(b[0]) for b in bad[1:6])}" \
               f"{', ...' if len(bad) > 6 else ''})" if len(bad) > 1 else ""
        raise RecordError(path, line, f"record {record_id!r}: {problem}{more}")
    if not examples:
        raise ValueError(f"{path}: no SFT records")
    return examples


def to_dataset(examples: list[dict]):
    """A `datasets.Dataset` with only the `prompt` and `completion` columns TRL needs."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": e["prompt"], "completion": e["completion"]} for e in examples])


def data_stats(examples: list[dict], tokenizer, max_length: int | None) -> dict:
    """Counts per mode, token lengths, and how many samples `max_length` truncates."""
    lengths = [len(tokenizer(tokenizer.apply_chat_template(e["prompt"] + e["completion"], tokenize=False),
                             add_special_tokens=False).input_ids) for e in examples]
    too_long = [e["id"] for e, n in zip(examples, lengths) if max_length is not None and n > max_length]
    if too_long:
        logger.warning("%d of %d samples are longer than max_length=%s tokens and are truncated (their response "
                       "loses its end), e.g. %s", len(too_long), len(examples), max_length, ", ".join(too_long[:5]))
    return {"records": len(examples), "modes": dict(Counter(e["mode"] for e in examples)),
            "tokens": sum(lengths), "max_tokens": max(lengths), "truncated": len(too_long)}


# --------------------------------------------------------------------------- model and trainer


def load_student(config: SFTConfig):
    """`(model, tokenizer)`: the student in fp32 (or `model_init_kwargs`) with the AutoThink tokens added."""
    from transformers import AutoModelForCausalLM, set_seed

    from autothink.models import load_tokenizer, resolve

    set_seed(config.seed)  # the new tokens' embeddings are drawn at random: same seed, same student
    source = resolve(config.model)
    kwargs = {"dtype": torch.float32, **(config.model_init_kwargs or {})}
    try:
        tokenizer = load_tokenizer(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as err:
        raise ValueError(f"could not load model {config.model!r} ({err.__class__.__name__}: {err})") from err
    add_autothink_tokens(tokenizer, model)
    return model, tokenizer


def check_packing(model, config: SFTConfig) -> None:
    """Refuse packing with an attention implementation that would let packed samples see each other."""
    attn = model.config._attn_implementation
    if (config.packing or config.padding_free) and attn not in PACKING_ATTENTION:
        raise ValueError(f"packing needs an attention implementation that keeps packed samples apart "
                         f"({', '.join(PACKING_ATTENTION)}); the model uses {attn!r}. Set --packing false or "
                         "--model_init_kwargs '{\"attn_implementation\": \"sdpa\"}'")


def build_trainer(config: SFTConfig, model, tokenizer, examples: list[dict], eval_examples: list[dict] | None = None,
                  callbacks: list | None = None) -> trl.SFTTrainer:
    """An `SFTTrainer` on prompt-completion examples (from `read_sft_data`) for a prepared student."""
    check_packing(model, config)
    if "<judge>" not in tokenizer.get_vocab():
        raise ValueError("the tokenizer has no AutoThink tokens; call format.add_autothink_tokens(tokenizer, model)")
    args = copy.copy(config)
    args.model_init_kwargs = None  # the student is loaded already (TRL warns it would ignore them)
    return trl.SFTTrainer(
        model=model, args=args, processing_class=tokenizer, train_dataset=to_dataset(examples),
        eval_dataset=to_dataset(eval_examples) if eval_examples else None, callbacks=callbacks,
    )


def _resume_point(config: SFTConfig) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    choice = config.resume_from_checkpoint
    if choice is not None and str(choice).lower() in ("no", "false", "none"):
        return None
    if choice is not None:
        if not Path(choice).is_dir():
            raise ValueError(f"resume_from_checkpoint: no checkpoint directory {choice}")
        return str(choice)
    out = Path(config.output_dir)
    return get_last_checkpoint(str(out)) if out.is_dir() else None


def run_sft(config: SFTConfig, callbacks: list | None = None) -> str:
    """Cold-start SFT of `config.model` on `config.data`; returns the output dir.

    Writes into `config.output_dir`: `checkpoint-N/` dirs while training (model, tokenizer,
    optimizer, trainer state), then the final model with its tokenizer and chat template
    (`AutoModelForCausalLM/AutoTokenizer.from_pretrained(output_dir)` load them), `trainer_state.json`
    (the loss log), `train_results.json`, and last `sft.json` (data counts, run summary, config).

    Raises:
        FileNotFoundError: no data file. RecordError (ValueError): a record not in the format.
        ValueError: an unloadable model, packing with an unsupported attention implementation,
            a missing `resume_from_checkpoint` dir.
    """
    examples = read_sft_data(config.data)  # bad data fails before the model loads
    eval_examples = read_sft_data(config.eval_data) if config.eval_data else None
    resume = _resume_point(config)
    model, tokenizer = load_student(config)
    stats = data_stats(examples, tokenizer, config.max_length)
    end = tokenizer.apply_chat_template(examples[0]["prompt"] + examples[0]["completion"], tokenize=False)
    if tokenizer.eos_token not in end[-len(tokenizer.eos_token) - 2:]:
        logger.warning("the chat template does not end the assistant turn with EOS (%r); the model may not learn to "
                       "stop. Set --eos_token to the template's end-of-turn token.", tokenizer.eos_token)
    trainer = build_trainer(config, model, tokenizer, examples, eval_examples, callbacks)
    print(f"sft: {stats['records']} samples {stats['modes']}, {stats['tokens']} tokens, packing "
          f"{'on' if config.packing else 'off'} ({model.config._attn_implementation}) -> {config.output_dir}"
          + (f"; resuming from {resume}" if resume else ""))
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    if eval_examples:
        metrics.update(trainer.evaluate())
    model.config.use_cache = True  # the trainer turns the KV cache off for training; generation needs it back
    trainer.save_model(config.output_dir)  # model + tokenizer (with the thinking chat template)
    trainer.save_state()
    trainer.save_metrics("train", metrics)
    out = Path(config.output_dir)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    summary = {
        "model": config.model, "data": config.data, "eval_data": config.eval_data, "data_stats": stats,
        "packing": config.packing, "attn_implementation": model.config._attn_implementation,
        "resumed_from": resume, "global_step": trainer.state.global_step, "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None, "metrics": metrics, "config": json.loads(config.to_json_string()),
    }
    (out / "sft.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"sft: {trainer.state.global_step} steps, loss {summary['first_loss']} -> {summary['last_loss']} -> {out}")
    return str(out)
