"""What the two GRPOTrainer subclasses (`rl`'s Step-SRPO, `agent rl`) share, mixed in before `trl.GRPOTrainer`.

- `_get_per_token_logps_and_entropies`, with `args.packing == "trie"` only: every log-prob pass
  (old, reference, policy, entropy) runs the rows as prefix tries (`algorithms.trie_row_logprobs`),
  so each group's shared prompt is computed once, forward and backward; the values are TRL's own
  (same positions, same temperature), packs at most TRL's micro-batch of tokens.
- `_rollout_entropy`: each rollout's mean token entropy under the current policy (μ of
  `rescale_advantages`; one extra forward pass per batch).
- `_generation_limits`: TRL's generation settings for one call (at most N new tokens, extra stop
  ids), for transformers, continuous batching and vLLM alike.

`train_and_save` is the run both commands share: train (a fresh run first clears the trainer's
metrics JSONL), save the model, the Trainer state and the train metrics.
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch

from autothink.algorithms.advantages import sample_entropy
from autothink.algorithms.trie import check_trie_model, trie_row_logprobs
from autothink.training.args import save_trained

PACKINGS = ("none", "trie")


def check_packing(value: str) -> None:
    if value not in PACKINGS:
        raise ValueError(f"packing must be none or trie, got {value!r}")


def train_and_save(trainer, tokenizer, output_dir: str, resume: str | None):
    """Train from `resume` (None: a fresh run, whose old `trainer.metrics_path` is removed) and save the model,
    the state and the metrics into `output_dir`. Returns the train result on the main process, else None
    (under torchrun / accelerate launch one process writes the summary)."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    if resume is None and trainer.is_world_process_zero():
        trainer.metrics_path.unlink(missing_ok=True)
    result = trainer.train(resume_from_checkpoint=resume)
    save_trained(trainer, tokenizer, output_dir)
    trainer.save_state()
    trainer.save_metrics("train", result.metrics)
    return result if trainer.is_world_process_zero() else None


class GRPOParts:
    """Mixin for `trl.GRPOTrainer` subclasses whose args have `packing` (see the module docstring)."""

    def _check_packing(self) -> None:
        if self.args.packing == "trie":
            check_trie_model(self.model)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **multimodal):
        if self.args.packing != "trie":
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss,
                **multimodal)
        if compute_aux_loss or any(v is not None for v in multimodal.values()):
            raise ValueError("--packing trie runs text-only models without a router loss; set --packing none")
        budget = (batch_size or input_ids.size(0)) * input_ids.size(1)  # TRL's micro-batch, in tokens
        with self.accelerator.autocast():
            logps, entropies = trie_row_logprobs(model, input_ids, attention_mask, logits_to_keep, budget,
                                                 self.temperature, compute_entropy)
        return logps, entropies, None

    def _rollout_entropy(self, output: dict, loss_mask: torch.Tensor) -> torch.Tensor:
        """Mean token entropy [B] of each local rollout over `loss_mask`, under the current policy."""
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        with torch.no_grad():
            _, entropy, _ = self._get_per_token_logps_and_entropies(
                self.model, ids, mask, output["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size, compute_entropy=True)
        return sample_entropy(entropy, loss_mask)

    @contextlib.contextmanager
    def _generation_limits(self, max_tokens: int, stop_ids: list[int] = ()):
        """TRL's generation settings for one call: at most `max_tokens` new tokens, also stopping at `stop_ids`."""
        if self.use_vllm:
            vllm, saved = self.vllm_generation, (self.vllm_generation.max_completion_length,
                                                 self.vllm_generation.generation_kwargs)
            vllm.max_completion_length = max_tokens
            if stop_ids:
                vllm.generation_kwargs = {**saved[1],
                                          "stop_token_ids": [*(saved[1].get("stop_token_ids") or []), *stop_ids]}
            try:
                yield
            finally:
                vllm.max_completion_length, vllm.generation_kwargs = saved
            return
        saved = self.generation_config, self.generation_kwargs, self.eos_token_ids
        eos = [*self.eos_token_ids, *stop_ids]
        self.generation_config = copy.deepcopy(saved[0])
        self.generation_config.max_new_tokens, self.generation_config.eos_token_id = max_tokens, eos
        self.generation_kwargs = {**saved[1], "max_new_tokens": max_tokens, "eos_token_id": eos}
        self.eos_token_ids = eos
        try:
            yield
        finally:
            self.generation_config, self.generation_kwargs, self.eos_token_ids = saved
