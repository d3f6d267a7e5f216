"""BFCL's multi-turn tasks and simulators as an environment (the `bfcl-eval` package, installed `--no-deps`).

    tasks = load_bfcl_tasks("base", n=20)               # base | miss_func | miss_param | long_context
    env = bfcl_environment(tasks[0])                    # an instance of the class for its APIs
    env.reset(**tasks[0].to_dict())
    env.cd(folder="document")                           # the simulators' methods are the tools
    env.get_reward()                                    # 1.0 when every turn left BFCL's state

The 800 tasks (`BFCL_v4_multi_turn_*.json`) hold several user turns each, the initial state of
the simulated APIs (a file system, messaging, posting, ticketing, trading, travel booking,
vehicle control, math) and the ground-truth calls of every turn. The simulators are stdlib
Python that answer a bad call with `{"error": ...}`; they are called here by name with JSON
arguments (never through BFCL's `eval` of call strings). The reward is BFCL's state check: after
each turn, every simulator's public attributes must equal those of a twin that ran the turn's
ground-truth calls; one mismatch and the task fails (BFCL's own all-turns rule).

TRL's `environment_factory` finds an environment's tools on its class, so each combination of
APIs gets a class of its own (`bfcl_environment_class`), with one method per BFCL function whose
signature and docstring (from BFCL's function docs) give the schema. Later turns come from
`next_turn()`, a private hook (`_next_question`) that `run_episode` uses; in a TRL rollout only
the first turn is played and scored. `miss_func` tasks document a function only from its turn on.
"""
from __future__ import annotations

import ast
import copy
import functools
import importlib
import inspect
import json
from importlib import resources

from autothink.environments.coding import ToolError
from autothink.tasks import Task

CATEGORIES = ("base", "miss_func", "miss_param", "long_context")
_PACKAGE = "bfcl_eval"
_SOURCE = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code"
CLASS_MODULES = {"GorillaFileSystem": "gorilla_file_system", "MathAPI": "math_api", "MessageAPI": "message_api",
                 "TwitterAPI": "posting_api", "TicketAPI": "ticket_api", "TradingBot": "trading_bot",
                 "TravelAPI": "travel_booking", "VehicleControlAPI": "vehicle_control"}
STATELESS = ("MathAPI",)


def _data(*parts: str):
    try:
        return resources.files(_PACKAGE).joinpath("data", *parts)
    except ModuleNotFoundError:
        raise ValueError("the BFCL environment needs the bfcl-eval package: pip install --no-deps "
                         "bfcl-eval==2026.3.23 (`make setup` installs it)") from None


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@functools.lru_cache(maxsize=None)
def function_docs(api: str) -> tuple[dict, ...]:
    """BFCL's documentation of one API's functions (name, description, parameters)."""
    return tuple(_jsonl(_data("multi_turn_func_doc", f"{CLASS_MODULES[api]}.json")))


def load_bfcl_tasks(category: str = "base", n: int | None = None, skip: int = 0) -> list[Task]:
    """BFCL multi-turn tasks as `Task`s: the first user turn as `messages`, the rest in `metadata`.

    Raises:
        ValueError: an unknown category, or bfcl-eval not installed.
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown BFCL category {category!r}; choose from {', '.join(CATEGORIES)}")
    entries = _jsonl(_data(f"BFCL_v4_multi_turn_{category}.json"))
    answers = _jsonl(_data("possible_answer", f"BFCL_v4_multi_turn_{category}.json"))
    answers = {a["id"]: a["ground_truth"] for a in answers}
    tasks = []
    for entry in entries[skip:skip + n if n is not None else None]:
        first = entry["question"][0] or [{"role": "user", "content": "Continue."}]
        tasks.append(Task(id=entry["id"], messages=list(first), domain="tool-use", source="bfcl", metadata={
            "questions": entry["question"], "initial_config": entry["initial_config"],
            "involved_classes": entry["involved_classes"], "ground_truth": answers[entry["id"]],
            "missed_function": entry.get("missed_function") or {}, "long_context": category == "long_context"}))
    return tasks


def parse_call(text: str) -> tuple[str, dict]:
    """A ground-truth call string (`mv(source='a', destination='b')`) as (name, keyword arguments), by `ast`."""
    node = ast.parse(text.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a function call: {text!r}")
    return node.func.id, {"__args__": [ast.literal_eval(a) for a in node.args],
                          **{k.arg: ast.literal_eval(k.value) for k in node.keywords}}


def ground_truth_calls(task: Task, turn: int) -> list[tuple[str, dict]]:
    """A turn's ground-truth calls as (name, keyword arguments); positional arguments get their parameter names."""
    truth = task.metadata["ground_truth"]
    env = bfcl_environment(task)
    calls = []
    for text in truth[turn] if turn < len(truth) else []:
        name, arguments = parse_call(text)
        names = list(inspect.signature(getattr(env, name)).parameters)
        arguments.update(zip(names, arguments.pop("__args__")))
        calls.append((name, arguments))
    return calls


def _docstring(doc: dict) -> str:
    props = doc.get("parameters", {}).get("properties", {})
    lines = [doc.get("description", doc["name"]).strip(), ""]
    if props:
        lines.append("Args:")
        lines += [f"    {name}: {(spec.get('description') or name).strip()}" for name, spec in props.items()]
    return "\n".join(lines)


def _tool(api: str, name: str, original, doc: dict):
    """A method of the environment class calling `name` on the `api` simulator, with BFCL's doc as docstring."""
    signature = inspect.signature(original)

    def method(self, **arguments):
        return self._call(api, name, arguments)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = _docstring(doc)
    method.__signature__ = signature
    method.__annotations__ = {k: v for k, v in getattr(original, "__annotations__", {}).items() if k != "return"}
    method.__annotations__["return"] = str
    return method


class BFCLEnvironment:
    """The simulators of one BFCL task and its ground-truth twins (see the module docstring)."""

    APIS: tuple[str, ...] = ()

    def __init__(self):
        self.task_id, self.turn, self.matches = None, 0, []
        self.instances, self.twins = {}, {}
        self.hidden: dict[str, int] = {}
        self.questions, self.truth = [], []

    def reset(self, **row) -> str | None:
        """Load the row's task (a `load_bfcl_tasks` row): fresh simulators in its initial state."""
        metadata = row.get("metadata") or row
        missing = [k for k in ("initial_config", "involved_classes", "ground_truth") if k not in metadata]
        if missing:
            raise ValueError(f"a BFCL row needs {', '.join(missing)} (rows of load_bfcl_tasks carry them)")
        if set(metadata["involved_classes"]) != set(self.APIS):
            raise ValueError(f"this environment has {self.APIS}; the task needs {metadata['involved_classes']}")
        self.task_id, self.turn, self.matches = row.get("id"), 0, []
        self.questions, self.truth = metadata.get("questions", []), metadata["ground_truth"]
        self.hidden = {name: int(turn) for turn, names in (metadata.get("missed_function") or {}).items()
                       for name in names}
        self.instances, self.twins = ({api: _simulator(api, metadata["initial_config"], metadata.get("long_context"))
                                       for api in self.APIS} for _ in range(2))
        return None

    def _call(self, api: str, name: str, arguments: dict):
        try:
            result = getattr(self.instances[api], name)(**arguments)
        except Exception as err:  # a simulator choking on bad values: the model's error, answered as one
            raise ToolError(f"{name} failed: {type(err).__name__}: {err}") from None
        return result if isinstance(result, str) else json.dumps(result, default=str)

    def _tool_schemas(self) -> list[dict]:
        """The schemas the model sees now: a `miss_func` function is documented from its turn on (as in BFCL,
        where a hidden function's doc is held back but a call to it still runs)."""
        from autothink.environments.rollout import tool_schemas

        return [s for s in tool_schemas(self) if self.hidden.get(s["function"]["name"], -1) <= self.turn]

    def _finish_turn(self) -> None:
        """Run the turn's ground-truth calls on the twins and compare every simulator's state (BFCL's own
        `state_checker`: the public attributes of each)."""
        from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import state_checker

        if self.turn >= len(self.truth) or len(self.matches) > self.turn:
            return
        for text in self.truth[self.turn]:
            name, arguments = parse_call(text)
            api = next(a for a in self.APIS if hasattr(self.twins[a], name))
            method = getattr(self.twins[api], name)
            positional = arguments.pop("__args__")
            method(*positional, **arguments)
        self.matches.append(state_checker(self.instances, self.twins)["valid"])

    def _next_question(self) -> list[dict] | None:
        """Close the current turn; the next turn's user messages ([] for a turn that only reveals a function),
        or None when the task has no more turns."""
        self._finish_turn()
        self.turn += 1
        return list(self.questions[self.turn]) if self.turn < len(self.questions) else None

    def get_reward(self) -> float:
        """1.0 when the state matched the ground truth after every turn played, else 0.0."""
        if self.task_id is None:
            return 0.0
        self._finish_turn()
        return float(bool(self.matches) and all(self.matches))


def _simulator(api: str, config: dict, long_context: bool):
    cls = getattr(importlib.import_module(f"{_SOURCE}.{CLASS_MODULES[api]}"), api)
    instance = cls()
    if api not in STATELESS:
        instance._load_scenario(copy.deepcopy(config.get(api, {})), long_context=bool(long_context))
    return instance


@functools.lru_cache(maxsize=None)
def bfcl_environment_class(apis: tuple[str, ...]) -> type:
    """The environment class of one combination of BFCL APIs: a method per function of each."""
    members = {"APIS": tuple(sorted(apis))}
    for api in sorted(apis):
        cls = getattr(importlib.import_module(f"{_SOURCE}.{CLASS_MODULES[api]}"), api)
        for doc in function_docs(api):
            members[doc["name"]] = _tool(api, doc["name"], getattr(cls, doc["name"]), doc)
    return type("BFCL_" + "_".join(sorted(apis)), (BFCLEnvironment,), members)


def bfcl_environment(task: Task) -> BFCLEnvironment:
    """A fresh environment for one BFCL task (its class is shared by every task on the same APIs)."""
    return bfcl_environment_class(tuple(sorted(task.metadata["involved_classes"])))()
