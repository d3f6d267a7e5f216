"""What `autothink rl` and `autothink agent rl` log: batch metrics, their JSONL and its plots.

Metrics per generation batch (train): think-on rate (unforced rollouts that chose a mode),
judge accuracy (unforced, mode == m*), accuracy overall and per mode, tokens per segment
(judge/think/answer, unforced; prefill not counted), format-error rate, per-domain breakdown.
The trainer sends them to the Trainer logs as `srpo/...` (so `report_to` gets them) and appends
one row per batch to `rl_metrics.jsonl`; `think_on_rate.png` and `tokens.png` are drawn at the end.
`agent rl` logs `agent_metrics` (as `agent/...`) to `agent_rl_metrics.jsonl` and draws
`agent_rewards.png` and `agent_tools.png`.
"""
from __future__ import annotations

import math
from pathlib import Path

from autothink.records.jsonl import load_done, read_jsonl, write_jsonl

METRICS_FILE = "rl_metrics.jsonl"
AGENT_METRICS_FILE = "agent_rl_metrics.jsonl"


def _mean(values) -> float | None:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else None


def srpo_metrics(modes, forced, well_formed, correct, correct_mode, judge_reward, answer_reward, domains,
                 lengths: dict[str, list[int]]) -> dict[str, float | None]:
    """Step-SRPO metrics of one batch (every argument per rollout); None where undefined.

    think_on_rate: unforced rollouts with a mode, share "on". judge_accuracy: unforced rollouts,
    share with a valid mode equal to m*. accuracy[_on|_off]: verifier pass rate (of rollouts in
    that mode, forced included); accuracy_well_formed: the pass rate of the well-formed rollouts
    only (a malformed reply gets no reward, so the raw rate alone overstates what is rewarded).
    tokens_*: mean generated tokens per segment, unforced rollouts.
    """
    n = len(modes)
    free = [i for i in range(n) if not forced[i]]
    decided = [i for i in free if modes[i] is not None]
    decided_set = set(decided)
    m = {
        "think_on_rate": _mean(modes[i] == "on" for i in decided),
        "judge_accuracy": _mean(judge_reward[i] for i in free),
        "accuracy": _mean(correct),
        "accuracy_well_formed": _mean(correct[i] for i in range(n) if well_formed[i]),
        "accuracy_on": _mean(correct[i] for i in range(n) if modes[i] == "on"),
        "accuracy_off": _mean(correct[i] for i in range(n) if modes[i] == "off"),
        "format_error_rate": _mean(not w for w in well_formed),
        "mode_missing_rate": _mean(modes[i] is None for i in free),
        "forced_rate": _mean(forced),
        "correct_mode_on_rate": _mean(c == "on" for c in correct_mode),
        "judge_reward": _mean(judge_reward),
        "answer_reward": _mean(answer_reward),
        **{f"tokens_{k}": _mean(lengths[k][i] for i in free) for k in ("judge", "think", "answer")},
        "tokens_total": _mean(sum(lengths[k][i] for k in lengths) for i in range(n)),
    }
    for d in sorted(set(domains)):
        rows = [i for i in range(n) if domains[i] == d]
        m[f"domain/{d}/accuracy"] = _mean(correct[i] for i in rows)
        m[f"domain/{d}/think_on_rate"] = _mean(modes[i] == "on" for i in rows if i in decided_set)
        m[f"domain/{d}/judge_accuracy"] = _mean(judge_reward[i] for i in rows if not forced[i])
    return m


def agent_metrics(episodes: list[dict], tests: list[float], discrepancies: list[float],
                  alpha: float) -> dict[str, float | int]:
    """`agent rl` metrics of one batch; `episodes` are per-rollout records (turns, tool_calls, tool_errors,
    tokens, resamples, end), `tests` the rule-based test results, `discrepancies` those to the closest reference.

    reward = test - alpha * discrepancy (the sum TRL forms from the two reward columns); pass_rate: tests == 1;
    tool_error_rate: failed calls / calls; terminated: rollouts cut for drift after their last resample;
    corrected: those continued with a reference's calls instead (trajectory correction).
    """
    n = len(episodes)
    calls = sum(e["tool_calls"] for e in episodes)
    ends = {}
    for e in episodes:
        ends[e["end"]] = ends.get(e["end"], 0) + 1
    return {
        "reward": _mean(t - alpha * d for t, d in zip(tests, discrepancies)),
        "test_reward": _mean(tests), "pass_rate": _mean(t == 1.0 for t in tests),
        "discrepancy": _mean(discrepancies),
        "tool_calls": _mean(e["tool_calls"] for e in episodes),
        "tool_error_rate": sum(e["tool_errors"] for e in episodes) / calls if calls else None,
        "turns": _mean(e["turns"] for e in episodes), "tokens": _mean(e["tokens"] for e in episodes),
        "resampled": sum(e["resamples"] for e in episodes), "terminated": ends.get("terminated", 0),
        "corrected": ends.get("corrected", 0),
        **{f"end/{k}": v / n for k, v in sorted(ends.items())},
    }


def plot_agent_metrics(metrics_path: str | Path, output_dir: str | Path) -> list[str]:
    """Draw `agent_rewards.png` (reward, test reward, pass rate, discrepancy) and `agent_tools.png` (tool-error
    rate, turns, resampled and terminated rollouts) over steps."""
    return _plot(read_metrics(metrics_path), output_dir, (
        ("agent_rewards.png", ("reward", "test_reward", "pass_rate", "discrepancy"), "per rollout"),
        ("agent_tools.png", ("tool_error_rate", "turns", "resampled", "terminated"), "per batch")))


# --------------------------------------------------------------------------- the trainer


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of `rl_metrics.jsonl`, one per step (the last row of a step wins), by step."""
    rows = load_done(path, key="step")
    return [rows[k] for k in sorted(rows)]


def drop_rows_from(path: str | Path, step: int) -> None:
    """Cut the rows of steps >= `step` (a resumed run writes them again)."""
    if Path(path).exists():
        write_jsonl(path, [row for _, row in read_jsonl(path) if row["step"] < step])


def plot_rl_metrics(metrics_path: str | Path, output_dir: str | Path) -> list[str]:
    """Draw `think_on_rate.png` (with judge accuracy and accuracy) and `tokens.png` (per segment) over steps."""
    return _plot(read_metrics(metrics_path), output_dir, (
        ("think_on_rate.png", ("think_on_rate", "judge_accuracy", "accuracy"), "rate"),
        ("tokens.png", ("tokens_judge", "tokens_think", "tokens_answer"), "tokens per rollout")))


def _plot(rows: list[dict], output_dir: str | Path, figures) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    stage1_end = max((r["step"] for r in rows if r.get("stage") == 1), default=None)
    paths = []
    for name, keys, ylabel in figures:
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in keys:
            ax.plot(steps, [math.nan if r.get(key) is None else r[key] for r in rows], marker="o", ms=3,
                    label=key.replace("tokens_", ""))
        if stage1_end is not None:
            ax.axvline(stage1_end + 0.5, color="grey", ls="--", lw=1, label="end of stage 1")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if ylabel == "rate":
            ax.set_ylim(-0.02, 1.02)
        ax.legend()
        ax.set_title(name[:-4].replace("_", " "))
        fig.tight_layout()
        path = Path(output_dir) / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(str(path))
    return paths
