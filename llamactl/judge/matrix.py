"""Expand a validation matrix: axes (cartesian product) - exclude + include.

Cells are dicts of profile overrides. ``kv: a/b`` is shorthand for ``kv_k: a, kv_v: b``;
``mtp`` is shorthand for ``enable_mtp``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llamactl.core import yamlio
from llamactl.core.errors import BadInput, LlamactlError
from llamactl.serve.profiles import HARNESS_KEYS, MatrixSpec, Profile, Resolved, as_bool, cli_value, enum_word

SHORTHAND = {"mtp": "enable_mtp", "np": "parallel"}


@dataclass(frozen=True)
class Cell:
    overrides: tuple[tuple[str, Any], ...]
    name: str | None = None      # optional label from an include entry

    @property
    def values(self) -> dict[str, Any]:
        return dict(self.overrides)

    @property
    def id(self) -> str:
        if self.name:
            return self.name
        parts = []
        v = self.values
        for k, val in self.overrides:
            if k == "kv_v" and "kv_k" in v:
                continue
            if k == "kv_k" and "kv_v" in v:
                parts.append(f"kv={val}/{v['kv_v']}")
                continue
            if isinstance(val, bool):
                val = int(val)
            parts.append(f"{k}={val}")
        return ",".join(parts) or "base"


BOOL_KEYS = {name for name, f in Profile.model_fields.items() if f.annotation in (bool, bool | None)}
WORD_KEYS = {"flash_attn", "split_mode"}


def normalise(entry: dict[str, Any], where: str = "matrix") -> dict[str, Any]:
    """Profile overrides of one cell: shorthands expanded, booleans and enum words as the profile takes them.

    Raises:
        BadInput: an unknown key, a malformed ``kv``, or a boolean key with a value that is not one
            (``where`` names the source: ``matrix``, a file, ``--cell``).
    """
    if not isinstance(entry, dict):
        raise BadInput(f"{where}: a cell must be a mapping of profile keys to values, got {entry!r}")
    out: dict[str, Any] = {}
    for k, v in entry.items():
        k = SHORTHAND.get(k, k) if isinstance(k, str) else k
        if k == "kv":
            if not isinstance(v, str) or v.count("/") > 1 or not all(v.split("/")):
                raise BadInput(f"{where}: kv must be 'K/V' or 'T' (e.g. q8_0/q8_0), got {v!r}")
            kk, _, vv = v.partition("/")
            out["kv_k"], out["kv_v"] = kk.strip(), (vv or kk).strip()
        else:
            if not isinstance(k, str) or (k not in Profile.model_fields and k not in HARNESS_KEYS) or \
                    k in ("matrix", "extends", "build", "harness"):   # harness keys go flat in a cell
                raise BadInput(f"{where}: unknown key {k!r}", hint="axes and cells take profile fields, kv: K/V or mtp")
            if k in BOOL_KEYS:
                try:
                    v = as_bool(v, {"mtp": True, "none": False} if k == "enable_mtp" else None)
                except ValueError as exc:
                    raise BadInput(f"{where}: key {k!r}: {exc}") from None
            elif k in WORD_KEYS:
                v = enum_word(v)
            out[k] = v
    return out


def _matches(cell: dict[str, Any], pattern: dict[str, Any]) -> bool:
    return all(cell.get(k) == v for k, v in pattern.items())


def expand(spec: MatrixSpec | None, source: str = "matrix") -> list[Cell]:
    """The cells of ``spec`` (one base cell without a matrix); ``source`` names it in errors.

    Raises:
        BadInput: an axis without values, a malformed entry, or no cell left after ``exclude``
            (checked here, before anything is built).
    """
    if spec is None or not (spec.axes or spec.include):
        return [Cell(())]
    axes = [(name, values) for name, values in spec.axes.items()]
    for name, values in axes:
        if not values:
            raise BadInput(f"{source}: axis {name!r} has no values, so the matrix has no cells")
    cells: list[dict[str, Any]] = []
    if axes:
        for combo in itertools.product(*[vals for _, vals in axes]):
            merged: dict[str, Any] = {}
            for (name, _), val in zip(axes, combo, strict=True):
                merged.update(normalise({name: val}, source))
            cells.append(merged)
    excludes = [normalise(e, f"{source} exclude") for e in spec.exclude]
    cells = [c for c in cells if not any(_matches(c, e) for e in excludes)]
    names: dict[int, str] = {}
    for inc in spec.include:
        if not isinstance(inc, dict):
            raise BadInput(f"{source} include: each entry must be a mapping, got {inc!r}")
        inc = dict(inc)
        label = inc.pop("name", None)
        n = normalise(inc, f"{source} include")
        if n not in cells:
            cells.append(n)
        if label:
            names[cells.index(n)] = str(label)
    seen: list[Cell] = []
    for i, c in enumerate(cells):
        cell = Cell(tuple(c.items()), names.get(i))
        if all(cell.overrides != s.overrides for s in seen):
            seen.append(cell)
    if not seen:
        raise BadInput(f"{source}: no cells (exclude removes every combination of the axes)")
    return seen


def load_matrix_file(path: Path) -> MatrixSpec:
    """A matrix from its own YAML file (``axes``/``include``/``exclude``, optionally under ``matrix:``).

    Raises:
        BadInput: unreadable, not YAML, not a matrix, or a cell with an unknown key, each naming the
            file (and line where there is one).
    """
    path = Path(path)
    lines: dict[str, int] = {}
    data = yamlio.load_file(path, "matrix file", lines=lines)
    if isinstance(data, dict) and "matrix" in data:
        data = data["matrix"]
        lines = {k.removeprefix("matrix."): v for k, v in lines.items()}
    if not isinstance(data, dict) or not data:
        raise BadInput(f"{path}: a matrix file must be a mapping with axes, include and/or exclude, got {data!r:.60}")
    try:
        spec = MatrixSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err["loc"][:2])
        line = lines.get(key) or lines.get(str(err["loc"][0]))
        msg = f"unknown key (allowed: {', '.join(MatrixSpec.model_fields)})" if err["type"] == "extra_forbidden" else err["msg"]
        raise BadInput(f"{path}{f':{line}' if line else ''}: invalid matrix: key '{key}': {msg}") from exc
    expand(spec, str(path))   # unknown keys, empty axes and the like, named with the file, before any build
    return spec


def select(cells: list[Cell], filters: list[str]) -> list[Cell]:
    """Keep cells matching every ``key=value`` filter (``--cell parallel=2``) and, if any are given, one of the named cells."""
    if not filters:
        return cells
    wanted: dict[str, Any] = {}
    known_ids = {c.id for c in cells}
    ids = [f for f in filters if "=" not in f or f in known_ids]   # a cell's name or id selects it
    for f in filters:
        if f not in ids:
            k, v = (x.strip() for x in f.split("=", 1))
            wanted.update(normalise({k: cli_value(SHORTHAND.get(k, k), v)}, f"--cell {f!r}"))   # as --set types it
    out = [c for c in cells if all(_loose_eq(c.values.get(k), v) for k, v in wanted.items())
           and (not ids or c.id in ids)]
    if not out:
        raise BadInput(f"no matrix cell matches {' '.join(filters)}",
                            hint="cells: " + "; ".join(c.id for c in cells))
    return out


def _loose_eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b) if a is not None else False
    return a == b or str(a) == str(b)


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` (1 <= K <= N) as (K, N).

    Raises:
        BadInput: anything else.
    """
    k, sep, n = text.strip().partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit() or not 1 <= int(k) <= int(n):
        raise BadInput(f"--shard must be K/N with 1 <= K <= N (e.g. 1/2), got {text!r}")
    return int(k), int(n)


def shard_of(cell_id: str, n: int) -> int:
    """The shard (1..n) a cell belongs to: a hash of its id alone, so adding a cell moves no other cell."""
    import hashlib

    return int.from_bytes(hashlib.sha256(cell_id.encode()).digest()[:8], "big") % n + 1


def shard(cells: list[Cell], k: int, n: int) -> list[Cell]:
    """The cells of shard ``k`` of ``n`` (possibly none)."""
    return [c for c in cells if shard_of(c.id, n) == k]


def cell_profile(base: Resolved, cell: Cell) -> Resolved:
    """``base`` with the cell's overrides applied (its matrix dropped), validated as a profile.

    Raises LlamactlError naming the cell and the first bad keys.
    """
    data = base.profile.model_dump(exclude={"matrix"})
    data.update(cell.values)
    try:
        prof = Profile.model_validate(data)
    except ValidationError as exc:
        what = "; ".join(f"key '{'.'.join(str(x) for x in e['loc'][:2])}': {e['msg']}" for e in exc.errors()[:3])
        raise LlamactlError(f"matrix cell {cell.id}: {what}") from exc
    return Resolved(base.name, prof, dict(base.origins), base.path)


def slug(s: str) -> str:
    """A cell id as a file name (at most 120 characters)."""
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in s)[:120]
