"""Expand a validation matrix: axes (cartesian product) - exclude + include.

Cells are dicts of profile overrides. ``kv: a/b`` is shorthand for ``kv_k: a, kv_v: b``;
``mtp`` is shorthand for ``enable_mtp``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llamactl.core.errors import LlamactlError
from llamactl.serve.profiles import MatrixSpec, Profile

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


def normalise(entry: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in entry.items():
        k = SHORTHAND.get(k, k)
        if k == "kv":
            if not isinstance(v, str) or v.count("/") > 1:
                raise LlamactlError(f"matrix: kv must be 'K/V' or 'T', got {v!r}")
            kk, _, vv = v.partition("/")
            out["kv_k"], out["kv_v"] = kk, vv or kk
        else:
            if k not in Profile.model_fields or k in ("matrix", "extends", "build"):
                raise LlamactlError(f"matrix: unknown key {k!r}", hint="axes and cells take profile fields, kv: K/V or mtp")
            out[k] = v
    return out


def _matches(cell: dict[str, Any], pattern: dict[str, Any]) -> bool:
    return all(cell.get(k) == v for k, v in pattern.items())


def expand(spec: MatrixSpec | None) -> list[Cell]:
    if spec is None:
        return [Cell(())]
    axes = [(name, values) for name, values in spec.axes.items()]
    cells: list[dict[str, Any]] = []
    if axes:
        for combo in itertools.product(*[vals for _, vals in axes]):
            merged: dict[str, Any] = {}
            for (name, _), val in zip(axes, combo):
                merged.update(normalise({name: val}))
            cells.append(merged)
    excludes = [normalise(e) for e in spec.exclude]
    cells = [c for c in cells if not any(_matches(c, e) for e in excludes)]
    names: dict[int, str] = {}
    for inc in spec.include:
        inc = dict(inc)
        label = inc.pop("name", None)
        n = normalise(inc)
        if n not in cells:
            cells.append(n)
        if label:
            names[cells.index(n)] = str(label)
    seen: list[Cell] = []
    for i, c in enumerate(cells):
        cell = Cell(tuple(c.items()), names.get(i))
        if all(cell.overrides != s.overrides for s in seen):
            seen.append(cell)
    return seen


def load_matrix_file(path: Path) -> MatrixSpec:
    try:
        data = yaml.safe_load(path.read_text()) or {}
        if "matrix" in data:
            data = data["matrix"]
        return MatrixSpec.model_validate(data)
    except FileNotFoundError as exc:
        raise LlamactlError(f"matrix file {path} not found") from exc
    except (yaml.YAMLError, ValidationError) as exc:
        raise LlamactlError(f"{path}: invalid matrix: {str(exc).splitlines()[0]}") from exc


def select(cells: list[Cell], filters: list[str]) -> list[Cell]:
    """Keep cells matching every ``key=value`` filter (``--cell parallel=2``) and, if any are given, one of the named cells."""
    if not filters:
        return cells
    wanted: dict[str, Any] = {}
    known_ids = {c.id for c in cells}
    ids = [f for f in filters if "=" not in f or f in known_ids]   # a cell's name or id selects it
    for f in filters:
        if f not in ids:
            k, v = f.split("=", 1)
            wanted.update(normalise({k.strip(): yaml.safe_load(v)}))
    out = [c for c in cells if all(_loose_eq(c.values.get(k), v) for k, v in wanted.items())
           and (not ids or c.id in ids)]
    if not out:
        raise LlamactlError(f"no matrix cell matches {' '.join(filters)}",
                            hint="cells: " + "; ".join(c.id for c in cells))
    return out


def _loose_eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b) if a is not None else False
    return a == b or str(a) == str(b)
