"""`autothink run RECIPE.yaml`: the whole pipeline from one YAML file.

    output_dir: runs/quickstart          # every stage writes under it
    model: smollm2-135m-instruct         # where training starts
    stages:                              # run in this order; each maps to one job's options
      tag: {input: arithmetic, n: 24}
      coldstart: {samples: 2}
      sft: {max_steps: 40}
      rl: {max_steps: 8}
      eval: {suites: ["arithmetic:1", "arithmetic:3"]}

A stage is a job name (`tag`, `synth`, `coldstart`, `upscale`, `distill`, `sft`, `rl`, `eval`,
and for agents `agent_collect`, `agent_sft`, `agent_rl`, `agent_eval`), optionally with a label after a colon
to run a job twice (`eval:base`, `eval`). Options a stage leaves out are wired to the stages
before it: the data stages share `<output_dir>/data`, a model stage starts from the model the
last model stage produced (or `model`), `distill` reads the stage-1 data, `sft` the cold-start
data, `rl` the RL prompts, `eval` and `agent_eval` the last model, `agent_sft` the trajectories
of the `agent_collect` stage (`agent_rl` starts from the last model and reads its own tasks).

Every stage's options are checked before any work starts (a typo'd key gets "did you mean").
A finished stage is recorded in `<output_dir>/run_state.json` with its options and skipped on
the next run; a stage killed half-way resumes on its own (data stages reuse finished records,
trainers their last checkpoint, eval its finished samples).
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

import yaml

from autothink.config import JOBS, check_options, parse_config
from autothink.inference.spec import local_model

STAGES = {job.stage: job for job in JOBS.values() if job.stage}  # stage name -> its job
DATA_STAGES = ("tag", "synth", "coldstart")
MODEL_STAGES = ("upscale", "distill", "sft", "rl", "agent_sft", "agent_rl")
TRAINERS = ("distill", "sft", "rl", "agent_sft", "agent_rl")
RECIPE_KEYS = ("output_dir", "model", "stages")
# Options that name a model or backend, checked before any work (local models must exist).
BACKEND_OPTIONS = ("model", "student", "teacher", "teacher_on", "teacher_off", "teachers", "on_backend", "off_backend",
                   "judge", "solver", "thinker", "critic", "fallback", "backend")
STATE_FILE = "run_state.json"


@dataclasses.dataclass
class Stage:
    name: str  # the key in the recipe, e.g. "eval:base"
    job: str
    config: object
    options: dict  # what the config was built from (recorded to detect a changed recipe)


def _job(name: str, where: str) -> str:
    job = name.split(":", 1)[0]
    if job not in STAGES:
        close = difflib.get_close_matches(job, list(STAGES), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"stages are {', '.join(STAGES)}"
        raise ValueError(f"{where}: unknown stage {name!r}; {hint}")
    return job


def _wired(job: str, out: Path, model: str) -> dict:
    """The options a stage gets from the stages before it (the recipe may override each)."""
    data = out / "data"
    return {
        "tag": {"output_dir": str(data)},
        "synth": {"input": str(data / "tagged.jsonl"), "output_dir": str(data)},
        "coldstart": {"input": str(data / "tagged.jsonl"), "output_dir": str(data), "on_backend": model},
        "upscale": {"model": model},
        "distill": {"student": model, "data": str(data / "stage1.jsonl")},
        "sft": {"model": model, "data": str(data / "coldstart.jsonl")},
        "rl": {"model": model, "data": str(data / "rl_prompts.jsonl")},
        "eval": {"model": model},
        "agent_collect": {},
        "agent_sft": {"model": model, "data": str(out / "agent_collect" / "trajectories.jsonl")},
        "agent_rl": {"model": model},
        "agent_eval": {"backend": model},
    }[job]


def load_recipe(path: str | Path) -> tuple[Path, list[Stage]]:
    """Parse and check a recipe: every stage's config is built here, before any work.

    Raises:
        FileNotFoundError: no recipe file. ValueError: a malformed recipe, an unknown stage or option.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no recipe file {path}")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: expected a mapping with {', '.join(RECIPE_KEYS)}")
    for key in recipe:
        if key not in RECIPE_KEYS:
            close = difflib.get_close_matches(str(key), RECIPE_KEYS, n=1)
            raise ValueError(f"{path}: unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else
                                                                f"; keys are {', '.join(RECIPE_KEYS)}"))
    stages = recipe.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise ValueError(f"{path}: `stages` must map stage names to their options")
    from autothink.models.loading import check_model  # (imports torch: not at `autothink -h`)

    out = Path(recipe.get("output_dir", "runs/pipeline"))
    model = str(recipe.get("model", "smollm2-135m-instruct"))
    try:
        check_model(model)
    except ValueError as err:
        raise ValueError(f"{path}: model: {err}") from None
    built, produced = [], set()
    for name, options in stages.items():
        where = f"{path}: stages.{name}"
        job = _job(str(name), f"{path}: stages")
        cls = getattr(importlib.import_module(STAGES[job].module), STAGES[job].config)
        options = dict(check_options(options or {}, cls, where))
        default_dir = out / ("data" if job in DATA_STAGES else str(name).replace(":", "-"))
        quiet = {"report_to": "none"} if job in TRAINERS else {}  # no TensorBoard unless the recipe asks
        merged = {"output_dir": str(default_dir), **quiet, **_wired(job, out, model), **options}
        try:
            config = parse_config(cls, [], prog=where, defaults=merged)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}: {err}") from None
        for key in BACKEND_OPTIONS:  # every local model a stage is given exists (or an earlier stage makes it)
            for spec in [v for v in _as_list(merged.get(key)) if isinstance(v, str)]:
                local = local_model(spec)
                if local is not None and local not in produced:
                    try:
                        check_model(local)
                    except ValueError as err:
                        raise ValueError(f"{where}.{key}: {err}") from None
        built.append(Stage(str(name), job, config, merged))
        if job in MODEL_STAGES:
            model = str(merged["output_dir"])
            produced.add(model)
    return out, built


@dataclasses.dataclass
class RunConfig:
    """`autothink run RECIPE.yaml`: every stage of a recipe, finished stages skipped."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("recipe",)
    recipe: str = dataclasses.field(metadata={"help": "e.g. recipes/quickstart.yaml"})


def run_pipeline(config: RunConfig) -> dict:
    return run_recipe(config.recipe)


def run_recipe(path: str | Path) -> dict:
    """Run the recipe's stages in order, skipping those finished with the same options.

    Returns: the run state, {stage: {"options", "seconds", "result"}}.
    Raises:
        ValueError: as `load_recipe`, or a finished stage whose options have changed since.
    """
    out, stages = load_recipe(path)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    for stage in stages:
        if stage.name in state and state[stage.name]["options"] != _plain(stage.options):
            raise ValueError(f"stage {stage.name!r} finished earlier with other options ({state_path}); "
                             f"delete {state_path} and the stage's outputs to run it again with the new ones")
    start = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        if stage.name in state:
            print(f"[{i}/{len(stages)}] {stage.name}: done earlier, skipped", flush=True)
            continue
        print(f"[{i}/{len(stages)}] {stage.name} -> {stage.options['output_dir']}", flush=True)
        job = STAGES[stage.job]
        t0 = time.perf_counter()
        result = getattr(importlib.import_module(job.module), job.run)(stage.config)
        state[stage.name] = {"options": _plain(stage.options), "seconds": round(time.perf_counter() - t0, 1),
                             "result": summarize(result)}
        state_path.write_text(json.dumps(state, indent=2) + "\n")
    print(f"run: {len(stages)} stages in {time.perf_counter() - start:.0f} s -> {out}", flush=True)
    return state


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _plain(options: dict) -> dict:
    return json.loads(json.dumps(options, default=str))


def summarize(result) -> object:
    """A short, JSON-able account of a job's result (record counts, a path, top-level numbers)."""
    if isinstance(result, list):
        return {"records": len(result), **Counter(r.get("status", "ok") for r in result)}
    if isinstance(result, dict):
        return {k: v for k, v in result.items() if isinstance(v, (str, int, float, bool)) or v is None}
    return str(result)
