"""Run one command so that it, and everything it starts, dies with llamactl.

Started as ``python -I -S _childwrap.py MODE PARENT_PID GRACE_S -- CMD ...`` by
:func:`llamactl.core.proc.spawn`; it imports nothing from llamactl (fast start, and no
Python code runs in llamactl's own forked child: the parent-death signal is set here,
after exec, in a fresh single-threaded interpreter).

MODE ``exec``: set PR_SET_PDEATHSIG (SIGTERM) and exec CMD in place (same PID).
MODE ``group``: set PR_SET_PDEATHSIG, start CMD in a process group of its own and wait
for it. On SIGTERM/SIGINT/SIGHUP -- sent by llamactl, or by the kernel when llamactl
dies, however it dies -- the whole group gets SIGTERM, then SIGKILL after GRACE_S
seconds. When CMD ends, whatever is left in its group is killed. Exit status: CMD's,
or 128 + the signal that stopped it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def _set_pdeathsig(sig: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _exec(cmd: list[str]) -> None:
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        os.write(2, f"{cmd[0]}: {exc.strerror}\n".encode())
        os._exit(127)


def main(argv: list[str]) -> int:
    mode, parent, grace = argv[1], int(argv[2]), float(argv[3])
    cmd = argv[5:]
    _set_pdeathsig(signal.SIGTERM)
    if os.getppid() != parent:   # llamactl died before the death signal was armed
        return 128 + signal.SIGTERM
    if mode == "exec":
        _exec(cmd)
    pid = os.fork()
    if pid == 0:   # single-threaded here, so fork + exec is safe
        os.setpgid(0, 0)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
            signal.signal(s, signal.SIG_DFL)
        _exec(cmd)
    try:
        os.setpgid(pid, pid)   # also from this side: no window where a signal misses the group
    except OSError:
        pass
    stopped_by = 0

    def stop(signum: int, frame: object) -> None:
        nonlocal stopped_by
        if stopped_by:
            return
        stopped_by = signum
        _killpg(pid, signal.SIGTERM)
        signal.alarm(max(1, round(grace)))

    def hard(signum: int, frame: object) -> None:
        _killpg(pid, signal.SIGKILL)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, stop)
    signal.signal(signal.SIGALRM, hard)
    try:
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        code = 0
    _killpg(pid, signal.SIGKILL)   # nothing of the command's group outlives it
    if stopped_by:
        return 128 + stopped_by
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
