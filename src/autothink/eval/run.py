"""`autothink eval`: accuracy and thinking cost under auto, forced-on and forced-off modes.

    autothink eval --model runs/rl --suites arithmetic:1 arithmetic:5 math500 --n 50
    autothink eval --model http://localhost:8000/v1#autothink --config eval.yaml

Every task of every suite is sampled under each mode (`inference.respond`: a forced mode follows
the model's own judge), parsed, verified and its tokens counted per segment. Agentic suites
(`agent:humaneval`, `agent:bfcl:base`, `agent:tasks.jsonl`; `--skip` holds out a split) play
each task as a tool-use episode in its environment (`environments.rollout.run_episode`, every
reply through `respond`): pass@1 with tools (the tests, BFCL's state check), tool-error rate,
turns, tokens, and the think-on rate per turn. Tasks that carry a
directive (the `directives` suite) are scored for obedience: the reply's mode == the directive.
Outputs in `output_dir`: `samples.jsonl` (one line per sample), `settings.json`,
`metrics.json`, `think_tokens.png`, `accuracy_tokens.png` and `report.html`. Samples are
appended as they finish, so a killed run resumes where it stopped: a rerun reuses every sample
already in `samples.jsonl` (keyed by suite, mode, task id and sample index) and, when done,
leaves it holding exactly this run's samples in order. Changed sampling settings (model,
max_tokens, temperature, ...) are refused for an output dir that holds samples.
"""
from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from tqdm import tqdm

from autothink.config import check_integers
from autothink.data.collect import environment_for, load_agent_tasks
from autothink.data.runner import record_seed
from autothink.environments.rollout import run_episode
from autothink.format import (
    THINKING,
    install_chat_template,
    parse,
    render,
)
from autothink.inference.backend import Backend, BackendError, SamplingParams
from autothink.inference.respond import ControlOptions, Reply, respond
from autothink.inference.spec import make_backend
from autothink.inference.speculative import speculative_field
from autothink.models.card import add_eval_table
from autothink.records.jsonl import load_done, write_jsonl
from autothink.tasks import SUITES, Task, load_suite, parse_suite
from autothink.tasks.tool_calls import tool_call_text
from autothink.verify import verify_many

SEGMENTS = ("judge", "think", "answer")
# Settings that change what a sample is: a rerun may reuse samples only when these match.
SAMPLE_SETTINGS = ("model", "tokenizer", "primer", "max_tokens", "temperature", "top_p", "samples", "seed",
                   "force_directives", "forced_judge", "constrained", "skip", "max_turns")
AGENT = "agent:"  # the prefix of an agentic suite

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


@dataclass
class EvalConfig(ControlOptions):
    """What to evaluate and how to sample it.

    Suites are written `name` (a built-in suite, see `autothink tasks list`), `name:T` (tier T,
    1-5, of a graded suite: arithmetic, gsm_symbolic, propositional_logic, knights_knaves) or a
    path to a tasks JSONL file (`file.jsonl:T` keeps only tasks of difficulty T).

    The primer (`PRIMER`, a one-shot example of the format) is off by default: it
    changes the prompt a trained model was tuned on. Turn it on for a model never trained on the
    format, such as the embedded base model.
    """

    model: str = field(default="runs/rl", metadata={
        "help": "backend spec: embedded name, model dir, hub id or http://host:port/v1#model"})
    suites: list[str] = field(default_factory=lambda: ["arithmetic", "gsm_symbolic", "knights_knaves"], metadata={
        "help": "suites: NAME, NAME:TIER (1-5, graded suites) or a tasks .jsonl path"})
    n: int | None = field(default=20, metadata={
        "help": "tasks per suite (`n: null` in YAML: all, or 100 for generated suites)"})
    modes: list[str] = field(default_factory=lambda: ["auto", "on", "off"], metadata={
        "help": "thinking modes to compare: auto (the model decides), on, off (forced)"})
    max_tokens: int = field(default=512, metadata={"help": "new tokens per sample"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature (0: greedy)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass"})
    samples: int = field(default=1, metadata={"help": "samples per task and mode (> 1 needs temperature > 0)"})
    think_budget: int = field(default=512, metadata={
        "help": "think tokens at which the overthinking score reaches 0 (keep it fixed across compared runs)"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "tokenizer that counts segment tokens (default: the local model's, else the embedded model's)"})
    primer: bool = field(default=False, metadata={"help": "prepend the one-shot format primer (untrained models)"})
    batch_size: int = field(default=16, metadata={"help": "tasks per generate call"})
    speculative: str = speculative_field()
    verify_workers: int = field(default=0, metadata={"help": "processes that verify answers (0: this process)"})
    seed: int = field(default=0, metadata={"help": "seed of generated suites and of sampling"})
    skip: int = field(default=0, metadata={"help": "agentic suites: tasks to skip first (held-out splits)"})
    max_turns: int = field(default=6, metadata={"help": "agentic suites: most replies an episode may take"})
    output_dir: str = field(default="runs/eval", metadata={"help": "samples, metrics, plots and report.html"})

    def __post_init__(self):
        # YAML 1.1 reads unquoted `on` / `off` as booleans.
        self.modes = [{True: "on", False: "off"}[m] if isinstance(m, bool) else m for m in self.modes]
        check_integers(self, max_tokens=1, samples=1, think_budget=1, batch_size=1, verify_workers=0, n=1, skip=0,
                       max_turns=1)
        if not self.temperature >= 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"EvalConfig: need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, "
                             f"{self.top_p}")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("EvalConfig.samples > 1 needs temperature > 0: greedy samples are identical")
        if not self.modes or not set(self.modes) <= set(THINKING) or len(set(self.modes)) < len(self.modes):
            raise ValueError(f"EvalConfig.modes must be distinct values of {', '.join(THINKING)}; "
                             f"got {self.modes}")
        if not self.suites:
            raise ValueError("EvalConfig.suites is empty")
        if self.samples > 1 and any(str(s).startswith(AGENT) for s in self.suites):
            raise ValueError("EvalConfig.samples > 1: agentic suites play one episode per task and mode")
        labels = [suite_label(s) for s in self.suites]
        twice = {label for label in labels if labels.count(label) > 1}
        if twice:
            raise ValueError(f"EvalConfig.suites lists {sorted(twice)} more than once")


def suite_label(spec: str) -> str:
    """The name a suite goes by in samples, metrics and plots: the spec, or a file's stem."""
    if spec.startswith(AGENT):
        return spec
    name, tier = parse_suite(spec)
    return spec if name in SUITES else Path(name).stem + ("" if tier is None else f":{tier}")


def load_suites(config: EvalConfig) -> dict[str, list[Task]]:
    """Tasks per suite label; every task must carry a verifier.

    Raises:
        ValueError: a suite yields no tasks, or has tasks that cannot be graded by rule.
    """
    suites = {}
    for spec in config.suites:
        if spec.startswith(AGENT):
            suites[spec] = load_agent_tasks(spec.removeprefix(AGENT), config.skip, config.n)
            continue
        name, tier = parse_suite(spec)
        tasks = load_suite(name, n=config.n, difficulty=tier, seed=config.seed)
        if not tasks:
            raise ValueError(f"suite {spec!r} has no tasks")
        ungraded = [t.id for t in tasks if t.verifier is None]
        if ungraded:
            raise ValueError(f"suite {spec!r}: {len(ungraded)} tasks have no verifier (e.g. {ungraded[0]!r}); "
                             "eval grades by rule only")
        suites[suite_label(spec)] = tasks
    return suites


def open_backend(config: EvalConfig) -> Backend:
    """The backend of `config.model`; an HTTP endpoint is probed so that a dead one fails now."""
    if not config.model.startswith(("http://", "https://")):
        return make_backend(config.model, batch_size=config.batch_size * config.samples, speculative=config.speculative)
    import openai

    backend = make_backend(config.model)
    client = backend.client.with_options(max_retries=0, timeout=10.0)
    try:
        served = [m.id for m in client.models.list().data]
    except openai.APIConnectionError as err:
        raise BackendError(f"cannot reach {backend.base_url} ({err}); is the server running?") from None
    except openai.APIStatusError as err:
        if err.status_code != 404:  # a server without /models is checked by its first request
            raise BackendError(f"{backend.base_url}/models answered HTTP {err.status_code}: {err.message}") from None
        return backend
    wanted = config.model.partition("#")[2]
    if wanted and wanted not in served:
        raise BackendError(f"{backend.base_url} does not serve model {wanted!r}; it serves: {', '.join(served)}")
    return backend


def _check_settings(config: EvalConfig, out: Path) -> dict:
    """This run's sample settings; refuses an output dir whose samples were made differently."""
    settings = {k: getattr(config, k) for k in SAMPLE_SETTINGS}
    path = out / "settings.json"
    if path.exists():
        defaults = {f.name: f.default for f in fields(EvalConfig)}  # a setting added since: its default then
        before = json.loads(path.read_text())
        changed = [k for k in SAMPLE_SETTINGS if before.get(k, defaults[k]) != settings[k]]
        if changed and (out / "samples.jsonl").exists():
            k = changed[0]
            raise ValueError(f"{out} holds samples made with {k}={before.get(k)!r}, not {settings[k]!r}; "
                             "use another output_dir or move samples.jsonl away")
    return settings


def sample_id(suite: str, mode: str, task_id: str, k: int) -> str:
    """The key of one sample in `samples.jsonl`: what a rerun looks up to reuse it."""
    return f"{suite}|{mode}|{task_id}|{k}"


def _count_tokens(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def score_samples(
    label: str, mode: str, tasks: list[Task], replies: list[list[Reply]], tokenizer, verify_workers: int = 0
) -> list[dict]:
    """One record per reply: the full response (any forced prefix included), its parts, tokens, verdict.

    Segment tokens count each part's text (tags excluded) with `tokenizer`; `total` is the
    backend's count of generated tokens (forced tags are prompt, not output), or the tokenizer's
    count of the response when the backend reports none. `directive` is the mode the task asks
    for (`metadata.directive`, None for most tasks).
    """
    pairs = [(task, k, r) for task, rs in zip(tasks, replies) for k, r in enumerate(rs)]
    responses = [r.text for _, _, r in pairs]
    verdicts = verify_many([t.verifier for t, _, _ in pairs], responses, [t.reference for t, _, _ in pairs],
                           workers=verify_workers)
    parsed = [parse(r) for r in responses]
    counts = {s: _count_tokens(tokenizer, [getattr(p, s) or "" for p in parsed]) for s in SEGMENTS}
    recount = _count_tokens(tokenizer, responses)
    records = []
    for i, ((task, k, c), response, p, verdict) in enumerate(zip(pairs, responses, parsed, verdicts)):
        records.append({
            "id": sample_id(label, mode, task.id, k), "suite": label, "task_id": task.id, "tier": task.difficulty,
            "mode": mode, "sample": k, "response": response, "finish_reason": c.finish_reason,
            "directive": task.metadata.get("directive"), "variant": task.metadata.get("variant"),
            "base": task.metadata.get("base"),
            "parsed": {"judge": p.judge, "mode": p.mode, "think": p.think, "answer": p.answer,
                       "well_formed": p.well_formed, "errors": p.errors},
            "tokens": {**{s: counts[s][i] for s in SEGMENTS}, "total": c.completion_tokens or recount[i]},
            "passed": verdict.passed, "score": verdict.score, "detail": verdict.detail,
        })
    return records


def play_episodes(label: str, mode: str, tasks: list[Task], backend: Backend, params: SamplingParams,
                  config: EvalConfig, tokenizer):
    """Agentic suites: one episode per task (`batch_size` at a time, a local model batches their turns),
    yielded as sample records as they finish, with the episode under `agent`."""
    def play(task):
        seeded = replace(params, n=1, seed=record_seed(config.seed, label, mode, task.id))
        return run_episode(backend, environment_for(task), task, seeded, config.max_turns, thinking=mode,
                           forced_judge=config.forced_judge)

    with ThreadPoolExecutor(config.batch_size) as pool:
        futures = {pool.submit(play, task): task for task in tasks}
        for future in as_completed(futures):
            task, trajectory = futures[future], future.result()
            outcome = trajectory.outcome
            replies = [m for m in trajectory.messages if m["role"] == "assistant"]
            parsed = [parse(m.get("content") or "") for m in replies]
            counts = {part: sum(_count_tokens(tokenizer, [getattr(p, part) or "" for p in parsed]))
                      for part in SEGMENTS}
            response = "\n\n".join(_reply_text(m) for m in replies)
            first = parsed[0]
            yield {
                "id": sample_id(label, mode, task.id, 0), "suite": label, "task_id": task.id, "tier": task.difficulty,
                "mode": mode, "sample": 0, "response": response,
                "finish_reason": "length" if outcome["end"] == "truncated" else "stop",
                "directive": None, "variant": None, "base": None,
                "parsed": {"judge": first.judge, "mode": outcome["modes"][0], "think": first.think,
                           "answer": first.answer, "well_formed": all(p.well_formed for p in parsed),
                           "errors": [e for p in parsed for e in p.errors]},
                "tokens": {**counts, "total": outcome["tokens"]},
                "passed": outcome["passed"], "score": outcome["reward"], "detail": outcome["end"],
                "agent": {k: outcome[k] for k in ("turns", "tool_calls", "tool_errors", "modes", "end")},
            }


def _reply_text(message: dict) -> str:
    """An episode's assistant message as the model wrote it: its text and its `<tool_call>` blocks."""
    calls = [tool_call_text(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []]
    return "\n".join([message.get("content") or "", *calls]).strip()


def agent_metrics(samples: list[dict]) -> dict:
    """What an agentic suite adds: tool-error rate (failed calls / calls), turns, tool calls per episode, and
    the think-on rate at each turn (replies in mode on / replies at that turn)."""
    episodes = [s["agent"] for s in samples if "agent" in s]
    if not episodes:
        return {}
    calls = sum(e["tool_calls"] for e in episodes)
    longest = max(len(e["modes"]) for e in episodes)
    by_turn = [[e["modes"][k] for e in episodes if len(e["modes"]) > k] for k in range(longest)]
    return {"tool_error_rate": sum(e["tool_errors"] for e in episodes) / calls if calls else None,
            "turns": _mean([e["turns"] for e in episodes]), "tool_calls": _mean([e["tool_calls"] for e in episodes]),
            "think_on_rate_by_turn": [_mean([m == "on" for m in modes]) for modes in by_turn]}


# --- metrics: plain functions of sample records --------------------------------------------

def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> list[float]:
    """The Wilson score interval of a binomial rate (95% by default): `[low, high]`.

    >>> [round(x, 3) for x in wilson_interval(8, 10)]
    [0.49, 0.943]
    """
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    p, z2 = successes / n, z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [max(0.0, center - half), min(1.0, center + half)]


def overthinking_score(samples: list[dict], budget: int) -> float:
    """OptimalThinkingBench-style: mean of correct × max(0, 1 − think_tokens / budget).

    A correct answer scores 1 without reasoning and less the longer it thought; a wrong one 0.

    >>> overthinking_score([{"passed": True, "tokens": {"think": 25}}, {"passed": False, "tokens": {"think": 0}}], 100)
    0.375
    """
    return _mean([s["passed"] * max(0.0, 1 - s["tokens"]["think"] / budget) for s in samples])


def tokens_per_correct(samples: list[dict]) -> float | None:
    """All generated tokens divided by the number of correct answers (None when none is correct)."""
    correct = sum(s["passed"] for s in samples)
    return sum(s["tokens"]["total"] for s in samples) / correct if correct else None


def group_metrics(samples: list[dict], think_budget: int) -> dict:
    """Metrics of one group of samples (a suite under one mode, or all suites under one mode)."""
    if not samples:
        raise ValueError("no samples to summarize")
    well_formed = [s["passed"] for s in samples if s["parsed"]["well_formed"]]
    asked = [s["parsed"]["mode"] == s["directive"] for s in samples if s.get("directive")]
    correct = sum(bool(s["passed"]) for s in samples)
    thinking = sum(s["parsed"]["mode"] == "on" for s in samples)
    return {
        "n": len(samples),
        "accuracy": correct / len(samples),
        "accuracy_ci": wilson_interval(correct, len(samples)),  # 95%, binomial
        "accuracy_well_formed": _mean(well_formed) if well_formed else None,  # malformed replies left out
        "think_on_rate": thinking / len(samples),
        "think_on_rate_ci": wilson_interval(thinking, len(samples)),
        "format_rate": _mean([s["parsed"]["well_formed"] for s in samples]),
        "truncated_rate": _mean([s["finish_reason"] == "length" for s in samples]),
        **{f"{part}_tokens": _mean([s["tokens"][part] for s in samples]) for part in (*SEGMENTS, "total")},
        "tokens_per_correct": tokens_per_correct(samples),
        "overthinking": overthinking_score(samples, think_budget),
        "directive_obedience": _mean(asked) if asked else None,  # mode == the directive asked for
        "near_miss_agreement": near_miss_agreement(samples),
        **agent_metrics(samples),
    }


def near_miss_agreement(samples: list[dict]) -> float | None:
    """Share of near-miss samples (`variant` "near_miss") in the mode of the same question asked plainly
    (same base, mode control and sample index); None when there are no such pairs."""
    plain = {(s["base"], s["mode"], s["sample"]): s["parsed"]["mode"] for s in samples if s.get("variant") == "plain"}
    pairs = [(s["parsed"]["mode"], plain[key]) for s in samples if s.get("variant") == "near_miss"
             and (key := (s["base"], s["mode"], s["sample"])) in plain]
    return _mean([a == b for a, b in pairs]) if pairs else None


def summarize(records: list[dict], suites: list[str], modes: list[str], think_budget: int) -> dict:
    """`{"suites": {suite: {mode: metrics}}, "all": {mode: metrics}}`; "all" pools every sample."""
    by = {(s, m): [] for s in suites for m in modes}
    for r in records:
        by[r["suite"], r["mode"]].append(r)
    return {
        "suites": {s: {m: group_metrics(by[s, m], think_budget) for m in modes} for s in suites},
        "all": {m: group_metrics([r for r in records if r["mode"] == m], think_budget) for m in modes},
    }


# --- the job ---------------------------------------------------------------------------------

def run_eval(config: EvalConfig, backend: Backend | None = None) -> dict:
    """Sample, verify and score every suite under every mode; write samples, metrics, plots, report.

    Everything that can be checked (suites, tasks, output dir, endpoint, tokenizer) is checked
    before the first sample. `backend` replaces the one `config.model` names (tests, notebooks).

    Returns:
        The contents of `metrics.json`.
    """
    from autothink.eval.report import format_table, write_plots, write_report
    from autothink.models import load_tokenizer

    suites = load_suites(config)
    out = Path(config.output_dir)
    settings = _check_settings(config, out)
    backend = backend or open_backend(config)
    if config.constrained and not backend.supports_constrained:
        raise ValueError(f"--constrained needs a local model; {backend!r} cannot constrain decoding")
    local_tokenizer = getattr(backend, "tokenizer", None)
    if local_tokenizer is not None:  # a local model: let its chat template take `thinking`
        install_chat_template(local_tokenizer)
    if config.tokenizer is not None:
        tokenizer = load_tokenizer(config.tokenizer)
    else:
        tokenizer = local_tokenizer or load_tokenizer()

    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(settings, indent=2))
    samples_path = out / "samples.jsonl"
    done = load_done(samples_path)
    params = SamplingParams(n=config.samples, temperature=config.temperature, top_p=config.top_p,
                            max_tokens=config.max_tokens, constrained=config.constrained)
    prefix = PRIMER if config.primer else []
    ids = [sample_id(label, mode, task.id, k) for label, tasks in suites.items() for mode in config.modes
           for task in tasks for k in range(config.samples)]
    with open(samples_path, "a", encoding="utf-8") as sink, tqdm(
        total=len(ids), initial=sum(i in done for i in ids), desc="eval", unit="sample"
    ) as bar:
        for label, tasks in suites.items():
            for mode in config.modes:
                bar.set_postfix_str(f"{label} {mode}")
                todo = [t for t in tasks
                        if any(sample_id(label, mode, t.id, k) not in done for k in range(config.samples))]
                if label.startswith(AGENT):
                    for record in play_episodes(label, mode, todo, backend, params, config, tokenizer):
                        sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                        sink.flush()
                        done[record["id"]] = record
                        bar.update(1)
                    continue
                for start in range(0, len(todo), config.batch_size):
                    chunk = todo[start : start + config.batch_size]
                    seeded = replace(params, seed=record_seed(config.seed, label, mode, chunk[0].id))
                    replies = respond(backend, [prefix + t.messages for t in chunk], seeded, thinking=mode,
                                      force_directives=config.force_directives, forced_judge=config.forced_judge)
                    for record in score_samples(label, mode, chunk, replies, tokenizer, config.verify_workers):
                        if record["id"] not in done:
                            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                            sink.flush()
                            done[record["id"]] = record
                            bar.update(1)
    records = [done[i] for i in ids]
    write_jsonl(samples_path, records)  # this run's samples, in order
    metrics = {"model": backend.name, "samples": len(records), "think_budget": config.think_budget,
               **summarize(records, list(suites), config.modes, config.think_budget)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if Path(config.model).is_dir():
        add_eval_table(config.model, metrics)  # into its model card, when autothink trained it
    plots = write_plots(metrics, out, max_tokens=config.max_tokens)
    write_report(metrics, asdict(config), plots, out / "report.html", samples=records)
    print(format_table(metrics))
    print(f"samples: {samples_path}   metrics: {out / 'metrics.json'}   report: {out / 'report.html'}")
    return metrics
