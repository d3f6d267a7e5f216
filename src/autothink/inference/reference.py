"""A teacher that answers with the tasks' own reference solutions.

    backend = make_backend("reference:runs/data/tagged.jsonl")   # or a suite: "reference:gsm_symbolic"

Procedural datasets carry their gold answers, and some a worked solution (`gsm_symbolic`'s
`answer_cot`; `basic_arithmetic`'s expression is worked out one operation per line). Where no
strong model is at hand (the 2-core CPU quickstart), this backend stands in for one: asked about
a known question, it replies `<worked solution>\\nFinal answer: <gold>`,
the convention of the data-stage prompt templates. The question is found as the longest known
task prompt inside the last user message, so any template that quotes the question works. As the
cold start's judge it writes the mode rationale from the worked solution's length (`rationale`),
where a 135M model's own rationale restates the answer and teaches it to answer inside the judge.
"""
from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction

from autothink.inference.backend import (
    Backend,
    BackendError,
    Completion,
    Conversation,
    SamplingParams,
)
from autothink.tasks import Task

_OPS = {ast.Add: (operator.add, "+"), ast.Sub: (operator.sub, "-"), ast.Mult: (operator.mul, "*"),
        ast.Div: (operator.truediv, "/")}


def arithmetic_steps(expression: str) -> str:
    """An arithmetic expression worked out one operation per line, in evaluation order.

    Returns "" when the expression is not plain + - * / over integers or an intermediate result
    is not an integer (a worked solution with fractions would not help a small model).

    >>> print(arithmetic_steps("( 56 + -33 ) - 84"))
    56 + -33 = 23
    23 - 84 = -61
    """
    steps = []

    def value(node) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = value(node.operand)
            if not isinstance(node.operand, ast.Constant):
                steps.append(f"-({inner}) = {-inner}")
            return -inner
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = value(node.left), value(node.right)
            fn, symbol = _OPS[type(node.op)]
            result = fn(left, right)
            if result.denominator != 1:
                raise ValueError("fraction")
            steps.append(f"{left} {symbol} {right} = {result}")
            return result
        raise ValueError("not plain arithmetic")

    try:
        value(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError):
        return ""
    return "\n".join(steps)


def reference_solution(task: Task) -> tuple[str, str | None]:
    """(worked solution or "", gold answer or None) of a task, from what its reference holds."""
    ref = task.reference
    if task.verifier == "gym" and isinstance(ref, dict):
        entry = ref.get("entry", {})
        metadata = entry.get("metadata", {})
        if ref.get("dataset") == "basic_arithmetic":
            return arithmetic_steps(str(metadata.get("expression", ""))), str(entry.get("answer"))
        cot = str(metadata.get("answer_cot") or "")
        return re.sub(r"\n?####.*\Z", "", cot, flags=re.S).strip(), str(entry.get("answer"))
    if task.verifier in ("math", "choice") and isinstance(ref, (str, int, float)):
        return "", str(ref)
    return "", None


class ReferenceBackend(Backend):
    """Replies with reference solutions; every one of the n samples is the same text."""

    def __init__(self, tasks: list[Task], name: str = "reference"):
        self.name = name
        self.solutions, self.steps = {}, {}
        for task in tasks:
            reasoning, answer = reference_solution(task)
            if answer is not None:
                worked = reasoning + "\n" if reasoning else ""
                self.solutions[task.prompt.strip()] = f"{worked}Final answer: {answer}"
                self.steps[task.prompt.strip()] = sum(1 for line in reasoning.splitlines() if line.strip())
        if not self.solutions:
            raise ValueError(f"{name}: none of the {len(tasks)} tasks has a reference answer to give")
        # Longest prompts first: a prompt that contains another one must win.
        self._prompts = sorted(self.solutions, key=len, reverse=True)

    def _question(self, text: str) -> str:
        prompt = next((p for p in self._prompts if p in text), None)
        if prompt is None:
            raise BackendError(f"{self.name}: no known task question in the conversation "
                               f"(last user message starts {text[:80]!r})")
        return prompt

    def rationale(self, query: str, mode: str, directive: str | None = None) -> str:
        """Why `query` is answered in `mode` ("on" or "off"): the user's directive, else the length
        of its worked solution."""
        if directive:
            how = "I reason step by step" if mode == "on" else "I answer directly"
            return f'The user wrote "{directive}", so {how}.'
        steps = self.steps[self._question(query)]
        if not steps:  # no worked solution to count (a gold answer only)
            work = "needs working out" if mode == "on" else "is answered by recall"
        else:
            work = f"takes {steps} step{'s' if steps != 1 else ''} of working"
        if mode == "on":
            return f"The question {work}, so it is worth reasoning step by step before the answer."
        return f"The question {work}, so the answer can be given directly without step-by-step reasoning."

    def _generate(self, conversations: list[Conversation], params: SamplingParams,
                  thinking: str | None) -> list[list[Completion]]:
        out = []
        for conversation in conversations:
            users = [m["content"] for m in conversation
                     if m.get("role") == "user" and isinstance(m.get("content"), str)]
            text = self.solutions[self._question(users[-1] if users else "")]
            out.append([Completion(text=text, finish_reason="stop", tokens=len(text.split()))] * params.n)
        return out
