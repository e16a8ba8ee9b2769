"""JSON that every reader takes: no NaN or Infinity.

``json.dumps`` writes a non-finite float as ``NaN`` / ``Infinity``, which is not JSON: ``jq``, browsers
and most CI tools refuse the whole document. A figure that could not be computed (a rate over no
time, a ratio to zero) is ``null`` instead, as llamactl writes other missing figures.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable


def finite(o: Any) -> Any:
    """``o`` with every non-finite float (NaN, +-inf) in it, at any depth of dicts, lists and tuples, as None."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    return o


def dumps(o: Any, *, default: Callable[[Any], Any] | None = str, indent: int | None = 2, **kw: Any) -> str:
    """``json.dumps`` of ``o`` made :func:`finite` (what ``default`` returns too); never writes NaN."""
    def safe_default(x: Any) -> Any:
        return finite(default(x)) if default is not None else x
    return json.dumps(finite(o), default=safe_default, indent=indent, allow_nan=False, **kw)
