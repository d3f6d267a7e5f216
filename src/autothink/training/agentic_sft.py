"""`autothink agent sft`: error-masked SFT on agent trajectories, cut into sub-trajectories, trie-packed.

Input: trajectory JSONL (`autothink agent collect` or `autothink agent import` writes it; the
record is `autothink.tasks.trajectory`). Per trajectory:

1. `llm_calls`: one call per assistant message, with the exact context the model saw (context
   rewrites applied) and whether one of its tool calls failed (`failure`: explicit flags, then
   text markers, then `--failure_rule`; user rejections count only with `--mask_rejections`).
2. `tokenize_calls`: each call rendered with the model's chat template and `tools=`; loss on the
   completions of calls that did not fail, never on tool outputs or prompts; calls whose context
   extends the previous call's tokens form one sub-trajectory, a rewrite starts another (TST).
3. TRL's SFTTrainer on those tokenised rows (`input_ids`, `labels`), trie-packed by default: the
   sub-trajectories of one run share their prefix and compute it once (`--packing bfd|false` as in
   `autothink sft`).

Everything else is `autothink sft`: every TrainingArguments flag, LoRA, resume after a kill,
checkpoints, the saved model loads with plain `from_pretrained`, and its chat template renders
tools (a ChatML model without tool support gets the Hermes `<tool_call>` template). The mask
statistics (calls, failed, masked tokens, sub-trajectories) are in `agent_sft.json`.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from autothink.models import load_student
from autothink.tasks.tool_calls import ensure_tool_template
from autothink.tasks.trajectory import llm_calls, load_rule, load_trajectories, tokenize_calls, tool_stats
from autothink.training.args import resume_point
from autothink.training.sft import SFTConfig, packing_line, train_and_save, trainer_on

logger = logging.getLogger(__name__)


@dataclass
class AgentSFTConfig(SFTConfig):
    """`autothink agent sft`: `autothink sft`'s options (so every TrainingArguments flag) on trajectory files."""

    data: str = field(default="runs/agent/collect/trajectories.jsonl", metadata={
        "help": "trajectory JSONL (agent collect / agent import output)"})
    eval_data: str | None = field(default=None, metadata={"help": "optional held-out trajectory file"})
    output_dir: str | None = field(default="runs/agent-sft", metadata={"help": "checkpoints, model, agent_sft.json"})
    packing: str = field(default="trie", metadata={
        "nargs": "?", "const": "true",
        "help": "trie (default): sub-trajectories packed into prefix tries; bfd (or true): TRL's padding-free "
                "packing; false: no packing"})
    max_length: int | None = field(default=2048, metadata={
        "help": "token budget of a pack; a call longer than this is left out (counted in too_long_calls)"})
    failure_rule: str | None = field(default=None, metadata={
        "help": "package.module:function(tool_message, tool_call) -> bool | None, applied after the flags and markers"})
    mask_rejections: bool = field(default=False, metadata={
        "help": "count a call the user rejected as failed (default: rejections are not the model's error)"})


def trajectory_rows(trajectories, tokenizer, max_length: int | None, rule=None,
                    mask_rejections: bool = False) -> tuple[list[dict], dict]:
    """Tokenised training rows (`input_ids`, `labels` with -100 where there is no loss) and the mask statistics.

    Rows with no trained token (every call failed) are left out and counted (`untrained_rows`).
    """
    rows, stats = [], Counter()
    for trajectory in trajectories:
        stats.update(tool_stats(trajectory, rule))
        calls = llm_calls(trajectory, rule, mask_rejections)
        try:
            tokenized = tokenize_calls(calls, tokenizer, trajectory.tools, max_length)
        except ValueError as err:
            raise ValueError(f"trajectory {trajectory.id!r}: {err}") from None
        stats.update(tokenized.stats)
        for ids, weights in zip(tokenized.sequences, tokenized.weights):
            if not any(weights):
                stats["untrained_rows"] += 1
                continue
            rows.append({"input_ids": ids, "labels": [t if w else -100 for t, w in zip(ids, weights)]})
            stats["tokens"] += len(ids)
    stats["trajectories"] = len(trajectories)
    stats["rows"] = len(rows)
    if stats["too_long_calls"]:
        logger.warning("%d of %d calls are longer than max_length=%s tokens and are left out", stats["too_long_calls"],
                       stats["calls"], max_length)
    return rows, dict(stats)


def run_agent_sft(config: AgentSFTConfig, callbacks: list | None = None) -> str:
    """Error-masked, tree-structured SFT of `config.model` on `config.data`; returns the output dir.

    Raises:
        FileNotFoundError: no data file. RecordError (ValueError): a bad trajectory, or no trainable row.
    """
    from datasets import Dataset

    trajectories = load_trajectories(config.data)  # bad data fails before the model loads
    evals = load_trajectories(config.eval_data) if config.eval_data else None
    rule = load_rule(config.failure_rule)
    resume = resume_point(config.resume_from_checkpoint, config.output_dir)
    model, tokenizer = load_student(config.model, seed=config.seed, model_init_kwargs=config.model_init_kwargs)
    ensure_tool_template(tokenizer)
    rows, stats = trajectory_rows(trajectories, tokenizer, config.max_length, rule, config.mask_rejections)
    if not rows:
        raise ValueError(f"{config.data}: no trajectory has a completion to train on ({stats})")
    eval_rows = trajectory_rows(evals, tokenizer, config.max_length, rule, config.mask_rejections)[0] if evals else None
    trainer = trainer_on(config, model, tokenizer, Dataset.from_list(rows),
                         Dataset.from_list(eval_rows) if eval_rows else None, callbacks)
    print(f"agent sft: {stats['trajectories']} trajectories, {stats['calls']} calls ({stats.get('failed_calls', 0)} "
          f"failed, masked), {stats['subtrajectories']} sub-trajectories, {stats['tokens']} tokens, packing "
          f"{packing_line(trainer, config, stats)} -> {config.output_dir}"
          + (f"; resuming from {resume}" if resume else ""))
    summary = train_and_save(trainer, config, model, tokenizer, resume, "agent_sft", stats, {
        "stage": "agentic SFT (error-masked, tree-structured trajectories)", "data": config.data,
        "trajectories": stats["trajectories"], "calls (failed)": f"{stats['calls']} ({stats.get('failed_calls', 0)})",
        "sub-trajectories": stats["subtrajectories"]})
    print(f"agent sft: {summary['global_step']} steps, loss {summary['first_loss']} -> {summary['last_loss']} -> "
          f"{config.output_dir}")
    return config.output_dir
