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
import json
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

# The judged test harness, run as the sandbox's script. It forks before it reads anything:
#
# - the child is the program: it runs the model's code as module `solution` (so demo code under
#   `if __name__ == "__main__":` does not run), with stdin and stdout on /dev/null, sends the judge
#   a manifest of its top-level names, then answers calls `name(*args, **kwargs)` over a pipe;
# - the parent is the judge: it reads the nonce and the tests from stdin (after the fork, so the
#   program never holds them), binds each program name to a proxy that calls across the pipe, runs
#   the tests, and writes one outcome per test, "<nonce> <index> <json error or null>", to stdout.
#
# Only plain data crosses the pipe (None, bool, int, float, complex, str, bytes and lists, tuples,
# dicts, sets of them, as tagged JSON), so whatever the program does to its own process (patched
# builtins, objects whose __eq__ always says yes, forged frames) it can only answer a call with a
# value; the tests compare that value in the judge. The judge is not dumpable (prctl), so the
# program, same uid in the same sandbox, can neither read its memory nor open its fds in /proc.
_HARNESS = """\
import _ctypes, builtins, json, os, sys

TAGS = ("$tuple", "$set", "$frozenset", "$dict", "$float", "$complex", "$bytes")
MAX_LINE = 1 << 24


def encode(value, depth=0):
    if depth > 200:
        raise ValueError("nested too deeply")
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return value if value == value and abs(value) != float("inf") else {"$float": repr(value)}
    if kind is list:
        return [encode(v, depth + 1) for v in value]
    if kind in (tuple, set, frozenset):
        return {"$" + kind.__name__: [encode(v, depth + 1) for v in value]}
    if kind is dict:
        return {"$dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is complex:
        return {"$complex": [encode(value.real), encode(value.imag)]}
    if kind is bytes:
        return {"$bytes": value.hex()}
    raise TypeError("a %s is not plain data" % kind.__name__)


def decode(data):
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [decode(v) for v in data]
    if type(data) is dict and len(data) == 1:
        (tag, body), = data.items()
        if tag == "$float" and body in ("nan", "inf", "-inf"):
            return float(body)
        if tag == "$bytes" and type(body) is str:
            return bytes.fromhex(body)
        if type(body) is list:
            if tag == "$tuple":
                return tuple(decode(v) for v in body)
            if tag == "$set":
                return {decode(v) for v in body}
            if tag == "$frozenset":
                return frozenset(decode(v) for v in body)
            if tag == "$complex" and len(body) == 2:
                return complex(decode(body[0]), decode(body[1]))
            if tag == "$dict" and all(type(p) is list and len(p) == 2 for p in body):
                return {decode(k): decode(v) for k, v in body}
    raise ValueError("not plain data")


def describe(exc):
    text = type(exc).__name__
    try:
        text += (": %s" % exc)[:300] if str(exc) else ""
    except BaseException:
        pass
    return text


def send(fd, message):
    data = (json.dumps(message) + "\\n").encode("utf-8", "backslashreplace")
    while data:
        data = data[os.write(fd, data):]


def receive(stream):
    line = stream.readline(MAX_LINE)
    if not line.endswith(b"\\n"):
        raise EOFError("the program sent nothing (it died, or its answer was too long)")
    return json.loads(line)


def serve(program, calls, answers):
    solution = type(sys)("solution")
    sys.modules["solution"] = solution
    try:
        exec(compile(program, "<program>", "exec"), solution.__dict__)
    except BaseException as exc:
        send(answers, {"error": describe(exc)})
        return
    manifest = {}
    for name, value in list(solution.__dict__.items()):
        if not name.startswith("__"):
            try:
                manifest[name] = "callable" if callable(value) else {"value": encode(value)}
            except Exception:
                pass
    send(answers, {"names": manifest})
    for line in calls:
        call = json.loads(line)
        try:
            value = solution.__dict__[call["name"]](*decode(call["args"]), **decode(call["kwargs"]))
            answer = {"value": encode(value)}
        except BaseException as exc:
            answer = {"error": describe(exc), "type": type(exc).__name__}
        send(answers, answer)


class ProgramError(Exception):
    pass


def proxy(name, calls, answers):
    def call(*args, **kwargs):
        send(calls, {"name": name, "args": encode(list(args)), "kwargs": encode(kwargs)})
        answer = receive(answers)
        if type(answer) is not dict:
            raise ProgramError("a malformed answer")
        if "error" in answer:
            error = str(answer["error"])[:400]
            kind = getattr(builtins, str(answer.get("type")), None)
            if isinstance(kind, type) and issubclass(kind, Exception) and kind.__module__ == "builtins":
                raise kind(error)
            raise ProgramError(error)
        return decode(answer.get("value"))

    call.__name__ = name
    return call


def judge(statements, nonce, calls, answers):
    def report(index, error):
        os.write(1, ("%s %d %s\\n" % (nonce, index, json.dumps(error))).encode("utf-8", "backslashreplace"))

    def failure(exc):
        text, tb = describe(exc), exc.__traceback__
        lines = []
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<tests>":
                lines.append(tb.tb_lineno)
            tb = tb.tb_next
        return text + (" (test line %d)" % lines[-1] if lines else "")

    try:
        manifest = receive(answers)
    except BaseException as exc:
        report(-1, describe(exc))
        return
    names = manifest.get("names") if type(manifest) is dict else None
    if type(names) is not dict:
        report(-1, str(manifest.get("error") if type(manifest) is dict else "a malformed manifest")[:400])
        return
    scope = {"__name__": "__main__", "__builtins__": builtins}
    for name, kind in names.items():
        try:
            scope[str(name)] = proxy(str(name), calls, answers) if kind == "callable" else decode(kind["value"])
        except Exception:
            pass
    for index, (is_test, line, source) in enumerate(statements):
        try:
            exec(compile("\\n" * (line - 1) + source, "<tests>", "exec"), scope)
        except BaseException as exc:
            report(index, failure(exc))
            if not is_test:
                return
        else:
            if is_test:
                report(index, None)


_ctypes.call_function(_ctypes.dlsym(_ctypes.dlopen(None), "prctl"), (4, 0, 0, 0, 0))  # PR_SET_DUMPABLE 0
calls_r, calls_w = os.pipe()
answers_r, answers_w = os.pipe()
if os.fork() == 0:
    os.close(calls_w)
    os.close(answers_r)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    try:
        serve(__PROGRAM__, os.fdopen(calls_r, "rb"), answers_w)
    finally:
        os._exit(0)
os.close(calls_r)
os.close(answers_w)
request = json.loads(sys.stdin.read())
judge(request["statements"], request["nonce"], calls_w, os.fdopen(answers_r, "rb"))
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
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


def _outcomes(stdout: str, nonce: str, count: int) -> dict[int, str | None]:
    """The judge's outcome per test index (-1: the program itself); anything else on stdout is ignored."""
    errors: dict[int, str | None] = {}
    for line in stdout.splitlines():
        parts = line.split(" ", 2)
        if len(parts) != 3 or parts[0] != nonce:
            continue
        try:
            index, error = int(parts[1]), json.loads(parts[2])
        except ValueError:
            continue
        if -1 <= index < count and (error is None or isinstance(error, str)):
            errors.setdefault(index, error)
    return errors


def _run_tests(program: str, tests: str, options: dict[str, Any]) -> Verdict:
    statements = _statements(tests)
    nonce = secrets.token_hex(16)
    request = json.dumps({"nonce": nonce, "statements": statements})
    result = run_python(_HARNESS.replace("__PROGRAM__", repr(program), 1), stdin=request, **options)
    errors = _outcomes(result.stdout, nonce, len(statements))
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
