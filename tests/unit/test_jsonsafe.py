"""JSON output never holds NaN or Infinity (not JSON: jq and browsers refuse the whole document)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from llamactl.cli.console import to_json
from llamactl.core import jsonsafe
from llamactl.report.reports import write_json


def strict(text: str):
    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


@dataclass
class Figure:
    tok_s: float
    spread: list[float]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_figures_are_null_at_any_depth(bad):
    data = {"a": bad, "b": [1.0, bad, {"c": (bad, 2)}], "d": "nan", "e": 0.5, "f": Figure(bad, [bad, 1.5])}
    out = strict(to_json(data))
    assert out == {"a": None, "b": [1.0, None, {"c": [None, 2]}], "d": "nan", "e": 0.5,
                   "f": {"tok_s": None, "spread": [None, 1.5]}}
    assert strict(jsonsafe.dumps({"x": bad, "p": Path("/a")})) == {"x": None, "p": "/a"}
    with pytest.raises(ValueError):
        json.dumps({"x": bad}, allow_nan=False)     # what json alone would do with it


def test_a_validate_report_with_a_nan_figure_is_json(tmp_path):
    from tests.unit.test_reports import sample_report

    r = sample_report()
    r.cells[0].tokens_per_s = math.nan
    r.cells[0].acceptance = math.inf
    path = tmp_path / "r.json"
    write_json(r, path)
    cell = strict(path.read_text())["cells"][0]
    assert cell["tokens_per_s"] is None and cell["acceptance"] is None
