"""Subprocess helpers: argv lists only, never a shell."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

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
