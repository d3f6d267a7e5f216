"""The package layout holds (DESIGN §5): no import cycle, the CLI imported by nothing, TRL and the
HF Trainer only under `training/`, and a framework-free algorithm core."""
import ast
import subprocess
import sys
from pathlib import Path

import autothink

ROOT = Path(autothink.__file__).parent
MODULES = {".".join(("autothink", *p.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__"): p
           for p in ROOT.rglob("*.py")}
TRAINER_NAMES = {"Trainer", "TrainingArguments", "TrainerCallback", "Seq2SeqTrainer"}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import statement in the file, lazy ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.module, [a.name for a in node.names]))
    return out


def _graph() -> dict[str, set[str]]:
    graph = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, names in _imports(path):
            if not module.startswith("autothink"):
                continue
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES] or [module]
            graph[name] |= {t for t in targets if t in MODULES and t != name}
    return graph


def test_no_import_cycle():
    graph, state, stack, cycles = _graph(), {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_library_never_imports_the_cli():
    users = [name for name, deps in _graph().items() if "autothink.cli" in deps]
    assert not users, f"{users} import autothink.cli"


def test_trl_and_the_hf_trainer_only_under_training():
    offenders = []
    for name, path in MODULES.items():
        for module, names in _imports(path):
            framework = module.split(".")[0] == "trl" or module.startswith("transformers.trainer") or (
                module == "transformers" and TRAINER_NAMES & set(names))
            if framework and not name.startswith("autothink.training"):
                offenders.append(f"{name}: {module} {names}")
    assert not offenders, offenders


def test_the_algorithm_core_imports_no_framework():
    for name, path in MODULES.items():
        if name.startswith("autothink.algorithms"):
            bad = [m for m, _ in _imports(path) if m.split(".")[0] in ("trl", "transformers", "accelerate", "datasets")]
            assert not bad, f"{name} imports {bad}"
    code = ("import sys, autothink.algorithms; "
            "bad = [m for m in ('trl', 'transformers', 'accelerate') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_benchmark_script_still_imports():
    bench = Path(__file__).parents[1] / "benchmarks"
    for script in sorted(bench.glob("bench_*.py")):
        run = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"{script.name}: {run.stderr[-800:]}"
