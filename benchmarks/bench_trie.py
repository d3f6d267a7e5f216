"""Trie-packed training vs a padded batch vs padding-free packing: forward+backward time and peak memory.

    .venv/bin/python benchmarks/bench_trie.py [--rounds 3] [--scenarios agent4 agent16 grpo] [--threads 2]

Model: the embedded SmolLM2-135M-Instruct, fp32, SDPA, on the CPU. The same sequences and loss
weights go through three layouts, and each computes the same loss (checked: the three losses
agree to 1e-4 relative, or the run stops):

- "padded": one right-padded batch [S, L_max] with its attention mask (the unpacked baseline);
- "padding-free": every sequence in one row, position ids restarting per sequence, no mask
  (transformers builds the block-diagonal mask; TRL's `padding_free`);
- "trie": `autothink.algorithms.trie_pack` + `trie_logprobs` (each shared prefix once).

Every layout puts only the rows its loss needs through the output head. Scenarios (random token
ids; compute does not depend on them):

- "agent4": a multi-turn agent trajectory tree: a 512-token shared context, 4 branches of a
  64-token turn, each forking again into 2 final 64-token turns (8 root-to-leaf sequences);
  every token after the first trained (weight 1);
- "agent16": a 384-token shared context and 16 branches of 64 tokens;
- "grpo": one GRPO group, G = 8 completions of 128 tokens on a 512-token prompt; the loss is
  Σ advantage·log p over completion tokens (the prompt is not trained).

R = tokens unpacked / tokens in the trie is the physical limit of the speedup. Each measurement
runs in a fresh process (so one layout's freed memory cannot hide another's peak): load the
model, reset the peak-RSS counter (/proc/self/clear_refs), run forward+backward once (its peak
RSS above the loaded model is the memory figure: activations, logits, parameter gradients), then
time a second forward+backward. Rounds interleave the layouts in a rotating order; the table
gives medians and per-round time ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time

LAYOUTS = ("padded", "padding-free", "trie")
SCENARIOS = ("agent4", "agent16", "grpo")
GOAL = 0.8  # speedup >= GOAL * R


def scenario(name: str, vocab: int, seed: int = 0):
    """(sequences, weights, loss_from): token lists, per-token loss weights, first position with a weight."""
    rng = random.Random(seed)

    def tokens(n):
        return [rng.randrange(vocab) for _ in range(n)]

    if name == "agent4":
        context = tokens(512)
        seqs = [context + turn + final for turn in (tokens(64) for _ in range(4)) for final in (tokens(64), tokens(64))]
        return seqs, [[1.0] * len(s) for s in seqs], 1
    if name == "agent16":
        context = tokens(384)
        seqs = [context + tokens(64) for _ in range(16)]
        return seqs, [[1.0] * len(s) for s in seqs], 1
    if name == "grpo":
        prompt = tokens(512)
        advantages = [rng.gauss(0, 1) for _ in range(8)]
        seqs = [prompt + tokens(128) for _ in range(8)]
        return seqs, [[0.0] * 512 + [a] * 128 for a in advantages], 512
    raise SystemExit(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")


def trie_ratio(seqs) -> float:
    from autothink.algorithms import trie_pack

    (pack,) = trie_pack(seqs, [[0.0] * len(s) for s in seqs], token_budget=sum(map(len, seqs)))
    return sum(map(len, seqs)) / len(pack)


# --------------------------------------------------------------------------- the three layouts


def _weighted_nll(logits, targets, weights):
    import torch

    logp = torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None])[:, 0]
    return -(weights * logp).sum()


def padded_loss(model, seqs, weights, start):
    import torch

    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    w = torch.tensor([ws + [0.0] * (width - len(ws)) for ws in weights])
    keep = width - start + 1  # positions start-1 .. width-2 predict tokens start .. width-1
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, use_cache=False).logits[:, :-1]
    return _weighted_nll(logits.reshape(-1, logits.size(-1)), ids[:, start:].reshape(-1), w[:, start:].reshape(-1))


def padding_free_loss(model, seqs, weights, start):
    import torch

    ids = torch.tensor([t for s in seqs for t in s])[None]
    positions = torch.tensor([p for s in seqs for p in range(len(s))])[None]
    offsets = [0]
    for s in seqs:
        offsets.append(offsets[-1] + len(s))
    rows = torch.tensor([o + t - 1 for o, s in zip(offsets, seqs) for t in range(start, len(s))])
    w = torch.tensor([ws[t] for ws in weights for t in range(start, len(ws))])
    logits = model(input_ids=ids, position_ids=positions, logits_to_keep=rows, use_cache=False).logits[0]
    return _weighted_nll(logits, ids[0, rows + 1], w)


def trie_loss(model, seqs, weights, start):
    from autothink.algorithms import trie_logprobs, trie_pack

    total = 0.0
    for pack in trie_pack(seqs, weights, token_budget=sum(map(len, seqs))):
        logp, _ = trie_logprobs(model, pack, nodes=pack.weight != 0)
        total = total - (pack.weight * logp).sum()
    return total


LOSSES = {"padded": padded_loss, "padding-free": padding_free_loss, "trie": trie_loss}


# --------------------------------------------------------------------------- one measurement per process


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def worker(name: str, layout: str, threads: int) -> dict:
    import torch

    from autothink.models import load_model

    torch.set_num_threads(threads)
    model, _ = load_model("smollm2-135m-instruct", device="cpu", dtype="float32")
    model.train()
    seqs, weights, start = scenario(name, model.config.vocab_size)
    loss_fn = LOSSES[layout]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS to the current RSS
    base = _rss_kb("VmRSS:")
    loss = loss_fn(model, seqs, weights, start)
    loss.backward()
    peak_mb = (_rss_kb("VmHWM:") - base) / 1024
    model.zero_grad(set_to_none=True)
    begin = time.perf_counter()
    second = loss_fn(model, seqs, weights, start)
    second.backward()
    seconds = time.perf_counter() - begin
    return {"loss": loss.item(), "seconds": seconds, "peak_mb": peak_mb}


def measure(name: str, layout: str, threads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", name, layout, "--threads", str(threads)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name}/{layout} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--worker", nargs=2, metavar=("SCENARIO", "LAYOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.threads)))
        return

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}")
    results = {(s, lay): [] for s in args.scenarios for lay in LAYOUTS}
    for r in range(args.rounds):
        for s in args.scenarios:
            order = LAYOUTS[r % 3:] + LAYOUTS[:r % 3]
            for layout in order:
                results[s, layout].append(measure(s, layout, args.threads))
                m = results[s, layout][-1]
                print(f"round {r + 1} {s:8s} {layout:13s} {m['seconds']:7.2f} s  {m['peak_mb']:7.0f} MB  "
                      f"loss {m['loss']:.6g}", flush=True)

    from autothink.models import load_tokenizer

    vocab = len(load_tokenizer())
    print("\n| scenario | R | layout | fwd+bwd s (median) | peak MB (median) | speedup vs padded (per round) | "
          "speedup / R |")
    print("|---|---|---|---|---|---|---|")
    verdicts = []
    for s in args.scenarios:
        ratio = trie_ratio(scenario(s, vocab)[0])
        losses = [m["loss"] for lay in LAYOUTS for m in results[s, lay]]
        spread = (max(losses) - min(losses)) / max(max(abs(x) for x in losses), 1e-30)
        if spread > 1e-4:
            raise SystemExit(f"{s}: the layouts' losses differ by {spread:.2e} relative: {losses}")
        padded = results[s, "padded"]
        for layout in LAYOUTS:
            runs = results[s, layout]
            per_round = [p["seconds"] / m["seconds"] for p, m in zip(padded, runs)]
            speedup = statistics.median(per_round)
            print(f"| {s} | {ratio:.2f} | {layout} | {statistics.median(m['seconds'] for m in runs):.2f} | "
                  f"{statistics.median(m['peak_mb'] for m in runs):.0f} | {speedup:.2f} "
                  f"({', '.join(f'{x:.2f}' for x in per_round)}) | {speedup / ratio:.2f} |")
        trie = results[s, "trie"]
        speedup = statistics.median(p["seconds"] / m["seconds"] for p, m in zip(padded, trie))
        memory_ok = statistics.median(m["peak_mb"] for m in trie) <= statistics.median(m["peak_mb"] for m in padded)
        verdicts.append(f"{s}: trie speedup {speedup:.2f} vs R {ratio:.2f}; goal speedup >= {GOAL} R "
                        f"{'met' if speedup >= GOAL * ratio else 'NOT met'}; peak memory <= padded "
                        f"{'met' if memory_ok else 'NOT met'}; the layouts' losses agree to {spread:.1e}")
    print("\n" + "\n".join(verdicts))

if __name__ == "__main__":
    main()
