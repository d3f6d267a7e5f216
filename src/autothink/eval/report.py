"""What `autothink eval` shows: a text table, PNG plots and one self-contained HTML report."""
from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from autothink.format import THINKING

MODE_COLORS = {"auto": "#4C72B0", "on": "#C44E52", "off": "#55A868"}
# (metrics key, column title, format) of every table.
COLUMNS = (
    ("n", "n", "{:d}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("accuracy_ci", "accuracy 95% CI", "[{0[0]:.2f}, {0[1]:.2f}]"),
    ("accuracy_well_formed", "acc. (well-formed)", "{:.3f}"),
    ("think_on_rate", "think-on rate", "{:.3f}"),
    ("format_rate", "well-formed", "{:.3f}"),
    ("truncated_rate", "truncated", "{:.3f}"),
    ("judge_tokens", "judge tok", "{:.1f}"),
    ("think_tokens", "think tok", "{:.1f}"),
    ("answer_tokens", "answer tok", "{:.1f}"),
    ("total_tokens", "total tok", "{:.1f}"),
    ("tokens_per_correct", "tok / correct", "{:.1f}"),
    ("overthinking", "overthinking", "{:.3f}"),
    ("directive_obedience", "obedience", "{:.3f}"),
    ("near_miss_agreement", "near-miss agr.", "{:.3f}"),
    ("tool_error_rate", "tool errors", "{:.3f}"),
    ("turns", "turns", "{:.2f}"),
)


def _cell(metrics: dict, key: str, fmt: str) -> str:
    return "-" if metrics.get(key) is None else fmt.format(metrics[key])  # runs from before a metric existed: -


def _rows(metrics: dict) -> list[tuple[str, str, dict]]:
    """(suite, mode, metrics) for every suite and then the pooled "all" rows."""
    groups = [*metrics["suites"].items(), ("all", metrics["all"])]
    return [(suite, mode, m) for suite, by_mode in groups for mode, m in by_mode.items()]


def format_table(metrics: dict) -> str:
    """A plain-text table: one line per suite and mode."""
    width = max(len(s) for s, _, _ in _rows(metrics)) + 2
    cols = [max(14, len(title) + 2) for _, title, _ in COLUMNS]
    lines = [f"model: {metrics['model']}   think budget: {metrics['think_budget']}",
             f"{'suite':{width}s}{'mode':6s}" + "".join(f"{title:>{w}s}" for (_, title, _), w in zip(COLUMNS, cols))]
    for suite, mode, m in _rows(metrics):
        lines.append(f"{suite:{width}s}{mode:6s}" + "".join(
            f"{_cell(m, k, f):>{w}s}" for (k, _, f), w in zip(COLUMNS, cols)))
    return "\n".join(lines)


COMPARED = (("accuracy", "accuracy", "{:.3f}"), ("think_on_rate", "think-on", "{:.3f}"),
            ("format_rate", "well-formed", "{:.3f}"), ("think_tokens", "think tok", "{:.1f}"),
            ("total_tokens", "total tok", "{:.1f}"))


def format_comparison(runs: dict[str, dict]) -> str:
    """Several eval runs side by side (e.g. before and after RL): per suite and mode, each
    compared metric once per run, numbered [1], [2], ... in the order given; `-` where a run
    lacks that suite or mode."""
    keys = list(dict.fromkeys((s, mode) for m in runs.values() for s, mode, _ in _rows(m)))
    width = max(len(s) for s, _ in keys) + 2
    lines = [f"[{i}] {label} (model {m['model']})" for i, (label, m) in enumerate(runs.items(), 1)]
    lines.append(f"{'suite':{width}s}{'mode':6s}"
                 + "".join(f"{f'{title} [{i}]':>16s}" for _, title, _ in COMPARED for i in range(1, len(runs) + 1)))
    for suite, mode in keys:
        by_run = [(m["all"] if suite == "all" else m["suites"].get(suite, {})).get(mode) for m in runs.values()]
        lines.append(f"{suite:{width}s}{mode:6s}" + "".join(
            f"{'-' if r is None else _cell(r, k, f):>16s}" for k, _, f in COMPARED for r in by_run))
    return "\n".join(lines)


def write_plots(metrics: dict, output_dir: str | Path, max_tokens: int | None = None) -> list[Path]:
    """`think_tokens.png` (the think-on rate of the modes the model chooses, with 95% intervals, and
    mean tokens per suite and mode) and `accuracy_tokens.png` (accuracy with 95% intervals against
    mean tokens; a line joins each suite's modes). Forced modes are left out of the think-on panel
    (their rate is 1 or 0 by construction); `max_tokens`, the cap of a reply, is drawn on both token
    axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(output_dir)
    suites = [*metrics["suites"], "all"]
    by = {**metrics["suites"], "all": metrics["all"]}
    modes = list(metrics["all"])

    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(suites)), 4))
    free = [m for m in modes if m == "auto"]
    for ax, key, title, shown in ((axes[0], "think_on_rate", "think-on rate (the model's choice)", free),
                                  (axes[1], "total_tokens", "mean tokens", modes)):
        step = 0.8 / max(len(shown), 1)
        for j, mode in enumerate(shown):
            xs = [i + (j - (len(shown) - 1) / 2) * step for i in range(len(suites))]
            values = [by[s][mode][key] for s in suites]
            errors = None
            if key == "think_on_rate" and all(by[s][mode].get("think_on_rate_ci") for s in suites):
                errors = [[v - by[s][mode]["think_on_rate_ci"][0] for s, v in zip(suites, values)],
                          [by[s][mode]["think_on_rate_ci"][1] - v for s, v in zip(suites, values)]]
            ax.bar(xs, values, step, yerr=errors, capsize=3, label=mode, color=MODE_COLORS[mode])
        ax.set_xticks(range(len(suites)), suites, rotation=20, ha="right")
        ax.set_title(f"{title} per benchmark")
    if not free:
        axes[0].text(0.5, 0.5, "no auto mode in this run:\nforced modes' rates are 1 and 0 by construction",
                     ha="center", va="center", transform=axes[0].transAxes, fontsize=9)
    if max_tokens:
        axes[1].axhline(max_tokens, color="#555555", ls="--", lw=1, label=f"max_tokens cap ({max_tokens})")
    axes[0].set_ylim(0, 1.05)
    axes[1].legend(title="mode", fontsize=8)
    fig.tight_layout()
    bars = out / "think_tokens.png"
    fig.savefig(bars, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for suite in suites:
        points = sorted((by[suite][m]["total_tokens"], by[suite][m]["accuracy"]) for m in modes)
        ax.plot(*zip(*points), color="#999999", lw=2 if suite == "all" else 0.8, zorder=1)
        ax.annotate(suite, points[-1], fontsize=8, xytext=(4, 4), textcoords="offset points")
    for mode in modes:
        xs, ys = [by[s][mode]["total_tokens"] for s in suites], [by[s][mode]["accuracy"] for s in suites]
        cis = [by[s][mode].get("accuracy_ci") for s in suites]
        if all(cis):
            ax.errorbar(xs, ys, yerr=[[y - c[0] for y, c in zip(ys, cis)], [c[1] - y for y, c in zip(ys, cis)]],
                        fmt="none", ecolor=MODE_COLORS[mode], alpha=0.5, capsize=2, zorder=1)
        ax.scatter(xs, ys, color=MODE_COLORS[mode], label=mode, zorder=2)
    if max_tokens:
        ax.axvline(max_tokens, color="#555555", ls="--", lw=1, label=f"max_tokens cap ({max_tokens})")
    ax.set_xlabel("mean tokens per sample")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("accuracy vs tokens")
    ax.legend(title="mode")
    fig.tight_layout()
    scatter = out / "accuracy_tokens.png"
    fig.savefig(scatter, dpi=100)
    plt.close(fig)
    agentic = [s for s in metrics["suites"] if "think_on_rate_by_turn" in next(iter(by[s].values()))]
    return [bars, scatter] + ([_agent_plot(by, agentic, modes, out / "agent_turns.png")] if agentic else [])


def _agent_plot(by: dict, suites: list[str], modes: list[str], path: Path) -> Path:
    """`agent_turns.png`: the think-on rate at each turn of the model's own choice (auto), and the pass
    and tool-error rates per agentic suite and mode."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for suite in suites:
        if "auto" in by[suite]:
            rates = by[suite]["auto"]["think_on_rate_by_turn"]
            axes[0].plot(range(1, len(rates) + 1), rates, marker="o", label=suite)
    axes[0].set_xlabel("turn")
    axes[0].set_ylim(-0.05, 1.05)
    axes[0].set_title("think-on rate per turn (the model's choice)")
    if axes[0].lines:
        axes[0].legend(fontsize=8)
    step = 0.8 / max(len(modes), 1)
    labels = [f"{suite}\n{key}" for suite in suites for key in ("pass", "tool errors")]
    for j, mode in enumerate(modes):
        values = [by[suite][mode].get(key) or 0.0 for suite in suites for key in ("accuracy", "tool_error_rate")]
        xs = [i + (j - (len(modes) - 1) / 2) * step for i in range(len(values))]
        axes[1].bar(xs, values, step, label=mode, color=MODE_COLORS[mode])
    axes[1].set_xticks(range(len(labels)), labels, fontsize=8)
    axes[1].set_ylim(0, 1.05)
    axes[1].set_title("pass rate and tool-error rate")
    axes[1].legend(title="mode", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
          "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th:first-child,td:first-child"
          "{text-align:left}tr.all td{font-weight:bold}img{max-width:100%}")


def _metrics_table(rows: list[tuple[str, str, dict]]) -> str:
    head = "<tr><th>suite</th><th>mode</th>" + "".join(f"<th>{t}</th>" for _, t, _ in COLUMNS) + "</tr>"
    body = "".join(
        ('<tr class="all">' if suite == "all" else "<tr>") + f"<td>{html.escape(suite)}</td><td>{mode}</td>"
        + "".join(f"<td>{_cell(m, k, f)}</td>" for k, _, f in COLUMNS) + "</tr>"
        for suite, mode, m in rows
    )
    return f"<table>{head}{body}</table>"


def _comparison(metrics: dict) -> str:
    """Auto against the forced modes: accuracy gaps and auto's share of forced-on tokens."""
    if not set(THINKING) <= set(metrics["all"]):
        return "<p>(auto against forced modes needs all three modes)</p>"
    rows = []
    for suite, m in [*metrics["suites"].items(), ("all", metrics["all"])]:
        ratio = m["auto"]["total_tokens"] / m["on"]["total_tokens"] if m["on"]["total_tokens"] else None
        rows.append(
            f"<tr><td>{html.escape(suite)}</td>"
            + "".join(f"<td>{m[mode]['accuracy']:.3f}</td>" for mode in THINKING)
            + f"<td>{m['auto']['accuracy'] - m['on']['accuracy']:+.3f}</td>"
            + f"<td>{m['auto']['accuracy'] - m['off']['accuracy']:+.3f}</td>"
            + f"<td>{'-' if ratio is None else f'{ratio:.2f}'}</td><td>{m['auto']['think_on_rate']:.3f}</td></tr>"
        )
    head = ("<tr><th>suite</th><th>acc auto</th><th>acc on</th><th>acc off</th><th>auto − on</th>"
            "<th>auto − off</th><th>tokens auto / on</th><th>auto think-on rate</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _examples(samples: list[dict], per_mode: int = 2) -> str:
    """A few replies per mode: the first correct and the first wrong ones, in sample order."""
    parts = []
    for mode in dict.fromkeys(s["mode"] for s in samples):
        mine = [s for s in samples if s["mode"] == mode]
        chosen = ([s for s in mine if s["passed"]][: per_mode // 2 or 1]
                  + [s for s in mine if not s["passed"]][: per_mode - per_mode // 2])
        for s in chosen:
            verdict = "correct" if s["passed"] else "wrong"
            well = "well-formed" if s["parsed"]["well_formed"] else "malformed: " + "; ".join(s["parsed"]["errors"][:2])
            parts.append(
                f"<details><summary>{mode}: {html.escape(s['suite'])} {html.escape(str(s['task_id']))} — {verdict}, "
                f"{html.escape(well)}, {s['tokens']['total']} tokens, {s['finish_reason']}</summary>"
                f"<pre>{html.escape(s['response'][:2000])}</pre></details>")
    return "".join(parts) or "<p>(no samples)</p>"


def write_report(metrics: dict, config: dict, plots: list[Path], path: str | Path,
                 samples: list[dict] | None = None) -> Path:
    """One HTML file with the settings, the comparison and metrics tables (95% intervals), the plots
    inlined and a few example replies per mode (`samples`: the eval's sample records)."""
    images = "".join(
        f'<p><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"></p>'
        for p in plots
    )
    settings = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in config.items())
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>autothink eval: {html.escape(metrics['model'])}</title>
<style>{_STYLE}</style></head><body>
<h1>autothink eval: {html.escape(metrics['model'])}</h1>
<p>{metrics['samples']} samples. Overthinking score: mean of correct × max(0, 1 − think tokens /
{metrics['think_budget']}). Tokens per correct: all generated tokens / correct answers.</p>
<h2>Auto against forced on and forced off</h2>{_comparison(metrics)}
<h2>All metrics</h2>{_metrics_table(_rows(metrics))}
<h2>Plots</h2>{images}
<h2>Example replies</h2>{_examples(samples or [])}
<h2>Settings</h2><table>{settings}</table>
</body></html>
"""
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


@dataclass
class CompareConfig:
    """`autothink eval compare RUN...`: eval runs side by side, e.g. before and after RL."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("runs",)
    runs: list[str] = field(metadata={
        "help": "output dirs of `autothink eval` (each holds metrics.json)"})


def run_compare(config: CompareConfig) -> None:
    """Print the runs' metrics side by side.

    Raises:
        FileNotFoundError: a run without `metrics.json`.
    """
    runs = {}
    for run in config.runs:
        path = Path(run) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{run}: no metrics.json (not an `autothink eval` output dir, or unfinished)")
        runs[run] = json.loads(path.read_text())
    print(format_comparison(runs))
