"""Sample a model in the AutoThink format on built-in tasks and score the answers.

The main job until the full pipeline exists: it exercises every foundation piece (embedded
model, chat template with forced modes, LLM backend, parser, verifiers) on a few tasks.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from autothink.format import forced_prefix, install_chat_template, parse, render
from autothink.jsonl import write_jsonl
from autothink.llm import SamplingParams, make_backend
from autothink.tasks import load_suite
from autothink.verify import verify_many


# A one-shot primer, so that a model not yet trained on the format can still follow it.
PRIMER = [
    {"role": "system", "content": (
        "Reply in this format: <judge>whether the question needs reasoning</judge>, then "
        "<think_off><answer>the answer</answer> for easy questions, or "
        "<think_on><think>step-by-step reasoning</think><answer>the answer</answer> for hard ones."
    )},
    {"role": "user", "content": "What is 3 + 4?"},
    {"role": "assistant", "content": render("off", "7", judge="A one-step sum: no reasoning needed.")},
]


def run_demo(
    model: str = "smollm2-135m-instruct",
    suites: tuple[str, ...] = ("arithmetic", "gsm_symbolic", "knights_knaves"),
    n: int = 4,
    modes: tuple[str, ...] = ("auto", "off", "on"),
    max_tokens: int = 128,
    output: Path = Path("outputs/demo"),
) -> dict:
    """Greedy-decode every task under each thinking mode, verify, print a table, write results.

    The conversation starts with `PRIMER`; a model trained on the format does not need it.

    Returns:
        The metrics written to `output/metrics.json`: accuracy, well-formed rate and mean tokens
        per (suite, mode).
    """
    tasks = [task for suite in suites for task in load_suite(suite, n=n)]
    backend = make_backend(model)
    if hasattr(backend, "tokenizer"):  # a local model: let its chat template take `thinking`
        install_chat_template(backend.tokenizer)
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    rows = []
    for mode in modes:
        start = time.monotonic()
        completions = []
        with tqdm(total=len(tasks), desc=f"thinking={mode}", unit="task") as bar:
            for i in range(0, len(tasks), 8):
                chunk = tasks[i : i + 8]
                conversations = [PRIMER + t.messages for t in chunk]
                completions += [c[0] for c in backend.generate(conversations, params, thinking=mode)]
                bar.update(len(chunk))
        elapsed = time.monotonic() - start
        texts = [forced_prefix(mode) + c.text for c in completions]  # a forced prefix is part of the prompt
        verdicts = verify_many([t.verifier for t in tasks], texts, [t.reference for t in tasks])
        for task, completion, text, verdict in zip(tasks, completions, texts, verdicts):
            parsed = parse(text)
            rows.append({
                "id": task.id, "suite": task.id.split("/")[0], "difficulty": task.difficulty, "mode": mode,
                "response": text, "answer": parsed.answer, "well_formed": parsed.well_formed,
                "format_errors": parsed.errors, "score": verdict.score, "passed": verdict.passed,
                "detail": verdict.detail, "tokens": completion.tokens, "seconds": elapsed / len(tasks),
            })
    metrics = _summarize(rows)
    output.mkdir(parents=True, exist_ok=True)
    write_jsonl(output / "samples.jsonl", rows)
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _print_table(metrics, backend.name)
    print(f"samples: {output / 'samples.jsonl'}   metrics: {output / 'metrics.json'}")
    return metrics


def _summarize(rows: list[dict]) -> dict:
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[f"{row['suite']}|{row['mode']}"].append(row)
        groups[f"all|{row['mode']}"].append(row)
    return {
        key: {
            "n": len(g),
            "accuracy": sum(r["passed"] for r in g) / len(g),
            "well_formed": sum(r["well_formed"] for r in g) / len(g),
            "mean_tokens": sum(r["tokens"] for r in g) / len(g),
        }
        for key, g in groups.items()
    }


def _print_table(metrics: dict, model_name: str) -> None:
    print(f"\nmodel: {model_name}")
    print(f"{'suite':22s} {'mode':5s} {'n':>3s} {'accuracy':>9s} {'formatted':>10s} {'tokens':>7s}")
    for key, m in sorted(metrics.items(), key=lambda kv: (kv[0].startswith("all"), kv[0])):
        suite, mode = key.split("|")
        print(f"{suite:22s} {mode:5s} {m['n']:3d} {m['accuracy']:9.2f} {m['well_formed']:10.2f} {m['mean_tokens']:7.1f}")
