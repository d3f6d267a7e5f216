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
  the per-sample logits and losses of the samples run one by one (tests/training/test_sft.py checks
  this at 1e-5 in fp32). Other attention implementations are refused with packing on.
- `--packing trie` packs the samples into prefix tries instead (`training.trie_packing`): rows
  that share a prompt or a conversation prefix compute it once, forward and backward, with the
  loss and gradients of the unpacked batch (`max_length` is each pack's token budget, a batch
  is `per_device_train_batch_size` packs). The agentic SFT uses it by default.
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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import trl

from autothink.models import load_student
from autothink.models.card import write_model_card
from autothink.records.sft import read_sft_data
from autothink.training.args import LoraOptions, TrainerDefaults, resume_point, save_trained
from autothink.training.trie_packing import TrieTrainerMixin, use_trie_packing

logger = logging.getLogger(__name__)

# Attention implementations that keep packed samples apart: the first three get a block-diagonal
# mask from the restarting position ids (transformers' masking_utils), flash attention reads
# TRL's `cu_seq_lens_q/k`.
PACKING_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")


@dataclass
class SFTConfig(TrainerDefaults, LoraOptions, trl.SFTConfig):
    """`autothink sft`: TRL's `SFTConfig` (so every `TrainingArguments` flag) plus the model and data.

    Defaults differ from TRL's where a 2-core CPU run needs it (`TrainerDefaults`: fp32 unless a
    bf16 GPU is present, no gradient checkpointing, resume after a kill), small batches, packing
    on, checkpoints every 100 steps (last 2 kept).
    """

    model: str = field(default="smollm2-135m-instruct",
                       metadata={"help": "student: embedded model name, model dir or hub id"})
    data: str = field(default="runs/data/coldstart.jsonl", metadata={
        "help": "SFT data: JSONL rows with `messages` ending in an AutoThink assistant response"})
    eval_data: str | None = field(default=None, metadata={"help": "optional held-out file in the same format"})
    output_dir: str | None = field(default="runs/sft", metadata={"help": "checkpoints, final model and sft.json"})

    # TrainingArguments / TRL defaults overridden for small CPU runs
    per_device_train_batch_size: int = field(default=4, metadata={"help": "batch size (packed rows when packing)"})
    per_device_eval_batch_size: int = field(default=4, metadata={"help": "eval batch size"})
    logging_steps: float = field(default=5, metadata={"help": "log every N optimizer steps"})
    save_steps: float = field(default=100, metadata={"help": "save a checkpoint every N optimizer steps"})
    save_total_limit: int | None = field(default=2, metadata={"help": "keep only the last N checkpoints"})
    packing: str = field(default="true", metadata={
        "nargs": "?", "const": "true", "help": (
            "bfd (or true): TRL's best-fit-decreasing packing into rows of max_length tokens without cross-sample "
            "attention (padding-free); trie: prefix-trie packs, shared prefixes computed once (= --packing true "
            "--packing_strategy trie); false: no packing")})
    packing_strategy: str = field(default="bfd", metadata={"help": "with packing on: bfd or trie (see --packing)"})

    def __post_init__(self):
        # TRL's vocabulary after this: packing (bool) and packing_strategy ("bfd" or "trie")
        choice = str(self.packing).lower()
        if choice not in ("true", "false", "bfd", "trie"):
            raise ValueError(f"packing must be bfd (true), trie or false, got {self.packing!r}")
        if choice in ("bfd", "trie"):
            self.packing_strategy = choice
        self.packing = choice != "false"
        super().__post_init__()
        if self.packing and self.packing_strategy not in ("bfd", "trie"):
            raise ValueError(
                f"packing_strategy {self.packing_strategy!r} is not supported: 'wrapped' lets samples attend to each "
                "other and 'bfd_split' trains on a response's tail without its prompt; use 'bfd' (the default) or "
                "'trie'")
        if self.packing and self.packing_strategy == "trie" and not self.max_length:
            raise ValueError("--packing trie needs max_length: it is each pack's token budget")
        if self.assistant_only_loss:
            raise ValueError("assistant_only_loss is not needed: autothink sft trains on the final assistant message "
                             "only (prompt-completion loss); leave it off")


# --------------------------------------------------------------------------- data


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


class TrieSFTTrainer(TrieTrainerMixin, trl.SFTTrainer):
    """TRL's SFTTrainer (its tokenisation, completion-only labels, truncation) trained on trie packs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.packing_stats = use_trie_packing(self, self.args.max_length)


def check_packing(model, config: SFTConfig) -> None:
    """Refuse packing with an attention implementation that would let packed samples see each other."""
    attn = model.config._attn_implementation
    if config.packing and config.packing_strategy == "trie":
        return  # the trie trainer checks its own attention implementations
    if (config.packing or config.padding_free) and attn not in PACKING_ATTENTION:
        raise ValueError(f"packing needs an attention implementation that keeps packed samples apart "
                         f"({', '.join(PACKING_ATTENTION)}); the model uses {attn!r}. Set --packing false or "
                         "--model_init_kwargs '{\"attn_implementation\": \"sdpa\"}'")


def build_trainer(config: SFTConfig, model, tokenizer, examples: list[dict], eval_examples: list[dict] | None = None,
                  callbacks: list | None = None) -> trl.SFTTrainer:
    """An `SFTTrainer` (a `TrieSFTTrainer` with `--packing trie`) on prompt-completion examples (from
    `read_sft_data`) for a prepared student."""
    return trainer_on(config, model, tokenizer, to_dataset(examples),
                      to_dataset(eval_examples) if eval_examples else None, callbacks)


def trainer_on(config: SFTConfig, model, tokenizer, train_dataset, eval_dataset=None,
               callbacks: list | None = None) -> trl.SFTTrainer:
    """An `SFTTrainer` (a `TrieSFTTrainer` with `--packing trie`) on any dataset TRL takes: prompt-completion
    rows, or tokenised rows with `input_ids` and `labels` (-100: no loss)."""
    check_packing(model, config)
    if "<judge>" not in tokenizer.get_vocab():
        raise ValueError("the tokenizer has no AutoThink tokens; call format.add_autothink_tokens(tokenizer, model)")
    args = copy.copy(config)
    args.model_init_kwargs = None  # the student is loaded already (TRL warns it would ignore them)
    trie = config.packing and config.packing_strategy == "trie"
    if trie:
        args.packing = False  # TRL tokenises and truncates the rows; the trie trainer packs them
    return (TrieSFTTrainer if trie else trl.SFTTrainer)(
        model=model, args=args, processing_class=tokenizer, train_dataset=train_dataset,
        eval_dataset=eval_dataset, callbacks=callbacks, peft_config=config.peft_config(model, tokenizer),
    )


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
    resume = resume_point(config.resume_from_checkpoint, config.output_dir)
    model, tokenizer = load_student(config.model, seed=config.seed, model_init_kwargs=config.model_init_kwargs)
    stats = data_stats(examples, tokenizer, config.max_length)
    end = tokenizer.apply_chat_template(examples[0]["prompt"] + examples[0]["completion"], tokenize=False)
    if tokenizer.eos_token not in end[-len(tokenizer.eos_token) - 2:]:
        logger.warning("the chat template does not end the assistant turn with EOS (%r); the model may not learn to "
                       "stop. Set --eos_token to the template's end-of-turn token.", tokenizer.eos_token)
    trainer = build_trainer(config, model, tokenizer, examples, eval_examples, callbacks)
    print(f"sft: {stats['records']} samples {stats['modes']}, {stats['tokens']} tokens, packing "
          f"{packing_line(trainer, config, stats)} ({model.config._attn_implementation}) -> {config.output_dir}"
          + (f"; resuming from {resume}" if resume else ""))
    summary = train_and_save(trainer, config, model, tokenizer, resume, "sft", stats, {
        "stage": "cold-start SFT (response-only loss)", "data": config.data, "samples": stats["records"],
        "modes": ", ".join(f"{k}: {v}" for k, v in stats["modes"].items())})
    print(f"sft: {summary['global_step']} steps, loss {summary['first_loss']} -> {summary['last_loss']} -> "
          f"{config.output_dir}")
    return config.output_dir


def packing_line(trainer, config: SFTConfig, stats: dict) -> str:
    """How the rows are packed, for the start line (a trie's R goes into `stats` too)."""
    packing = config.packing_strategy if config.packing else "off"
    if isinstance(trainer, TrieSFTTrainer):
        stats["trie"] = trainer.packing_stats
        packing += (f" ({trainer.packing_stats['unpacked_tokens']} -> {trainer.packing_stats['trie_tokens']} tokens, "
                    f"R = {trainer.packing_stats['ratio']:.2f})")
    return packing


def train_and_save(trainer, config: SFTConfig, model, tokenizer, resume: str | None, name: str, stats: dict,
                   card: dict) -> dict:
    """Train (resuming from `resume`), save the model, the state, the metrics, `<name>.json` and the model card.

    Returns the summary written to `<name>.json`.
    """
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    model.config.use_cache = True  # the trainer turns the KV cache off for training; generation needs it back
    save_trained(trainer, tokenizer, config.output_dir)  # model + tokenizer (with the thinking chat template)
    trainer.save_state()
    trainer.save_metrics("train", metrics)
    out = Path(config.output_dir)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    summary = {
        "model": config.model, "data": config.data, "eval_data": config.eval_data, "data_stats": stats,
        "packing": config.packing, "packing_strategy": config.packing_strategy,
        "attn_implementation": model.config._attn_implementation,
        "resumed_from": resume, "global_step": trainer.state.global_step, "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None, "metrics": metrics, "config": json.loads(config.to_json_string()),
    }
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    if trainer.is_world_process_zero():
        write_model_card(out, config.model, name, {
            **card, "steps": trainer.state.global_step,
            "loss, first -> last": f"{summary['first_loss']} -> {summary['last_loss']}",
            "learning rate": config.learning_rate})
    return summary
