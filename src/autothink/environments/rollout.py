"""One agent episode: a backend's replies parsed for tool calls, each executed in an environment.

    trajectory = run_episode(backend, CodingEnvironment(), task, SamplingParams(max_tokens=384))

The environment is a TRL-style class (public methods are the tools, `reset`, `get_reward`); the
schemas shown to the model are the methods' docstrings (`transformers.utils.get_json_schema`, as
TRL builds them). Every failure the model causes is answered as a tool result it can read and
correct, and recorded on the call: an unparseable `<tool_call>`, an unknown tool, bad arguments,
a refused call (`ToolError`) come back as `{"error": ...}` with `is_error: true`; a program that
exits non-zero comes back with its output and `exit_code`. Errors of the machinery itself (no
sandbox) stop the episode with the exception.

Two private hooks, which TRL never sees, make multi-turn tasks (BFCL) work: `_tool_schemas()`
(the tools shown this turn) and `_next_question()` (the next user turn once the model answers,
None at the end).
"""
from __future__ import annotations

import inspect
import json

from autothink.environments.coding import ToolError, coding_task_prompt
from autothink.format import parse
from autothink.inference.backend import Backend, SamplingParams
from autothink.inference.respond import respond
from autothink.tasks import Task
from autothink.tasks.tool_calls import INVALID_CALL, parse_tool_calls
from autothink.tasks.trajectory import Trajectory, failure


def tools_of(env) -> dict:
    """The environment's tools by name: its public methods other than `reset` and `get_reward` (as TRL)."""
    return {name: getattr(env, name) for name, _ in inspect.getmembers(type(env), predicate=inspect.isfunction)
            if not name.startswith("_") and name not in ("reset", "get_reward")}


_SCHEMAS: dict[type, list[dict]] = {}  # an environment class's tool schemas (they depend on the class alone)


def tool_schemas(env) -> list[dict]:
    """OpenAI tool schemas of the environment's tools, from their signatures and docstrings."""
    if type(env) not in _SCHEMAS:
        from transformers.utils import get_json_schema

        schemas = []
        for method in tools_of(env).values():
            schema = get_json_schema(method)
            schema["function"].pop("return", None)
            schemas.append(schema)
        _SCHEMAS[type(env)] = schemas
    return list(_SCHEMAS[type(env)])


def execute(env, call: dict, parse_error: str | None = None) -> dict:
    """The tool message answering one call, with its status (`is_error`, `exit_code`)."""
    function = call["function"]
    name = function["name"]
    message = {"role": "tool", "tool_call_id": call["id"], "name": name}
    tools = tools_of(env)
    try:
        if name == INVALID_CALL or parse_error:
            raise ToolError(f"could not parse the tool call: {parse_error or 'invalid'}")
        if name not in tools:
            raise ToolError(f"unknown tool {name!r}; the tools are {', '.join(sorted(tools))}")
        arguments = json.loads(function.get("arguments") or "{}")
        try:
            inspect.signature(tools[name]).bind(**arguments)
        except TypeError as err:
            raise ToolError(f"bad arguments for {name}: {err}") from None
        if hasattr(env, "last_exit_code"):
            env.last_exit_code = None
        result = tools[name](**arguments)
    except ToolError as err:
        return {**message, "content": json.dumps({"error": str(err)}), "is_error": True}
    message["content"] = result if isinstance(result, str) else json.dumps(result, default=str)
    exit_code = getattr(env, "last_exit_code", None)
    if exit_code is not None:
        message["exit_code"] = exit_code
    return message


def first_messages(task: Task) -> list[dict]:
    """What the agent is first told: a coding task's instructions, else the task's own messages."""
    if task.domain == "code" and "entry_point" in task.metadata:
        system = [m for m in task.messages if m["role"] == "system"]
        return system + [{"role": "user", "content": coding_task_prompt(task)}]
    return [dict(m) for m in task.messages]


def run_episode(backend: Backend, env, task: Task, params: SamplingParams, max_turns: int = 8,
                thinking: str | None = None, forced_judge: str = "model") -> Trajectory:
    """Play one task to its end: the model answers without a tool call (on a multi-turn task, the last
    user turn), or `max_turns` replies are spent.

    With `thinking` ("auto", "on", "off") every reply goes through `inference.respond` (a forced mode
    follows the model's own judge, `forced_judge`); None samples the backend as it is.

    Returns the trajectory, with `outcome`: `reward` (the environment's `get_reward`), `passed`
    (reward 1), `turns`, `tool_calls`, `tool_errors`, `tokens` (generated, all turns), `modes` (the
    AutoThink mode of each reply: "on", "off" or None) and `end` ("answered", "max_turns" or
    "truncated": a reply cut by `max_tokens` with no tool call in it).
    """
    if params.n != 1:
        raise ValueError(f"an episode samples one reply a turn; got n={params.n}")
    env.reset(**task.to_dict())
    schemas = getattr(env, "_tool_schemas", None) or (lambda: tool_schemas(env))
    next_question = getattr(env, "_next_question", None) or (lambda: None)
    messages = first_messages(task)
    end, calls_made, errors, tokens, modes = "max_turns", 0, 0, 0, []
    for _ in range(max_turns):
        tools = schemas()
        if thinking is None:
            completion = backend.generate([messages], params, tools=tools)[0][0]
        else:
            completion = respond(backend, [messages], params, thinking, forced_judge=forced_judge, tools=tools)[0][0]
        tokens += completion.completion_tokens if thinking is not None else completion.tokens
        modes.append(parse(completion.text).mode)
        content, calls, problems = parse_tool_calls(completion.text)
        assistant = {"role": "assistant", "content": content if content or not calls else None}
        if calls:
            assistant["tool_calls"] = calls
        messages.append(assistant)
        if not calls and completion.finish_reason == "length":
            end = "truncated"
            break
        if not calls:
            question = next_question()  # a multi-turn task's next user turn ([]: go on with new tools)
            if question is None:
                end = "answered"
                break
            messages += question
            continue
        for i, call in enumerate(calls):
            result = execute(env, call, problems.get(i))
            calls_made += 1
            errors += failure(result) is not None  # the rule the error mask uses
            messages.append(result)
    reward = float(env.get_reward())
    outcome = {"reward": reward, "passed": reward == 1.0, "turns": sum(m["role"] == "assistant" for m in messages),
               "tool_calls": calls_made, "tool_errors": errors, "tokens": tokens, "modes": modes, "end": end}
    return Trajectory(id=task.id, messages=messages, tools=tools, outcome=outcome, source=backend.name)
