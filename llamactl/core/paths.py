"""Where things live: the project checkout and the cache outside it."""

from __future__ import annotations

import os
from pathlib import Path

from llamactl.core.errors import BadInput


def project_root() -> Path:
    """The checkout holding ``profiles/`` and ``patches/`` (LLAMACTL_HOME overrides)."""
    env = os.environ.get("LLAMACTL_HOME")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parents[2]
    if (here / "profiles").is_dir() and (here / "patches").is_dir():
        return here
    cwd = Path.cwd().resolve()
    for cand in (cwd, *cwd.parents):
        if (cand / "profiles").is_dir() and (cand / "patches").is_dir():
            return cand
    return here


def cache_root() -> Path:
    """Downloads, builds and models, shared by every checkout (LLAMACTL_CACHE overrides).

    Raises BadInput naming the variable when that place cannot be a directory (a file is there, or
    it cannot be created)."""
    env = os.environ.get("LLAMACTL_CACHE")
    if env:
        base, what = Path(env).expanduser(), f"LLAMACTL_CACHE={env}"
    elif os.environ.get("XDG_CACHE_HOME"):
        base, what = Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "llamactl", f"XDG_CACHE_HOME={os.environ['XDG_CACHE_HOME']}"
    else:
        base, what = Path.home() / ".cache" / "llamactl", "the cache (~/.cache/llamactl)"
    return _directory(base, what)


def _directory(path: Path, what: str) -> Path:
    """``path``, created with its parents; BadInput (one line, naming ``what``) when it cannot be one."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "a file is in the way" if isinstance(exc, (FileExistsError, NotADirectoryError)) else exc.strerror or str(exc)
        raise BadInput(f"{what}: cannot use {path} as a directory ({why})",
                       hint="point LLAMACTL_CACHE at a writable directory") from exc
    return path


def vendor_dir() -> Path:
    return project_root() / "vendor"


def vendor_tree() -> Path:
    return vendor_dir() / "llama.cpp"


def patches_dir() -> Path:
    return project_root() / "patches"


def profiles_dir() -> Path:
    return project_root() / "profiles"


def downloads_dir() -> Path:
    return _sub("downloads")


def builds_dir() -> Path:
    return _sub("builds")


def models_dir() -> Path:
    return _sub("models")


def trees_dir() -> Path:
    """Read-only (by convention) source trees, one per source provenance, for builds of a
    source other than the one in ``vendor/llama.cpp``."""
    return _sub("trees")


def runs_dir() -> Path:
    """Per-run logs; inside the cache so that a read-only checkout still works."""
    return _sub("runs")


def new_run_dir(name: str) -> Path:
    """A fresh ``<runs>/<YYYYmmdd-HHMMSS>-<name>`` directory (``.2``, ``.3`` ... when taken), created."""
    import time

    base = runs_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    d, i = base, 1
    while True:
        try:
            d.mkdir(parents=True)
            return d
        except FileExistsError:
            i += 1
            d = base.with_name(f"{base.name}.{i}")


def _sub(name: str) -> Path:
    return _directory(cache_root() / name, f"the cache's {name}/")
