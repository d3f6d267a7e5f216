"""`autothink rl`: Step-SRPO (stage 3) as a thin subclass of TRL's `GRPOTrainer`.

The math lives in `autothink.algorithms` (rewards, group normalisation, segments, rescaling,
the prompt schedule and history resampling), the prompts file in `autothink.records.rl_prompts`,
the logged metrics in `training.rl_metrics`. This module wires them into TRL 1.16 at eight short
override points (`tests/contracts/test_trl.py` pins each, and every private TRL member used):

- `_generate_single_turn`: forced-mode exploration (below); records which rows were forced and
  which completion tokens the forcing wrote.
- `_calculate_rewards`: after TRL's plain reward function (`verifier_reward`, per sample,
  gathered over processes) it parses every completion, gathers modes and formats, and computes
  the Step-SRPO rewards r_J, r_A and the correct mode m* per group (`step_srpo_rewards`).
- `_generate_and_score_completions`: after TRL's (generation, old log-probs, its scalar
  advantages), replaces `advantages` with per-token ones: `<judge>…</judge><think_on|off>`
  tokens get the group-normalised r_J (forced samples left out of the judge baseline), think
  and answer tokens the group-normalised r_A, optionally rescaled by difficulty (λ = `lam`)
  and entropy (μ = `mu`). The loss mask (no loss on forced prefixes) travels under its own
  key, `srpo_loss_mask`. Logs the per-step metrics.
- `_compute_loss`: TRL's own (clipped surrogate, KL, loss normalisation; it accepts `[B, T]`
  advantages), given `srpo_loss_mask` joined to TRL's `tool_mask` (tool-output tokens) as the
  `tool_mask` it multiplies `completion_mask` by; TRL's tool mask stays its own until then.
- `_get_train_sampler`: the SRPO schedule (stage 1 on reasoning-heavy prompts, then the full
  mix with history resampling) in place of TRL's `RepeatSampler`.
- `_save_checkpoint` / `_load_optimizer_and_scheduler`: save and restore the schedule's
  decisions (`srpo_schedule.json`) with each checkpoint, as TRL does for its entropy state.
- `_get_per_token_logps_and_entropies` (from `training.grpo_parts`, shared with `agent rl`), with
  `--packing trie` only: every log-prob pass (old, reference, policy, entropy) runs the rows as
  prefix tries, so each group's shared prompt is computed once, forward and backward.

**Forced-mode exploration.** In each group of G rollouts, ρG of them (`forced_fraction`; the
fractional part is drawn at random per group) have their mode forced, half think-on and half
think-off (an odd one gets a random mode). With `forced_judge: model` (the default; DESIGN §4)
a forced rollout writes its own judge first: generation runs in two phases through TRL's own
`_generate_single_turn` (transformers, continuous batching or vLLM alike). Phase 1 samples every
rollout's judge, stopping at `</judge>` or at any later tag (`judge_max_tokens` at most; the stop
ids join TRL's EOS ids for the call, or vLLM's `stop_token_ids`). A forced rollout then keeps
its judge up to `</judge>` (a later tag it wrote instead is dropped and `</judge>` written for
it), and the forcing appends its mode token and `<think>` / `<answer>`; a free rollout keeps
what it sampled. Phase 2 continues every rollout (all of them, so that every process makes the
same calls); a free rollout that already ended keeps its phase-1 text. Completions stay within
`max_completion_length`. The tokens the forcing wrote get loss mask 0 (`segment_ids(...,
forced_spans=...)`), so the forced mode token is never trained, and a forced rollout's judge gets
advantage 0 (its mode is not its choice). Sampling a free rollout in two phases is sampling it in
one: the same tokens in the same contexts. `forced_judge: empty` is the measured fallback: the
forced rollout continues `<judge></judge><think_on><think>` or `<judge></judge><think_off><answer>`
(`format.forced_prefix`), a context that the SFT data never shows, in one generation call.
Prompts with a directive (`directive` in the prompts file) have it as their correct mode.

Metrics: see `training.rl_metrics`.

>>> # config = parse_config(RLConfig, ["--model", "runs/sft", "--data", "rl_prompts.jsonl"], prog="autothink rl")
>>> # run_rl(config)  # -> "runs/rl"
"""
from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
import trl
from accelerate.utils import gather_object
from torch.utils.data import Sampler

from autothink.algorithms.advantages import rescale_advantages, step_srpo_advantages
from autothink.algorithms.masks import segment_advantages, segment_ids, segment_lengths
from autothink.algorithms.rewards import (
    completion_text,
    step_srpo_rewards,
    verifier_reward,
)
from autothink.algorithms.schedule import (
    PromptSchedule,
    forced_modes,
    is_reasoning_heavy,
)
from autothink.format import (
    ANSWER,
    ANSWER_END,
    FORCED_JUDGES,
    JUDGE_END,
    JUDGE_STOPS,
    MODE_TOKENS,
    MODES,
    SPECIAL_TOKENS,
    THINK,
    THINK_END,
    forced_prefix,
    parse,
)
from autothink.models import load_student
from autothink.models.card import write_model_card
from autothink.records.rl_prompts import read_rl_prompts
from autothink.training.args import LoraOptions, TrainerDefaults, resume_point
from autothink.training.grpo_parts import GRPOParts, check_packing, train_and_save
from autothink.training.rl_metrics import (
    METRICS_FILE,
    drop_rows_from,
    plot_rl_metrics,
    read_metrics,
    srpo_metrics,
)

logger = logging.getLogger(__name__)

SCHEDULE_FILE = "srpo_schedule.json"
LOSS_MASK = "srpo_loss_mask"  # the generation batch's key of Step-SRPO's per-token loss mask [B, T]
LOSS_TYPES = ("dapo", "bnpo", "grpo", "dr_grpo", "cispo", "sapo")  # token-level: per-token advantages apply


@dataclass
class RLConfig(TrainerDefaults, LoraOptions, trl.GRPOConfig):
    """`autothink rl`: TRL's `GRPOConfig` (every TrainingArguments/GRPO flag) plus Step-SRPO's own.

    δ is `mode_delta`, not `delta`: `GRPOConfig.delta` is TRL's two-sided clipping bound.
    Defaults differ from TRL's where a 2-core CPU run needs it (`TrainerDefaults`: fp32 unless a
    bf16 GPU is present, no gradient checkpointing, resume after a kill; log every step).
    `max_steps` unset (-1) runs `stage1_steps` plus `num_train_epochs` passes over the full mix
    (of its original size).
    """

    model: str = field(default="runs/sft", metadata={"help": "policy: the SFT output dir, an embedded model or hub id"})
    data: str = field(default="runs/data/rl_prompts.jsonl", metadata={
        "help": "RL prompts: JSONL rows {id, prompt, verifier, reference (JSON), difficulty, domain, prior_mode}"})
    output_dir: str | None = field(default="runs/rl", metadata={"help": "checkpoints, final model, metrics, plots"})
    forced_fraction: float = field(default=0.25, metadata={
        "help": "ρ: share of each group's rollouts whose mode is forced (half on, half off); their mode token "
                "gets no loss"})
    forced_judge: str = field(default="model", metadata={
        "help": "model: a forced rollout writes its own judge, then the mode token is forced (two-phase "
                "generation); empty: it continues an empty-judge prefill (one call; the measured fallback)",
        "choices": list(FORCED_JUDGES)})
    judge_max_tokens: int = field(default=128, metadata={
        "help": "phase 1 of forced_judge=model: most judge tokens before the judge is closed for the rollout"})
    mode_delta: float = field(default=0.0, metadata={
        "help": "δ: the correct mode is think-off unless think-on's pass rate beats think-off's by more than δ"})
    gamma: float = field(default=0.5,
                         metadata={"help": "γ: answer-reward factor of a correct answer in the wrong mode"})
    lam: float = field(default=0.0, metadata={"help": "λ: difficulty-aware advantage scaling (KAT-Coder); 0 = off"})
    mu: float = field(default=0.0, metadata={
        "help": "μ: entropy-aware advantage scaling (KAT-Coder; one extra forward pass per batch); 0 = off"})
    stage1_steps: int = field(default=0, metadata={
        "help": "SRPO stage 1: optimizer steps on reasoning-heavy prompts only, before the full mix; 0 = one stage"})
    stage1_min_difficulty: float = field(default=3, metadata={
        "help": "stage-1 prompts: prior_mode 'on' or difficulty >= this"})
    history_resampling: bool = field(default=True, metadata={
        "help": "SRPO: after each epoch of the full mix, drop prompts whose unforced rollouts all got the same "
                "rewards"})
    history_keep_unsolved: bool = field(default=True, metadata={
        "help": "history resampling keeps prompts whose rollouts all failed, dropping only the all-correct ones "
                "(SRPO's rule); false drops both"})

    # TrainingArguments / GRPOConfig defaults overridden for small CPU runs
    logging_steps: float = field(default=1, metadata={"help": "log every N optimizer steps"})
    save_steps: float = field(default=50, metadata={"help": "save a checkpoint every N optimizer steps"})
    save_total_limit: int | None = field(default=2, metadata={"help": "keep only the last N checkpoints"})
    max_completion_length: int | None = field(default=256, metadata={"help": "new tokens per rollout"})
    packing: str = field(default="none", metadata={
        "help": "trie: log-prob passes compute each group's shared prompt once (prefix-trie packing); none: TRL's "
                "padded rows"})

    def __post_init__(self):
        super().__post_init__()
        for name, lo, hi in (("forced_fraction", 0, 1), ("mode_delta", 0, 1), ("gamma", 0, 1)):
            if not lo <= getattr(self, name) <= hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {getattr(self, name)}")
        for name in ("lam", "mu", "stage1_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.scale_rewards not in ("group", "none"):
            raise ValueError(f"scale_rewards={self.scale_rewards!r}: Step-SRPO normalises within each group ('group') "
                             "or only centres ('none')")
        if self.forced_judge not in FORCED_JUDGES:
            raise ValueError(f"forced_judge must be model or empty, got {self.forced_judge!r}")
        if isinstance(self.judge_max_tokens, bool) or not isinstance(self.judge_max_tokens, int) or \
                self.judge_max_tokens < 1:
            raise ValueError(f"judge_max_tokens must be an integer >= 1, got {self.judge_max_tokens!r}")
        check_packing(self.packing)
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r} is sequence-level; Step-SRPO's per-token advantages need "
                             f"one of {', '.join(LOSS_TYPES)}")


class SRPOSampler(Sampler[int]):
    """Indices for TRL's GRPO dataloader from a `PromptSchedule` (the layout of TRL's `RepeatSampler`).

    Each generation batch of the schedule is yielded `repeat_count` times (TRL generates once
    per `num_iterations × steps_per_generation` micro-steps and ignores the repeats' content),
    each prompt `group_size` times in a row. Finite: `num_batches` generation batches.
    """

    def __init__(self, schedule: PromptSchedule, group_size: int, repeat_count: int, num_batches: int):
        self.schedule, self.group_size, self.repeat_count, self.num_batches = (
            schedule, group_size, repeat_count, num_batches)

    def __len__(self) -> int:
        return self.num_batches * self.schedule.prompts_per_batch * self.repeat_count * self.group_size

    def __iter__(self) -> Iterator[int]:
        for _, batch in zip(range(self.num_batches), self.schedule.batches()):
            for _ in range(self.repeat_count):
                for index in batch:
                    for _ in range(self.group_size):
                        yield index


class StepSRPOTrainer(GRPOParts, trl.GRPOTrainer):
    """TRL's GRPOTrainer with Step-SRPO rewards, per-segment advantages, forced modes and the SRPO schedule.

    Args:
        model: the policy (with the AutoThink tokens: `format.add_autothink_tokens`).
        args: an `RLConfig`. train_dataset: rows of `records.rl_prompts.read_rl_prompts` as a `datasets.Dataset`.
        processing_class: the tokenizer. eval_dataset, callbacks, peft_config: as for GRPOTrainer.
            `args.max_steps` <= 0 is filled in: stage-1 steps plus `num_train_epochs` passes over the mix.

    Raises:
        ValueError: the tokenizer lacks the AutoThink tokens; stage 1 with no reasoning-heavy prompt.
    """

    def __init__(self, model, args: RLConfig, train_dataset, processing_class, eval_dataset=None, callbacks=None,
                 peft_config=None):
        vocab = processing_class.get_vocab()
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"the tokenizer lacks the AutoThink tokens {missing}; call "
                             "format.add_autothink_tokens(tokenizer, model) (the SFT stage saves them)")
        super().__init__(model=model, reward_funcs=[verifier_reward], args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks,
                         peft_config=peft_config)
        self._check_packing()
        self.tag_ids = {t: vocab[t] for t in SPECIAL_TOKENS}
        self.prefix_ids = {m: processing_class(forced_prefix(m), add_special_tokens=False).input_ids for m in MODES}
        self._forced: list[str | None] = []
        self._spans: list[tuple[int, int]] = []  # per local rollout: the completion positions the forcing wrote
        self._scored = None
        self.metrics_path = Path(args.output_dir) / METRICS_FILE

        repeat = self.num_iterations * args.steps_per_generation  # micro-steps per generation batch
        accum = args.gradient_accumulation_steps
        stage1 = [is_reasoning_heavy(row, args.stage1_min_difficulty) for row in train_dataset]
        self.schedule = PromptSchedule(
            list(train_dataset["id"]), stage1, args.generation_batch_size // self.num_generations,
            stage1_batches=math.ceil(args.stage1_steps * accum / repeat), seed=args.seed,
            shuffle=bool(args.shuffle_dataset), resample=args.history_resampling,
            keep_unsolved=args.history_keep_unsolved)
        if args.max_steps <= 0:
            mix = math.ceil(args.num_train_epochs * self.schedule.batches_per_epoch())
            batches = self.schedule.stage1_batches + mix
            args.max_steps = max(1, batches * repeat // accum)
        self._num_batches = math.ceil(args.max_steps * accum / repeat)

    # ---- override points (pinned by tests/contracts/test_trl.py)

    def _get_train_sampler(self, dataset=None):
        repeat = self.num_iterations * self.args.steps_per_generation
        return SRPOSampler(self.schedule, self.num_generations, repeat, self._num_batches)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        fraction = self.args.forced_fraction if self.model.training else 0.0
        self._forced = forced_modes(len(prompt_ids), self.accelerator.process_index, num_generations, fraction,
                                    self.args.seed, self.state.global_step)
        if fraction and self.args.forced_judge == "model":
            return self._generate_after_own_judge(prompt_ids, images, multimodal_fields, has_tool_images)
        prefixes = [self.prefix_ids[m] if m else [] for m in self._forced]
        self._spans = [(0, len(p)) for p in prefixes]
        prompt_ids = [list(ids) + p for ids, p in zip(prompt_ids, prefixes)]
        # vLLM server mode samples G completions of every G-th prompt; forced rows differ, so ask for one per row.
        completion_ids, logprobs = super()._generate_single_turn(
            prompt_ids, images, multimodal_fields, 1 if any(prefixes) else num_generations, has_tool_images)
        completion_ids = [p + list(c) for p, c in zip(prefixes, completion_ids)]
        if logprobs is not None:  # unknown sampling log-probs of the prefill: TRL reads None as "no correction"
            logprobs = [[None] * len(p) + list(lp) for p, lp in zip(prefixes, logprobs)]
        return completion_ids, logprobs

    def _generate_after_own_judge(self, prompt_ids, images, multimodal_fields, has_tool_images):
        """Two-phase rollouts (see the module docstring): every judge, then the forced tags, then the rest."""
        generate = super()._generate_single_turn
        stops = {self.tag_ids[t] for t in JUDGE_STOPS}
        ends = set(self.eos_token_ids)
        limit = self.max_completion_length
        with self._generation_limits(min(self.args.judge_max_tokens, limit), sorted(stops)):
            judges, judge_logprobs = generate(prompt_ids, images, multimodal_fields, 1, has_tool_images)
        heads, logprobs, finished, self._spans = [], [], [], []
        for i, (judge, mode) in enumerate(zip(judges, self._forced)):
            judge = list(judge)
            cut = next((j for j, t in enumerate(judge) if t in stops or t in ends), None)
            if mode is None:  # a free rollout keeps what it sampled, through the stop token
                own, forced = judge if cut is None else judge[:cut + 1], []
            else:  # a forced one keeps its judge; the forcing closes it and writes the mode
                closed = cut is not None and judge[cut] == self.tag_ids[JUDGE_END]
                own = judge[:cut + 1] if closed else judge[:cut]
                forced = ([] if closed else [self.tag_ids[JUDGE_END]]) + [
                    self.tag_ids[MODE_TOKENS[mode]], self.tag_ids[THINK if mode == "on" else ANSWER]]
            heads.append(own + forced)
            self._spans.append((len(own), len(own) + len(forced)))
            finished.append(mode is None and cut is not None and own[-1] in ends | {self.tag_ids[ANSWER_END]})
            if judge_logprobs is not None:
                logprobs.append(list(judge_logprobs[i][:len(own)]) + [None] * len(forced))
        with self._generation_limits(max(1, limit - min(map(len, heads)))):
            rests, rest_logprobs = generate([list(p) + h for p, h in zip(prompt_ids, heads)], images,
                                            multimodal_fields, 1, has_tool_images)
        completions = [h if done else (h + list(r))[:limit] for h, r, done in zip(heads, rests, finished)]
        if judge_logprobs is None or rest_logprobs is None:
            return completions, None
        logprobs = [lp if done else (lp + list(r))[:limit] for lp, r, done in zip(logprobs, rest_logprobs, finished)]
        return completions, logprobs

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._scored = self._score(inputs, completions, rewards_per_func[:, 0])
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        forced = [r["forced"] for r in self._scored.rows]
        local = self._local(output["completion_ids"].size(0))
        segments, loss_mask = segment_ids(output["completion_ids"], self.tag_ids, forced[local],
                                          output["completion_mask"], self._spans)
        loss_mask = loss_mask.to(output["completion_mask"].dtype)
        trained = loss_mask * output["tool_mask"] if "tool_mask" in output else loss_mask
        output.update(advantages=self._advantages(output, segments, loss_mask), **{LOSS_MASK: loss_mask},
                      num_items_in_batch=self.accelerator.gather(trained.sum()).sum())
        self._log_batch(output, segments)
        return output

    def _compute_loss(self, model, inputs):
        mask = inputs[LOSS_MASK] * inputs["tool_mask"] if "tool_mask" in inputs else inputs[LOSS_MASK]
        return super()._compute_loss(model, {**inputs, "tool_mask": mask})

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            (folder / SCHEDULE_FILE).write_text(json.dumps(self.schedule.state_dict()))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.resume_schedule(checkpoint)

    # ---- Step-SRPO

    def _local(self, n: int) -> slice:
        """This process's rows of a gathered batch (TRL's process slice)."""
        return slice(self.accelerator.process_index * n, (self.accelerator.process_index + 1) * n)

    def _score(self, inputs: list[dict], completions: list, correct: torch.Tensor) -> SimpleNamespace:
        """Step-SRPO rewards of the whole (gathered) batch; `correct` is already gathered."""
        parsed = [parse(completion_text(c)) for c in completions]
        rows = gather_object([
            {"id": x["id"], "domain": x.get("domain") or "unknown", "prior": x.get("prior_mode"), "mode": p.mode,
             "directive": x.get("directive"), "well_formed": p.well_formed, "forced": f is not None}
            for x, p, f in zip(inputs, parsed, self._forced)])
        group_size = self.num_generations if self.model.training else self.num_generations_eval
        groups = [i // group_size for i in range(len(rows))]
        passed = (correct.detach().cpu() > 0.5).tolist()
        judge, answer, correct_mode = step_srpo_rewards(
            [r["mode"] for r in rows], passed, [r["forced"] for r in rows], [r["well_formed"] for r in rows], groups,
            delta=self.args.mode_delta, gamma=self.args.gamma, prior_modes=[r["prior"] for r in rows],
            directive_modes=[r["directive"] for r in rows])
        local = self._local(len(inputs))
        for name, values in (("mode", [r["mode"] for r in rows]), ("forced", [r["forced"] for r in rows]),
                             ("correct_mode", correct_mode), ("judge_reward", judge.tolist()),
                             ("answer_reward", answer.tolist())):
            self._log_completion_extra(name, values[local])  # completion tables (log_completions)
        return SimpleNamespace(rows=rows, groups=groups, correct=passed, judge=judge, answer=answer,
                               correct_mode=correct_mode)

    def _advantages(self, output: dict, segments: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        """Per-token advantages [B, T] of the local rows: r_J on judge tokens, r_A on the rest."""
        s, args = self._scored, self.args
        scale = self.scale_rewards != "none"
        forced = [r["forced"] for r in s.rows]
        judge_adv, answer_adv = step_srpo_advantages(s.judge, s.answer, s.groups, forced, scale=scale)
        if args.lam or args.mu:
            entropy = (self.accelerator.gather(self._rollout_entropy(output, loss_mask)).cpu() if args.mu
                       else torch.zeros(len(s.rows)))
            judge_adv, answer_adv = (rescale_advantages(a, s.groups, s.correct, entropy, args.lam, args.mu)
                                     for a in (judge_adv, answer_adv))
        local = self._local(segments.size(0))
        return segment_advantages(segments, judge_adv[local], answer_adv[local])

    def _log_batch(self, output: dict, segments: torch.Tensor) -> None:
        """The batch's Step-SRPO metrics to the Trainer logs and `rl_metrics.jsonl`; its rewards to the schedule."""
        s = self._scored
        forced = [r["forced"] for r in s.rows]
        lengths = segment_lengths(output["completion_ids"], segments, output["completion_mask"], self._spans,
                                  self.tag_ids[THINK], self.tag_ids[THINK_END])
        lengths = {k: gather_object(v) for k, v in lengths.items()}
        metrics = srpo_metrics([r["mode"] for r in s.rows], forced, [r["well_formed"] for r in s.rows], s.correct,
                               s.correct_mode, s.judge.tolist(), s.answer.tolist(), [r["domain"] for r in s.rows],
                               lengths)
        mode = "train" if self.model.training else "eval"
        for key, value in metrics.items():
            if value is not None:
                self._metrics[mode][f"srpo/{key}"].append(value)
        if mode != "train":
            return
        self.schedule.record([r["id"] for r in s.rows], s.judge.tolist(), s.answer.tolist(), forced)
        if self.accelerator.is_main_process:
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            stage = 1 if self.state.global_step < self.args.stage1_steps else 2
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": self.state.global_step, "stage": stage,
                                    "prompts": len({r["id"] for r in s.rows}), **metrics}) + "\n")

    def resume_schedule(self, checkpoint: str) -> None:
        """Restore the SRPO schedule saved with `checkpoint`; drop metric rows of steps not yet replayed."""
        path = Path(checkpoint) / SCHEDULE_FILE
        if path.exists():
            self.schedule.load_state_dict(json.loads(path.read_text()))
        else:
            logger.warning("%s has no %s: the SRPO schedule restarts without history", checkpoint, SCHEDULE_FILE)
        if self.accelerator.is_main_process:
            drop_rows_from(self.metrics_path, self.state.global_step)


# --------------------------------------------------------------------------- plots and the run


def to_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows)


def run_rl(config: RLConfig, callbacks: list | None = None) -> str:
    """Step-SRPO of `config.model` on `config.data`; returns the output dir.

    Writes into `config.output_dir`: `checkpoint-N/` dirs (with `srpo_schedule.json`), the final
    model and tokenizer, `rl_metrics.jsonl` (one row per generation batch), `think_on_rate.png`,
    `tokens.png`, `trainer_state.json`, `train_results.json`, and last `rl.json` (summary).

    Raises:
        FileNotFoundError: no data file. RecordError (ValueError): a bad prompt row (file:line, id).
        ValueError: an unloadable model, a bad option, a missing `resume_from_checkpoint` dir.
    """
    rows = read_rl_prompts(config.data)  # bad data fails before the model loads
    resume = resume_point(config.resume_from_checkpoint, config.output_dir)
    model, tokenizer = load_student(config.model, seed=config.seed, model_init_kwargs=config.model_init_kwargs)
    model.config.use_cache = True  # rollouts decode with the KV cache (an SFT checkpoint may have saved it off)
    args = copy.copy(config)
    args.model_init_kwargs = None  # the policy is loaded already
    trainer = StepSRPOTrainer(model=model, args=args, train_dataset=to_dataset(rows), processing_class=tokenizer,
                              callbacks=callbacks, peft_config=config.peft_config(model, tokenizer))
    out = Path(config.output_dir)
    stage1 = len(trainer.schedule.stage1)
    print(f"rl: {len(rows)} prompts ({stage1} reasoning-heavy), G={args.num_generations}, ρ={args.forced_fraction}, "
          f"{args.max_steps} steps ({args.stage1_steps} in stage 1) -> {out}"
          + (f"; resuming from {resume}" if resume else ""))
    result = train_and_save(trainer, tokenizer, str(out), resume)
    if result is None:
        return str(out)
    plots = plot_rl_metrics(trainer.metrics_path, out) if trainer.metrics_path.exists() else []
    history = read_metrics(trainer.metrics_path) if trainer.metrics_path.exists() else []
    summary = {
        "model": config.model, "data": config.data, "prompts": len(rows), "stage1_prompts": stage1,
        "domains": sorted({r["domain"] for r in rows}), "resumed_from": resume,
        "global_step": trainer.state.global_step, "epochs": [len(e) for e in trainer.schedule.epochs],
        "batches_in_flight_at_epoch_decisions": trainer.schedule.in_flight,
        "first": history[0] if history else None, "last": history[-1] if history else None, "plots": plots,
        "metrics": dict(result.metrics), "config": json.loads(config.to_json_string()),
    }
    (out / "rl.json").write_text(json.dumps(summary, indent=2) + "\n")
    last = history[-1] if history else {}
    write_model_card(out, config.model, "rl", {
        "stage": "Step-SRPO (TRL GRPOTrainer)", "data": config.data, "prompts": len(rows),
        "steps": trainer.state.global_step, "group size G": args.num_generations,
        "forced fraction ρ": args.forced_fraction, "learning rate": config.learning_rate,
        "last think-on rate": last.get("think_on_rate"), "last accuracy": last.get("accuracy")})
    print(f"rl: {trainer.state.global_step} steps; think-on rate "
          f"{(history[-1].get('think_on_rate') if history else None)}, accuracy "
          f"{(history[-1].get('accuracy') if history else None)} -> {out}")
    return str(out)
