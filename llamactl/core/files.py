"""Reading and writing the user's files, with one-line errors instead of tracebacks.

Every file llamactl reads on the user's behalf (profiles, matrices, prompts) goes through
:func:`read_text`: a directory, an unreadable file, a file too large or one that is not
UTF-8 is a :class:`BadInput` naming the file. Report paths are checked with
:func:`check_writable` before a run starts, not after it. Every file llamactl writes for
others to read (manifests, indexes, records, reports, models) is written whole or not at
all by :func:`write_atomic` / :func:`atomic_path`.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from llamactl.core.errors import BadInput

MiB = 1024 * 1024
MAX_TEXT_BYTES = 4 * MiB   # profiles, matrices and prompt files are kilobytes; refuse a stray big file before reading it


def read_text(path: Path, what: str = "file", max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of ``path`` (at most ``max_bytes`` bytes).

    Raises:
        BadInput: missing, a directory, unreadable, larger than ``max_bytes``, or not UTF-8
            (the message names the file, and the line and byte of the first bad sequence).
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise BadInput(f"{what} {path} not found") from exc
    except OSError as exc:
        raise BadInput(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if path.is_dir():
        raise BadInput(f"{what} {path} is a directory, not a file")
    if st.st_size > max_bytes:
        raise BadInput(f"{what} {path} is {st.st_size / MiB:.1f} MiB; refusing to read more than {max_bytes // MiB} MiB")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)   # a FIFO or /proc file reports size 0: still bounded
    except OSError as exc:
        raise BadInput(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise BadInput(f"{what} {path} is larger than {max_bytes // MiB} MiB; refusing to read it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise BadInput(f"{what} {path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from exc


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (its folder is created) for the block to write; it replaces
    ``path`` in one rename when the block ends, and is removed when the block raises. The name is
    unique per process and thread, so concurrent writers never share a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` whole or not at all (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")


def check_writable(path: Path, what: str = "report") -> Path:
    """Check, before any work, that ``path`` can be written (creating its parent folders is allowed).

    Returns the path unchanged. Raises:
        BadInput: ``path`` is a directory, or its nearest existing ancestor is not a writable
            directory (a file in the way, no permission, a read-only place).
    """
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{what} path {path} is a directory; give a file name")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise BadInput(f"{what} path {path} is not writable")
        return path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise BadInput(f"{what} path {path} cannot be created: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"{what} path {path} cannot be created: {parent} is not writable")
    probe = parent / f".llamactl-write-test-{os.getpid()}"
    try:   # os.access says yes to root on read-only mounts and /proc: try it
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise BadInput(f"{what} path {path} cannot be created: {parent}: {exc.strerror or exc}") from exc
    return path
