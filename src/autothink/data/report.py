"""`autothink data report`: what the data stages produced, as markdown and PNG plots."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from autothink.format import MODES
from autothink.records.jsonl import read_jsonl

STAGE_FILES = {"synth": "synth.records.jsonl", "coldstart": "coldstart.records.jsonl"}


def _read(path: Path) -> list[dict]:
    return [r for _, r in read_jsonl(path)] if path.exists() else []


def _reason(record: dict) -> str:
    """A rejection reason with its numbers blanked, so that like reasons count together."""
    text = record.get("reason") or record.get("error") or "unknown"
    return re.sub(r"\d+", "N", text.split(":")[0] if record.get("status") == "error" else text)[:80]


def stats(output_dir: str | Path) -> dict:
    """Counts per stage: regimes, domains, difficulties, yields and rejection reasons."""
    out = Path(output_dir)
    tagged = _read(out / "tagged.jsonl")
    report = {
        "tagged": len(tagged),
        "regime": dict(Counter(r["regime"] for r in tagged)),
        "domain": dict(Counter(r["domain"] for r in tagged)),
        "difficulty": dict(sorted(Counter(r["difficulty"] for r in tagged).items())),
        "tagged_by": dict(Counter(r["tag"]["by"].split(":")[0] for r in tagged)),
        "stages": {},
    }
    regime_of = {r["id"]: r["regime"] for r in tagged}
    for stage, name in STAGE_FILES.items():
        records = _read(out / name)
        if not records:
            continue
        entry = {"records": len(records), "status": dict(Counter(r["status"] for r in records)),
                 "reasons": dict(Counter(_reason(r) for r in records if r["status"] != "kept").most_common())}
        entry["yield_by_regime"] = {
            regime: sum(r["status"] == "kept" for r in records if regime_of.get(r["id"]) == regime)
            / max(1, sum(regime_of.get(r["id"]) == regime for r in records))
            for regime in MODES
        }
        if stage == "coldstart":
            kept = [r for r in records if r["status"] == "kept"]
            entry["modes"] = dict(Counter(r["mode"] for r in kept))
            entry["label_sources"] = dict(Counter(r["label"]["source"] for r in records if "label" in r))
        report["stages"][stage] = entry
    return report


def _bar(ax, counts: dict, title: str) -> None:
    ax.bar([str(k) for k in counts], list(counts.values()), color="#4C72B0")
    ax.set_title(title)
    for i, v in enumerate(counts.values()):
        ax.annotate(f"{v:.2g}" if isinstance(v, float) else str(v), (i, v), ha="center", va="bottom", fontsize=8)


def write_report(output_dir: str | Path) -> Path:
    """Write `report.md` and `report.png` (four panels) into `output_dir`; return the markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(output_dir)
    s = stats(out)
    if not s["tagged"]:
        raise FileNotFoundError(f"no tagged.jsonl in {out}: run `autothink data tag` first")
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    _bar(axes[0, 0], s["regime"], "regime split (queries)")
    _bar(axes[0, 1], s["domain"], "domains")
    _bar(axes[1, 0], s["difficulty"], "difficulty")
    yields = {f"{st}:{rg}": v for st, e in s["stages"].items() for rg, v in e["yield_by_regime"].items()}
    _bar(axes[1, 1], yields or {"none": 0}, "yield per stage and regime")
    axes[1, 1].set_ylim(0, 1.1)
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=100)
    plt.close(fig)

    def table(counts: dict) -> str:
        return "\n".join(f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in counts.items())

    lines = [f"# Data report: {out}", "",
             f"{s['tagged']} tagged queries ({table(s['tagged_by']).replace(chr(10), ', ')})",
             "", "![plots](report.png)", ""]
    for title, counts in (("Regime", s["regime"]), ("Domain", s["domain"]), ("Difficulty", s["difficulty"])):
        lines += [f"## {title}", "", "| value | queries |", "| --- | --- |", table(counts), ""]
    for stage, e in s["stages"].items():
        lines += [f"## Stage: {stage}", "", "| status | records |", "| --- | --- |", table(e["status"]), "",
                  "| yield | share kept |", "| --- | --- |",
                  table({f"think-{k}": v for k, v in e["yield_by_regime"].items()}), ""]
        if e["reasons"]:
            lines += ["| rejection reason | records |", "| --- | --- |", table(e["reasons"]), ""]
        for key in ("modes", "label_sources"):
            if key in e:
                lines += [f"| {key.replace('_', ' ')} | records |", "| --- | --- |", table(e[key]), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


@dataclass
class ReportConfig:
    """`autothink data report`: what the data stages in `output_dir` produced."""

    output_dir: str = field(default="runs/data", metadata={"help": "the data stages' output dir"})


def run_report(config: ReportConfig) -> str:
    """Write the report; returns the path of `report.md`."""
    return str(write_report(config.output_dir))
