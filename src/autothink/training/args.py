"""What the three trainers (`distill`, `sft`, `rl`) share: their defaults over `TrainingArguments`
and one way to resume.

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
