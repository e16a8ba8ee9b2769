"""validate --shard K/N and `report merge`: deterministic shards, duplicates and cells that ran nowhere."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from llamactl import cli
from llamactl.core.errors import BadInput, ExitCode
from llamactl.judge.matrix import Cell, parse_shard, shard, shard_of
from llamactl.report import merge as merge_lib


def _cells(n: int) -> list[Cell]:
    return [Cell((("parallel", i),)) for i in range(1, n + 1)]


def test_shards_partition_the_matrix() -> None:
    cells = _cells(20)
    parts = [shard(cells, k, 3) for k in (1, 2, 3)]
    ids = sorted(c.id for p in parts for c in p)
    assert ids == sorted(c.id for c in cells)          # every cell in exactly one shard
    assert all(parts)                                  # 20 cells over 3 shards: none empty
    assert shard(cells, 1, 1) == cells


def test_adding_a_cell_moves_no_other() -> None:
    before = {c.id: shard_of(c.id, 4) for c in _cells(12)}
    after = {c.id: shard_of(c.id, 4) for c in _cells(13)}
    assert all(after[k] == v for k, v in before.items())


@pytest.mark.parametrize("bad", ["0/2", "3/2", "1", "a/b", "1/0", "-1/2"])
def test_parse_shard_refuses(bad: str) -> None:
    with pytest.raises(BadInput, match="--shard must be K/N"):
        parse_shard(bad)
    assert parse_shard(" 2/3 ") == (2, 3)


def _run(path: Path, host: str, cells: list[tuple[str, str]], matrix: list[str], shard_: str) -> Path:
    path.write_text(json.dumps({
        "profile": "p", "binary": "/b/llama-server", "version": "v", "wall_s": 1.0, "shard": shard_, "matrix": matrix,
        "machine": {"host": host, "id": host + "-id"},
        "cells": [{"cell": c, "overrides": {}, "status": s, "reason": "" if s == "pass" else "boom",
                   "checks": [{"name": "tiny_message", "status": s, "seconds": 0.1, "detail": "", "data": {}}]}
                  for c, s in cells]}))
    return path


def test_merge_table(tmp_path: Path) -> None:
    m = ["a", "b", "c"]
    a = _run(tmp_path / "1.json", "box1", [("a", "pass"), ("c", "fail")], m, "1/2")
    b = _run(tmp_path / "2.json", "box2", [("b", "pass")], m, "2/2")
    report, info = merge_lib.merge([a, b])
    assert [c.cell for c in report.cells] == ["a", "b", "c"]
    assert [r["machine"] for r in info["cells"]] == ["box1", "box2", "box1"]
    assert [r["status"] for r in info["cells"]] == ["pass", "pass", "fail"]
    assert not info["duplicates"] and not info["missing"]
    assert not report.ok


def test_merge_finds_twice_and_nowhere(tmp_path: Path, capsys) -> None:
    m = ["a", "b", "c"]
    a = _run(tmp_path / "1.json", "box1", [("a", "pass")], m, "1/2")
    b = _run(tmp_path / "2.json", "box2", [("a", "pass"), ("b", "pass")], m, "2/2")
    out = tmp_path / "all.json"
    junit = tmp_path / "all.xml"
    rc = cli.run(["report", "merge", str(a), str(b), "--json-out", str(out), "--junit", str(junit)])
    text = capsys.readouterr()
    assert rc == ExitCode.FAILED
    assert "ran twice: a on box1, box2" in text.err and "ran nowhere: c" in text.err
    data = json.loads(out.read_text())
    assert data["merge"]["missing"] == ["c"] and data["merge"]["duplicates"][0]["cell"] == "a"
    assert data["counts"]["not_run"] == 1
    names = {tc.get("classname", "") + "/" + tc.get("name", "") for tc in ET.parse(junit).iter("testcase")}
    assert any("c" in n for n in names)


def test_merge_refuses_non_reports(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    assert cli.run(["report", "merge", str(bad)]) == ExitCode.BAD_INPUT
    assert "not a validate report" in capsys.readouterr().err
    assert cli.run(["report", "merge"]) == ExitCode.BAD_INPUT


def test_merge_json_prints_the_merged_report_alone_on_stdout(tmp_path: Path, capsys) -> None:
    m = ["a", "b"]
    a = _run(tmp_path / "1.json", "box1", [("a", "pass")], m, "1/2")
    b = _run(tmp_path / "2.json", "box2", [("b", "pass")], m, "2/2")
    out = tmp_path / "all.json"
    rc = cli.run(["report", "merge", str(a), str(b), "--json", "--json-out", str(out)])
    text = capsys.readouterr()
    assert rc in (None, 0, ExitCode.OK)
    printed = json.loads(text.out)   # nothing but the JSON: the table went to stderr
    assert printed == json.loads(out.read_text()) and printed["merge"]["missing"] == []
    assert "report(s) merged" in text.err
