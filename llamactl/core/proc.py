"""Subprocess helpers: argv lists only, never a shell.

Long-lived children (llama-server, cmake/ninja) are started with :func:`spawn`: their own
session, and a parent-death signal so that nothing outlives llamactl. PIDs written to disk
are checked with :func:`check_identity` (start time and argv) before anything signals them.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from llamactl.core.errors import LlamactlError


def run(
    argv: Sequence[str | Path],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    input: bytes | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture text output; raise LlamactlError on failure when ``check``."""
    args = [str(a) for a in argv]
    try:
        cp = subprocess.run(
            args,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except FileNotFoundError as exc:
        raise LlamactlError(f"{args[0]} not found", hint="install it or put it on PATH") from exc
    if check and cp.returncode != 0:
        last = (cp.stderr or cp.stdout).strip().splitlines()
        tail = last[-1] if last else ""
        raise LlamactlError(f"{Path(args[0]).name} {' '.join(args[1:3])} failed (exit {cp.returncode}): {tail}")
    return cp


def which(name: str) -> str | None:
    return shutil.which(name)


def first_line(argv: Sequence[str]) -> str | None:
    """First line of a tool's version output, or None when the tool is absent."""
    if which(argv[0]) is None:
        return None
    try:
        cp = subprocess.run(list(argv), capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (cp.stdout or cp.stderr).strip()
    return text.splitlines()[0] if text else None


# --- child processes that die with llamactl -----------------------------------------------

_WRAPPER = Path(__file__).with_name("_childwrap.py")


@functools.cache
def _setpriv() -> str | None:
    """util-linux ``setpriv`` when it knows ``--pdeathsig`` (checked once per process)."""
    exe = shutil.which("setpriv")
    if exe is None or sys.platform != "linux":
        return None
    try:
        cp = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return exe if "--pdeathsig" in cp.stdout else None


def _check_executable(prog: str, env: Mapping[str, str] | None) -> None:
    """Raise what Popen would (FileNotFoundError / PermissionError) before a wrapper hides it."""
    if os.sep in prog:
        p = Path(prog)
        if not p.exists():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), prog)
        if p.is_dir() or not os.access(p, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), prog)
        return
    path = (env or os.environ).get("PATH", os.defpath)
    if shutil.which(prog, path=path) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), prog)


def spawn(argv: Sequence[str | Path], *, die_with_parent: bool = True, whole_group: bool = False,
          grace: float = 10.0, **popen: Any) -> subprocess.Popen:
    """Start ``argv`` in a new session (its own process group), never through a shell.

    ``die_with_parent``: on Linux the process gets SIGTERM when llamactl dies, however it
    dies (PR_SET_PDEATHSIG, armed after exec by ``setpriv --pdeathsig`` or by a small
    Python wrapper -- no Python runs between fork and exec in llamactl itself). The PID
    returned is the command's own.

    ``whole_group``: for commands that start others (cmake -> ninja -> compilers). A
    wrapper process (the returned PID) runs the command in a process group of its own;
    SIGTERM to the wrapper, or llamactl's death, stops the whole group (SIGTERM, then
    SIGKILL after ``grace`` seconds). Stop it with :func:`terminate`.

    The parent-death signal follows the *thread* that called spawn: call it from a thread
    that lives as long as the child should.

    Raises FileNotFoundError / PermissionError when ``argv[0]`` cannot be run.
    """
    args = [str(a) for a in argv]
    _check_executable(args[0], popen.get("env"))
    popen.pop("preexec_fn", None)
    popen["start_new_session"] = True
    if sys.platform == "linux" and whole_group:
        args = [sys.executable, "-I", "-S", str(_WRAPPER), "group", str(os.getpid()), str(grace), "--", *args]
    elif sys.platform == "linux" and die_with_parent:
        setpriv = _setpriv()
        if setpriv is not None:
            args = [setpriv, "--pdeathsig", "TERM", "--", *args]
        else:
            args = [sys.executable, "-I", "-S", str(_WRAPPER), "exec", str(os.getpid()), "0", "--", *args]
    return subprocess.Popen(args, **popen)


def terminate(p: subprocess.Popen, grace: float = 10.0) -> int | None:
    """Stop a process from :func:`spawn` and everything it started: SIGTERM to its group,
    SIGKILL to what is left after ``grace`` seconds. Returns the exit status (None if unknown)."""
    import psutil

    if p.poll() is not None:
        return p.returncode
    try:
        family = psutil.Process(p.pid).children(recursive=True)
    except psutil.Error:
        family = []
    signal_group(p.pid, signal.SIGTERM)
    try:
        p.wait(timeout=grace + 5)
    except subprocess.TimeoutExpired:
        signal_group(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
    for child in family:   # only reached when the wrapper itself could not clean up
        try:
            if child.is_running():
                child.kill()
        except psutil.Error:
            pass
    return p.returncode


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid`` (to ``pid`` alone if that is not allowed)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def pid_alive(pid: int) -> bool:
    """True when ``pid`` names a live process (a zombie is not alive)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


# --- is this PID still the process llamactl started? --------------------------------------


@dataclass(frozen=True)
class ProcessIdentity:
    """What identifies a process across PID reuse: its PID, start time (s since the epoch) and argv."""

    pid: int
    create_time: float
    argv: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "create_time": self.create_time, "argv": list(self.argv)}


def identify(pid: int, argv: Sequence[str] | None = None) -> ProcessIdentity | None:
    """The identity of a live process now (``argv`` overrides the one read, e.g. the intended argv)."""
    import psutil

    try:
        p = psutil.Process(pid)
        with p.oneshot():
            return ProcessIdentity(pid, p.create_time(), tuple(argv if argv is not None else p.cmdline()))
    except psutil.Error:
        return None


def check_identity(pid: int, create_time: float | None, argv: Sequence[str] | None) -> tuple[str, str]:
    """Is ``pid`` still the process that was recorded? Returns (state, why).

    state: ``running`` (same start time and argv), ``gone`` (no such process, or a zombie),
    or ``recycled`` (the PID now belongs to another program: never signal it).
    """
    import psutil

    try:
        p = psutil.Process(pid)
        with p.oneshot():
            if p.status() == psutil.STATUS_ZOMBIE:
                return "gone", f"pid {pid} has exited"
            started = p.create_time()
            try:
                cmdline = p.cmdline()
            except psutil.AccessDenied:
                cmdline = None
            name = p.name()
    except psutil.NoSuchProcess:
        return "gone", f"pid {pid} has exited"
    except psutil.AccessDenied:
        return "recycled", f"pid {pid} belongs to another user now"
    if create_time is not None and abs(started - create_time) > 0.05:
        return "recycled", f"pid {pid} is now another process ({name}, started {time.strftime('%H:%M:%S', time.localtime(started))})"
    if argv and cmdline and not _same_argv(cmdline, list(argv)):   # empty: unreadable for a moment
        return "recycled", f"pid {pid} is now another program ({name})"
    if create_time is None and not argv:
        return "recycled", f"pid {pid}: the record holds nothing to check it against"
    return "running", f"pid {pid} is running"


def _same_argv(now: list[str], recorded: list[str]) -> bool:
    if not now or not recorded:
        return False
    return Path(now[0]).name == Path(recorded[0]).name and now[1:] == recorded[1:]
