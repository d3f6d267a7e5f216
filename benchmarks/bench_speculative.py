"""Self-speculative decoding: LocalBackend with the model's MTP heads drafting vs plain `generate`.

    .venv/bin/python benchmarks/bench_speculative.py [--model smollm2-135m-instruct] [--heads 1 3]
        [--rounds 3] [--train_prompts 96] [--steps 150]

For each head count, heads are trained with `autothink distill --mtp_only` (the model frozen,
the heads fitted to its own greedy replies to `--train_prompts` prompts: stories and arithmetic
questions), once, under `--output_dir`. Then, on held-out prompts of the same two kinds, in one
run and interleaved within each round:

1. tokens/s, greedy, `--max_tokens` per reply: single stream (each prompt alone) and one batch of
   8 prompts; medians over `--rounds` and the per-round ratio to plain decoding;
2. whether the replies are token for token the plain ones;
3. the acceptance rate of each head and the tokens committed per model forward.

`--model` can be any checkpoint (e.g. `runs/quickstart/rl`, an AutoThink model); when its dir
holds heads already (a stage-1 `autothink distill` output), they are measured too ("saved").
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from autothink.cli import main as autothink
from autothink.inference.backend import SamplingParams
from autothink.inference.local import LocalBackend
from autothink.inference.speculative import DraftStats
from autothink.models.mtp import has_mtp
from autothink.tasks import load_suite

STORY_TOPICS = ["a cat", "the sea", "a robot", "winter", "a city", "a dragon", "the moon", "a garden", "a violin",
                "a storm", "a library", "a train", "a desert", "a lighthouse", "a clock", "a forest", "a river",
                "a castle", "a spaceship", "a bakery", "a mountain", "a festival", "a detective", "an island"]
KINDS = ["Write a short story about {}.", "Describe {} in detail.", "Write a poem about {}.",
         "Explain to a child what {} is like."]


def prompts(count: int, held_out: bool) -> list[str]:
    """Stories about topics and arithmetic questions, half each; the held-out ones share neither
    a topic-and-kind pair nor a question with the training ones."""
    stories = [k.format(t) for t in STORY_TOPICS for k in KINDS]
    stories = stories[1::2] if held_out else stories[0::2]
    questions = [t.messages[-1]["content"] for t in load_suite("arithmetic", n=count, seed=1 if held_out else 0)]
    return [p for pair in zip(stories, questions) for p in pair][:count]


def train_heads(model: str, heads: int, out: Path, count: int, steps: int) -> Path:
    if (out / "mtp_heads.safetensors").exists():
        return out
    data = out.parent / "train_prompts.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n"
                            for i, p in enumerate(prompts(count, held_out=False))))
    done = sorted(out.parent.glob("heads-*/own_replies.jsonl"))
    if done and not (out / "own_replies.jsonl").exists():  # the same model's replies: generate them once
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(done[0], out / "own_replies.jsonl")
    start = time.perf_counter()
    code = autothink(["distill", "--mtp_only", "--student", model, "--data", str(data), "--output_dir", str(out),
                      "--mtp_heads", str(heads), "--reply_tokens", "128", "--max_steps", str(steps),
                      "--learning_rate", "1e-3", "--per_device_train_batch_size", "4", "--max_length", "384",
                      "--logging_steps", "25", "--save_steps", "50", "--report_to", "none"])
    if code:
        raise SystemExit(f"distill --mtp_only failed ({code})")
    print(f"heads={heads}: trained in {time.perf_counter() - start:.0f} s -> {out}")
    return out


def timed(backend: LocalBackend, conversations, params) -> tuple[float, list]:
    start = time.perf_counter()
    out = backend.generate(conversations, params)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--heads", type=int, nargs="*", default=[1, 3],
                        help="head counts to train with --mtp_only (0: none)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max_tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=8, help="held-out prompts (single stream: each alone)")
    parser.add_argument("--train_prompts", type=int, default=96)
    parser.add_argument("--steps", type=int, default=150, help="--mtp_only training steps")
    parser.add_argument("--output_dir", default="runs/bench_speculative")
    parser.add_argument("--split", choices=["held_out", "train"], default="held_out",
                        help="train: prompts whose replies the heads were fitted to (an upper bound)")
    args = parser.parse_args()
    root = Path(args.output_dir) / Path(args.model.rstrip("/")).name
    dirs = {k: train_heads(args.model, k, root / f"heads-{k}", args.train_prompts, args.steps) for k in args.heads if k}
    torch.manual_seed(0)
    plain = LocalBackend.from_pretrained(args.model, device="cpu", batch_size=8)
    fast = {f"mtp-{k}": LocalBackend.from_pretrained(d, device="cpu", batch_size=8, speculative="mtp")
            for k, d in dirs.items() if k}
    if has_mtp(args.model):
        fast["saved"] = LocalBackend.from_pretrained(args.model, device="cpu", batch_size=8, speculative="mtp")
    conversations = [[{"role": "user", "content": p}] for p in prompts(args.prompts, args.split == "held_out")]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    variants = {"plain": plain, **fast}
    times = {(name, mode): [] for name in variants for mode in ("single", "batch8")}
    tokens, replies = {}, {}
    stats = {name: {"single": DraftStats(), "batch8": DraftStats()} for name in variants if name != "plain"}
    for r in range(args.rounds):
        order = list(variants.items())
        order = order[r % len(order):] + order[: r % len(order)]  # rotate who goes first
        for name, backend in order:
            for mode in ("single", "batch8"):
                backend.draft_stats = DraftStats()
                if mode == "single":
                    runs = [timed(backend, [c], params) for c in conversations]
                    seconds, out = sum(t for t, _ in runs), [o[0] for _, o in runs]
                else:
                    seconds, out = timed(backend, conversations, params)
                times[name, mode].append(seconds)
                tokens[name, mode] = sum(g[0].tokens for g in out)
                replies[name, mode] = [g[0].text for g in out]
                if name != "plain":
                    stats[name][mode].add(backend.draft_stats)
        print(f"round {r + 1}: " + ", ".join(f"{n}/{m} {times[n, m][-1]:.1f}s" for n, m in times))
    print(f"\nmodel {args.model}; {args.prompts} {args.split} prompts x {args.max_tokens} tokens, greedy, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds\n")
    print("| variant | mode | tokens | tok/s (median) | ratio to plain (median; per round) | same text as plain "
          "| acceptance per head | tokens per model forward (single stream) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    calls = {"single": args.prompts, "batch8": 1}  # prefill forwards per round
    for name in variants:
        for mode in ("single", "batch8"):
            ts, base = times[name, mode], times["plain", mode]
            ratios = [b / t for b, t in zip(base, ts)]
            same = sum(a == b for a, b in zip(replies[name, mode], replies["plain", mode]))
            s = stats.get(name, {}).get(mode)
            acc = ", ".join(f"{a:.2f}" for a in s.acceptance()) if s else "-"
            forwards = s.steps + calls[mode] * args.rounds if s else None
            per_forward = f"{s.tokens / forwards:.2f}" if s and mode == "single" else "1.00" if not s else "-"
            print(f"| {name} | {mode} | {tokens[name, mode]} | {tokens[name, mode] / statistics.median(ts):.1f} "
                  f"| {statistics.median(ratios):.2f}x; {', '.join(f'{x:.2f}' for x in ratios)} "
                  f"| {same}/{len(conversations)} | {acc} | {per_forward} |")

if __name__ == "__main__":
    main()
