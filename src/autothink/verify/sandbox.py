"""Run untrusted (model-written) Python in a bubblewrap sandbox.

Verification runs code a model wrote, millions of times during RL; no sample may read secrets,
reach the network, write to the host or take the machine down. Each run is one `bwrap` giving:

- fresh user, pid, net, ipc, uts, mount and cgroup namespaces: only a loopback of its own, only
  its own processes in `/proc`, no nested user namespaces, no capabilities;
- uid/gid 65534 (on the host too when we are root, see `_as_nobody`) and an empty environment;
- read-only system dirs only (`/usr`, the `/bin` and `/lib*` links): no home, no project dir,
  no host `/tmp`; root and `/dev` read-only; size-limited tmpfs on `/tmp` (the cwd, holding the
  program as `main.py`) and `/dev/shm`;
- rlimits on CPU seconds, address space, processes (counted in the run's own user namespace,
  so concurrent runs do not share the budget), file size, open files, core dumps;
- a wall-clock timeout; the pid-1 of the sandbox dies with bwrap and the kernel then kills the
  whole pid namespace, so daemonized children never outlive the run;
- stdout/stderr read incrementally and bounded: past `output_limit` bytes the run is stopped.

Memory outside the address space (memfd, tmpfs and SysV shm pages) is bounded by a memory cgroup
per run where the machine lets us make one (cgroup v2 with the memory controller delegated to our
cgroup's children; a writable cgroup v1 memory hierarchy with `AUTOTHINK_SANDBOX_CGROUP=on`, since
moving a run into a v1 cgroup costs ~9 ms): `memory_mb` then caps the run's total charged memory,
and a run that exceeds it is stopped with `killed_reason="memory_limit"`.
Elsewhere it is bounded per process by NOFILE × FSIZE (64 files of at most `memory_mb` / 64 MiB),
so a run holds at most `max_procs` × 2 × `memory_mb`. `memory_bound()` says which applies.

Without a working bwrap, `SandboxUnavailable` is raised unless the caller opts into the weaker
fallback (`isolation="fallback"` or `AUTOTHINK_SANDBOX=fallback`): `unshare` (user, net, pid
namespaces where permitted) + the same rlimits in a temp dir, with a loud warning.
"""
from __future__ import annotations

import atexit
import functools
import json
import logging
import math
import os
import resource
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Mapping, Sequence

log = logging.getLogger(__name__)

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SANDBOX_UID = 65534  # "nobody"
_READ_CHUNK = 65536
_TEARDOWN_S = 5.0  # longest wait for the kernel to empty a killed sandbox

# Runs inside the sandbox as `python -I -S -c _LAUNCHER`: `-S` skips `site` (and with it every
# .pth hook of the system site-packages; ~2 ms), so the launcher restores `exit`/`quit`, applies
# the rlimits in-process (no extra exec of prlimit) and runs main.py as the `__main__` script,
# printing a traceback without its own frame. It forks first: the parent only waits and writes
# how the program ended ("exit N" or "signal N") to the status fd, so that an `os._exit(137)` is
# told from a SIGKILL, which bwrap's own exit status cannot do (both are 137). Under bwrap the
# launcher is the sandbox's pid 1 (`--as-pid-1`), which no process inside can kill.
_LAUNCHER = """\
import builtins as _b, os as _o, resource as _r, sys as _s, _sitebuiltins as _sb
for _k, _v in {limits!r}:
    _r.setrlimit(_k, (_v, _v))
_pid = _o.fork()
if _pid:
    for _fd in (0, 1, 2):
        _o.close(_fd)
    _st = _o.waitpid(_pid, 0)[1]
    _sig = _o.WIFSIGNALED(_st)
    _code = _o.WTERMSIG(_st) if _sig else _o.WEXITSTATUS(_st)
    _o.write({status_fd}, b"%s %d" % (b"signal" if _sig else b"exit", _code))
    _o._exit(128 + _code if _sig else _code)
_o.close({status_fd})
_b.exit, _b.quit = _sb.Quitter("exit", "Ctrl-D (i.e. EOF)"), _sb.Quitter("quit", "Ctrl-D (i.e. EOF)")
_s.argv, __file__ = ["main.py"], "main.py"
with open("main.py", "rb") as _f:
    _c = compile(_f.read(), "main.py", "exec")
del _b, _r, _sb, _k, _v, _f, _o, _pid
try:
    exec(_c)
except BaseException as _e:
    if isinstance(_e, SystemExit):
        raise
    _e.with_traceback(_e.__traceback__.tb_next)
    _s.excepthook(type(_e), _e, _e.__traceback__)
    _s.exit(1)
"""


class SandboxUnavailable(RuntimeError):
    """bwrap is missing or cannot create the namespaces a sandbox needs."""


@dataclass(frozen=True)
class RunResult:
    """What one sandboxed run did.

    `returncode` follows the shell convention: 128+N when the program died by signal N (e.g. 137
    after SIGKILL, 152 after SIGXCPU), else its exit status (an `os._exit(137)` is 137 with no
    `killed_reason`). `killed_reason` says why the run was stopped: "timeout" (wall clock),
    "output_limit" (a stream exceeded `output_limit` bytes), "memory_limit" (the run's memory
    cgroup ran out), "SIGXCPU" etc. for a death by
    signal, or None for a normal exit.
    """

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool = False
    killed_reason: str | None = None
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.killed_reason is None


def default_python() -> str:
    """The interpreter used inside the sandbox.

    `AUTOTHINK_SANDBOX_PYTHON` if set, else the system `/usr/bin/python3`, else the base
    interpreter of the running Python (never a venv: its prefix is inside the project dir).
    An interpreter outside the system dirs gets its install prefix (`<prefix>/bin/python`)
    bound read-only, which exposes that prefix (its stdlib and site-packages) to the program;
    when we run as root the sandbox starts as uid 65534, which must be able to read it.
    """
    if os.environ.get("AUTOTHINK_SANDBOX_PYTHON"):
        return os.environ["AUTOTHINK_SANDBOX_PYTHON"]
    if os.path.exists("/usr/bin/python3"):
        return "/usr/bin/python3"
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _extra_binds(python: str) -> list[str]:
    """Read-only binds the interpreter needs beyond the system dirs: its `<prefix>`."""
    real = os.path.realpath(python)
    if any(real == d or real.startswith(d + "/") for d in SYSTEM_DIRS):
        return []
    prefix = os.path.dirname(os.path.dirname(real))  # <prefix>/bin/python3.X
    log.info("sandbox: binding interpreter prefix %s read-only", prefix)
    return ["--ro-bind", prefix, prefix]


def _bwrap_argv(bwrap: str, python: str, code_fd: int, info_fd: int, block_fd: int | None, tmpfs_bytes: int,
                env: Mapping[str, str]) -> list[str]:
    argv = [bwrap, "--info-fd", str(info_fd), *(["--block-fd", str(block_fd)] if block_fd is not None else []),
            "--unshare-all", "--as-pid-1", "--unshare-user", "--disable-userns",
            "--die-with-parent", "--new-session", "--clearenv", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for d in SYSTEM_DIRS[1:]:
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    argv += _extra_binds(python)
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--size", str(tmpfs_bytes), "--tmpfs", "/dev/shm",
             "--size", str(tmpfs_bytes), "--tmpfs", "/tmp",
             "--file", str(code_fd), "/tmp/main.py",
             "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    return argv


@functools.lru_cache(maxsize=None)
def _as_nobody() -> tuple[list[str], dict]:
    """(argv prefix, Popen arguments) that start a run as host uid/gid 65534 when we are root.

    The kernel never applies RLIMIT_NPROC to host root, and a user namespace created by root
    maps the sandbox uid onto host root: a fork bomb would be unbounded. Started as "nobody",
    the run's processes count against (its user namespace, nobody) and the limit holds.
    `setpriv` is preferred over Popen's `user=`: with `user=` Python must fork() instead of
    vfork(), which costs ~100 ms per run in a process holding a few GB (a trainer with a model).
    """
    if os.geteuid() != 0:
        return [], {}
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups", "--"], {}
    return [], {"user": SANDBOX_UID, "group": SANDBOX_UID, "extra_groups": []}


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", **(extra or {})}


@functools.lru_cache(maxsize=None)
def _unshare_prefix() -> tuple[str, ...]:
    """`unshare` flags for the fallback: user+net+pid namespaces if this host permits them."""
    cmd = ("unshare", "--user", "--net", "--pid", "--fork", "--kill-child", "--")
    try:
        prefix, popen_user = _as_nobody()
        probe = subprocess.run([*prefix, *cmd, "true"], capture_output=True, timeout=10, **popen_user)
    except (OSError, subprocess.SubprocessError):
        return ()
    return cmd if probe.returncode == 0 else ()


@functools.lru_cache(maxsize=None)
def _check_bwrap(bwrap: str, python: str) -> None:
    """Run an empty program once per (bwrap, python) so a broken setup fails loudly, not as 'wrong answer'."""
    if not (os.path.isfile(bwrap) and os.access(bwrap, os.X_OK)):
        raise SandboxUnavailable(f"bubblewrap not found at {bwrap!r}; install it (Debian: apt-get install bubblewrap)")
    if not os.path.exists(python):
        raise SandboxUnavailable(f"sandbox interpreter {python!r} does not exist; set AUTOTHINK_SANDBOX_PYTHON")
    probe = _run("", "", cgroups=False, timeout_s=30.0, memory_mb=256, output_limit=65536, max_procs=16, file_size_mb=1,
                 tmpfs_mb=1, env=None, python=python, bwrap=bwrap)
    if probe.returncode != 0:
        raise SandboxUnavailable(f"bwrap could not start a sandbox (exit {probe.returncode}; bubblewrap >= 0.8 and "
                                 f"unprivileged user namespaces are required): {probe.stderr.strip()[:500]}")


class _MemoryCgroup:
    """Where per-run memory cgroups are made: a cgroup v2 directory whose children get the memory
    controller, or a cgroup v1 memory directory; each run gets a child with its own limit."""

    def __init__(self, directory: str, version: int):
        self.directory, self.version = directory, version
        self.limit_file = "memory.max" if version == 2 else "memory.limit_in_bytes"
        self._count = 0
        self._lock = threading.Lock()
        self._leftover: list[str] = []  # cgroups of finished runs, removed in the background
        self._sweeper: threading.Thread | None = None

    def describe(self) -> str:
        return f"cgroup v{self.version} {self.limit_file} per run (under {self.directory})"

    def create(self, limit_bytes: int) -> str:
        self._count += 1
        path = os.path.join(self.directory, f"autothink-{os.getpid()}-{self._count}-{time.monotonic_ns()}")
        os.mkdir(path)
        try:
            with open(os.path.join(path, self.limit_file), "w") as f:
                f.write(str(limit_bytes))
            swap = os.path.join(path, "memory.swap.max" if self.version == 2 else "memory.memsw.limit_in_bytes")
            if os.path.exists(swap):  # no swapping out of the limit
                with open(swap, "w") as f:
                    f.write("0" if self.version == 2 else str(limit_bytes))
        except OSError:
            os.rmdir(path)
            raise
        return path

    def oom_killed(self, path: str) -> bool:
        """Whether the kernel killed a process of the run for memory."""
        try:
            if self.version == 2:
                with open(os.path.join(path, "memory.events")) as f:
                    return any(line.split()[0] == "oom_kill" and int(line.split()[1]) > 0 for line in f)
            with open(os.path.join(path, "memory.oom_control")) as f:
                return any(line.split()[0] == "oom_kill" and int(line.split()[1]) > 0 for line in f)
        except (OSError, ValueError, IndexError):
            return False

    def remove(self, path: str) -> None:
        """Remove a run's cgroup once the kernel has let go of it, in the background: an emptied cgroup
        is often still busy for a few milliseconds, which a run should not wait for."""
        with self._lock:
            self._leftover.append(path)
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep, name="autothink-cgroups", daemon=True)
                self._sweeper.start()
                atexit.register(self._sweep_once)

    def _sweep_once(self) -> None:
        with self._lock:
            pending, self._leftover = self._leftover, []
        busy = []
        for path in pending:
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:
                busy.append(path)
        with self._lock:
            self._leftover = busy + self._leftover

    def _sweep(self) -> None:
        while True:
            time.sleep(0.05)
            self._sweep_once()


@functools.lru_cache(maxsize=None)
def _memory_cgroup() -> _MemoryCgroup | None:
    """The per-run memory cgroup maker of this machine, or None (then NOFILE × FSIZE bounds memory)."""
    choice = os.environ.get("AUTOTHINK_SANDBOX_CGROUP", "auto")
    if choice not in ("auto", "on", "off"):
        raise ValueError(f"AUTOTHINK_SANDBOX_CGROUP must be auto, on or off, got {choice!r}")
    if choice == "off":
        return None
    try:
        with open("/proc/self/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    for _, controllers, path in lines:
        for m in mounts:
            fstype, root, point = m[m.index("-") + 1], m[3], m[4]
            if controllers == "" and fstype == "cgroup2":
                directory = os.path.join(point, os.path.relpath(path, root).lstrip("."))
                try:
                    with open(os.path.join(directory, "cgroup.subtree_control")) as f:
                        delegated = "memory" in f.read().split()
                except OSError:
                    delegated = False
            elif "memory" in controllers.split(",") and fstype == "cgroup" and "memory" in m[-1].split(","):
                # cgroup v1 only when asked: moving a run into it costs ~9 ms (the kernel's RCU sync), more
                # than the whole sandbox otherwise (measured in BENCHMARKS.md)
                directory, delegated = os.path.join(point, os.path.relpath(path, root).lstrip(".")), choice == "on"
            else:
                continue
            group = _MemoryCgroup(os.path.normpath(directory), 2 if fstype == "cgroup2" else 1)
            try:
                if delegated:
                    os.rmdir(group.create(64 << 20))
                    return group
            except OSError:
                pass
    return None


class _CgroupRefused(OSError):
    """The kernel would not move a run into its memory cgroup (then none is used again)."""


_CGROUP_REFUSED: list[str] = []  # why cgroups were given up on, once one refused a run


def memory_bound() -> str:
    """What bounds a run's memory outside its address space here (see the module docstring)."""
    group = None if _CGROUP_REFUSED else _memory_cgroup()
    return group.describe() if group else "rlimits: NOFILE 64 x FSIZE memory_mb/64 per process (no memory cgroup)"


def _resolve_bwrap(bwrap: str | None) -> str:
    return bwrap or os.environ.get("AUTOTHINK_BWRAP") or shutil.which("bwrap") or "/usr/bin/bwrap"


def run_python(
    code: str,
    stdin: str = "",
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    *,
    output_limit: int = 64 * 1024,
    max_procs: int = 64,
    file_size_mb: int = 16,
    tmpfs_mb: int = 64,
    env: Mapping[str, str] | None = None,
    python: str | None = None,
    bwrap: str | None = None,
    isolation: str | None = None,
) -> RunResult:
    """Run `code` as a Python script in a fresh sandbox and return what happened.

    Args:
        code: the program (run as `__main__` from `/tmp/main.py`).
        stdin: text fed to the program's stdin.
        timeout_s: wall-clock limit; the CPU-time rlimit is ceil(timeout_s) + 1.
        memory_mb: address-space limit of each process.
        output_limit: bytes kept per stream; a program that writes more is stopped.
        max_procs: processes (and threads) the run may have at once, including the launcher.
        file_size_mb / tmpfs_mb: largest file; size of each of the `/tmp` and `/dev/shm` tmpfs.
        env: extra environment variables (the rest of the host environment never enters).
        python: interpreter inside the sandbox (default: `default_python()`).
        bwrap: path of bubblewrap (default: `AUTOTHINK_BWRAP`, else `bwrap` on PATH).
        isolation: "bwrap" (strict, the default) or "fallback" (use bwrap when it works, else
            unshare + rlimits with a warning); default from `AUTOTHINK_SANDBOX`.

    Raises:
        SandboxUnavailable: bwrap is unusable and the fallback was not opted into.

    >>> run_python("print(input()[::-1])", stdin="abc").stdout
    'cba\\n'
    """
    isolation = isolation or os.environ.get("AUTOTHINK_SANDBOX", "bwrap")
    if isolation not in ("bwrap", "fallback"):
        raise ValueError(f"isolation must be 'bwrap' or 'fallback', got {isolation!r}")
    python = python or default_python()
    bwrap = _resolve_bwrap(bwrap)
    try:
        _check_bwrap(bwrap, python)
    except SandboxUnavailable as exc:
        if isolation != "fallback":
            raise
        message = f"UNSANDBOXED code execution (fallback isolation): {exc}"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        log.warning(message)
        bwrap = None
    options = dict(timeout_s=timeout_s, memory_mb=memory_mb, output_limit=output_limit, max_procs=max_procs,
                   file_size_mb=file_size_mb, tmpfs_mb=tmpfs_mb, env=env, python=python, bwrap=bwrap)
    try:
        return _run(code, stdin, **options)
    except _CgroupRefused as err:
        if not _CGROUP_REFUSED:
            log.warning("sandbox: memory cgroups refused a run (%s); bounding memory with rlimits from now on", err)
        _CGROUP_REFUSED.append(str(err))
        return _run(code, stdin, **options)


def run_many(programs: Sequence[str | tuple[str, str]], workers: int | None = None, **options) -> list[RunResult]:
    """Run many programs concurrently; `programs` are code strings or (code, stdin) pairs.

    Threads suffice: each run waits on its own bwrap process. Results keep the input order.
    `options` are `run_python`'s keyword arguments.
    """
    jobs = [(p, "") if isinstance(p, str) else p for p in programs]
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda job: run_python(job[0], job[1], **options), jobs))


def _run(code: str, stdin: str, *, timeout_s: float, memory_mb: int, output_limit: int, max_procs: int,
         file_size_mb: int, tmpfs_mb: int, env: Mapping[str, str] | None, python: str, bwrap: str | None,
         cgroups: bool = True) -> RunResult:
    """Spawn one sandboxed (bwrap set) or fallback (bwrap None) run and supervise it."""
    group = _memory_cgroup() if bwrap and cgroups and not _CGROUP_REFUSED else None
    # Without a memory cgroup, memfd and tmpfs pages are bounded per process by NOFILE × FSIZE ≈ memory_mb.
    nofile, file_mb = (256, file_size_mb) if group else (64, max(1, min(file_size_mb, memory_mb // 64)))
    limits = [
        (resource.RLIMIT_CPU, math.ceil(timeout_s) + 1),
        (resource.RLIMIT_AS, memory_mb << 20),
        (resource.RLIMIT_NPROC, max_procs),
        (resource.RLIMIT_FSIZE, file_mb << 20),
        (resource.RLIMIT_NOFILE, nofile),
        (resource.RLIMIT_CORE, 0),
    ]
    source = code.encode("utf-8", "surrogateescape")
    start = time.monotonic()
    workdir, init, info_r, block_w, cgroup = None, None, None, None, None
    status_r, status_w = os.pipe()
    child_fds, own_fds = [status_w], [status_r]  # fds for bwrap or the launcher / fds we read
    launch = [python, "-I", "-S", "-c", _LAUNCHER.format(limits=limits, status_fd=status_w)]
    try:
        if bwrap:  # bwrap copies the program from a memfd into the sandbox's /tmp
            code_fd = os.memfd_create("main.py")
            child_fds.append(code_fd)
            os.write(code_fd, source)
            os.lseek(code_fd, 0, os.SEEK_SET)
            info_r, info_w = os.pipe()
            own_fds.append(info_r)
            child_fds.append(info_w)
            block_r = None
            if group:  # the program waits on this fd until the run is in its memory cgroup
                cgroup = group.create(memory_mb << 20)
                block_r, block_w = os.pipe()
                own_fds.append(block_w)
                child_fds.append(block_r)
            argv = _bwrap_argv(bwrap, python, code_fd, info_w, block_r, tmpfs_mb << 20, _env(env)) + launch
            cwd, popen_env = "/", {}
        else:
            workdir = tempfile.mkdtemp(prefix="autothink-run-")
            if os.geteuid() == 0:
                os.chown(workdir, SANDBOX_UID, SANDBOX_UID)
            with open(os.path.join(workdir, "main.py"), "wb") as f:
                f.write(source)
            argv, cwd, popen_env = [*_unshare_prefix(), *launch], workdir, _env(env)
        prefix, popen_user = _as_nobody()
        proc = subprocess.Popen(prefix + argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=child_fds, cwd=cwd, env=popen_env, start_new_session=True, bufsize=0,
                                **popen_user)
        while child_fds:
            os.close(child_fds.pop())
        try:
            pid, init = _open_init(info_r, start + timeout_s) if bwrap else (None, None)
            if cgroup and pid is not None:
                try:
                    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                        f.write(str(pid))
                except OSError as err:  # the program has not started: run it again without a cgroup
                    raise _CgroupRefused(f"{cgroup}: {err}") from err
                os.write(block_w, b"x")
            reason, out, err, truncated = _supervise(proc, stdin.encode("utf-8", "surrogateescape"),
                                                     start + timeout_s, output_limit)
        finally:
            _kill(proc, init)
        ended = _read_status(status_r)
        if cgroup and group.oom_killed(cgroup) and reason is None:
            reason = "memory_limit"
    finally:
        for fd in child_fds + own_fds:
            os.close(fd)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        if cgroup:
            group.remove(cgroup)
    if ended is not None:  # the launcher saw how the program ended
        how, number = ended
        rc = 128 + number if how == "signal" else number
    else:  # it did not get to say (stopped at the deadline, or bwrap failed): bwrap's status
        rc = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        how, number = ("signal", rc - 128) if rc > 128 else ("exit", rc)
    if reason is None and how == "signal":
        try:
            reason = signal.Signals(number).name
        except ValueError:
            reason = f"signal {number}"
    return RunResult(rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                     reason == "timeout", truncated, reason, time.monotonic() - start)


def _supervise(proc: subprocess.Popen, stdin: bytes, deadline: float, limit: int):
    """Feed stdin and collect bounded output until the program exits, the deadline or the bound.

    Returns (reason, stdout, stderr, truncated); reason is "timeout", "output_limit" or None.
    """
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    sel = selectors.DefaultSelector()
    for stream in bufs:
        sel.register(stream, selectors.EVENT_READ)
    pending = memoryview(stdin)
    if pending:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    reason, truncated = None, False
    try:
        while sel.get_map() and reason is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = "timeout"
                break
            for key, _ in sel.select(remaining):
                stream = key.fileobj
                if stream is proc.stdin:
                    try:
                        pending = pending[os.write(stream.fileno(), pending[:_READ_CHUNK]):]
                    except BrokenPipeError:  # the program stopped reading: drop the rest
                        pending = pending[:0]
                    except BlockingIOError:
                        continue
                    if not pending:
                        sel.unregister(stream)
                        stream.close()
                    continue
                chunk = os.read(stream.fileno(), _READ_CHUNK)
                if not chunk:
                    sel.unregister(stream)
                    continue
                buf = bufs[stream]
                if len(buf) + len(chunk) > limit:
                    buf += chunk[: limit - len(buf)]
                    reason, truncated = "output_limit", True
                    break
                buf += chunk
        if reason is None:
            try:  # the pipes are closed; the program may still be running
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                reason = "timeout"
    finally:
        sel.close()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    return reason, bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), truncated


def _read_status(fd: int) -> tuple[str, int] | None:
    """("exit" | "signal", number) as the launcher wrote it, or None (nothing, or not in the format)."""
    os.set_blocking(fd, False)
    try:
        words = os.read(fd, 64).split()
    except BlockingIOError:
        return None
    if len(words) == 2 and words[0] in (b"exit", b"signal") and words[1].isdigit() and int(words[1]) < 256:
        return words[0].decode(), int(words[1])
    return None


def _open_init(info_fd: int, deadline: float) -> tuple[int | None, int | None]:
    """(host pid, pidfd) of the sandbox's pid 1 (from bwrap's `--info-fd` report), or Nones.

    When pid 1 is gone, the kernel has killed and reaped every process of the pid namespace, so
    waiting on it tells when nothing of the run is left.
    """
    data = b""
    while _readable(info_fd, deadline - time.monotonic()):
        chunk = os.read(info_fd, 4096)
        if not chunk:
            break
        data += chunk
    try:
        pid = json.loads(data)["child-pid"]
        return pid, os.pidfd_open(pid)
    except (ValueError, KeyError, TypeError, OSError):  # bwrap failed before starting, or pid 1 already exited
        return None, None


def _kill(proc: subprocess.Popen, init: int | None) -> None:
    """SIGKILL the run's process group, reap its leader and wait until the sandbox is empty.

    Under bwrap the group is bwrap alone: its pid 1 dies with it (`--die-with-parent`) and the
    kernel then kills the whole pid namespace; `init` (a pidfd of that pid 1) becomes readable
    once that is done. The fallback's `unshare --kill-child` does the same without the wait;
    without namespaces only the group (not `setsid` escapees) can be reached.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group is gone already
        pass
    proc.wait()
    if init is not None:
        _readable(init, _TEARDOWN_S)
        os.close(init)


def _readable(fd: int, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for `fd` to become readable (poll: no FD_SETSIZE limit, unlike select)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout_s * 1000))))
