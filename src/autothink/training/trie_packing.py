"""Trie-packed training inside a Hugging Face `Trainer` (KAT-Coder §4.1): the glue, kept thin.

The algorithm is `autothink.algorithms.trie`. Here:

- `pack_dataset`: tokenised rows in TRL's SFT layout (`input_ids`, `labels` with -100 where
  there is no loss) become a dataset of prefix-trie packs of at most `token_budget` tokens. Rows
  are sorted by their tokens first, so rows that share a prefix (the turns of one agent run, the
  think-on and think-off answers of one prompt) are neighbours and land in one trie.
- `TrieTrainerMixin`: each micro-batch is a list of packs, each run in its own forward. The loss
  is Σ weight·NLL over the micro-batch divided by the total weight of the whole optimizer step,
  across gradient-accumulation steps and ranks (`_get_num_items_in_batch`), so it equals the
  unpacked batch's token-mean loss however the rows were packed (TRL issue #7206 is what a
  per-micro-batch normaliser does instead).
"""
from __future__ import annotations

import logging

import torch

from autothink.algorithms.trie import TriePack, check_trie_model, trie_logprobs, trie_pack

logger = logging.getLogger(__name__)

PACK_COLUMNS = ("input_ids", "position_ids", "parent", "weight", "end")


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pack_dataset(dataset, token_budget: int, chunk_budgets: int = 16):
    """A `datasets.Dataset` of trie packs (columns `PACK_COLUMNS`, plus `sequences` and `tokens` unpacked).

    Rows sorted by tokens are cut into chunks of about `chunk_budgets` packs' worth of distinct
    tokens, one trie per chunk, which bounds the packer's memory on a large dataset while keeping
    neighbours (the rows that share prefixes) together.

    Raises:
        ValueError: a row longer than `token_budget`.
    """
    from datasets import Dataset

    rows = sorted(((list(r["input_ids"]), [float(label != -100) for label in r["labels"]]) for r in dataset),
                  key=lambda r: r[0])
    chunks, distinct, previous = [[]], 0, []
    for ids, weights in rows:
        new = len(ids) - _common_prefix(ids, previous)  # sorted rows: the trie nodes this row adds
        if chunks[-1] and distinct + new > chunk_budgets * token_budget:
            chunks.append([])
            distinct, new = 0, len(ids)
        chunks[-1].append((ids, weights))
        distinct, previous = distinct + new, ids
    out = []
    for chunk in chunks:
        for pack in trie_pack([ids for ids, _ in chunk], [w for _, w in chunk], token_budget):
            row = {name: getattr(pack, name).tolist() for name in PACK_COLUMNS}
            row["sequences"] = len(pack.token_index)
            row["tokens"] = sum(len(chunk[s][0]) for s in pack.token_index)
            out.append(row)
    return Dataset.from_list(out)


def packing_ratio(packed) -> dict:
    """R = tokens unpacked / tokens in the tries: the most a trie can save in compute."""
    trie_tokens = sum(len(ids) for ids in packed["input_ids"])
    unpacked = sum(packed["tokens"])
    return {"packs": len(packed), "sequences": sum(packed["sequences"]), "unpacked_tokens": unpacked,
            "trie_tokens": trie_tokens, "ratio": unpacked / max(trie_tokens, 1)}


def collate_packs(rows: list[dict]) -> dict:
    """A micro-batch: the packs as tensors, kept apart (each gets its own forward)."""
    return {"packs": [{name: torch.tensor(row[name], dtype=torch.float32 if name == "weight" else torch.long)
                       for name in PACK_COLUMNS} for row in rows]}


class TrieTrainerMixin:
    """Loss, normaliser and eval step of a `Trainer` whose batches are `collate_packs` micro-batches.

    Put it before the Trainer class (`class T(TrieTrainerMixin, trl.SFTTrainer)`) and give the
    trainer `pack_dataset` datasets, `collate_packs` and `remove_unused_columns=False`.
    """

    loss_is_scaled_for_ga = True  # the loss is divided by the whole step's weight (transformers' Trainer reads it)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor:
        count = sum(p["weight"].sum() for batch in batch_samples for p in batch["packs"]).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        packs = [TriePack(**p) for p in inputs["packs"]]
        total = 0.0
        for pack in packs:
            logp, _ = trie_logprobs(model, pack, nodes=pack.weight != 0)
            total = total - (pack.weight.to(logp) * logp).sum()
        local = sum(p.weight.sum() for p in packs)
        loss = total / torch.as_tensor(local if num_items_in_batch is None else num_items_in_batch).clamp(min=1)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices and self.args.world_size > 1:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the normaliser is global
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


def use_trie_packing(trainer, token_budget: int) -> dict:
    """Switch a constructed TRL trainer (a `TrieTrainerMixin` one, with TRL's packing off) to trie packs.

    Returns the training set's `packing_ratio`.
    """
    check_trie_model(trainer.model)
    trainer.train_dataset = pack_dataset(trainer.train_dataset, token_budget)
    if trainer.eval_dataset is not None:
        trainer.eval_dataset = pack_dataset(trainer.eval_dataset, token_budget)
    trainer.data_collator = collate_packs
    trainer.args.remove_unused_columns = False
    stats = packing_ratio(trainer.train_dataset)
    logger.info("trie packing: %(sequences)d sequences, %(unpacked_tokens)d tokens -> %(trie_tokens)d in "
                "%(packs)d packs (R = %(ratio).2f)", stats)
    return stats
