"""Typed configs and the commands they drive.

Every command is a job: a dataclass of options and a function that takes it. Options come from
the dataclass defaults, then `--config FILE.yaml`, then flags (each wins over the one before), as
TRL's `TrlParser` does. Flags are the field names, `--max_tokens` (`--max-tokens` works too); the
fields a config lists in its `POSITIONAL` class attribute are also taken from bare words
(`autothink eval compare RUN_A RUN_B`).
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing
from pathlib import Path
from typing import TypeVar

import yaml

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Job:
    """A command: `run(config_class(...))` from `module`; `stage` names it in recipes (`autothink run`)."""

    module: str
    config: str
    run: str
    help: str
    stage: str | None = None


# `autothink <name> [--config FILE.yaml] [--option value ...]`; the library never imports the CLI.
JOBS: dict[str, Job] = {
    "run": Job("autothink.pipeline", "RunConfig", "run_pipeline", "the whole pipeline from one YAML recipe"),
    "data tag": Job("autothink.data.tag", "TagConfig", "run_tag", "label difficulty, domain and regime per query",
                    stage="tag"),
    "data synth": Job("autothink.data.synth", "SynthConfig", "run_synth",
                      "stage-1 data: think-off rejection sampling, think-on agents", stage="synth"),
    "data coldstart": Job("autothink.data.coldstart", "ColdstartConfig", "run_coldstart",
                          "cold-start SFT data and RL prompts", stage="coldstart"),
    "data report": Job("autothink.data.report", "ReportConfig", "run_report",
                       "counts and reasons of the data stages: report.md and report.png"),
    "upscale": Job("autothink.models.upscale", "UpscaleConfig", "run_upscale",
                   "depth upscaling: saturation analysis, layer duplication", stage="upscale"),
    "distill": Job("autothink.training.distill", "DistillConfig", "run_distill",
                   "stage 1: distil a teacher into a student with ULD and MTP heads (--precompute: teacher top-k only)",
                   stage="distill"),
    "sft": Job("autothink.training.sft", "SFTConfig", "run_sft",
               "stage 2: cold-start SFT on AutoThink-format data (TRL SFTTrainer)", stage="sft"),
    "rl": Job("autothink.training.step_srpo", "RLConfig", "run_rl",
              "stage 3: Step-SRPO reinforcement learning (TRL GRPOTrainer subclass)", stage="rl"),
    "eval": Job("autothink.eval.run", "EvalConfig", "run_eval",
                "accuracy, think-on rate and tokens under auto, forced-on and forced-off modes", stage="eval"),
    "eval compare": Job("autothink.eval.report", "CompareConfig", "run_compare",
                        "eval runs side by side, e.g. before and after RL"),
    "serve": Job("autothink.serve.app", "ServeConfig", "run_serve",
                 "serve a model over an OpenAI-compatible HTTP API"),
    "generate": Job("autothink.inference.commands", "GenerateConfig", "run_generate",
                    "answer prompts with mode control and a thinking budget (JSON lines)"),
    "chat": Job("autothink.inference.commands", "ChatConfig", "run_chat",
                "interactive multi-turn chat (/mode, /budget, /reset, /quit)"),
    "models prepare": Job("autothink.models.loading", "PrepareConfig", "run_prepare",
                          "convert embedded GGUF models to a safetensors cache once"),
    "models list": Job("autothink.models.loading", "ListConfig", "run_list", "list the embedded models"),
    "export gguf": Job("autothink.models.gguf", "ExportConfig", "run_export",
                       "a model as a GGUF file for llama.cpp, Ollama, LM Studio"),
    "tasks list": Job("autothink.tasks.suites", "ListConfig", "run_list", "list the built-in task suites"),
    "agent import": Job("autothink.tasks.importers", "ImportConfig", "run_import",
                        "agent logs (OpenAI-style JSONL, OpenHands, Claude Code) to trajectory JSONL"),
    "agent collect": Job("autothink.data.collect", "CollectConfig", "run_collect",
                         "run a backend as a coding agent in the sandboxed workspace; trajectories with tool status",
                         stage="agent_collect"),
    "agent sft": Job("autothink.training.agentic_sft", "AgentSFTConfig", "run_agent_sft",
                     "error-masked SFT on agent trajectories, cut into sub-trajectories, trie-packed",
                     stage="agent_sft"),
    "agent rl": Job("autothink.training.agentic_rl", "AgentRLConfig", "run_agent_rl",
                    "agentic RL: multi-turn tool rollouts, multi-ground-truth reward, early termination",
                    stage="agent_rl"),
    "agent eval": Job("autothink.data.collect", "AgentEvalConfig", "run_collect",
                      "a model as a coding agent on held-out tasks: pass rate and tool-error rate", stage="agent_eval"),
    "tasks export": Job("autothink.tasks.suites", "ExportConfig", "run_export", "write a suite as tasks JSONL"),
}


def check_integers(config, **minimums: int) -> None:
    """Each named field of `config` must be an integer >= its minimum (or None where its type allows None).

    Raises:
        ValueError: naming the config class, the field and the value.
    """
    hints = typing.get_type_hints(type(config))
    for name, low in minimums.items():
        value, optional = getattr(config, name), type(None) in typing.get_args(hints[name])
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{type(config).__name__}.{name} must be an integer >= {low}"
                             f"{' or None' if optional else ''}, got {value!r}")


def check_options(data, cls: type, source: str) -> dict:
    """Check that `data` maps field names of `cls` to values.

    Raises:
        ValueError: not a mapping, or an unknown key (naming `source`, with the closest field suggested).
    """
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of option names to values")
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; options: {', '.join(fields) or 'none'}"
            raise ValueError(f"{source}: unknown option {key!r} for {cls.__name__}{hint}")
    return data


def _lists_of_one(cls: type, data: dict) -> dict:
    """A string given for a list option (`suites: arithmetic` in YAML) is a list of that one string."""
    hints = typing.get_type_hints(cls)
    listed = {name for name, hint in hints.items()
              if typing.get_origin(hint) is list or list in typing.get_args(hint)
              or any(typing.get_origin(a) is list for a in typing.get_args(hint))}
    return {k: [v] if k in listed and isinstance(v, str) else v for k, v in data.items()}


def _add_positionals(parser: argparse.ArgumentParser, cls: type) -> list[str]:
    """Let the fields marked `positional` also be given as bare words; returns the required ones."""
    required = []
    for f in dataclasses.fields(cls):
        if f.name not in getattr(cls, "POSITIONAL", ()):
            continue
        option = next(a for a in parser._actions if f"--{f.name}" in a.option_strings)
        if option.required:  # given either way: checked after parsing
            option.required = False
            required.append(f.name)
        parser.add_argument(f.name, nargs="*" if option.nargs in ("+", "*") else "?", default=argparse.SUPPRESS,
                            help=option.help, type=option.type, metavar=f.name.upper())
    return required


def parse_config(cls: type[T], argv: list[str], prog: str, defaults: dict | None = None) -> T:
    """`cls` from `defaults`, then `--config FILE.yaml`, then `--field value` flags (each wins over the
    one before), as TRL's TrlParser does.

    Raises:
        ValueError: an unknown option in `defaults` or the YAML file (with a suggestion).
        SystemExit: bad flags (argparse prints the usage).
    """
    from transformers import HfArgumentParser

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    parser = HfArgumentParser(cls, prog=prog, description=(cls.__doc__ or "").strip().split("\n\n")[0])
    parser.add_argument("--config", help="YAML file with option values (flags override it)")
    required = _add_positionals(parser, cls)
    parser.set_defaults(**_lists_of_one(cls, check_options(defaults or {}, cls, prog)))
    if known.config:
        data = yaml.safe_load(Path(known.config).read_text()) or {}
        parser.set_defaults(**_lists_of_one(cls, check_options(data, cls, known.config)))
    namespace = parser.parse_args(argv)
    missing = [name for name in required if not getattr(namespace, name, None)]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    del namespace.config
    return cls(**vars(namespace))


def command_help() -> str:
    """The command list `autothink -h` prints."""
    width = max(map(len, JOBS)) + 2
    lines = ["usage: autothink COMMAND [--config FILE.yaml] [--option value ...]", "", "commands:"]
    lines += [f"  {name:{width}s}{job.help}" for name, job in JOBS.items()]
    lines += ["", "`autothink COMMAND -h` lists a command's options."]
    return "\n".join(lines)
