"""The model card (`README.md`) of a trained AutoThink model: what it is, its format, how to call it,
how it was trained and, once `autothink eval` has run on it, its scores per mode.

TRL drafts a card at every checkpoint ("a fine-tuned version of [None]"); the trainers replace it
with this one when they finish, and `autothink eval` adds its table to the card of a model dir.
"""
from __future__ import annotations

from pathlib import Path

from autothink.format import render

MARKER = "<!-- autothink model card -->"
EVAL_HEADING = "## Evaluation"


def _front_matter(base_model: str | None, stage: str) -> str:
    base = f"base_model: {base_model}\n" if base_model and base_model.count("/") == 1 else ""
    return f"---\n{base}library_name: transformers\ntags:\n- autothink\n- adaptive-thinking\n- {stage}\n---\n"


def write_model_card(output_dir: str | Path, base_model: str, stage: str, summary: dict) -> Path:
    """Write `README.md` into `output_dir`.

    Args:
        base_model: what training started from (an embedded name, a directory or a hub id).
        stage: "distill", "sft" or "rl".
        summary: facts of the run shown as a table (steps, data, losses...), plain values only.
    """
    out = Path(output_dir)
    rows = "\n".join(f"| {key} | {value} |" for key, value in summary.items()
                     if isinstance(value, (str, int, float, bool)) or value is None)
    card = f"""{_front_matter(base_model, stage)}{MARKER}
# {out.name}

An AutoThink model trained with autothink (stage: `{stage}`, from
`{base_model}`): for each query it first judges whether reasoning is needed, then answers with
or without thinking.

## Format

```
think-on:  {render("on", "response", judge="why reasoning is needed", think="reasoning")}
think-off: {render("off", "response", judge="why a direct answer suffices")}
```

The eight tags are single tokens of the tokenizer; `autothink.format.parse(text)` splits a reply
into judge, mode, think and answer.

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{out.name}")
model = AutoModelForCausalLM.from_pretrained("{out.name}")
messages = [{{"role": "user", "content": "What is 17*23?"}}]
# thinking="auto": the model decides; "on" / "off" force the mode (also thinking=True/False and
# Qwen3's enable_thinking=True/False)
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, thinking="auto")
```

Or serve it with an OpenAI-compatible API: `autothink serve --model {out.name}` (the judge and
the thinking come back in `reasoning`, the answer in `content`).

## Training

| | |
| --- | --- |
{rows}
"""
    path = out / "README.md"
    path.write_text(card)
    return path


def add_eval_table(model_dir: str | Path, metrics: dict) -> Path | None:
    """Put the eval table (pooled over the suites, per mode, and per suite) into the card of a model
    dir that has an autothink card; replaces an earlier table. Returns the card, or None."""
    path = Path(model_dir) / "README.md"
    if not path.is_file() or MARKER not in path.read_text():
        return None
    keys = ("accuracy", "think_on_rate", "format_rate", "think_tokens", "total_tokens")
    lines = [EVAL_HEADING, "", "`autothink eval`, greedy unless noted; tokens are means per reply.", "",
             "| suite | mode | n | accuracy | think-on rate | well-formed | think tokens | total tokens |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for suite, by_mode in [*metrics["suites"].items(), ("all", metrics["all"])]:
        for mode, m in by_mode.items():
            cells = [f"{m[k]:.1f}" if k.endswith("tokens") else f"{m[k]:.3f}" for k in keys]
            lines.append(f"| {suite} | {mode} | {m['n']} | " + " | ".join(cells) + " |")
    text = path.read_text().split(EVAL_HEADING)[0].rstrip() + "\n\n" + "\n".join(lines) + "\n"
    path.write_text(text)
    return path
