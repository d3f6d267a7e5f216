"""A scripted agent built from ground truth: the CPU stand-in for a strong teacher.

    backend = ReferenceAgent(tasks, noise=0.5, seed=0)   # `agent collect --backend reference-agent`

It plays the `CodingEnvironment` like a careful engineer: write `solution.py`, `run_tests`, then a
short summary. With probability `noise` per task it first makes one realistic mistake, which the
environment really executes and really reports, and then corrects it. Each mistake is the failing
call itself, so error-masked SFT drops exactly the mistake and trains the correction:

- `syntax`: `run_python` on a draft with a syntax error (exit code 1);
- `import_first`: `run_python` importing `solution.py` before it exists (exit code 1);
- `missing_file`: `read_file` of a file that does not exist (a tool error);
- `bad_arguments`: `write_file` with a wrong argument name (a tool error);
- `malformed`: a `<tool_call>` that is not valid JSON (a parse error).

Its replies are `<tool_call>` text, parsed like any model's, so `agent collect` runs it through the
same loop as the embedded model or an HTTP endpoint, and the trajectories carry genuine failures,
error messages and corrections for error-masked SFT.

On a BFCL task it makes each turn's ground-truth calls one reply at a time and then answers; with
probability `noise` one turn starts with a call carrying an argument the function does not take.
"""
from __future__ import annotations

import inspect
import json
import random

from autothink.data.runner import record_seed
from autothink.environments.coding import SOLUTION
from autothink.environments.rollout import first_messages
from autothink.inference.backend import Backend, BackendError, Completion, Conversation, SamplingParams
from autothink.tasks import Task
from autothink.tasks.tool_calls import tool_call_text

MISTAKES = ("syntax", "import_first", "missing_file", "bad_arguments", "malformed")


def _call(tool: str, arguments: dict | None = None, **kwargs) -> str:
    return tool_call_text(tool, {**(arguments or {}), **kwargs})


class ReferenceAgent(Backend):
    """Replies with the next step of a task's scripted solution (see the module docstring)."""

    supports_tools = True

    def __init__(self, tasks: list[Task], noise: float = 0.5, seed: int = 0, name: str = "reference-agent"):
        if not 0 <= noise <= 1:
            raise ValueError(f"noise must be in [0, 1], got {noise!r}")
        self.name, self.noise, self.seed = name, noise, seed
        self.tasks = {}  # by the first user message the agent is given
        for task in tasks:
            if task.source == "bfcl" or (task.metadata.get("solution") and task.metadata.get("entry_point")):
                first = next(m["content"] for m in first_messages(task) if m["role"] == "user")
                self.tasks[first] = task
        if not self.tasks:
            raise ValueError(f"{name}: none of the {len(tasks)} tasks has a reference solution (a coding task's "
                             "metadata.solution, or a BFCL task's ground truth)")

    def plan(self, task: Task) -> list[str]:
        """The replies, in order, for one task (the same on every run for a given seed)."""
        rng = random.Random(record_seed(task.id, "reference-agent", self.seed))
        solution, entry = task.metadata["solution"], task.metadata["entry_point"]
        steps = []
        write = _call("write_file", path=SOLUTION, content=solution)
        if rng.random() < self.noise:
            mistake = rng.choice(MISTAKES)
            if mistake == "syntax":
                lines = solution.split("\n")
                at = next((i for i, line in enumerate(lines) if line.lstrip().startswith("def ")
                           and line.rstrip().endswith(":")), 0)
                lines[at] = lines[at].rstrip().removesuffix(":")
                steps += [f"Let me try a first version of `{entry}` before saving it.\n"
                          + _call("run_python", code="\n".join(lines) + f"\nprint({entry})\n"),
                          f"The `def` line lost its colon. Saving the corrected version.\n{write}"]
            elif mistake == "import_first":
                steps += [f"Let me see how `{entry}` behaves now.\n"
                          + _call("run_python", code=f"from solution import {entry}\nprint({entry})\n"),
                          f"{SOLUTION} does not exist yet, so I write it first.\n{write}"]
            elif mistake == "missing_file":
                steps += ["Let me check the existing code first.\n" + _call("read_file", path="solutions.py"),
                          f"There is no existing file; the workspace is empty. Writing the solution.\n{write}"]
            elif mistake == "bad_arguments":
                steps += [_call("write_file", filename=SOLUTION, content=solution),
                          f"write_file takes `path`, not `filename`. Sending it again.\n{write}"]
            else:
                payload = json.dumps({"name": "write_file", "arguments": {"path": SOLUTION, "content": solution}})
                steps += ["<tool_call>\n" + payload[:-2] + "\n</tool_call>",
                          f"My tool call was not valid JSON. Sending it again.\n{write}"]
        else:
            steps.append(f"I'll write `{entry}` in {SOLUTION}.\n{write}")
        steps += [_call("run_tests"), f"The tests pass: `{entry}` is implemented in {SOLUTION}."]
        return steps

    def bfcl_step(self, task: Task, conversation: Conversation) -> str:
        """The next reply on a BFCL task: the turn's ground-truth calls one by one, then a short answer."""
        from autothink.environments.bfcl import bfcl_environment, ground_truth_calls

        replies = [m for m in conversation if m.get("role") == "assistant"]
        turn = sum(not m.get("tool_calls") for m in replies)
        since = len(replies) - max((i + 1 for i, m in enumerate(replies) if not m.get("tool_calls")), default=0)
        truth = task.metadata["ground_truth"]
        calls = ground_truth_calls(task, turn)
        rng = random.Random(record_seed(task.id, "reference-agent", self.seed))
        noisy_turn = rng.randrange(len(truth)) if rng.random() < self.noise and truth else -1
        steps = []
        env = bfcl_environment(task)
        for k, (name, arguments) in enumerate(calls):
            names = list(inspect.signature(getattr(env, name)).parameters)
            if turn == noisy_turn and k == 0:
                bogus = next(b for b in ("dry_run", "verbose_mode") if b not in names)
                steps.append(_call(name, {**arguments, bogus: True}))  # no such argument: a real tool error
                steps.append(f"`{name}` has no `{bogus}` argument. Calling it again.\n" + _call(name, arguments))
            else:
                steps.append(_call(name, arguments))
        if since < len(steps):
            return steps[since]
        last = next((m.get("content") or "" for m in reversed(conversation) if m.get("role") == "tool"), "")
        if not calls:
            return "I cannot do that with the tools I have."
        return f"Done. The last step returned: {last[:200]}" if last else "Done."

    def _find(self, conversation: Conversation) -> Task:
        first = next((m.get("content") or "" for m in conversation if m.get("role") == "user"), "")
        if first not in self.tasks:
            raise BackendError(f"{self.name}: no known task in the conversation (it starts {first[:80]!r})")
        return self.tasks[first]

    def _generate(self, conversations: list[Conversation], params: SamplingParams, thinking: str | None,
                  tools: list[dict] | None = None) -> list[list[Completion]]:
        out = []
        for conversation in conversations:
            task = self._find(conversation)
            if task.source == "bfcl":
                text = self.bfcl_step(task, conversation)
            else:
                steps = self.plan(task)
                text = steps[min(sum(m.get("role") == "assistant" for m in conversation), len(steps) - 1)]
            out.append([Completion(text=text, finish_reason="stop", tokens=len(text.split()))] * params.n)
        return out
