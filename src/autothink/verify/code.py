"""The "code" verifier: run a model's Python program against tests in the sandbox.

Two kinds of reference:

- test code (a string): its top-level `assert` statements are the tests, each run on its own
  so one failure does not hide the others; every other top-level statement is setup, run in
  order. Test code without top-level asserts (HumanEval's `def check(candidate): ...` followed
  by `check(entry_point)`) is a single test.
- stdin/stdout cases: `{stdin: expected_stdout}`, `[{"input": ..., "output": ...}, ...]` or
  `{"inputs": [...], "outputs": [...]}`; one run per case, output compared after stripping
  trailing whitespace per line and surrounding blank lines.

The score is the fraction of tests passed; `passed` means all of them.
"""
from __future__ import annotations

import ast
import os
import re
import secrets
import types
from typing import Any, Mapping

from autothink.verify.registry import Verdict, answer_text, register
from autothink.verify.sandbox import RunResult, run_many, run_python

_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.DOTALL | re.MULTILINE)
_PYTHON_TAGS = {"python", "python3", "py"}
_MAX_LISTED = 10

# The program runs as module `solution` (so demo code under `if __name__ == "__main__":` does not
# run or block on stdin); the tests run in its namespace as `__main__`. The program's stdout goes
# to /dev/null (it is not graded and must not fill the output bound); each outcome is written as
# "<nonce> <index> <repr(error or None)>" to a private copy of stdout, the moment it is known, so a
# timeout keeps the outcomes before it. The nonce arrives on stdin, so the program cannot print
# fake outcomes without digging through the harness's frames.
_HARNESS = """\
def _autothink_tests(program, statements, os=__import__("os"), sys=__import__("sys")):
    nonce = sys.stdin.readline().strip()
    out = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)

    def report(index, error):
        os.write(out, ("%s %d %r\\n" % (nonce, index, error)).encode("utf-8", "backslashreplace"))

    def describe(exc):
        text, tb = type(exc).__name__, exc.__traceback__
        try:
            text += (": %s" % exc)[:300] if str(exc) else ""
        except BaseException:
            pass
        lines = []
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<tests>":
                lines.append(tb.tb_lineno)
            tb = tb.tb_next
        return text + (" (test line %d)" % lines[-1] if lines else "")

    solution = type(sys)("solution")
    sys.modules["solution"] = solution
    try:
        exec(compile(program, "<program>", "exec"), solution.__dict__)
    except BaseException as exc:
        report(-1, describe(exc))
        return
    solution.__dict__["__name__"] = "__main__"
    for index, (is_test, line, source) in enumerate(statements):
        try:
            exec(compile("\\n" * (line - 1) + source, "<tests>", "exec"), solution.__dict__)
        except BaseException as exc:
            report(index, describe(exc))
            if not is_test:
                return
        else:
            if is_test:
                report(index, None)


_autothink_tests({program!r}, {statements!r})
__import__("sys").stderr.flush()
__import__("os")._exit(0)
"""


def extract_program(prediction: str) -> str:
    """The Python program in a model response.

    The answer segment (`answer_text`), then its longest ```python fenced block (the last of
    equally long ones), else its longest untagged fenced block, else the text itself. An
    unclosed fence (a truncated response) runs to the end of the text.

    >>> extract_program("<judge>x</judge><think_off><answer>Here:\\n```python\\nprint(1)\\n```</answer>")
    'print(1)\\n'
    """
    text = answer_text(prediction)
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE_RE.finditer(text)]
    for wanted in (lambda tag: tag in _PYTHON_TAGS, lambda tag: tag == ""):
        chosen = [(len(body), i, body) for i, (tag, body) in enumerate(blocks) if wanted(tag)]
        if chosen:
            return max(chosen)[2]
    return text


def humaneval_reference(problem: Mapping[str, str]) -> str:
    """The reference test code of a HumanEval problem: its `check` function, called on the entry point."""
    return f"{problem['test']}\ncheck({problem['entry_point']})\n"


def humaneval_program(problem: Mapping[str, str], completion: str) -> str:
    """The program a HumanEval completion stands for: the prompt, then the completion's code.

    The code is `extract_program(completion)`: a raw continuation as is, else the answer
    segment's fenced block. Code that defines the entry point itself (a whole function) follows
    the prompt on a new line, the prompt supplying imports and helpers; other code is the body
    that continues the prompt's function.

    >>> humaneval_program({"prompt": "def f(x):\\n", "entry_point": "f"}, "    return x\\n")
    'def f(x):\\n    return x\\n'
    """
    code = extract_program(completion)
    if re.search(rf"^\s*def\s+{re.escape(problem['entry_point'])}\s*\(", code, re.MULTILINE):
        return f"{problem['prompt']}\n{code}"
    return problem["prompt"] + code


def _statements(tests: str) -> list[tuple[bool, int, str]]:
    """(is_test, first line, source) per top-level statement; one test if there are no asserts."""
    try:
        tree = ast.parse(tests)
    except SyntaxError as exc:
        raise ValueError(f"the reference test code does not parse: {exc}") from None
    if not any(isinstance(node, ast.Assert) for node in tree.body):
        return [(True, 1, tests)]
    statements = []
    for node in tree.body:
        first = getattr(node, "decorator_list", None) or [node]
        # Top-level compound statements start at column 0; a decorator's column is past its "@".
        span = types.SimpleNamespace(lineno=first[0].lineno, end_lineno=node.end_lineno,
                                     col_offset=node.col_offset if first[0] is node else 0,
                                     end_col_offset=node.end_col_offset)
        statements.append((isinstance(node, ast.Assert), span.lineno, ast.get_source_segment(tests, span)))
    return statements


def _run_tests(program: str, tests: str, options: dict[str, Any]) -> Verdict:
    statements = _statements(tests)
    nonce = secrets.token_hex(16)
    result = run_python(_HARNESS.format(program=program, statements=statements), stdin=nonce + "\n", **options)
    errors: dict[int, str | None] = {}
    for line in result.stdout.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == nonce:
            errors.setdefault(int(parts[1]), ast.literal_eval(parts[2]))
    if -1 in errors:
        stopped = f"the program raised {errors[-1]}"
    else:
        stopped = next((f"setup at line {line} raised {errors[i]}" for i, (is_test, line, _) in enumerate(statements)
                        if not is_test and errors.get(i)), None) or _stop_reason(result)
    whole = len(statements) == 1 and statements[0][2] is tests
    tests_run = [(i, "test code" if whole else f"line {line}: {_first_line(source)}")
                 for i, (is_test, line, source) in enumerate(statements) if is_test]
    failures = []
    for i, label in tests_run:
        if i not in errors:
            failures.append(f"NOT RUN {label} ({stopped})")
        elif errors[i] is not None:
            failures.append(f"FAIL {label} -> {errors[i]}")
    passed = len(tests_run) - len(failures)
    lines = [f"{passed}/{len(tests_run)} tests passed"] + failures[:_MAX_LISTED]
    if len(failures) > _MAX_LISTED:
        lines.append(f"... and {len(failures) - _MAX_LISTED} more failures")
    if failures and result.stderr.strip():
        lines.append("stderr: " + result.stderr.strip()[-500:])
    return Verdict(passed / len(tests_run), not failures, "\n".join(lines))


def _stop_reason(result: RunResult) -> str:
    if result.timed_out:
        return f"timed out after {result.wall_s:.1f}s"
    if result.killed_reason:
        return f"killed: {result.killed_reason}"
    return f"the program exited early with status {result.returncode}"


def _first_line(source: str, width: int = 80) -> str:
    text = source.strip().splitlines()[0] if source.strip() else ""
    return text if len(text) <= width else text[: width - 3] + "..."


def _cases(reference: Any) -> list[tuple[str, str]]:
    """Normalize the stdin/stdout reference formats to (stdin, expected) pairs."""
    if isinstance(reference, Mapping):
        if set(reference) == {"inputs", "outputs"} and not isinstance(reference["inputs"], str):
            return list(zip(reference["inputs"], reference["outputs"], strict=True))
        return [(str(k), str(v)) for k, v in reference.items()]
    if isinstance(reference, (list, tuple)) and all(isinstance(c, Mapping) and {"input", "output"} <= set(c)
                                                    for c in reference):
        return [(c["input"], c["output"]) for c in reference]
    raise ValueError(
        "a code reference must be test code (str), {stdin: stdout}, [{'input':..., 'output':...}] or "
        f"{{'inputs': [...], 'outputs': [...]}}; got {type(reference).__name__}"
    )


def normalize_output(text: str) -> str:
    """Output as compared: trailing whitespace stripped per line, surrounding blank lines dropped."""
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def _run_cases(program: str, cases: list[tuple[str, str]], options: dict[str, Any]) -> Verdict:
    if not cases:
        raise ValueError("the code reference has no stdin/stdout cases")
    workers = options.pop("workers", None) or min(len(cases), os.cpu_count() or 1)
    results = run_many([(program, stdin) for stdin, _ in cases], workers=workers, **options)
    failures = []
    for n, ((_, expected), result) in enumerate(zip(cases, results), 1):
        got = normalize_output(result.stdout)
        if not result.ok:
            why = _stop_reason(result) if result.killed_reason else f"exit status {result.returncode}"
            tail = result.stderr.strip().splitlines()[-1:] or [""]
            failures.append(f"FAIL case {n}: {why} {tail[0][:200]}".rstrip())
        elif got != normalize_output(expected):
            failures.append(f"FAIL case {n}: expected {_clip(expected)!r}, got {_clip(result.stdout)!r}")
    passed = len(cases) - len(failures)
    lines = [f"{passed}/{len(cases)} cases passed"] + failures[:_MAX_LISTED]
    if len(failures) > _MAX_LISTED:
        lines.append(f"... and {len(failures) - _MAX_LISTED} more failures")
    return Verdict(passed / len(cases), not failures, "\n".join(lines))


def _clip(text: str, width: int = 100) -> str:
    text = normalize_output(text)
    return text if len(text) <= width else text[: width - 3] + "..."


@register("code")
def verify_code(prediction: str, reference: Any, **options: Any) -> Verdict:
    """Run the program in `prediction` against `reference` in the sandbox.

    Args:
        prediction: a model response or bare code; the program is `extract_program(prediction)`.
        reference: test code with asserts, or stdin/stdout cases (see the module docstring).
        **options: `run_python` options, e.g. `timeout_s` (per run; default 10) and `memory_mb`;
            `workers` sets how many stdin/stdout cases run at once.

    >>> verify_code("```python\\ndef add(a, b):\\n    return a + b\\n```", "assert add(1, 2) == 3").passed
    True
    """
    program = extract_program(prediction)
    if isinstance(reference, str):
        options.pop("workers", None)
        return _run_tests(program, reference, options)
    return _run_cases(program, _cases(reference), options)
