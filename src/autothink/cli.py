"""The `autothink` command line: `autothink COMMAND [--config FILE.yaml] [--option value ...]`.

Each command is a job of `autothink.config.JOBS` (a config dataclass and the function that runs
it); this module only finds the job, parses its options and reports errors.
"""
from __future__ import annotations

import importlib
import sys

from autothink.config import JOBS, command_help, parse_config
from autothink.pipeline import summarize


def _find(argv: list[str]) -> tuple[str | None, list[str]]:
    """The longest command name that `argv` starts with, and the arguments after it."""
    for words in (2, 1):
        name = " ".join(argv[:words])
        if len(argv) >= words and name in JOBS:
            return name, argv[words:]
    return None, argv


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name, rest = _find(argv)
    if name is None:
        group = [n for n in JOBS if argv and n.startswith(argv[0] + " ")]
        if argv and argv[0] not in ("-h", "--help") and not group:
            print(f"autothink: unknown command {argv[0]!r}\n\n{command_help()}", file=sys.stderr)
            return 2
        print(command_help() if not group else f"autothink {argv[0]}: one of {', '.join(group)}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    job = JOBS[name]
    try:
        module = importlib.import_module(job.module)
        config = parse_config(getattr(module, job.config), rest, prog=f"autothink {name}")
        result = getattr(module, job.run)(config)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"autothink {name}: error: {err}", file=sys.stderr)
        return 2
    summary = summarize(result) if result is not None else None
    line = " ".join(f"{k}={v}" for k, v in summary.items()) if isinstance(summary, dict) else summary
    if line:
        print(f"{name}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
