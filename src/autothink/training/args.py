"""What the trainers (`distill`, `sft`, `rl`) share: their defaults over `TrainingArguments`, one way
to resume, and (for `sft` and `rl`) LoRA.

`resume_from_checkpoint` takes one vocabulary in every trainer:

- `auto` (the default): the last `checkpoint-N` in `output_dir` if there is one, else a fresh run,
  so rerunning a killed command resumes it;
- `last` (or `true`): that checkpoint, which must exist;
- `no` (or `none`, `false`): start afresh;
- a path: that checkpoint directory.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

RESUME_HELP = ("auto: the last checkpoint in output_dir if any; last/true: that checkpoint, which must exist; "
               "no/none/false: start afresh; or a checkpoint path")


@dataclass
class TrainerDefaults:
    """Fields of `TrainingArguments` whose defaults differ in every autothink trainer.

    Mixed in before the HF/TRL config class (`class SFTConfig(TrainerDefaults, trl.SFTConfig)`):
    bf16 only on a CUDA GPU that supports it (fp32 on CPU, where bf16 autocast is slow), no
    activation checkpointing unless asked (TRL turns it on), and resume after a kill.
    """

    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 mixed precision; default: on for a CUDA GPU that supports it, off elsewhere (fp32 on CPU)"})
    gradient_checkpointing: bool | None = field(default=None, metadata={
        "help": "deprecated alias of activation_checkpointing (off unless one of them is set)"})
    resume_from_checkpoint: str | None = field(default="auto", metadata={"help": RESUME_HELP})

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = (not self.fp16 and not self.use_cpu and torch.cuda.is_available()
                         and torch.cuda.is_bf16_supported())
        super().__post_init__()


@dataclass
class LoraOptions:
    """LoRA through TRL's `peft_config` (`--use_peft`), for `sft` and `rl`.

    The adapters cover every linear layer (or `lora_target_modules`); the AutoThink tokens' rows
    of the input embeddings and the output head train too, since those tokens are new. The output
    dir gets the merged model (a plain checkpoint, as without LoRA) and the adapter in `adapter/`.
    """

    use_peft: bool = field(default=False, metadata={"help": "train LoRA adapters instead of every weight"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA inputs"})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "module names that get adapters (default: all linear layers)"})

    def peft_config(self, model, tokenizer):
        """The `peft.LoraConfig` of these options for `model`, or None without `use_peft`.

        The new tokens' input rows train as PEFT trainable tokens and the output head as a module
        to save (TRL computes the loss from the head's weight directly, so the head must be a
        module of its own): a tied head is untied here first, and the merged checkpoint keeps it untied.
        """
        if not self.use_peft:
            return None
        import torch
        from peft import LoraConfig

        from autothink.format import SPECIAL_TOKENS

        if getattr(model.config, "tie_word_embeddings", False):
            head = model.get_output_embeddings()
            head.weight = torch.nn.Parameter(head.weight.detach().clone())
            model.config.tie_word_embeddings = False
        new_rows = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=self.lora_target_modules or "all-linear", task_type="CAUSAL_LM",
                          trainable_token_indices={"embed_tokens": new_rows}, modules_to_save=["lm_head"])


def save_trained(trainer, tokenizer, output_dir: str) -> None:
    """Save the trained model: as is, or (LoRA) merged into a plain checkpoint with the adapter in `adapter/`."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not hasattr(model, "merge_and_unload"):
        trainer.save_model(output_dir)
        return
    if trainer.is_world_process_zero():
        model.save_pretrained(os.path.join(output_dir, "adapter"))
        merged = model.merge_and_unload()
        merged.config.use_cache = True
        merged.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)


def complete_checkpoints(output_dir: str) -> list[str]:
    """The `checkpoint-N` dirs of `output_dir` that were written to the end, by step.

    The HF Trainer writes `trainer_state.json` last, so a checkpoint without it was cut short
    (the job was killed while saving it) and cannot be resumed from.
    """
    if not os.path.isdir(output_dir):
        return []
    steps = []
    for name in os.listdir(output_dir):
        prefix, _, step = name.partition("-")
        path = os.path.join(output_dir, name)
        if prefix == "checkpoint" and step.isdigit() and os.path.isfile(os.path.join(path, "trainer_state.json")):
            steps.append((int(step), path))
    return [path for _, path in sorted(steps)]


def resume_point(resume_from_checkpoint: str | None, output_dir: str) -> str | None:
    """The checkpoint a run resumes from, or None for a fresh run (see the module docstring).

    `auto` and `last` take the last complete checkpoint: one cut short by a kill is skipped (with a
    warning) in favour of the one before it.

    Raises:
        ValueError: `last` with no complete checkpoint in `output_dir`.
        FileNotFoundError: a path that is not a directory.
    """
    value = "auto" if resume_from_checkpoint is None else str(resume_from_checkpoint).strip()
    word = value.lower()
    if word in ("no", "none", "false"):
        return None
    if word in ("", "auto", "last", "true"):
        complete = complete_checkpoints(output_dir)
        started = [n for n in (os.listdir(output_dir) if os.path.isdir(output_dir) else [])
                   if n.startswith("checkpoint-") and os.path.join(output_dir, n) not in complete]
        if started:
            logger.warning("skipping checkpoints cut short (no trainer_state.json): %s", ", ".join(sorted(started)))
        if not complete and word in ("last", "true"):
            raise ValueError(f"resume_from_checkpoint={value}: no complete checkpoint-* in {output_dir}")
        return complete[-1] if complete else None
    if not os.path.isdir(value):
        raise FileNotFoundError(f"resume_from_checkpoint: no checkpoint directory {value}")
    return value
