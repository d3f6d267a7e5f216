"""`autothink.rl_data`: the RL prompts file (bad rows named), the verifier reward, the SRPO schedule and sampler."""
import json
from itertools import chain

import pytest

from autothink.algorithms.rewards import verifier_reward
from autothink.algorithms.schedule import PromptSchedule
from autothink.records.jsonl import RecordError, write_jsonl
from autothink.records.rl_prompts import read_rl_prompts
from autothink.tasks import load_suite
from autothink.training.step_srpo import SRPOSampler
from helpers import rl_prompt_rows

TASKS = load_suite("arithmetic", n=4)


def _rows():
    return rl_prompt_rows(TASKS)


def test_read_rl_prompts_keeps_every_row_and_normalises(tmp_path):
    rows = _rows()
    rows[0] |= {"prompt": "What is 2 + 2?", "reference": {"dataset": "x", "entry": {}}, "domain": None}
    del rows[1]["prior_mode"], rows[1]["difficulty"]
    write_jsonl(tmp_path / "rl_prompts.jsonl", rows)
    got = read_rl_prompts(tmp_path / "rl_prompts.jsonl")
    assert [r["id"] for r in got] == [t.id for t in TASKS]
    assert got[0]["prompt"] == [{"role": "user", "content": "What is 2 + 2?"}] and got[0]["domain"] == "unknown"
    assert json.loads(got[0]["reference"]) == {"dataset": "x", "entry": {}}  # a JSON value is encoded once
    assert got[1]["prior_mode"] is None and got[1]["difficulty"] is None
    assert got[2] == {**rows[2], "difficulty": 3.0, "directive": None}


def _schedule(**kw):
    ids = [f"p{i}" for i in range(6)]
    return PromptSchedule(ids, [i < 2 for i in range(6)], prompts_per_batch=2, **({"stage1_batches": 3} | kw))


def test_schedule_runs_stage1_then_full_epochs_and_drops_prompts_without_signal():
    s = _schedule()
    batches = s.batches()
    stage1 = [next(batches) for _ in range(3)]
    assert all(set(b) <= {0, 1} for b in stage1) and sorted(chain(*stage1)) == [0, 0, 0, 1, 1, 1]
    epoch0 = [next(batches) for _ in range(3)]
    assert sorted(chain(*epoch0)) == list(range(6))
    # p0: unforced rollouts all alike (dropped); p1: differ; p2: alike but a forced rollout differs (dropped: forced
    # rollouts do not count); p3: a single unforced rollout (no evidence, kept); p4, p5: never scored (kept).
    s.record(["p0"] * 3 + ["p1"] * 2 + ["p2"] * 3 + ["p3"] * 2, [1, 1, 1, 1, 0, 1, 1, 0, 1, 0],
             [1, 1, 1, 1, 0, 1, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0, 0, 1, 0, 1])
    epoch1 = sorted(chain(*_take(batches, 2)))
    assert epoch1 == [1, 3, 4, 5] and s.epochs[1] == ["p1", "p3", "p4", "p5"]
    # Epoch 1 was decided when its first batch was asked for: 6 batches served, 1 scored (measured, in rl.json).
    assert s.in_flight == [5]

    replay = _schedule()  # a resumed run: the recorded decisions give the same stream
    replay.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert _take(replay.batches(), 8) == stage1 + epoch0 + _take(s.batches(), 8)[6:]
    assert replay.in_flight == s.in_flight and replay.scored == s.scored == 1

    with pytest.raises(ValueError, match="reasoning-heavy"):
        PromptSchedule(["a"], [False], 1, stage1_batches=1)


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_sampler_has_trl_repeat_layout():
    s = PromptSchedule(["a", "b", "c", "d"], [False] * 4, prompts_per_batch=2, shuffle=False)
    sampler = SRPOSampler(s, group_size=3, repeat_count=2, num_batches=2)
    assert list(sampler) == [0, 0, 0, 1, 1, 1] * 2 + [2, 2, 2, 3, 3, 3] * 2 and len(sampler) == 24


def test_verifier_reward_scores_every_kind():
    gold = TASKS[0].reference["entry"]["answer"]
    completions = [[{"role": "assistant", "content": f"<judge>x</judge><think_off><answer>{gold}</answer>"}],
                   "<answer>12345</answer>", "<answer>B</answer>", "<answer>4</answer>"]
    kinds = ["gym", "gym", "choice", "math"]
    refs = [json.dumps(TASKS[0].reference)] * 2 + ['"B"', '"4"']
    assert verifier_reward(completions, kinds, refs) == [1.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("change, message", [
    ({"reference": None}, "no `reference`"),
    ({"verifier": None}, "no `verifier`"),
    ({"verifier": "astrology"}, "unknown `verifier` 'astrology'"),
    ({"reference": "x = 5"}, "not JSON-encoded"),
    ({"prompt": []}, "field 'prompt' must be"),
    ({"prior_mode": "maybe"}, "`prior_mode`"),
    ({"directive": "think"}, "`directive` must be"),
    ({"id": "arithmetic/d1/s0/0"}, "duplicate id"),
])
def test_bad_rows_are_named_with_file_line_and_id(tmp_path, change, message):
    rows = _rows()
    rows[2] = {k: v for k, v in (rows[2] | change).items() if v is not None}
    path = tmp_path / "rl_prompts.jsonl"
    write_jsonl(path, rows)
    with pytest.raises(RecordError, match=message) as err:
        read_rl_prompts(path)
    assert str(err.value).startswith(f"{path}:3: record {rows[2].get('id')!r}")


