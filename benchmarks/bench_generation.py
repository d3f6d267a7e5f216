"""Generation speed: LocalBackend (HF `generate`, fp32) vs the llama.cpp backend at f16 and q8_0.

    .venv/bin/python benchmarks/bench_generation.py [--model smollm2-135m-instruct] [--rounds 3]
        [--eval_tasks 100]

One model, one run, every variant on the same prompts (the GGUFs are `autothink export gguf`
files of the same checkpoint, made once and cached):

1. tokens/s, greedy, `--max_tokens` per reply, single stream and batches of 8 and 16 distinct
   prompts; the variants are interleaved within each round; medians over `--rounds` and the
   per-round ratio to LocalBackend;
2. the f16 round trip: greedy replies of the f16 GGUF vs the HF model, token for token; for each
   prompt that diverges, the first divergent position and the HF model's logit gap there
   (its top token minus the token llama.cpp took: a near-tie that f16 rounding flips);
3. `autothink eval` wall time on `--eval_tasks` tasks (auto mode, greedy), per backend, with the
   accuracy and the number of tasks whose replies are identical to LocalBackend's; once with the
   one-shot format primer (long prompts that every row shares, short replies: prefill-bound) and
   once without (the model's own, longer replies: decode-bound).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from autothink.eval.run import EvalConfig, run_eval
from autothink.inference.backend import SamplingParams
from autothink.inference.llamacpp import LlamaCppBackend
from autothink.inference.local import LocalBackend
from autothink.models.gguf import cached_gguf

TOPICS = ["a cat", "the sea", "a robot", "winter", "a city", "a dragon", "the moon", "a garden",
          "a violin", "a storm", "a library", "a train", "a desert", "a lighthouse", "a clock", "a forest"]
PROMPTS = [[{"role": "user", "content": f"Write a long, detailed story about {t}."}] for t in TOPICS]


def tokens_per_second(backend, prompts, max_tokens: int) -> float:
    start = time.perf_counter()
    out = backend.generate(prompts, SamplingParams(temperature=0, max_tokens=max_tokens))
    return sum(g[0].tokens for g in out) / (time.perf_counter() - start)


def round_trip(local: LocalBackend, llama: LlamaCppBackend, max_tokens: int) -> list[str]:
    """Per prompt: 'equal (N tokens)' or the first divergence and the HF logit gap there."""
    lines = []
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    ours, theirs = llama.generate(PROMPTS[:8], params), local.generate(PROMPTS[:8], params)
    tok = local.tokenizer
    for conv, a, b in zip(PROMPTS[:8], ours, theirs):
        ids_a = tok(a[0].text, add_special_tokens=False)["input_ids"]
        ids_b = tok(b[0].text, add_special_tokens=False)["input_ids"]
        if ids_a == ids_b:
            lines.append(f"equal ({b[0].tokens} tokens)")
            continue
        k = next(i for i, (x, y) in enumerate(zip(ids_a + [-1], ids_b + [-1])) if x != y)
        prompt = local._encode([conv], None)[0] + ids_b[:k]
        with torch.no_grad():
            logits = local.model(torch.tensor([prompt])).logits[0, -1]
        gap = float(logits.max() - logits[ids_a[k]]) if k < len(ids_a) else float("nan")
        lines.append(f"first divergence at token {k} of {b[0].tokens}: HF logit gap {gap:.4f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max_tokens", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--eval_tasks", type=int, default=100, help="0 skips the eval timing")
    parser.add_argument("--eval_suite", default="arithmetic")
    parser.add_argument("--eval_max_tokens", type=int, default=256)
    parser.add_argument("--output_dir", default="runs/bench_generation")
    args = parser.parse_args()

    local = LocalBackend.from_pretrained(args.model, device="cpu", batch_size=max(args.batches))
    tok = local.tokenizer
    ggufs = {t: cached_gguf(args.model, t) for t in ("f16", "q8_0")}
    variants = {"local fp32": local,
                **{f"llama.cpp {t}": LlamaCppBackend(p, tok, batch_size=max(args.batches)) for t, p in ggufs.items()}}
    print(f"model {args.model}; torch threads {torch.get_num_threads()}; greedy, {args.max_tokens} tokens per reply")
    for backend in variants.values():  # warm-up
        backend.generate(PROMPTS[:1], SamplingParams(temperature=0, max_tokens=4))

    speed = {(name, b): [] for name in variants for b in args.batches}
    for r in range(args.rounds):
        for b in args.batches:
            for name, backend in variants.items():
                speed[name, b].append(tokens_per_second(backend, PROMPTS[:b], args.max_tokens))
        print(f"round {r + 1}: " + "  ".join(f"{n}@{b} {speed[n, b][-1]:.1f}" for n, b in speed), flush=True)
    print(f"\n{'variant':16s}{'batch':>6s}{'tokens/s':>10s}{'x local':>9s}  per-round ratios")
    for (name, b), values in speed.items():
        ratios = [v / base for v, base in zip(values, speed["local fp32", b])]
        print(f"{name:16s}{b:6d}{statistics.median(values):10.1f}{statistics.median(ratios):9.2f}  "
              + " ".join(f"{x:.2f}" for x in ratios))

    print("\nf16 GGUF vs HF fp32, greedy, 8 prompts:")
    for line in round_trip(local, variants["llama.cpp f16"], args.max_tokens):
        print("  " + line)

    for primer in (True, False) if args.eval_tasks else ():
        what = "with the one-shot primer (long shared prompts, short replies)" if primer else \
            "without a primer (short prompts, the model's own longer replies)"
        print(f"\nautothink eval {what}: {args.eval_tasks} {args.eval_suite} tasks, auto, greedy, "
              f"max_tokens {args.eval_max_tokens}, batch 16")
        replies, times = {}, {}
        for name, backend in variants.items():
            out = Path(args.output_dir) / f"{name.replace(' ', '_')}{'-primer' if primer else ''}"
            shutil.rmtree(out, ignore_errors=True)
            config = EvalConfig(model=args.model, suites=[args.eval_suite], n=args.eval_tasks, modes=["auto"],
                                max_tokens=args.eval_max_tokens, primer=primer, output_dir=str(out))
            start = time.perf_counter()
            metrics = run_eval(config, backend=backend)
            times[name] = time.perf_counter() - start
            rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
            replies[name] = {row["task_id"]: row["response"] for row in rows}
            m = metrics["all"]["auto"]
            low, high = m["accuracy_ci"]
            same = sum(replies[name][k] == replies["local fp32"].get(k) for k in replies[name])
            print(f"  {name:16s}{times[name]:8.1f} s  {times['local fp32'] / times[name]:5.2f}x  "
                  f"accuracy {m['accuracy']:.3f} [{low:.2f}, {high:.2f}]  tokens {m['total_tokens']:.1f}  "
                  f"replies equal to local: {same}/{len(rows)}", flush=True)

if __name__ == "__main__":
    main()
