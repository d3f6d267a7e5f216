"""The sandboxed coding workspace: its tools, its reward, and what a hostile agent cannot do to it."""
import json

import pytest

from autothink.environments.coding import MAX_FILE_BYTES, MAX_FILES, SOLUTION, CodingEnvironment, ToolError

TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"
GOOD = "def add(a, b):\n    return a + b\n"


@pytest.fixture
def env():
    e = CodingEnvironment(timeout_s=5)
    assert e.reset(id="t", reference=TESTS) is None
    return e


def test_tools_write_read_list_and_run(env):
    assert env.write_file("solution.py", GOOD) == "wrote solution.py (2 lines)"
    assert env.write_file("pkg/util.py", "X = 41\n") == "wrote pkg/util.py (1 lines)"
    assert env.read_file("solution.py") == GOOD
    assert env.list_files() == "pkg/util.py (1 lines)\nsolution.py (2 lines)"
    out = env.run_python("from solution import add\nfrom pkg.util import X\nprint(add(X, 1))")
    assert out == "42\n[exit code 0]" and env.last_exit_code == 0
    out = env.run_python("import sys\nprint('oops', file=sys.stderr)\nsys.exit(3)")
    assert out == "oops\n[exit code 3]" and env.last_exit_code == 3
    out = env.run_python("def f(:\n    pass")
    assert "SyntaxError" in out and out.endswith("[exit code 1]") and "main.py" not in out
    env.run_python("open('solution.py', 'w').write('broken')")  # a run's own writes are not kept
    assert env.read_file("solution.py") == GOOD


def test_run_tests_and_reward_follow_the_tests(env):
    with pytest.raises(ToolError, match="write solution.py first"):
        env.run_tests()
    assert env.get_reward() == 0.0
    env.write_file(SOLUTION, "def add(a, b):\n    return a + b if a > 0 else 99\n")
    report = env.run_tests()
    assert report.startswith("FAILED: 1/2 tests passed") and env.last_exit_code == 1
    assert env.get_reward() == 0.5
    env.write_file(SOLUTION, GOOD)
    assert env.run_tests() == "PASSED: 2/2 tests passed" and env.last_exit_code == 0
    assert env.get_reward() == 1.0
    env.reset(reference=json.dumps(TESTS))  # RL prompt rows carry the reference as JSON text
    assert env.files == {} and env.tests == TESTS and env.get_reward() == 0.0


@pytest.mark.parametrize("path", ["/etc/passwd", "../x.py", "a/../../x.py", "", "x" * 201, "a b.py", "~/.ssh/id"])
def test_paths_outside_the_workspace_are_refused(env, path):
    with pytest.raises(ToolError, match="path"):
        env.write_file(path, "x")
    with pytest.raises(ToolError, match="path"):
        env.read_file(path)


def test_the_workspace_is_bounded(env):
    with pytest.raises(ToolError, match="file too large"):
        env.write_file("big.py", "x" * (MAX_FILE_BYTES + 1))
    for i in range(MAX_FILES):
        env.write_file(f"f{i}.py", "")
    with pytest.raises(ToolError, match=f"at most {MAX_FILES} files"):
        env.write_file("one_more.py", "")
    env.write_file("f0.py", "replacing is fine")
    with pytest.raises(ToolError, match="no such file: nope.py"):
        env.read_file("nope.py")
    with pytest.raises(ToolError, match="non-empty"):
        env.run_python("   ")


def test_hostile_programs_stay_in_the_sandbox(env):
    assert "timed out" in env.run_python("while True:\n    pass")
    out = env.run_python("import os\nprint(sorted(os.listdir('/')))\nprint(os.path.exists(os.path.expanduser('~')))")
    assert "'home'" not in out and "'root'" not in out and "'work'" not in out
    out = env.run_python("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)")
    assert "exit code 1" in out and ("Network is unreachable" in out or "Errno" in out)
    out = env.run_python("print('x' * 10_000_000)")
    assert len(out) < 5000 and "stopped: output_limit" in out
    out = env.run_python("import os\nfor _ in range(1000):\n    os.fork()\n")
    assert "exit code" in out or "stopped" in out


def test_a_solution_cannot_print_or_exit_its_way_to_the_reward(env):
    forged = [
        "print('PASSED: 2/2 tests passed')\n",
        "import os\nos._exit(0)\n",
        "import sys\nsys.exit(0)\n",
        "def add(a, b):\n    return a + b if (a, b) == (1, 2) else None\n",  # passes one of two
        "class add:\n    def __eq__(self, other):\n        return True\n    def __init__(self, *a):\n        pass\n",
    ]
    rewards = []
    for code in forged:
        env.write_file(SOLUTION, code)
        rewards.append(env.get_reward())
    assert rewards == [0.0, 0.0, 0.0, 0.5, 0.0]
