"""`autothink data coldstart`: judge-then-answer SFT data with majority-vote mode labels.

Per query: n samples in each mode, verified; the mode with the higher pass rate wins, ties
(within δ) go to think-off. 1% of queries get a random mode; a fraction of prompts carry a user
directive ("DO NOT THINK", "Think deeper", ...) and their mode follows it. A judge writes the
rationale for the chosen mode, which opens the response; it sees the query, the response chosen
and the directive, if any. Also writes the RL prompts, with the vote as the prior mode of
Step-SRPO (the tagged regime where there is no vote): a random or directive label is a fact about
the SFT row, not about which mode is right. A query given a directive keeps it in its RL prompt
(with `directive` set), so RL goes on rewarding obedience on that share of prompts.

With a `fallback` backend, a query whose chosen mode has no verified sample asks it once (its
think-on reply must carry reasoning); a query that neither mode solved is labelled with its
tagged regime, since a 0-0 vote carries no signal. A weak sampling model (the CPU quickstart's
135M) then still yields data, from `reference:` solutions; labels stay votes wherever it solves.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from autothink.algorithms.rewards import vote_mode
from autothink.config import check_integers
from autothink.data.agents import (
    Prompts,
    first_sentences,
    split_final_answer,
    strip_tags,
)
from autothink.data.common import (
    Backends,
    StageConfig,
    agent_factory,
    as_task,
    check,
    load_tagged,
)
from autothink.data.runner import record_seed, run_records
from autothink.format import DIRECTIVES, render
from autothink.records.jsonl import write_jsonl


def choose_label(record_id: str, p_on: float | None, p_off: float | None, prior: str, delta: float,
                 random_fraction: float, directive_fraction: float, seed: int = 0) -> dict:
    """The target mode of one query and why: directive, random, vote, or prior (no verifier).

    The draws are seeded by the record id, so labels are the same on every run.
    """
    rng = random.Random(record_seed(record_id, "label", seed))
    if rng.random() < directive_fraction:
        mode = rng.choice(["on", "off"])
        return {"mode": mode, "source": "directive", "directive": rng.choice(DIRECTIVES[mode])}
    if rng.random() < random_fraction:
        return {"mode": rng.choice(["on", "off"]), "source": "random", "directive": None}
    if p_on is None or p_off is None:
        return {"mode": prior, "source": "prior", "directive": None}
    return {"mode": vote_mode(p_on, p_off, delta), "source": "vote", "directive": None}


RESPONSE_CHARS = 2000  # of the chosen response, shown to the judge that writes the rationale


@dataclass
class ColdstartConfig(StageConfig):
    input: str = field(default="runs/data/tagged.jsonl", metadata={"help": "tagged queries (`data tag` output)"})
    on_backend: str = field(default="smollm2-135m-instruct", metadata={"help": "samples think-on responses"})
    off_backend: str | None = field(default=None,
                                    metadata={"help": "samples think-off responses (default: on_backend)"})
    judge: str | None = field(default=None, metadata={"help": "writes the mode rationale (default: on_backend)"})
    samples: int = field(default=4, metadata={"help": "samples per mode per query"})
    delta: float = field(default=0.0, metadata={"help": "pass-rate margin within which think-off wins"})
    random_fraction: float = field(default=0.01, metadata={"help": "queries given a random mode"})
    directive_fraction: float = field(default=0.1, metadata={"help": "prompts given a user directive"})
    seed: int = field(default=0, metadata={"help": "seed of the random-mode and directive draws"})
    fallback: str | None = field(default=None, metadata={
        "help": "backend asked once when no sample of the chosen mode verifies (a stronger model, or "
                "'reference:<tasks.jsonl>' for the tasks' own solutions); a query neither mode solved then "
                "takes its tagged regime as the label"})

    def __post_init__(self):
        super().__post_init__()
        check_integers(self, samples=1)
        for name in ("random_fraction", "directive_fraction", "delta"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"ColdstartConfig.{name} must be in [0, 1], got {getattr(self, name)!r}")


def coldstart_record(record: dict, agents: dict, prompts: Prompts, config: ColdstartConfig) -> dict:
    task = as_task(record)
    samples, rates = {}, {}
    for mode, template in (("on", "think_on"), ("off", "think_off")):
        replies = agents[mode].ask(prompts.messages(template, query=task.prompt), n=config.samples,
                                   seed=record_seed(task.id, "coldstart", mode))
        verdicts = [check(task, split_final_answer(r)[1] or r)[0] for r in replies]
        samples[mode] = list(zip(replies, verdicts))
        rates[mode] = None if task.verifier is None else sum(map(bool, verdicts)) / len(verdicts)
    unsolved = config.fallback is not None and rates["on"] == rates["off"] == 0
    # Neither mode solved it: the vote says nothing, and only a fallback reply can be kept; the tag's regime decides.
    label = choose_label(task.id, None if unsolved else rates["on"], None if unsolved else rates["off"],
                         record["regime"], config.delta, config.random_fraction, config.directive_fraction, config.seed)
    mode = label["mode"]
    usable = [reply for reply, passed in samples[mode] if passed is not False]
    if not usable and "fallback" in agents:
        reply = agents["fallback"].ask(prompts.messages(f"think_{mode}", query=task.prompt),
                                       seed=record_seed(task.id, "coldstart", "fallback"))[0]
        reasoning, answer = split_final_answer(reply)
        if check(task, answer or reply)[0] is not False and (mode == "off" or reasoning.strip()):
            usable, label = [reply], label | {"response": "fallback"}
    provenance = {
        mode: {"backend": agents[mode].backend.name, "verdicts": [passed for _, passed in samples[mode]]}
        for mode in samples
    } | {"judge": agents["judge"].backend.name}
    if label.get("response") == "fallback":
        provenance["fallback"] = agents["fallback"].backend.name
    # Step-SRPO's prior comes from the vote (or, unvoted, the tag), never from a random or directive label.
    voted = rates["on"] is not None and not unsolved
    prior = vote_mode(rates["on"], rates["off"], config.delta) if voted else record["regime"]
    base = {"id": task.id, "pass_rates": rates, "label": label, "prior_mode": prior, "provenance": provenance}
    if not usable:
        return base | {"status": "rejected", "reason": f"no verified think-{mode} response"}
    directive = label["directive"]
    judge = agents["judge"]
    if hasattr(judge.backend, "rationale"):  # the reference stand-in writes it from the worked solution
        rationale = judge.backend.rationale(task.prompt, mode, directive)
    else:  # the judge sees the chosen response (and the directive), as the paper's does
        rationale = judge.ask(
            prompts.messages(
                "judge_rationale", query=task.prompt, mode_description="think-on" if mode == "on" else "think-off",
                needs_reasoning="needs" if mode == "on" else "does not need", response=usable[0][:RESPONSE_CHARS],
                directive_note=f" (the user also wrote: \"{directive}\")" if directive else "",
            ),
            seed=record_seed(task.id, "rationale"), temperature=0.3,
        )[0]
    reasoning, answer = split_final_answer(usable[0])
    response = render(mode, strip_tags(answer or reasoning), judge=first_sentences(strip_tags(rationale)),
                      think=strip_tags(reasoning) if mode == "on" else "")
    messages = with_directive(task.messages, label)
    return base | {
        "status": "kept", "mode": mode, "messages": messages + [{"role": "assistant", "content": response}],
        "domain": record["domain"], "difficulty": record["difficulty"],
    }


def run_coldstart(config: ColdstartConfig, backends: Backends | None = None) -> list[dict]:
    """Label and render cold-start data; writes `coldstart.records.jsonl`, `coldstart.jsonl`, `rl_prompts.jsonl`."""
    records = load_tagged(config)
    agent = agent_factory(config, backends)
    agents = {"on": agent(config.on_backend), "off": agent(config.off_backend or config.on_backend),
              "judge": agent(config.judge or config.on_backend)}
    if config.fallback:
        agents["fallback"] = agent(config.fallback)
    prompts = Prompts(config.prompts_dir)
    out = Path(config.output_dir)
    results = run_records(records, lambda r: coldstart_record(r, agents, prompts, config),
                          out / "coldstart.records.jsonl", workers=config.workers, desc="coldstart")
    kept = [r for r in results if r["status"] == "kept"]
    keys = ("id", "messages", "mode", "domain", "difficulty")
    write_jsonl(out / "coldstart.jsonl",
                ({k: r[k] for k in keys} | {"label_source": r["label"]["source"]} for r in kept))
    by_id = {r["id"]: r for r in results}
    rl_prompts = []
    for q in records:
        if q.get("verifier") is None:
            continue
        label = by_id[q["id"]].get("label") or {}
        rl_prompts.append({
            "id": q["id"], "prompt": with_directive(q["messages"], label), "verifier": q["verifier"],
            "reference": json.dumps(q["reference"]),  # one string type, whatever the verifier's reference
            "difficulty": q["difficulty"], "domain": q["domain"],
            "prior_mode": by_id[q["id"]].get("prior_mode", q["regime"]),
            "directive": label["mode"] if label.get("directive") else None,
        })
    write_jsonl(out / "rl_prompts.jsonl", rl_prompts)
    return results


def with_directive(messages: list[dict], label: dict) -> list[dict]:
    """`messages` with the label's directive, if any, appended to the last user message (as SFT rows have it)."""
    messages = [dict(m) for m in messages]
    if label.get("directive"):
        messages[-1]["content"] = f"{messages[-1]['content']}\n\n{label['directive']}"
    return messages
