"""Talking to LLM agents: editable prompt templates, robust JSON replies, final-answer splitting."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any, Callable

from autothink.format import SPECIAL_TOKENS
from autothink.inference.backend import Backend, SamplingParams

TEMPLATE_NAMES = (
    "tagger", "think_off", "think_on", "solver", "thinker", "critic", "judge_select", "judge_rationale"
)


class Prompts:
    """Prompt templates (`$field` placeholders) from `directory`, else the packaged defaults.

    Copy `autothink/data/templates/` somewhere, edit, and pass that directory (`prompts_dir`)
    to change what every agent is asked.
    """

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory else None
        if self.directory and not self.directory.is_dir():
            raise ValueError(f"prompts directory {self.directory} does not exist")
        self._cache: dict[str, Template] = {}

    def template(self, name: str) -> Template:
        if name not in TEMPLATE_NAMES:
            raise ValueError(f"unknown prompt template {name!r}; known: {', '.join(TEMPLATE_NAMES)}")
        if name not in self._cache:
            custom = self.directory / f"{name}.txt" if self.directory else None
            if custom and custom.exists():
                text = custom.read_text(encoding="utf-8")
            else:
                text = files("autothink.data").joinpath(f"templates/{name}.txt").read_text(encoding="utf-8")
            self._cache[name] = Template(text)
        return self._cache[name]

    def render(self, name: str, **fields: str) -> str:
        try:
            return self.template(name).substitute(**fields).strip()
        except KeyError as err:
            raise ValueError(f"prompt template {name!r} uses ${err.args[0]}, which this stage does not "
                             "provide") from None

    def messages(self, name: str, **fields: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.render(name, **fields)}]


def parse_json_reply(text: str) -> dict[str, Any]:
    """The first JSON object in a model reply (code fences and chatter around it are ignored).

    Raises:
        ValueError: no JSON object in the reply.
    """
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    raise ValueError(f"no JSON object in the reply {text[:120]!r}")


class AgentError(RuntimeError):
    """An agent gave no usable reply after every attempt; `attempts` holds what it said."""

    def __init__(self, message: str, attempts: list[dict]):
        super().__init__(message)
        self.attempts = attempts


@dataclass
class Agent:
    """One role (tagger, solver, critic, ...) played by a backend with fixed sampling settings."""

    backend: Backend
    temperature: float = 0.7
    max_tokens: int = 512
    retries: int = 2

    def ask(self, messages: list[dict], seed: int, n: int = 1, temperature: float | None = None) -> list[str]:
        params = SamplingParams(
            n=n, temperature=self.temperature if temperature is None else temperature,
            max_tokens=self.max_tokens, seed=seed,
        )
        return [c.text for c in self.backend.generate([messages], params)[0]]

    def ask_json(self, messages: list[dict], validate: Callable[[dict], dict], seed: int) -> tuple[dict, list[dict]]:
        """Ask until `validate(parse_json_reply(reply))` succeeds; up to `retries` more attempts.

        Returns:
            The validated object and the log of attempts (reply and error of each).

        Raises:
            AgentError: every attempt failed (the backend errored or the reply was unusable).
        """
        attempts = []
        for attempt in range(self.retries + 1):
            try:
                reply = self.ask(messages, seed=seed + attempt)[0]
            except Exception as err:  # backend failure: count it as an attempt, try again
                attempts.append({"reply": None, "error": f"{type(err).__name__}: {err}"})
                continue
            try:
                return validate(parse_json_reply(reply)), attempts + [{"reply": reply, "error": None}]
            except (ValueError, TypeError, KeyError) as err:
                attempts.append({"reply": reply[:500], "error": str(err)})
        raise AgentError(f"no valid reply after {len(attempts)} attempts: {attempts[-1]['error']}", attempts)


_FINAL = re.compile(r"(?:final answer|answer)\s*[:：]\s*(.+?)\s*$", re.IGNORECASE | re.DOTALL)


def split_final_answer(text: str) -> tuple[str, str | None]:
    """Split a solution into (reasoning, final answer) at its last "Final answer:" line.

    A `\\boxed{}` answer is kept as written. Returns `(text, None)` when there is no final answer.

    >>> split_final_answer("2+2 is 4.\\nFinal answer: 4")
    ('2+2 is 4.', '4')
    """
    lines = text.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        match = _FINAL.search(lines[i])
        if match and match.group(1).strip():
            before = lines[i][: match.start()].strip()
            reasoning = "\n".join(lines[:i] + ([before] if before else [])).strip()
            return reasoning, match.group(1).strip()
    boxed = re.findall(r"\\boxed\{.*\}", text)
    if boxed:
        return text.strip(), boxed[-1]
    return text.strip(), None


def strip_tags(text: str) -> str:
    """Agent text must not carry AutoThink tags into a rendered sample."""
    for tag in SPECIAL_TOKENS:
        text = text.replace(tag, "")
    return text.strip()


def first_sentences(text: str, n: int = 2) -> str:
    """The first `n` sentences of the first paragraph: a judge's rationale is short, whatever a model rambles on.

    >>> first_sentences("Two steps. Easy enough. But also more.")
    'Two steps. Easy enough.'
    """
    paragraph = text.strip().split("\n\n")[0]
    parts = re.split(r"(?<=[.!?])\s+", paragraph)
    return " ".join(parts[:n]).strip()
