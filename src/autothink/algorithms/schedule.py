"""Which prompts and rollouts each Step-SRPO batch gets: the SRPO schedule and forced modes.

- `PromptSchedule` decides which prompts each generation batch gets: SRPO stage 1 (reasoning-
  heavy prompts only) for a number of batches, then the full mix in epochs, each epoch after
  the first keeping only the prompts that still carry a learning signal (`history_resample`).
  It is deterministic given the seed and its recorded decisions, so a resumed run replays the
  same order.
- `forced_modes` picks the rollouts of each group whose mode is forced (half on, half off).

Pure python: no torch, no trainer state.
"""
from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Hashable, Iterator, Mapping, Sequence

from autothink.format import MODES

logger = logging.getLogger(__name__)


def forced_modes(n_local: int, process_index: int, group_size: int, fraction: float, seed: int,
                 step: int) -> list[str | None]:
    """The forced mode ("on"/"off") or None of each local rollout.

    Rollouts are numbered globally (process_index · n_local + i, TRL's layout) and grouped by
    G = `group_size` in a row. In a group, the last n rollouts are forced, n = ⌊ρG⌋ plus one
    with probability frac(ρG); they alternate on/off from a random first mode. Randomness is
    seeded by (seed, step, group), so a resumed run draws the same.

    >>> forced_modes(8, 0, 4, 0.5, seed=0, step=0)[:4].count(None)
    2
    """
    out = []
    for i in range(n_local):
        g, pos = divmod(process_index * n_local + i, group_size)
        rng = random.Random(f"{seed}:{step}:{g}")
        whole, frac = divmod(fraction * group_size, 1.0)
        n = int(whole) + (rng.random() < frac)
        first = rng.randrange(2)
        k = pos - (group_size - n)  # index among the group's forced rollouts
        out.append(MODES[(first + k) % 2] if k >= 0 else None)
    return out


def history_resample(
    prompt_ids: Sequence[Hashable],
    rewards_per_prompt: Mapping[Hashable, Sequence],
    keep_unsolved: bool = True,
    tol: float = 1e-6,
) -> list:
    """SRPO history resampling: the prompts of the next epoch.

    After an epoch, a prompt whose every rollout got the same rewards gave zero advantage
    everywhere (no learning signal) and is dropped. "The same rewards" means every component
    equal across its rollouts (within `tol`): for Step-SRPO pass `(r_J, r_A)` per rollout, so
    a prompt is dropped only when all its r_J are identical AND all its r_A are identical
    (e.g. every rollout correct in the correct mode). As SRPO (Zhang et al. 2025) does, the
    all-failed prompts are kept by default, as they may become solvable later: an identical
    prompt is kept when its answer reward (the scalar, or the last component of a tuple) is 0;
    `keep_unsolved=False` drops them too.

    Args:
        prompt_ids: the epoch's prompts, in order.
        rewards_per_prompt: prompt id -> its rollouts' rewards (floats or tuples like
            (r_J, r_A)) collected over the epoch. Prompts absent from it (or with fewer than
            two rollouts) are kept: there is no evidence against them.
        keep_unsolved: keep prompts whose rollouts all scored 0 on the answer reward (SRPO's rule, the default).
        tol: absolute tolerance of "same".

    Returns:
        The kept prompt ids, in the order of `prompt_ids`.

    >>> history_resample(["a", "b", "c", "d"], {"a": [(1, 1), (1, 1)], "b": [(1, 1), (0, .5)], "d": [(1, 0), (1, 0)]})
    ['b', 'c', 'd']
    """
    kept = []
    for pid in prompt_ids:
        rows = [tuple(r) if isinstance(r, (tuple, list)) else (float(r),)
                for r in rewards_per_prompt.get(pid, ())]
        if len({len(r) for r in rows}) > 1:
            raise ValueError(f"prompt {pid!r}: rollouts have rewards of different lengths")
        same = len(rows) >= 2 and all(
            math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=tol)
            for r in rows[1:]
            for a, b in zip(r, rows[0])
        )
        unsolved = bool(rows) and abs(float(rows[0][-1])) <= tol
        if not same or (keep_unsolved and unsolved):
            kept.append(pid)
    return kept


def is_reasoning_heavy(row: dict, min_difficulty: float) -> bool:
    """SRPO stage-1 data: prompts whose prior label is think-on or whose difficulty is at least `min_difficulty`."""
    return row.get("prior_mode") == "on" or (row.get("difficulty") is not None and row["difficulty"] >= min_difficulty)


def _shuffled(items: Sequence, key: str, shuffle: bool) -> list:
    items = list(items)
    if shuffle:
        random.Random(key).shuffle(items)
    return items


class PromptSchedule:
    """Which prompts each generation batch gets (SRPO: two stages and history resampling).

    The stream of prompts is: `stage1_batches` batches drawn from the reasoning-heavy prompts
    (reshuffled on each pass), then epochs over the full mix. Epoch 0 of the mix holds every
    prompt; epoch e ≥ 1 holds the prompts of epoch e - 1 that `history_resample` keeps, judged
    on the most recent rollouts recorded for each prompt (`record`): a prompt whose unforced
    rollouts all got the same (r_J, r_A) gave no learning signal and is dropped (dropped
    prompts stay dropped). Forced rollouts are left out of that test: their mode is no choice,
    and both forced modes always differ in r_J, so they would keep every prompt alive.

    The epoch's prompt set is decided when the stream reaches it, which is ahead of training (the
    dataloader asks for the next batch one ahead: one batch in flight, measured in
    tests/training/test_step_srpo.py): the prompts of the previous epoch's last
    batches are not scored yet and are judged on their latest recorded rollouts (those of an
    earlier epoch), or kept when they have none. So for those prompts (at most the prefetched
    batches' worth) the decision comes one epoch late: a prompt that should go stays one epoch
    more, and none is dropped on rollouts it did not have. `in_flight[e - 1]` measures it on every
    run: the generation batches served but not yet scored when epoch e was decided (each holds
    `prompts_per_batch` such prompts; `rl.json` reports it). Decisions are recorded (`state_dict`)
    so that a resumed run replays the same order.

    Args:
        ids: prompt id of each dataset row (unique).
        stage1: per row, whether it belongs to the stage-1 (reasoning-heavy) set.
        prompts_per_batch: distinct prompts per generation batch (generation_batch_size / G).
        stage1_batches: generation batches of stage 1 (0 = no stage 1).
        seed: shuffling seed. shuffle: shuffle prompt order (per pass/epoch).
        resample: apply history resampling between mix epochs.
        keep_unsolved: keep prompts whose rollouts all failed (SRPO keeps them; the default).
    """

    def __init__(self, ids: Sequence[str], stage1: Sequence[bool], prompts_per_batch: int, stage1_batches: int = 0,
                 seed: int = 0, shuffle: bool = True, resample: bool = True, keep_unsolved: bool = True):
        if len(set(ids)) != len(ids):
            raise ValueError("prompt ids must be unique")
        if prompts_per_batch < 1:
            raise ValueError(f"prompts_per_batch must be >= 1, got {prompts_per_batch}")
        self.ids = list(ids)
        self.stage1 = [i for i, s in enumerate(stage1) if s]
        if stage1_batches and not self.stage1:
            raise ValueError("stage 1 is on but no prompt is reasoning-heavy (prior_mode 'on' or difficult enough)")
        self.prompts_per_batch, self.stage1_batches = prompts_per_batch, stage1_batches
        self.seed, self.shuffle, self.resample, self.keep_unsolved = seed, shuffle, resample, keep_unsolved
        self._index = {pid: i for i, pid in enumerate(self.ids)}
        self.epochs: list[list[str]] = []  # prompt ids of each mix epoch, as decided
        self.last_rewards: dict[str, list[list[float]]] = {}  # prompt id -> latest unforced (r_J, r_A) per rollout
        self.in_flight: list[int] = []  # per epoch e >= 1: batches served, not yet scored, when e was decided
        self.served = self.scored = 0  # generation batches

    def record(self, ids: Sequence[str], judge: Sequence[float], answer: Sequence[float],
               forced: Sequence[bool]) -> None:
        """Remember the rewards of one scored batch (per rollout); unforced rollouts only."""
        batch: dict[str, list[list[float]]] = {}
        for pid, rj, ra, f in zip(ids, judge, answer, forced):
            if not f:
                batch.setdefault(pid, []).append([float(rj), float(ra)])
        self.last_rewards.update(batch)
        self.scored += 1

    def epoch(self, e: int) -> list[str]:
        """Prompt ids of mix epoch `e` (decided once, on first use)."""
        while len(self.epochs) <= e:
            n = len(self.epochs)
            if n == 0 or not self.resample:
                kept = list(self.ids)
            else:
                self.in_flight.append(self.served - self.scored)
                kept = history_resample(self.epochs[n - 1], self.last_rewards, keep_unsolved=self.keep_unsolved)
                dropped = len(self.epochs[n - 1]) - len(kept)
                if not kept:
                    logger.warning("history resampling dropped every prompt after epoch %d; epoch %d uses all %d",
                                   n - 1, n, len(self.ids))
                    kept = list(self.ids)
                elif dropped:
                    logger.info("history resampling: epoch %d keeps %d prompts, drops %d", n, len(kept), dropped)
            self.epochs.append(kept)
        return self.epochs[e]

    def _stream(self) -> Iterator[int]:
        def stage1() -> Iterator[int]:
            for passes in itertools.count():
                yield from _shuffled(self.stage1, f"{self.seed}:stage1:{passes}", self.shuffle)

        yield from itertools.islice(stage1(), self.stage1_batches * self.prompts_per_batch)
        for e in itertools.count():
            yield from (self._index[pid] for pid in _shuffled(self.epoch(e), f"{self.seed}:mix:{e}", self.shuffle))

    def batches(self) -> Iterator[list[int]]:
        """Dataset row indices of each generation batch, forever."""
        stream = self._stream()
        self.served = 0  # a resumed run replays the batches it already scored
        while True:
            batch = [next(stream) for _ in range(self.prompts_per_batch)]
            self.served += 1
            yield batch

    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.ids) / self.prompts_per_batch)

    def state_dict(self) -> dict:
        return {"epochs": self.epochs, "last_rewards": self.last_rewards, "in_flight": self.in_flight,
                "scored": self.scored}

    def load_state_dict(self, state: dict) -> None:
        unknown = {pid for epoch in state.get("epochs", []) for pid in epoch} - set(self._index)
        if unknown:
            raise ValueError(f"the saved schedule names prompts that are not in the data: {sorted(unknown)[:5]}")
        self.epochs = [list(e) for e in state.get("epochs", [])]
        self.last_rewards = {k: [list(r) for r in v] for k, v in state.get("last_rewards", {}).items()}
        self.in_flight, self.scored = list(state.get("in_flight", [])), int(state.get("scored", 0))


