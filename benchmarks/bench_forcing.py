"""Forced modes after the model's own judge vs the empty-judge prefill, and format-constrained decoding.

    .venv/bin/python benchmarks/bench_forcing.py --model runs/quickstart/rl [--n 20] [--max_tokens 128]

One checkpoint, the same held-out tasks, greedy decoding, every variant in this run (`autothink
eval` under the hood; samples and reports under `--output_dir/<variant>`):

- "own judge": `thinking=on|off` forces the mode token after the model's own judge (the default);
- "empty judge": the forced mode continues `<judge></judge><think_on|off>` (`--forced_judge empty`);
- each of them again with `--constrained` (the AutoThink grammar as a logits processor);

and "auto" (the model decides) without and with the grammar. Printed per variant and mode:
accuracy, accuracy over well-formed replies, the well-formed rate, think-on rate and generated
tokens (greedy: they do not vary between runs). Then the grammar's cost: `--rounds` rounds of one
batch of `auto` replies with and without it, interleaved, as seconds per generated token (medians
and per-round ratios).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from autothink.eval.run import EvalConfig, load_suites, run_eval
from autothink.inference.backend import SamplingParams
from autothink.inference.local import LocalBackend

VARIANTS = {  # name: (modes, forced_judge, constrained)
    "auto": (["auto"], "model", False),
    "auto, constrained": (["auto"], "model", True),
    "own judge": (["on", "off"], "model", False),
    "empty judge": (["on", "off"], "empty", False),
    "own judge, constrained": (["on", "off"], "model", True),
    "empty judge, constrained": (["on", "off"], "empty", True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/quickstart/rl")
    parser.add_argument("--suites", nargs="+", default=["arithmetic:1", "gsm_symbolic:1", "gsm_symbolic:5"])
    parser.add_argument("--n", type=int, default=20, help="tasks per suite")
    parser.add_argument("--max_tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1, help="task seed (held out: training used seed 0)")
    parser.add_argument("--output_dir", default="runs/bench_forcing")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the grammar's cost")
    args = parser.parse_args()

    backend = LocalBackend.from_pretrained(args.model, device="cpu")
    rows = []
    for name, (modes, judge, constrained) in VARIANTS.items():
        config = EvalConfig(model=args.model, suites=args.suites, n=args.n, modes=modes, max_tokens=args.max_tokens,
                            seed=args.seed, forced_judge=judge, constrained=constrained,
                            output_dir=str(Path(args.output_dir) / name.replace(", ", "-").replace(" ", "_")))
        metrics = run_eval(config, backend=backend)
        rows += [(name, mode, metrics["all"][mode]) for mode in modes]

    print(f"\nmodel {args.model}; suites {' '.join(args.suites)}; {args.n} tasks each, greedy, "
          f"max_tokens {args.max_tokens}")
    print(f"{'variant':26s}{'mode':6s}{'n':>5s}{'accuracy':>10s}{'acc. wf':>9s}{'well-formed':>13s}"
          f"{'think-on':>10s}{'tokens':>8s}")
    for name, mode, m in rows:
        wf = "-" if m["accuracy_well_formed"] is None else f"{m['accuracy_well_formed']:.3f}"
        print(f"{name:26s}{mode:6s}{m['n']:5d}{m['accuracy']:10.3f}{wf:>9s}{m['format_rate']:13.3f}"
              f"{m['think_on_rate']:10.3f}{m['total_tokens']:8.1f}")

    tasks = [t for suite in load_suites(EvalConfig(suites=args.suites, n=args.n, seed=args.seed)).values()
             for t in suite][:16]
    per_token = {False: [], True: []}
    for _ in range(args.rounds):
        for constrained in (False, True):
            params = SamplingParams(temperature=0, max_tokens=args.max_tokens, constrained=constrained)
            start = time.perf_counter()
            outs = backend.generate([t.messages for t in tasks], params)
            per_token[constrained].append((time.perf_counter() - start) / sum(c[0].tokens for c in outs))
    ratios = [c / f for f, c in zip(per_token[False], per_token[True])]
    print(f"\nthe grammar's cost, one batch of {len(tasks)} auto replies, {args.rounds} rounds: "
          f"{statistics.median(per_token[False]) * 1e3:.1f} ms/token free, "
          f"{statistics.median(per_token[True]) * 1e3:.1f} ms/token constrained; ratio per round "
          f"{', '.join(f'{r:.3f}' for r in ratios)} (median {statistics.median(ratios):.3f})")


if __name__ == "__main__":
    main()
