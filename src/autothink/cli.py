"""The `autothink` command line. Each command is a thin shell over an importable module."""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path


def _cmd_models_prepare(args: argparse.Namespace) -> None:
    from autothink import models

    for name in args.names or [models.DEFAULT_MODEL]:
        print(f"{name}: {models.prepare(name, force=args.force)}")


def _cmd_models_list(args: argparse.Namespace) -> None:
    from autothink import models

    for name, spec in models.EMBEDDED.items():
        target = models.cache_dir() / "models" / name
        state = f"prepared at {target}" if (target / "config.json").exists() else "not prepared"
        print(f"{name:24s} from PyPI package {spec.package:26s} {state}")


def _cmd_tasks_list(args: argparse.Namespace) -> None:
    from autothink.tasks import SUITES

    for name, suite in SUITES.items():
        print(f"{name:20s} {'graded 1-5' if suite.graded else 'fixed':10s} {suite.description}")


def _cmd_tasks_export(args: argparse.Namespace) -> None:
    from autothink.tasks import load_suite, save_tasks

    tasks = load_suite(args.suite, n=args.n, difficulty=args.difficulty, seed=args.seed)
    count = save_tasks(tasks, args.output)
    print(f"wrote {count} tasks to {args.output}")


def _cmd_serve(args: argparse.Namespace) -> None:
    from autothink.format import install_chat_template
    from autothink.llm import make_backend
    from autothink.serve import serve

    backend = make_backend(args.model, device=args.device, dtype=args.dtype)
    install_chat_template(backend.tokenizer)
    serve(backend, host=args.host, port=args.port, grace_s=args.grace_seconds, max_queue=args.max_queue,
          max_batch=args.max_batch, default_max_tokens=args.max_tokens, directives=not args.no_directives)


def _reply_backend(args: argparse.Namespace):
    """The backend of `generate` / `chat`; a local model gets the `thinking` chat template."""
    from autothink.format import install_chat_template
    from autothink.llm import make_backend

    local = not args.model.startswith(("http://", "https://"))
    backend = make_backend(args.model, **({"device": args.device, "dtype": args.dtype} if local else {}))
    if local:
        install_chat_template(backend.tokenizer)
    return backend


def _reply_params(args: argparse.Namespace):
    from autothink.llm import SamplingParams

    return SamplingParams(n=getattr(args, "n", 1), temperature=args.temperature, top_p=args.top_p,
                          max_tokens=args.max_tokens, seed=args.seed)


def _cmd_generate(args: argparse.Namespace) -> None:
    import json

    from tqdm import tqdm

    from autothink.inference import read_conversations, respond
    from autothink.jsonl import write_jsonl

    items = [(str(i), [{"role": "user", "content": p}]) for i, p in enumerate(args.prompts, start=1)]
    items += read_conversations(args.input) if args.input else []
    if not items:
        raise ValueError("no prompts: give them as arguments or in --input FILE.jsonl")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    params = _reply_params(args)  # bad values fail before the model loads
    backend = _reply_backend(args)
    records = []
    with tqdm(total=len(items), unit="prompt", disable=len(items) <= args.batch_size, file=sys.stderr) as bar:
        for start in range(0, len(items), args.batch_size):
            chunk = items[start:start + args.batch_size]
            replies = respond(backend, [c for _, c in chunk], params, args.thinking, args.thinking_budget,
                              directives=not args.no_directives)
            records += [{"id": id_, "sample": k, **r.to_dict()} for (id_, _), group in zip(chunk, replies)
                        for k, r in enumerate(group)]
            bar.update(len(chunk))
    if args.output:
        print(f"wrote {write_jsonl(args.output, records)} replies to {args.output}")
    else:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))


def _cmd_chat(args: argparse.Namespace) -> None:
    from autothink.inference import CHAT_HELP, chat

    params = _reply_params(args)
    backend = _reply_backend(args)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {backend.name}; {CHAT_HELP}")

    def lines():
        while True:
            if interactive:
                print("> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:
                return
            yield line

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    chat(backend, params, lines(), write, args.thinking, args.thinking_budget, directives=not args.no_directives)


def _reply_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `generate` and `chat`."""
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="embedded name, model dir, hub id or http://host:port/v1#model")
    parser.add_argument("--thinking", default="auto", choices=["auto", "on", "off"],
                        help="auto: the model decides (a prompt directive forces its mode); on/off: forced")
    parser.add_argument("--thinking-budget", type=int, default=None, metavar="N",
                        help="force </think><answer> after N think tokens")
    parser.add_argument("--no-directives", action="store_true", help="do not force the mode a prompt asks for")
    parser.add_argument("--max-tokens", type=int, default=512, help="generated tokens per reply, all segments")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autothink", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("data", help="data pipeline: tag | synth | coldstart | report (see `autothink data tag -h`)")
    for name, (_, _, _, help_) in JOBS.items():
        if not name.startswith("data "):
            commands.add_parser(name, help=f"{help_} (see `autothink {name} -h`)")

    run = commands.add_parser("run", help="the whole pipeline from one YAML recipe (finished stages are skipped)")
    run.add_argument("recipe", type=Path, help="e.g. recipes/quickstart.yaml")
    run.set_defaults(func=_cmd_run)

    models = commands.add_parser("models", help="embedded models").add_subparsers(dest="action", required=True)
    prepare = models.add_parser("prepare", help="convert embedded GGUF models to a safetensors cache once")
    prepare.add_argument("names", nargs="*", help="embedded model names (default: the default model)")
    prepare.add_argument("--force", action="store_true", help="convert again even if cached")
    prepare.set_defaults(func=_cmd_models_prepare)
    models.add_parser("list", help="list embedded models").set_defaults(func=_cmd_models_list)

    tasks = commands.add_parser("tasks", help="offline task suites").add_subparsers(dest="action", required=True)
    tasks.add_parser("list", help="list built-in suites").set_defaults(func=_cmd_tasks_list)
    export = tasks.add_parser("export", help="write a suite as JSONL")
    export.add_argument("suite", help="a built-in suite name or a tasks .jsonl file")
    export.add_argument("-o", "--output", type=Path, required=True)
    export.add_argument("--n", type=int, default=None, help="number of tasks (default: all, or 100 for generated)")
    export.add_argument("--difficulty", type=int, default=None, choices=range(1, 6), help="one tier only")
    export.add_argument("--seed", type=int, default=0)
    export.set_defaults(func=_cmd_tasks_export)

    server = commands.add_parser("serve", help="serve a local model over an OpenAI-compatible HTTP API")
    server.add_argument("--model", default="smollm2-135m-instruct", help="embedded name, model dir or hub id")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument("--device", default="auto")
    server.add_argument("--dtype", default="auto")
    server.add_argument("--max-queue", type=int, default=128, help="requests waiting at most; more get HTTP 429")
    server.add_argument("--max-batch", type=int, default=32, help="alike queued requests run together, at most this many")
    server.add_argument("--max-tokens", type=int, default=512, help="default max_tokens of a request")
    server.add_argument("--grace-seconds", type=float, default=60.0,
                        help="on Ctrl+C / SIGTERM, how long to let queued and running requests finish")
    server.add_argument("--no-directives", action="store_true", help="do not force the mode a prompt asks for")
    server.set_defaults(func=_cmd_serve)

    generate = commands.add_parser("generate", help="answer prompts with mode control and a thinking budget (JSON lines)")
    generate.add_argument("prompts", nargs="*", help="prompts (each one user message)")
    generate.add_argument("--input", type=Path, help='JSONL file of {"prompt": ...} or {"messages": [...]} (+ "id")')
    generate.add_argument("-o", "--output", type=Path, help="write the JSONL replies here (default: stdout)")
    generate.add_argument("--n", type=int, default=1, help="replies per prompt")
    generate.add_argument("--batch-size", type=int, default=16, help="prompts per respond call")
    _reply_options(generate)
    generate.set_defaults(func=_cmd_generate)

    chat = commands.add_parser("chat", help="interactive multi-turn chat (/mode, /budget, /reset, /quit)")
    _reply_options(chat)
    chat.set_defaults(func=_cmd_chat)
    return parser


# Commands that run one dataclass-configured job: `autothink NAME [--config FILE.yaml] [--option value ...]`.
JOBS = {
    "data tag": ("autothink.data.tag", "TagConfig", "run_tag", "label difficulty, domain and regime per query"),
    "data synth": ("autothink.data.synth", "SynthConfig", "run_synth", "stage-1 data: think-off rejection sampling, think-on agents"),
    "data coldstart": ("autothink.data.coldstart", "ColdstartConfig", "run_coldstart", "cold-start SFT data and RL prompts"),
    "upscale": ("autothink.upscale", "UpscaleConfig", "run_upscale", "depth upscaling: saturation analysis, layer duplication"),
    "distill": ("autothink.distill", "DistillConfig", "run_distill",
                "stage 1: distil a teacher into a student with ULD and MTP heads (--precompute: teacher top-k only)"),
    "sft": ("autothink.sft", "SFTConfig", "run_sft", "stage 2: cold-start SFT on AutoThink-format data (TRL SFTTrainer)"),
    "rl": ("autothink.rl", "RLConfig", "run_rl", "stage 3: Step-SRPO reinforcement learning (TRL GRPOTrainer subclass)"),
    "eval": ("autothink.eval", "EvalConfig", "run_eval",
             "accuracy, think-on rate and tokens under auto, forced-on and forced-off modes"),
}


def _summary(result) -> str:
    """One line about a job's result: record counts, a metrics dict, or an output path."""
    if isinstance(result, list):
        return f"{len(result)} records {dict(Counter(r.get('status', 'ok') for r in result))}"
    if isinstance(result, dict):
        return " ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, (dict, list)))
    return f"output: {result}"


def _job(name: str, argv: list[str]) -> None:
    import importlib

    from autothink.config import parse_config

    module, config_name, run_name, _ = JOBS[name]
    module = importlib.import_module(module)
    config = parse_config(getattr(module, config_name), argv, prog=f"autothink {name}")
    print(f"{name}: {_summary(getattr(module, run_name)(config))}")


def _cmd_run(args: argparse.Namespace) -> None:
    from autothink.pipeline import run_recipe

    run_recipe(args.recipe)


def _data_report(argv: list[str]) -> None:
    from autothink.data.report import write_report

    parser = argparse.ArgumentParser(prog="autothink data report")
    parser.add_argument("--output_dir", default="runs/data")
    print(f"report: {write_report(parser.parse_args(argv).output_dir)}")


def _eval_compare(argv: list[str]) -> None:
    import json
    from pathlib import Path

    from autothink.eval_report import format_comparison

    parser = argparse.ArgumentParser(prog="autothink eval compare",
                                     description="eval runs side by side, e.g. before and after RL")
    parser.add_argument("runs", nargs="+", help="output dirs of `autothink eval` (each holds metrics.json)")
    runs = {}
    for run in parser.parse_args(argv).runs:
        path = Path(run) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{run}: no metrics.json (not an `autothink eval` output dir, or unfinished)")
        runs[run] = json.loads(path.read_text())
    print(format_comparison(runs))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:2] == ["data", "report"]:
            _data_report(argv[2:])
            return 0
        if argv[:2] == ["eval", "compare"]:
            _eval_compare(argv[2:])
            return 0
        for words in (2, 1):
            if " ".join(argv[:words]) in JOBS:
                _job(" ".join(argv[:words]), argv[words:])
                return 0
        args = build_parser().parse_args(argv)
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"autothink {argv[0] if argv else ''}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
