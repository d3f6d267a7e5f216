"""A sandboxed coding workspace: the tools an agent writes, runs and tests code with.

    env = CodingEnvironment()
    env.reset(**task_row)                 # a coding task: its prompt, tests and entry point
    env.write_file("solution.py", code)   # the tools: write_file, read_file, list_files,
    env.run_tests()                       #   run_python, run_tests
    env.get_reward()                      # 1.0 when solution.py passes every test

The class is what TRL 1.16's `GRPOTrainer(environment_factory=CodingEnvironment)` takes: public
methods are the tools (their docstrings are the schemas), `reset` starts a task, `get_reward`
scores the final state. `autothink agent collect` drives the same class.

The workspace is a dict of files held here; every program runs through `autothink.sandbox` (no
network, tmpfs cwd, rlimits, a wall-clock timeout) with the files written into the sandbox's
tmpfs first, so nothing the model writes touches the host. A run's own file writes are not kept:
only `write_file` changes the workspace. The reward runs the tests with the code verifier, whose
judge calls the program's functions over a pipe, so no program can print its way to a pass.
Tool misuse (a bad path, a missing file, a workspace over its limits) raises `ToolError`, which
TRL and `agent collect` both return to the model as `{"error": ...}`.
"""
from __future__ import annotations

import json
import posixpath
import re

from autothink.sandbox import run_python as sandbox_run
from autothink.tasks import Task
from autothink.verify import verify

SOLUTION = "solution.py"
MAX_FILES, MAX_FILE_BYTES, MAX_OUTPUT = 32, 64 * 1024, 4000
_PATH_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]*$")
# Runs in the sandbox: writes the workspace (sent on stdin, never in the code) into the tmpfs cwd,
# then runs the program as __main__ (as `program.py`) with the workspace importable.
_RUNNER = """\
import json, os, sys, traceback


def _workspace():
    work = json.loads(sys.stdin.readline())
    for path, text in work["files"].items():
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return work["main"]


_source = _workspace()
sys.path.insert(0, os.getcwd())
sys.stdin = open(os.devnull)
try:
    exec(compile(_source, "program.py", "exec"), {"__name__": "__main__", "__file__": "program.py"})
except BaseException as _e:
    if isinstance(_e, SystemExit):
        raise
    traceback.print_exception(type(_e), _e, _e.__traceback__.tb_next)
    sys.exit(1)
"""


class ToolError(Exception):
    """A tool call the environment refuses; the agent sees the message."""


def coding_task_prompt(task: Task) -> str:
    """The user message of a coding task: what to write, where, and how to check it."""
    entry = task.metadata.get("entry_point", "the function")
    stub = task.metadata.get("prompt", "")
    return (f"Write the Python function `{entry}` in the file {SOLUTION}, then check it with run_tests and fix it "
            f"until the tests pass. When they pass, reply with a short summary and no tool call.\n\n"
            f"```python\n{stub}```")


class CodingEnvironment:
    """A coding task's workspace and tools (see the module docstring)."""

    def __init__(self, timeout_s: float = 10.0, memory_mb: int = 512):
        self.timeout_s, self.memory_mb = timeout_s, memory_mb
        self.files: dict[str, str] = {}
        self.tests: str | None = None
        self.last_exit_code: int | None = None

    def reset(self, **row) -> str | None:
        """Start a task: an empty workspace and the row's tests (`reference`, or `tests`)."""
        self.files, self.last_exit_code = {}, None
        tests = row.get("tests", row.get("reference"))
        try:
            decoded = json.loads(tests) if isinstance(tests, str) else None
        except json.JSONDecodeError:
            decoded = None
        tests = decoded if isinstance(decoded, str) else tests  # RL prompt rows carry the reference as JSON text
        if tests is not None and not isinstance(tests, str):
            raise ValueError("a coding task needs its tests as Python source (`reference`)")
        self.tests = tests
        return None

    # ------------------------------------------------------------------ tools

    def write_file(self, path: str, content: str) -> str:
        """Write a text file in the workspace, replacing it if it exists.

        Args:
            path: relative path of the file, e.g. "solution.py".
            content: the whole text of the file.
        """
        path = _check_path(path)
        if not isinstance(content, str):
            raise ToolError("content must be a string")
        if len(content.encode()) > MAX_FILE_BYTES:
            raise ToolError(f"file too large: {len(content.encode())} bytes (at most {MAX_FILE_BYTES})")
        if path not in self.files and len(self.files) >= MAX_FILES:
            raise ToolError(f"the workspace holds at most {MAX_FILES} files")
        self.files[path] = content
        return f"wrote {path} ({len(content.splitlines())} lines)"

    def read_file(self, path: str) -> str:
        """Read a text file of the workspace.

        Args:
            path: relative path of the file.
        """
        path = _check_path(path)
        if path not in self.files:
            raise ToolError(f"no such file: {path} (files: {', '.join(sorted(self.files)) or 'none'})")
        return self.files[path]

    def list_files(self) -> str:
        """List the files of the workspace with their sizes in lines."""
        return "\n".join(f"{p} ({len(t.splitlines())} lines)" for p, t in sorted(self.files.items())) or "(empty)"

    def run_python(self, code: str) -> str:
        """Run a Python program in the workspace (its files importable) and return its output.

        Args:
            code: the program to run.
        """
        if not isinstance(code, str) or not code.strip():
            raise ToolError("code must be a non-empty string")
        return self._run(code)

    def run_tests(self) -> str:
        """Run the task's tests against solution.py and report which pass."""
        if self.tests is None:
            raise ToolError("this task has no tests")
        if SOLUTION not in self.files:
            raise ToolError(f"write {SOLUTION} first")
        verdict = self._verdict()
        self.last_exit_code = 0 if verdict.passed else 1
        return f"{'PASSED' if verdict.passed else 'FAILED'}: {verdict.detail}"[:MAX_OUTPUT]

    # ------------------------------------------------------------------ reward

    def get_reward(self) -> float:
        """1.0 when solution.py passes every test, else the share of tests passed (0 without a solution)."""
        if self.tests is None or SOLUTION not in self.files:
            return 0.0
        return float(self._verdict().score)

    # ------------------------------------------------------------------ internals

    def _verdict(self):
        """The tests run on solution.py alone (it must be self-contained), in the code verifier's judge."""
        return verify("code", f"```python\n{self.files[SOLUTION]}\n```", self.tests, timeout_s=self.timeout_s,
                      memory_mb=self.memory_mb)

    def _run(self, code: str) -> str:
        payload = json.dumps({"files": self.files, "main": code})
        result = sandbox_run(_RUNNER, stdin=payload + "\n", timeout_s=self.timeout_s, memory_mb=self.memory_mb)
        self.last_exit_code = result.returncode
        out = (result.stdout + (("\n" if result.stdout and result.stderr else "") + result.stderr)).strip()
        if len(out) > MAX_OUTPUT:
            out = out[:MAX_OUTPUT // 2] + "\n...[output cut]...\n" + out[-MAX_OUTPUT // 2:]
        status = (f"timed out after {self.timeout_s:g} s" if result.timed_out
                  else f"stopped: {result.killed_reason}" if result.killed_reason
                  else f"exit code {result.returncode}")
        return f"{out}\n[{status}]" if out else f"[{status}]"


def _check_path(path) -> str:
    if not isinstance(path, str) or not path or len(path) > 200:
        raise ToolError("path must be a non-empty relative path of at most 200 characters")
    norm = posixpath.normpath(path)
    if path.startswith("/") or norm.startswith("..") or not _PATH_RE.match(norm):
        raise ToolError(f"invalid path {path!r}: use a relative path inside the workspace (letters, digits, _ . - /)")
    return norm
