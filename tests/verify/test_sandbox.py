"""The sandbox against hostile programs: each must be contained, reported, and leave the host unchanged."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from autothink.sandbox import RunResult, SandboxUnavailable, run_many, run_python
from autothink.verify import sandbox
from autothink.verify.sandbox import memory_bound

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux namespaces")


def run(code: str, **kw) -> RunResult:
    return run_python(textwrap.dedent(code), **kw)


def host_processes_with(marker: str) -> list[str]:
    """Command lines of host processes (other than this one) that contain `marker`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


@pytest.fixture
def marker() -> str:
    return f"AUTOTHINK_MARK_{uuid.uuid4().hex}"


# ---------------------------------------------------------------- normal programs


def test_stdin_stdout_stderr_and_exit_status():
    r = run("""
        import sys
        name = input()
        print(f"hello {name} ✓")
        print("to stderr", file=sys.stderr)
        sys.exit(3)
    """, stdin="world\n")
    assert (r.returncode, r.stdout, r.stderr) == (3, "hello world ✓\n", "to stderr\n")
    assert not r.timed_out and not r.truncated and r.killed_reason is None and not r.ok
    assert 0 < r.wall_s < 5


def test_traceback_names_the_program_and_exit_builtins_work():
    r = run("x = 1\n1 / 0\n")
    assert r.returncode == 1 and "ZeroDivisionError" in r.stderr and 'File "main.py", line 2' in r.stderr
    assert "<string>" not in r.stderr  # the launcher's own frame is hidden
    assert run("print('a'); exit(4)").returncode == 4  # exit()/quit() exist although `site` is skipped


def test_program_sees_a_clean_minimal_world(monkeypatch):
    monkeypatch.setenv("AUTOTHINK_TEST_SECRET", "s3cret-from-the-host")
    r = run("""
        import os
        print(os.getuid(), os.getgid(), os.getcwd(), sorted(os.environ))
        print(sorted(os.listdir("/")))
    """)
    uid_line, root_line = r.stdout.splitlines()
    assert uid_line == "65534 65534 /tmp ['HOME', 'LANG', 'PATH', 'PWD']"
    assert set(eval(root_line)) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "proc", "dev", "tmp"}


def test_large_stdin_is_fed_without_deadlock():
    data = "x" * (8 << 20)
    r = run("import sys; print(len(sys.stdin.buffer.read()))", stdin=data)
    assert r.returncode == 0 and r.stdout == f"{len(data)}\n"
    # A program that never reads its stdin still finishes promptly.
    r = run("print('done')", stdin=data, timeout_s=5)
    assert r.ok and r.stdout == "done\n" and r.wall_s < 4


def test_run_many_is_concurrent_and_keeps_order():
    # Each program prints when it started and ended its 1 s nap: run together, every one starts before any ends.
    programs = [f"import time; a = time.time(); time.sleep(1); print({i}, a, time.time())" for i in range(6)]
    results = run_many(programs + [("print(input() * 2)", "ab")], workers=7)
    rows = [r.stdout.split() for r in results[:6]]
    assert [int(row[0]) for row in rows] == list(range(6)) and results[6].stdout == "abab\n"
    assert max(float(row[1]) for row in rows) < min(float(row[2]) for row in rows)


# ---------------------------------------------------------------- hostile programs


def test_no_network_to_the_internet():
    r = run("""
        import socket
        s = socket.socket(); s.settimeout(3)
        try:
            s.connect(("1.1.1.1", 80)); print("CONNECTED")
        except OSError as e:
            print("blocked", e.errno)
    """)
    assert r.returncode == 0 and r.stdout.startswith("blocked") and "CONNECTED" not in r.stdout


def test_no_network_to_a_host_loopback_server():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    try:
        r = run(f"""
            import socket
            s = socket.socket(); s.settimeout(3)
            try:
                s.connect(("127.0.0.1", {port})); s.sendall(b"exfiltrated"); print("CONNECTED")
            except OSError as e:
                print("blocked", e.errno)
        """)
        assert r.stdout.startswith("blocked") and "CONNECTED" not in r.stdout
        server.settimeout(0.3)
        with pytest.raises(socket.timeout):  # nothing ever knocked
            server.accept()
    finally:
        server.close()


def test_cannot_write_outside_its_work_dir(tmp_path):
    host_dir = tmp_path / "host_only"
    host_dir.mkdir()
    targets = ["/usr/pwned", "/etc/pwned", "/pwned", "/dev/pwned", str(host_dir / "pwned")]
    r = run(f"""
        import os
        for path in {targets!r}:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write("pwned")
                print("WROTE", path)
            except OSError as e:
                print("DENIED", path, e.errno)
    """)
    assert r.returncode == 0
    for path in targets[:4]:
        assert f"DENIED {path}" in r.stdout
        assert not os.path.exists(path)
    assert list(host_dir.iterdir()) == []  # the host's /tmp is not the sandbox's /tmp


def test_cannot_read_home_or_project_files():
    home, own_file = os.path.expanduser("~"), os.path.abspath(__file__)
    r = run(f"""
        import os
        for path in ({home!r}, {own_file!r}, {os.path.dirname(own_file)!r}, "/etc/passwd"):
            try:
                print("READ", path, os.listdir(path) if os.path.isdir(path) else open(path).read()[:200])
            except OSError as e:
                print("DENIED", path, e.errno)
    """)
    assert r.returncode == 0 and r.stdout.count("DENIED") == 4, r.stdout
    assert "READ" not in r.stdout


def test_cannot_see_host_environment_or_processes(monkeypatch, marker):
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("AUTOTHINK_TEST_SECRET", secret)
    # A host process holding the secret in its environment and a marker in its command line.
    witness = subprocess.Popen(["sleep", "30", marker], env={**os.environ, "AUTOTHINK_TEST_SECRET": secret})
    try:
        r = run(f"""
            import os
            print(dict(os.environ))
            found = []
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    for name in ("cmdline", "environ"):
                        try:
                            found.append(open(f"/proc/{{pid}}/{{name}}", "rb").read())
                        except OSError:
                            pass
            print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
            print("hit" if any({secret!r}.encode() in b or {marker!r}.encode() in b for b in found) else "clean")
        """)
        assert secret not in r.stdout + r.stderr
        assert r.stdout.splitlines()[-1] == "clean"
        pids = eval(r.stdout.splitlines()[-2].removeprefix("pids "))
        assert max(pids) < 10 and witness.pid not in pids  # its own pid namespace
    finally:
        witness.kill()
        witness.wait()


def test_fork_bomb_is_contained(marker):
    bomb = textwrap.dedent("""
        import os, time
        refused = False
        while True:
            try:
                os.fork()
            except OSError:
                if not refused:
                    refused = True
                    os.write(2, b"fork refused\\n")
                time.sleep(0.01)
    """) + f"# {marker}"
    # Re-exec with the marker in the command line, so every bomb process carries it.
    r = run(f"import os, sys; os.execv(sys.executable, [sys.executable, '-c', {bomb!r}])",
            timeout_s=2, max_procs=16)
    assert r.timed_out and r.killed_reason == "timeout" and r.returncode == 137
    assert "fork refused" in r.stderr  # RLIMIT_NPROC held, not just the timeout
    assert host_processes_with(marker) == []
    assert subprocess.run(["true"]).returncode == 0  # the host can still fork


def test_thread_bomb_is_contained():
    r = run("""
        import threading, time
        for _ in range(10_000):
            threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
    """, max_procs=32)
    assert r.returncode == 1 and "can't start new thread" in r.stderr


def test_memory_bomb_is_contained():
    r = run("""
        chunks = []
        while True:
            chunks.append(bytearray(50 << 20))
    """, memory_mb=256)
    assert r.returncode == 1 and "MemoryError" in r.stderr and r.wall_s < 5


def test_cpu_spin_is_stopped_by_the_timeout():
    r = run("while True: pass", timeout_s=1)
    assert r.timed_out and r.returncode == 137 and 0.9 < r.wall_s < 3


def test_limits_are_applied_and_cpu_time_overrun_is_reported():
    r = run("""
        import resource
        for name in ("CPU", "AS", "NPROC", "FSIZE"):
            print(name, resource.getrlimit(getattr(resource, "RLIMIT_" + name)), flush=True)
        resource.setrlimit(resource.RLIMIT_CPU, (1, resource.getrlimit(resource.RLIMIT_CPU)[1]))
        while True: pass  # burns its (lowered) CPU budget: SIGXCPU
    """, timeout_s=4.5, memory_mb=300, max_procs=20, file_size_mb=3)
    assert r.stdout.splitlines() == ["CPU (6, 6)", f"AS ({300 << 20}, {300 << 20})", "NPROC (20, 20)",
                                     f"FSIZE ({3 << 20}, {3 << 20})"]
    assert r.killed_reason == "SIGXCPU" and r.returncode == 128 + 24 and not r.timed_out


def test_sleep_past_the_timeout():
    r = run("import time; print('start', flush=True); time.sleep(60)", timeout_s=1)
    assert r.timed_out and r.stdout == "start\n" and r.wall_s < 3


def test_output_flood_is_truncated_and_stopped():
    r = run("while True: print('x' * 1000)", output_limit=10_000, timeout_s=20)
    assert r.truncated and r.killed_reason == "output_limit" and not r.timed_out
    assert len(r.stdout) == 10_000 and r.wall_s < 5
    r = run("import sys\nwhile True: sys.stderr.write('e' * 4096)", output_limit=5_000, timeout_s=20)
    assert r.truncated and len(r.stderr) == 5_000 and r.wall_s < 5


def test_killing_the_parent_and_everyone_reaches_nothing_on_the_host():
    # A host process of the sandbox's own host uid must survive `kill -1`.
    as_sandbox_user = {"user": 65534, "group": 65534} if os.geteuid() == 0 else {}
    witness = subprocess.Popen(["sleep", "30"], **as_sandbox_user)
    try:
        r = run("""
            import os, signal
            for target in (os.getppid(), -1, 1):
                try:
                    os.kill(target, signal.SIGKILL)
                except OSError as e:
                    print("refused", target, e.errno)
            print("still here")
        """)
        assert r.returncode == 0 and r.stdout.endswith("still here\n")
        assert witness.poll() is None  # alive
    finally:
        witness.kill()
        witness.wait()


@pytest.mark.parametrize("parent_waits", [False, True])
def test_daemonized_child_does_not_outlive_the_run(marker, parent_waits):
    r = run(f"""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:  # the grandchild: detached, tries to act later
                late = "import time; time.sleep(3); open('/tmp/late', 'w')  # {marker}"
                os.execv(sys.executable, [sys.executable, "-c", late])
            os._exit(0)
        time.sleep(0.3)
        print("parent done", flush=True)
        if {parent_waits}:
            time.sleep(60)
    """, timeout_s=1.5)
    assert r.stdout == "parent done\n" and r.timed_out == parent_waits
    assert host_processes_with(marker) == []


def test_huge_file_hits_the_file_size_limit():
    r = run("""
        with open("big", "wb") as f:
            for _ in range(64):
                f.write(b"x" * (1 << 20))
    """, file_size_mb=4)
    assert r.returncode == 1 and "File too large" in r.stderr


@pytest.mark.parametrize("directory", ["/tmp", "/dev/shm"])
def test_tmpfs_is_size_limited(directory):
    r = run(f"""
        for i in range(100):
            with open(f"{directory}/f{{i}}", "wb") as f:
                f.write(b"x" * (1 << 20))
    """, tmpfs_mb=8, file_size_mb=4)
    assert r.returncode == 1 and "No space left on device" in r.stderr


def test_infinite_recursion_and_crashes_are_reported():
    r = run("def f(): return f()\nf()")
    assert r.returncode == 1 and "RecursionError" in r.stderr
    r = run("import ctypes; ctypes.string_at(0)")  # a segfault in C
    assert r.returncode == 128 + 11 and r.killed_reason == "SIGSEGV"


def test_no_nested_namespaces_or_privileges():
    r = run("""
        import subprocess
        for cmd in (["unshare", "--user", "true"], ["unshare", "--net", "true"], ["mount", "-t", "tmpfs", "x", "/tmp"]):
            print(subprocess.run(cmd, capture_output=True).returncode)
        print(open("/proc/self/status").read().split("CapEff:")[1].split()[0])
    """)
    *codes, cap_eff = r.stdout.split()
    assert r.returncode == 0 and all(code != "0" for code in codes) and int(cap_eff, 16) == 0


# ---------------------------------------------------------------- availability


def test_missing_bwrap_raises_unless_fallback_opted_in(monkeypatch):
    monkeypatch.delenv("AUTOTHINK_SANDBOX", raising=False)
    with pytest.raises(SandboxUnavailable, match="bubblewrap not found"):
        run_python("print(1)", bwrap="/nonexistent/bwrap")
    with pytest.warns(RuntimeWarning, match="UNSANDBOXED"):
        r = run_python("import os; print(sorted(os.environ))", bwrap="/nonexistent/bwrap", isolation="fallback")
    assert r.returncode == 0 and r.stdout == "['HOME', 'LANG', 'PATH']\n"
    monkeypatch.setenv("AUTOTHINK_SANDBOX", "fallback")
    with pytest.warns(RuntimeWarning, match="UNSANDBOXED"):
        assert run_python("print(2)", bwrap="/nonexistent/bwrap").stdout == "2\n"
    with pytest.raises(ValueError, match="isolation"):
        run_python("print(1)", isolation="none")


def test_fallback_still_enforces_limits():
    with pytest.warns(RuntimeWarning):
        r = run_python("while True: pass", bwrap="/nonexistent/bwrap", isolation="fallback", timeout_s=1)
    assert r.timed_out and r.wall_s < 3
    with pytest.warns(RuntimeWarning):
        r = run_python("x = bytearray(1 << 30)", bwrap="/nonexistent/bwrap", isolation="fallback", memory_mb=256)
    assert r.returncode == 1 and "MemoryError" in r.stderr


def test_an_exit_status_is_reported_as_an_exit_status():
    r = run("import os\nos._exit(137)")
    assert (r.returncode, r.killed_reason) == (137, None)
    r = run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert (r.returncode, r.killed_reason) == (137, "SIGKILL")
    r = run("raise SystemExit(3)")
    assert (r.returncode, r.killed_reason) == (3, None)


@pytest.mark.parametrize("cgroup", ["on", "off"])
def test_memory_outside_the_address_space_is_bounded(cgroup, monkeypatch):
    """memfd pages are no part of RLIMIT_AS: 30 files of 16 MB held 480 MB at memory_mb=64 before. A memory
    cgroup per run bounds them where the machine allows one, else NOFILE x FSIZE ("off" forces that)."""
    monkeypatch.setenv("AUTOTHINK_SANDBOX_CGROUP", cgroup)
    sandbox._memory_cgroup.cache_clear()
    hoard = textwrap.dedent("""
        import os, sys
        held = []
        for i in range(30):
            fd = os.memfd_create("m%d" % i)
            held.append(fd)
            for _ in range(16):
                os.write(fd, b"x" * (1 << 20))
                print(sum(os.fstat(f).st_size for f in held) >> 20, flush=True)
    """)
    r = run(hoard, memory_mb=64, timeout_s=20)
    peak = max([int(line) for line in r.stdout.split()] or [0])
    assert not r.ok and peak <= 64, (peak, r.killed_reason, memory_bound())
    assert memory_bound().startswith(("cgroup v2", "cgroup v1", "rlimits"))
    if cgroup == "off":
        assert memory_bound().startswith("rlimits") and "File too large" in r.stderr  # FSIZE = 64 MB / 64
    sandbox._memory_cgroup.cache_clear()


def test_a_cgroup_that_refuses_a_run_is_given_up_for_rlimits(monkeypatch, tmp_path):
    class Refusing(sandbox._MemoryCgroup):  # a "cgroup" whose cgroup.procs cannot be written
        def create(self, limit_bytes):
            path = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
            (path / "cgroup.procs").mkdir(parents=True)
            return str(path)

        def remove(self, path):
            pass

    monkeypatch.setattr(sandbox, "_memory_cgroup", lambda: Refusing(str(tmp_path), 2))
    monkeypatch.setattr(sandbox, "_CGROUP_REFUSED", [])
    r = run("print('ran once')")
    assert r.ok and r.stdout == "ran once\n"  # the program had not started: it ran again, once
    assert sandbox._CGROUP_REFUSED and memory_bound().startswith("rlimits")
    assert len(list(tmp_path.iterdir())) == 1  # no cgroup is tried again
    assert run("print(2)").stdout == "2\n" and len(list(tmp_path.iterdir())) == 1
