"""Step-SRPO data: the RL prompts file, the verifier reward, and the SRPO prompt schedule.

- `read_rl_prompts` reads `rl_prompts.jsonl` (`autothink data coldstart` writes it): rows
  `{"id", "prompt": [messages], "verifier", "reference": <JSON-encoded string>, "difficulty",
  "domain", "prior_mode"}`. A row without a verifier or reference, or with a reference that is
  not JSON, is an error naming the file, the line and the id (nothing is skipped).
- `verifier_reward` is a plain TRL reward function (`f(completions, **columns) -> list[float]`)
  over `autothink.verify`: 1.0 when the completion's answer passes its verifier.
- `PromptSchedule` decides which prompts each generation batch gets: SRPO stage 1 (reasoning-
  heavy prompts only) for a number of batches, then the full mix in epochs, each epoch after
  the first keeping only the prompts that still carry a learning signal (history resampling).
  `SRPOSampler` turns it into the index stream TRL's dataloader expects (each prompt repeated
  G times, each batch repeated for `num_iterations × steps_per_generation` micro-steps), like
  TRL's `RepeatSampler`. The schedule is deterministic given the seed and its recorded
  decisions, so a resumed run replays the same order.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import Sampler

from autothink.algorithms import history_resample
from autothink.jsonl import RecordError, read_jsonl

logger = logging.getLogger(__name__)

MODES = ("on", "off")


# --------------------------------------------------------------------------- the prompts file


def _check_record(record: dict) -> str | None:
    """What is wrong with one RL prompt row, or None when it is usable."""
    from autothink.verify import VERIFIERS

    rid = record.get("id")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid) == "":
        return "`id` must be a non-empty string"
    prompt = record.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        return "`prompt` must be a non-empty list of {role, content} messages (or a string)"
    for i, message in enumerate(prompt):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            return f"prompt[{i}] must be an object with string `role` and `content`"
    if not any(m["role"] == "user" for m in prompt):
        return "`prompt` has no user message"
    if prompt[-1]["role"] == "assistant":
        return "`prompt` ends with an assistant message; RL prompts end with the user's turn"
    if record.get("verifier") is None:
        return "no `verifier`: RL prompts need a verifier kind and a reference to be rewarded"
    if record["verifier"] not in VERIFIERS:
        return f"unknown `verifier` {record['verifier']!r}; known kinds: {', '.join(sorted(VERIFIERS))}"
    if record.get("reference") is None:
        return "no `reference`: RL prompts need a reference answer for their verifier"
    if isinstance(record["reference"], str):
        try:
            json.loads(record["reference"])
        except json.JSONDecodeError:
            return (f"`reference` {record['reference'][:60]!r} is not JSON-encoded; write json.dumps(reference) "
                    "(as `autothink data coldstart` does), e.g. \"\\\"42\\\"\" for the string 42")
    difficulty = record.get("difficulty")
    if difficulty is not None and (isinstance(difficulty, bool) or not isinstance(difficulty, (int, float))):
        return f"`difficulty` must be a number or null, got {difficulty!r}"
    if record.get("prior_mode") not in (*MODES, None):
        return f"`prior_mode` must be 'on', 'off' or null, got {record.get('prior_mode')!r}"
    if record.get("domain") is not None and not isinstance(record["domain"], str):
        return f"`domain` must be a string or null, got {record['domain']!r}"
    return None


def read_rl_prompts(path: str | os.PathLike) -> list[dict]:
    """Rows of an RL prompts file, checked and normalised.

    Returns:
        `[{"id": str, "prompt": [messages], "verifier": str, "reference": str (JSON),
        "difficulty": float | None, "domain": str, "prior_mode": "on" | "off" | None}]` in
        file order (the reference stays JSON-encoded: one string column, whatever its kind).

    Raises:
        FileNotFoundError: no such file.
        RecordError (a ValueError): invalid JSON or a bad row; names the file, the line and
            the record id of the first bad row, what is wrong, and how many more there are.
        ValueError: no rows.
    """
    rows, bad, seen = [], [], {}
    for line, record in read_jsonl(path):
        problem = _check_record(record)
        rid = str(record.get("id"))
        if problem is None and rid in seen:
            problem = f"duplicate id (first at line {seen[rid]})"
        if problem:
            bad.append((line, record.get("id"), problem))
            continue
        seen[rid] = line
        prompt = record["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        reference = record["reference"]
        rows.append({
            "id": rid,
            "prompt": [{"role": m["role"], "content": m["content"]} for m in prompt],
            "verifier": record["verifier"],
            "reference": reference if isinstance(reference, str) else json.dumps(reference),
            "difficulty": None if record.get("difficulty") is None else float(record["difficulty"]),
            "domain": record.get("domain") or "unknown",
            "prior_mode": record.get("prior_mode"),
        })
    if bad:
        line, rid, problem = bad[0]
        more = (f" ({len(bad) - 1} more bad records, at lines {', '.join(str(b[0]) for b in bad[1:6])}"
                f"{', ...' if len(bad) > 6 else ''})") if len(bad) > 1 else ""
        raise RecordError(path, line, f"record {rid!r}: {problem}{more}")
    if not rows:
        raise ValueError(f"{path}: no RL prompts")
    return rows


def is_reasoning_heavy(row: dict, min_difficulty: float) -> bool:
    """SRPO stage-1 data: prompts whose prior label is think-on or whose difficulty is at least `min_difficulty`."""
    return row.get("prior_mode") == "on" or (row.get("difficulty") is not None and row["difficulty"] >= min_difficulty)


# --------------------------------------------------------------------------- the reward


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or a conversational `[{"role": "assistant", "content"}]`."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content") or "" for m in completion if isinstance(m, dict))
    return str(completion)


def verifier_reward(completions: list, verifier: list[str], reference: list[str], **kwargs) -> list[float]:
    """TRL reward function: 1.0 when `autothink.verify` passes the completion, else 0.0.

    Dataset columns arrive as keyword arguments (TRL): `verifier` (the kind) and `reference`
    (JSON-encoded) per completion; the answer is extracted from the completion (its `<answer>`
    segment). A verifier that raises (a broken reference) scores 0 with a warning naming the
    record, and is counted in the `verify_errors` metric when TRL passes `log_metric`.

    >>> verifier_reward(["<answer>B</answer>", "<answer>C</answer>"], ["choice"] * 2, ['"B"'] * 2)
    [1.0, 0.0]
    """
    from autothink.verify import verify

    ids = kwargs.get("id") or [None] * len(completions)
    scores, errors = [], 0
    for completion, kind, ref, rid in zip(completions, verifier, reference, ids):
        try:
            verdict = verify(kind, completion_text(completion), json.loads(ref) if isinstance(ref, str) else ref)
            scores.append(float(verdict.passed))
        except Exception as err:  # noqa: BLE001 - a bad reference must not kill a long run; it is reported instead
            logger.warning("verifier %r failed on record %r: %s: %s", kind, rid, err.__class__.__name__, err)
            scores.append(0.0)
            errors += 1
    if "log_metric" in kwargs:
        kwargs["log_metric"]("srpo/verify_errors", float(errors))
    return scores


# --------------------------------------------------------------------------- the SRPO schedule


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

    The epoch's prompt set is decided when the stream reaches it, which is one or more batches
    ahead of training (the dataloader prefetches): prompts of the previous epoch's last batches
    may have no recorded rollouts yet and are then kept. Decisions are recorded (`state_dict`)
    so that a resumed run replays the same order.

    Args:
        ids: prompt id of each dataset row (unique).
        stage1: per row, whether it belongs to the stage-1 (reasoning-heavy) set.
        prompts_per_batch: distinct prompts per generation batch (generation_batch_size / G).
        stage1_batches: generation batches of stage 1 (0 = no stage 1).
        seed: shuffling seed. shuffle: shuffle prompt order (per pass/epoch).
        resample: apply history resampling between mix epochs.
        keep_unsolved: keep prompts whose rollouts all failed (SRPO keeps them).
    """

    def __init__(self, ids: Sequence[str], stage1: Sequence[bool], prompts_per_batch: int, stage1_batches: int = 0,
                 seed: int = 0, shuffle: bool = True, resample: bool = True, keep_unsolved: bool = False):
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

    def record(self, ids: Sequence[str], judge: Sequence[float], answer: Sequence[float],
               forced: Sequence[bool]) -> None:
        """Remember the rewards of one scored batch (per rollout); unforced rollouts only."""
        batch: dict[str, list[list[float]]] = {}
        for pid, rj, ra, f in zip(ids, judge, answer, forced):
            if not f:
                batch.setdefault(pid, []).append([float(rj), float(ra)])
        self.last_rewards.update(batch)

    def epoch(self, e: int) -> list[str]:
        """Prompt ids of mix epoch `e` (decided once, on first use)."""
        while len(self.epochs) <= e:
            n = len(self.epochs)
            if n == 0 or not self.resample:
                kept = list(self.ids)
            else:
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
        while True:
            yield [next(stream) for _ in range(self.prompts_per_batch)]

    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.ids) / self.prompts_per_batch)

    def state_dict(self) -> dict:
        return {"epochs": self.epochs, "last_rewards": self.last_rewards}

    def load_state_dict(self, state: dict) -> None:
        unknown = {pid for epoch in state.get("epochs", []) for pid in epoch} - set(self._index)
        if unknown:
            raise ValueError(f"the saved schedule names prompts that are not in the data: {sorted(unknown)[:5]}")
        self.epochs = [list(e) for e in state.get("epochs", [])]
        self.last_rewards = {k: [list(r) for r in v] for k, v in state.get("last_rewards", {}).items()}


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
