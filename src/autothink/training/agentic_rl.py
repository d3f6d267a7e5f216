"""`autothink agent rl`: agentic RL with multi-ground-truth rewards, as a thin subclass of TRL's `GRPOTrainer`.

    autothink agent rl --model runs/agent-sft --tasks humaneval --n 64 --max_steps 40

Rollouts are multi-turn tool-use episodes in our environments, through TRL 1.16's own
`environment_factory` (one pooled instance per rollout, `reset` with the task's row, the
environment's `get_reward` as a reward column): the sandboxed `CodingEnvironment` for coding
tasks, BFCL's simulators for `bfcl:` tasks (a rollout plays the first user turn, as TRL does).

**Reward** (KAT-Coder §3, `algorithms.references`): the rule-based test result (the tests'
pass share, BFCL's state check) minus α × the discrepancy to the closest reference trajectory:
TRL sums the environment's column and ours (`reference_penalty` = −α·d), and logs both. The
references of a task are its ground truth (`environments.references.task_references`) plus any
passed runs of `--references trajectories.jsonl` (`agent collect` with a strong backend).

**Rollouts** (`_tool_call_loop`, in place of TRL's): each reply is parsed by our `<tool_call>`
parser and every call executed by `environments.rollout.execute`, exactly as `agent collect`
and `agent eval` play (a malformed call, an unknown tool, bad arguments come back to the model
as errors it can read); the tool results are appended with TRL's `_get_tool_suffix_ids` and get
no loss (TRL's `tool_mask`). After each turn a rollout whose calls so far are farther than τ
from the best-aligned prefix of every reference (`drifted`) is cut and resampled from its
prompt, with its environment reset, at most `max_resamples` times; after that it ends there
("terminated"), or with `--trajectory_correction` ("corrected") its drifting reply is dropped and
the closest reference's calls from the aligned step on (`aligned_step`) are spliced in, each
executed in the environment, all their tokens without loss: the rollout's own turns before the
drift are scored by where the reference would have taken them (a corrected rollout ends on a
tool result, which TRL counts as clipped: keep `mask_truncated_completions` off with it). Groups
keep their size.
`max_tool_calling_iterations` bounds the tool rounds, `max_completion_length` every rollout
(model and tool tokens together, as TRL counts).

**Advantages**: TRL's group-normalised GRPO advantages, rescaled by difficulty (λ = `lam`) and
entropy (μ = `mu`, one extra forward pass) with `rescale_advantages`, on by default here;
`--packing trie` runs every log-prob pass as prefix tries (`training.grpo_parts`).

Metrics per batch (`agent/...` in the Trainer logs, `agent_rl_metrics.jsonl`, plots at the end):
reward and its parts, pass rate, tool-error rate, turns, tokens, resampled and terminated
rollouts, how rollouts ended. Resume after a kill, checkpoints, LoRA: as `autothink rl`.
"""
from __future__ import annotations

import copy
import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import trl
from accelerate.utils import gather_object

from autothink.algorithms.advantages import rescale_advantages
from autothink.algorithms.references import aligned_step, closest_reference, drifted
from autothink.config import check_integers
from autothink.data.collect import load_agent_tasks
from autothink.environments.bfcl import bfcl_environment_class
from autothink.environments.coding import CodingEnvironment
from autothink.environments.references import calls_of, final_patch, load_references, task_references
from autothink.environments.rollout import execute, first_messages, tool_schemas
from autothink.models import load_student
from autothink.models.card import write_model_card
from autothink.tasks.tool_calls import ensure_tool_template, parse_tool_calls, tool_call_text
from autothink.tasks.trajectory import failure
from autothink.training.args import LoraOptions, TrainerDefaults, resume_point
from autothink.training.grpo_parts import GRPOParts, check_packing, train_and_save
from autothink.training.rl_metrics import (
    AGENT_METRICS_FILE,
    agent_metrics,
    drop_rows_from,
    plot_agent_metrics,
    read_metrics,
)

logger = logging.getLogger(__name__)


@dataclass
class AgentRLConfig(TrainerDefaults, LoraOptions, trl.GRPOConfig):
    """`autothink agent rl`: TRL's `GRPOConfig` (every TrainingArguments/GRPO flag) plus the agentic options."""

    model: str = field(default="runs/agent-sft", metadata={"help": "policy: the agent sft output dir or a model"})
    tasks: str = field(default="humaneval", metadata={
        "help": "humaneval, a coding tasks JSONL, or BFCL multi-turn: bfcl:base|miss_func|miss_param|long_context"})
    skip: int = field(default=0, metadata={"help": "tasks to skip first (keep the eval's held-out tasks out)"})
    n: int | None = field(default=None, metadata={"help": "tasks to take after `skip` (default: all)"})
    references: str | None = field(default=None, metadata={
        "help": "trajectory JSONL whose passed runs are more reference trajectories (agent collect output)"})
    output_dir: str | None = field(default="runs/agent-rl", metadata={"help": "checkpoints, model, metrics, plots"})
    alpha: float = field(default=0.2, metadata={
        "help": "α: reward = test result - α · discrepancy to the closest reference (0: test result only)"})
    patch_weight: float = field(default=0.5, metadata={
        "help": "share of the patch distance (difflib, final solution.py) in a coding rollout's discrepancy"})
    tau: float = field(default=0.75, metadata={
        "help": "τ: a rollout whose calls so far are farther than this from every reference's best-aligned prefix "
                "is cut (1: never)"})
    max_resamples: int = field(default=1, metadata={"help": "times a cut rollout is resampled before it ends there"})
    trajectory_correction: bool = field(default=False, metadata={
        "help": "a cut rollout past its resamples drops its drifting reply and continues with the closest reference's "
                "remaining calls, executed in its environment; the spliced tokens get no loss"})
    lam: float = field(default=0.5, metadata={"help": "λ: difficulty-aware advantage scaling (KAT-Coder); 0 = off"})
    mu: float = field(default=0.5, metadata={
        "help": "μ: entropy-aware advantage scaling (KAT-Coder; one extra forward pass per batch); 0 = off"})
    timeout_s: float = field(default=10.0, metadata={"help": "wall-clock limit of each program run"})
    packing: str = field(default="none", metadata={
        "help": "trie: log-prob passes compute each group's shared prompt once; none: TRL's padded rows"})

    # TrainingArguments / GRPOConfig defaults overridden for agent runs on a small machine
    max_tool_calling_iterations: int | None = field(default=4, metadata={"help": "most tool rounds per rollout"})
    max_completion_length: int | None = field(default=768, metadata={
        "help": "tokens per rollout, tool results included"})
    num_generations: int | None = field(default=4, metadata={"help": "G: rollouts per task"})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "rollouts per device and micro-step"})
    logging_steps: float = field(default=1, metadata={"help": "log every N optimizer steps"})
    save_steps: float = field(default=25, metadata={"help": "save a checkpoint every N optimizer steps"})
    save_total_limit: int | None = field(default=2, metadata={"help": "keep only the last N checkpoints"})

    def __post_init__(self):
        super().__post_init__()
        check_integers(self, skip=0, n=1, max_resamples=0, max_tool_calling_iterations=1)
        for name, lo, hi in (("patch_weight", 0, 1), ("tau", 0, 1)):
            if not lo <= getattr(self, name) <= hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {getattr(self, name)}")
        for name in ("alpha", "lam", "mu", "timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_packing(self.packing)


class ReferencePenalty:
    """TRL reward function: −α · the discrepancy of each rollout's tool calls to its closest reference."""

    __name__ = "reference_penalty"

    def __init__(self, alpha: float, patch_weight: float):
        self.alpha, self.patch_weight = alpha, patch_weight
        self.discrepancies: list[float] = []

    def __call__(self, completions, references, **kwargs) -> list[float]:
        self.discrepancies = []
        for messages, refs in zip(completions, references):
            refs = json.loads(refs)
            calls = calls_of(messages)
            self.discrepancies.append(closest_reference(calls, refs, final_patch(calls), self.patch_weight)[0]
                                      if refs else 0.0)
        return [-self.alpha * d for d in self.discrepancies]


@dataclass
class Episode:
    """One rollout being played: its completion so far and what happened in it."""

    ids: list[int] = field(default_factory=list)
    tool_mask: list[int] = field(default_factory=list)  # 1: the model wrote the token; 0: a tool result
    logprobs: list[float] | None = None  # sampling log-probs (vLLM); None where the backend gives none
    messages: list[dict] = field(default_factory=list)
    calls: list[list] = field(default_factory=list)
    reply: list[int] = field(default_factory=list)  # the ids of the last reply
    turns: int = 0
    rounds: int = 0  # tool rounds executed
    tool_calls: int = 0
    tool_errors: int = 0
    resamples: int = 0
    end: str = ""

    def add_reply(self, ids: list[int], logprobs: list[float] | None) -> None:
        self.ids, self.tool_mask, self.reply = self.ids + ids, self.tool_mask + [1] * len(ids), ids
        if self.logprobs is not None:
            self.logprobs = self.logprobs + list(logprobs or [0.0] * len(ids))

    def add_results(self, ids: list[int], messages: list[dict]) -> None:
        self.ids, self.tool_mask = self.ids + ids, self.tool_mask + [0] * len(ids)
        if self.logprobs is not None:
            self.logprobs = self.logprobs + [0.0] * len(ids)
        self.messages += messages

    def drop_reply(self, calls: int) -> None:
        """Take the last reply (and its `calls` tool calls) back out."""
        n = len(self.reply)
        self.ids, self.tool_mask = self.ids[:len(self.ids) - n], self.tool_mask[:len(self.tool_mask) - n]
        if self.logprobs is not None:
            self.logprobs = self.logprobs[:len(self.logprobs) - n]
        self.messages.pop()
        self.calls = self.calls[:len(self.calls) - calls]
        self.reply = []

    def restart(self) -> None:
        """Forget everything but how often it was resampled."""
        resamples, sampled = self.resamples + 1, self.logprobs is not None
        self.__init__(resamples=resamples, logprobs=[] if sampled else None)

    def record(self) -> dict:
        return {"turns": self.turns, "tool_calls": self.tool_calls, "tool_errors": self.tool_errors,
                "tokens": sum(self.tool_mask), "resamples": self.resamples, "end": self.end}


class AgentRLTrainer(GRPOParts, trl.GRPOTrainer):
    """TRL's GRPOTrainer with our tool loop, early termination, the reference penalty and rescaled advantages.

    Args:
        model, args (an `AgentRLConfig`), train_dataset (rows of `agent_rl_rows`), processing_class,
        environments (`{name: factory}`, TRL's dict `environment_factory`), callbacks, peft_config.
    """

    def __init__(self, model, args: AgentRLConfig, train_dataset, processing_class, environments: dict,
                 callbacks=None, peft_config=None):
        self.penalty = ReferencePenalty(args.alpha, args.patch_weight)
        super().__init__(model=model, reward_funcs=[self.penalty], args=args, train_dataset=train_dataset,
                         processing_class=processing_class, environment_factory=environments, callbacks=callbacks,
                         peft_config=peft_config)
        self._check_packing()
        if self.use_vllm and self.accelerator.num_processes > 1 and (
                self.vllm_mode == "server" or args.vllm_tensor_parallel_size > 1):
            raise ValueError("agent rl generates a different number of turns on each process, which vLLM's server "
                             "mode and tensor-parallel colocate mode cannot gather; use vllm_mode=colocate with "
                             "vllm_tensor_parallel_size=1, or one training process")
        # The prompt shows the schemas `agent collect` and `agent sft` show (TRL's own keep the return type).
        self._env_tools = {name: tool_schemas(pool[0]) for name, pool in self._environment_pool.items()}
        self.metrics_path = Path(args.output_dir) / AGENT_METRICS_FILE
        self._rows: list[dict] = []
        self._references: list[list[dict]] = []
        self._episodes: list[Episode] = []
        self._tests = torch.zeros(0)

    # ---- override points (pinned by tests/contracts/test_trl.py)

    def _generate_and_score_completions(self, inputs):
        inputs = [{**x, **json.loads(x["task"])} for x in inputs]  # `reset` gets the task's own fields
        self._rows, self._references = inputs, [json.loads(x["references"]) for x in inputs]
        output = super()._generate_and_score_completions(inputs)
        mask = output["completion_mask"] * output["tool_mask"]
        output["advantages"] = self._rescaled(output, mask)
        self._log_batch()
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._tests = torch.nansum(rewards[:, 1:], dim=1).cpu()  # the environments' columns (NaN: another's)
        return rewards

    def _tool_call_loop(self, prompts, prompt_ids, completion_ids, completions, logprobs, images, multimodal_fields):
        if images is not None or multimodal_fields:
            raise ValueError("agent rl rollouts are text-only")
        limit = self.max_completion_length
        context = (self.vllm_generation.llm.llm_engine.model_config.max_model_len
                   if self.use_vllm and self.vllm_mode == "colocate" else self.model.config.max_position_embeddings)
        self._episodes = episodes = [Episode(logprobs=[] if logprobs is not None else None) for _ in prompt_ids]
        for i, ids in enumerate(completion_ids):
            episodes[i].add_reply(list(ids), logprobs[i] if logprobs is not None else None)
        playing = list(range(len(episodes)))
        while playing:
            queue = []  # (rollout, the ids it continues from)
            for i in playing:
                if not self._play_turn(i, episodes[i]):
                    continue
                ids = list(prompt_ids[i]) + episodes[i].ids
                if len(ids) >= context:
                    episodes[i].end = "length"
                    continue
                queue.append((i, ids))
            if not queue:
                break
            with self._generation_limits(max(1, max(limit - len(episodes[i].ids) for i, _ in queue))):
                replies, reply_logprobs = self._generate_single_turn([ids for _, ids in queue], None, {}, 1)
            for k, (i, _) in enumerate(queue):
                budget = limit - len(episodes[i].ids)
                episodes[i].add_reply(list(replies[k])[:budget],
                                      list(reply_logprobs[k])[:budget] if reply_logprobs is not None else None)
            playing = [i for i, _ in queue]
        tool_calls = sum(e.tool_calls for e in episodes)
        tool_errors = sum(e.tool_errors for e in episodes)
        return ([e.tool_mask for e in episodes], [e.messages for e in episodes], [e.ids for e in episodes],
                [e.logprobs for e in episodes] if logprobs is not None else None, tool_calls, tool_errors,
                [[] for _ in episodes])

    # ---- the episode

    def _play_turn(self, i: int, episode: Episode) -> bool:
        """Handle rollout i's last reply: run its calls or end it. True when the rollout gets another reply."""
        ends = {*self.eos_token_ids, self._tokenizer.pad_token_id}
        reply = episode.reply
        content, calls, problems = parse_tool_calls(self._tokenizer.decode([t for t in reply if t not in ends]))
        message = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        episode.messages.append(message)
        episode.turns += 1
        if not calls:
            episode.end = "answered" if reply and reply[-1] in ends else "truncated"
            return False
        episode.calls += [[c["function"]["name"], c["function"]["arguments"]] for c in calls]
        if drifted(episode.calls, self._references[i], self.args.tau):
            if episode.resamples >= self.args.max_resamples:
                if self.args.trajectory_correction:
                    self._correct(i, episode, len(calls))
                else:
                    episode.end = "terminated"
                return False
            episode.restart()
            self.environments[i].reset(**{k: v for k, v in self._rows[i].items() if k != "environment"})
            return True
        if episode.rounds >= self.max_tool_calling_iterations:
            episode.end = "max_turns"
            return False
        results = [execute(self.environments[i], call, problems.get(k)) for k, call in enumerate(calls)]
        episode.rounds += 1
        episode.tool_calls += len(results)
        episode.tool_errors += sum(failure(r) is not None for r in results)
        suffix = self._get_tool_suffix_ids([{"role": "tool", "name": r["name"], "content": r["content"]}
                                            for r in results])
        if len(episode.ids) + len(suffix) >= self.max_completion_length:
            episode.end = "length"  # no room for the results and a reply (TRL's rule)
            return False
        episode.add_results(suffix, results)
        return True

    def _correct(self, i: int, episode: Episode, drifting_calls: int) -> None:
        """Trajectory correction: drop the drifting reply, splice the closest reference's continuation.

        A spliced call runs only when its reply fits the budget, and once it ran it stays in the transcript
        (its result cut to fit), so the reward never credits a call the transcript lacks. Spliced calls count
        as tool rounds. When not even the first spliced reply fits, the rollout keeps its drifting reply and
        ends "terminated".
        """
        calls_before = episode.calls[:len(episode.calls) - drifting_calls]
        k, step = aligned_step(calls_before, self._references[i])
        continuation = self._references[i][k]["calls"][step:]
        eos, limit = self._tokenizer.eos_token_id, self.max_completion_length
        replies = [self._tokenizer(tool_call_text(name, arguments), add_special_tokens=False).input_ids + [eos]
                   for name, arguments in continuation]
        if not replies or len(episode.ids) - len(episode.reply) + len(replies[0]) >= limit:
            episode.end = "terminated"
            return
        episode.drop_reply(drifting_calls)
        for n, ((name, arguments), reply) in enumerate(zip(continuation, replies)):
            if len(episode.ids) + len(reply) >= limit or episode.rounds >= self.max_tool_calling_iterations:
                break
            call = {"id": f"spliced_{n}", "type": "function",
                    "function": {"name": name, "arguments": json.dumps(arguments)}}
            result = execute(self.environments[i], call)
            suffix = self._get_tool_suffix_ids([{"role": "tool", "name": result["name"], "content": result["content"]}])
            episode.add_results(reply, [{"role": "assistant", "content": "", "tool_calls": [call], "spliced": True}])
            episode.add_results(suffix[:limit - len(episode.ids)], [{**result, "spliced": True}])
            episode.calls.append([name, arguments])
            episode.rounds += 1
        episode.end = "corrected"

    # ---- advantages and metrics

    def _rescaled(self, output: dict, mask: torch.Tensor) -> torch.Tensor:
        """TRL's advantages of the local rows rescaled by group difficulty (λ) and rollout entropy (μ)."""
        args, local = self.args, output["advantages"]
        if not (args.lam or args.mu):
            return local
        n = local.size(0)
        advantages = self.accelerator.gather(local).cpu()
        entropy = (self.accelerator.gather(self._rollout_entropy(output, mask)).cpu() if args.mu
                   else torch.zeros(advantages.size(0)))
        group = self.num_generations if self.model.training else self.num_generations_eval
        groups = [k // group for k in range(advantages.size(0))]
        rescaled = rescale_advantages(advantages, groups, self._tests, entropy, args.lam, args.mu)
        start = self.accelerator.process_index * n
        return rescaled[start:start + n].to(local.device, local.dtype)

    def _log_batch(self) -> None:
        episodes = gather_object([e.record() for e in self._episodes])
        discrepancies = gather_object(self.penalty.discrepancies)
        metrics = agent_metrics(episodes, self._tests.tolist(), discrepancies, self.args.alpha)
        mode = "train" if self.model.training else "eval"
        for key, value in metrics.items():
            if value is not None:
                self._metrics[mode][f"agent/{key}"].append(value)
        if mode == "train" and self.accelerator.is_main_process:
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": self.state.global_step, **metrics}) + "\n")

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and self.accelerator.is_main_process:
            drop_rows_from(self.metrics_path, self.state.global_step)  # the resumed run writes them again


# --------------------------------------------------------------------------- data and the run


def environment_name(task) -> str:
    """The environment factory a task uses: `coding`, or its BFCL API combination's class name."""
    if task.source == "bfcl":
        return bfcl_environment_class(tuple(sorted(task.metadata["involved_classes"]))).__name__
    return "coding"


def agent_rl_rows(tasks, supplied: dict[str, list[dict]], config: AgentRLConfig) -> tuple[list[dict], dict]:
    """Dataset rows (`prompt`, `id`, `task` and `references` as JSON, `environment`) and the environment factories.

    Raises:
        ValueError: a task without a reference trajectory while the reward or early termination needs one.
    """
    rows, factories = [], {}
    for task in tasks:
        if task.metadata.get("missed_function"):
            raise ValueError(f"task {task.id!r} (bfcl:miss_func) hides functions until a later turn; agent rl plays "
                             "the first turn with every tool of its environment shown: use bfcl:base, miss_param or "
                             "long_context")
        references = task_references(task) + supplied.get(task.id, [])
        if not references and (config.alpha or config.tau < 1):
            raise ValueError(f"task {task.id!r} has no reference trajectory (no metadata.solution, not in "
                             f"--references); give one, or run with --alpha 0 --tau 1")
        name = environment_name(task)
        factories[name] = (functools.partial(CodingEnvironment, timeout_s=config.timeout_s) if name == "coding"
                           else bfcl_environment_class(tuple(sorted(task.metadata["involved_classes"]))))
        rows.append({"id": task.id, "prompt": first_messages(task), "task": json.dumps(task.to_dict()),
                     "references": json.dumps(references), "environment": name})
    return rows, factories


def set_response_template(tokenizer) -> None:
    """TRL parses replies with a response template; a ChatML template with Hermes tool calls gets Qwen's."""
    from trl.chat_template_utils import add_response_schema, qwen3_template

    if getattr(tokenizer, "response_template", None) is not None:
        return
    try:
        add_response_schema(tokenizer)
    except ValueError:
        probe = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
        if not probe.startswith("<|im_start|>"):
            raise ValueError("TRL knows no response template for this model's chat template; set "
                             "tokenizer.response_template (transformers' response parsing) first") from None
        tokenizer.response_template = qwen3_template


def run_agent_rl(config: AgentRLConfig, callbacks: list | None = None) -> str:
    """Agentic RL of `config.model` on `config.tasks`; returns the output dir.

    Writes into `config.output_dir`: `checkpoint-N/`, the final model, `agent_rl_metrics.jsonl`,
    `agent_rewards.png`, `agent_tools.png`, `trainer_state.json` and last `agent_rl.json` (summary).

    Raises:
        ValueError: no tasks, a task without references, an unloadable model, a bad option.
        FileNotFoundError, RecordError: a missing or bad `references` file.
    """
    from datasets import Dataset

    tasks = load_agent_tasks(config.tasks, config.skip, config.n)  # bad input fails before the model loads
    supplied = load_references(config.references) if config.references else {}
    rows, environments = agent_rl_rows(tasks, supplied, config)
    resume = resume_point(config.resume_from_checkpoint, config.output_dir)
    model, tokenizer = load_student(config.model, seed=config.seed, model_init_kwargs=config.model_init_kwargs)
    model.config.use_cache = True
    ensure_tool_template(tokenizer)
    set_response_template(tokenizer)
    args = copy.copy(config)
    args.model_init_kwargs = None  # the policy is loaded already
    trainer = AgentRLTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, environments=environments, callbacks=callbacks,
                             peft_config=config.peft_config(model, tokenizer))
    out = Path(config.output_dir)
    print(f"agent rl: {len(rows)} tasks ({', '.join(sorted(environments))}), G={args.num_generations}, "
          f"α={args.alpha}, τ={args.tau}, {args.max_steps} steps -> {out}"
          + (f"; resuming from {resume}" if resume else ""))
    result = train_and_save(trainer, tokenizer, str(out), resume)
    if result is None:
        return str(out)
    history = read_metrics(trainer.metrics_path) if trainer.metrics_path.exists() else []
    plots = plot_agent_metrics(trainer.metrics_path, out) if history else []
    summary = {"model": config.model, "tasks": config.tasks, "skip": config.skip, "n": len(rows),
               "references": sum(len(json.loads(r["references"])) for r in rows), "resumed_from": resume,
               "global_step": trainer.state.global_step, "first": history[0] if history else None,
               "last": history[-1] if history else None, "plots": plots, "metrics": dict(result.metrics),
               "config": json.loads(config.to_json_string())}
    (out / "agent_rl.json").write_text(json.dumps(summary, indent=2) + "\n")
    last = history[-1] if history else {}
    write_model_card(out, config.model, "agent rl", {
        "stage": "agentic RL, multi-ground-truth reward (TRL GRPOTrainer)", "tasks": config.tasks,
        "steps": trainer.state.global_step, "group size G": args.num_generations, "α": args.alpha, "τ": args.tau,
        "last pass rate": last.get("pass_rate"), "last tool-error rate": last.get("tool_error_rate")})
    print(f"agent rl: {trainer.state.global_step} steps; pass rate {last.get('pass_rate')}, tool-error rate "
          f"{last.get('tool_error_rate')} -> {out}")
    return str(out)
