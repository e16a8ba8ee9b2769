"""The SQLite run history: round trip, listing, baseline lookup by profile/cell/machine, errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from llamactl.core.errors import LlamactlError
from llamactl.report import fingerprint, publish
from llamactl.report.history import History, default_path

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "runs"
M1 = {"cpu": "AMD EPYC", "cores": 2, "memory_gib": 8, "os": "Debian 12", "arch": "x86_64", "gpus": [], "id": "m1"}
M2 = dict(M1, cores=16, id="m2")
B1 = {"key": "k1", "source": "upstream", "commit": "0c1e57098", "patches": ["adc01df 0001-x.patch"], "backend": "cpu"}
B2 = dict(B1, key="k2", patches=[])


def bench() -> dict:
    return json.loads((FIX / "bench.json").read_text())


def test_round_trip_and_listing(tmp_path):
    h = History(tmp_path / "sub" / "h.sqlite")
    assert h.runs() == [] and not h.path.exists()                  # listing an empty history creates nothing
    v = json.loads((FIX / "validate.json").read_text())
    id1 = h.record(v, M1, B1)
    id2 = h.record(bench(), M1, B2)
    assert (id1, id2) == (1, 2)
    back = h.get(id2)
    assert back["cells"] == bench()["cells"] and back["history"]["machine"] == M1 and back["history"]["build"] == B2
    rows = h.runs()
    assert [r.id for r in rows] == [2, 1] and rows[1].kind == "validate" and rows[1].ok is False
    assert "1 quarantined" in rows[1].summary and rows[0].summary == "2 cell(s), 1 arm error(s)"
    assert [r.id for r in h.runs(profile="x")] == [1] and [r.id for r in h.runs(kind="bench")] == [2]
    assert [r.id for r in h.runs(cell="echo")] == [2]
    cells = h.cells(cell="echo")
    assert [(c.variant, c.status) for c in cells] == [("mtp-off", "ok"), ("mtp-on", "ok")]
    assert cells[1].acceptance == 1.0 and 150 < cells[1].decode_tps < 165 and cells[1].build_key == "k2"
    err = h.cells(cell="random")[1]
    assert err.status == "error" and "unknown model" in err.reason
    assert h.cells(cell="parallel=2,enable_mtp=1")[0].status == "fail"
    assert h.find_by_run_dir("/nonexistent/runs/bench")["history"]["id"] == 2
    with pytest.raises(LlamactlError, match="no run 9 in the history store"):
        h.get(9)


def test_last_bench_matches_profile_cell_variant_and_machine(tmp_path):
    h = History(tmp_path / "h.sqlite")
    a = h.record(bench(), M1, B1)
    b = h.record(bench(), M2, B1)            # another machine: never a baseline for M1
    assert h.last_bench("tiny-gemma4-bench", "echo", "mtp-on", "m1")[0] == a
    assert h.last_bench("tiny-gemma4-bench", "echo", "mtp-on", "m2")[0] == b
    assert h.last_bench("tiny-gemma4-bench", "random", "mtp-on", "m1") is None   # that arm failed
    assert h.last_bench("other", "echo", "mtp-on", "m1") is None
    c = h.record(bench(), M1, B2)
    found = h.last_bench("tiny-gemma4-bench", "echo", "mtp-on", "m1")
    assert found[0] == c and len(found[1]["samples"]) == 6


def test_baseline_lookup_specs(tmp_path):
    h = History(tmp_path / "h.sqlite")
    vid = h.record(json.loads((FIX / "validate.json").read_text()), M1, B1)
    bid = h.record(bench(), M1, B1)
    label, look = publish.baseline_lookup("last", "tiny-gemma4-bench", "m1", h)
    assert look("echo", "mtp-on")[0] == f"run {bid}" and look("echo", "nope") is None
    label, look = publish.baseline_lookup(str(bid), "any", "m1", h)
    assert label == f"run {bid}" and look("echo", "mtp-off")[1]["samples"]
    assert publish.baseline_lookup(str(FIX / "bench.json"), "p", "m1", h)[0] == "file bench.json"
    for spec, msg in ((str(vid), "is a validate run"), ("nope", "not 'last', a history run id, or a bench JSON file"),
                      (str(FIX / "validate.json"), "not a single bench run"), ("99", "no run 99")):
        with pytest.raises(LlamactlError, match=msg):
            publish.baseline_lookup(spec, "p", "m1", h)


def test_storage_errors_are_one_line(tmp_path):
    bad = tmp_path / "h.sqlite"
    bad.write_text("this is not a database" * 100)
    with pytest.raises(LlamactlError) as e:
        History(bad).record(bench(), M1, B1)
    assert str(bad) in e.value.message and "\n" not in e.value.message
    newer = tmp_path / "new.sqlite"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(LlamactlError, match="newer llamactl"):
        History(newer).record(bench(), M1, B1)
    pub = publish.record(dict(bench(), machine=M1, build=B1), History(bad))
    assert pub.history_id is None and "h.sqlite" in pub.history_error


def test_default_path_env_and_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMACTL_HISTORY", str(tmp_path / "x.sqlite"))
    assert default_path() == tmp_path / "x.sqlite"
    monkeypatch.delenv("LLAMACTL_HISTORY")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_path() == tmp_path / "data" / "llamactl" / "history.sqlite"


def test_fingerprint_and_build_identity(tmp_path):
    m = fingerprint.machine()
    assert m["cores"] and m["cpu"] and m["id"] == fingerprint.machine_id(m) and len(m["id"]) == 12
    assert fingerprint.machine_id(dict(m, cores=m["cores"] + 1)) != m["id"]
    root = tmp_path / "cpu-abc"
    (root / "build" / "bin").mkdir(parents=True)
    manifest = {"key": "abc", "backend": "cpu", "source": {"source": "upstream", "kind": "pypi-sdist", "version": "0.3.36",
                "upstream_commit": "0c1e57098", "series": "upstream"}, "patches": [{"name": "0001-a.patch", "sha256": "ff" * 32}],
                "key_material": {"compilers": {"cc": "gcc 12"}, "cmake_options": ["-DGGML_NATIVE=OFF"]}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    found = fingerprint.manifest_for_binary(root / "build" / "bin" / "llama-server")
    b = fingerprint.build_identity(found)
    assert b["key"] == "abc" and b["commit"] == "0c1e57098" and b["patches"] == ["ffffffffffff 0001-a.patch"]
    assert b["toolchain"] == {"cc": "gcc 12"} and b["options"] == ["-DGGML_NATIVE=OFF"]
    assert fingerprint.build_label(b) == "upstream@0c1e57098+1 patch cpu [abc]"
    nob = fingerprint.build_identity(None, "/usr/bin/llama-server", "version: 1")
    assert nob["key"].startswith("binary-") and nob["source"] == "server_binary"
    assert fingerprint.manifest_for_binary(tmp_path / "nothing" / "bin" / "x") is None


def test_cli_history_lists_runs_and_cells(tmp_path):
    import subprocess
    import sys

    store = tmp_path / "h.sqlite"
    h = History(store)
    h.record(json.loads((FIX / "validate.json").read_text()), M1, B1)
    h.record(bench(), M1, B2)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "llamactl", "history", *args, "--history", str(store)],
                              capture_output=True, text=True, timeout=60, env={**__import__("os").environ, "COLUMNS": "250"})
    cp = run()
    assert cp.returncode == 0, cp.stderr
    assert "#2" in cp.stdout and "#1" in cp.stdout and "tiny-gemma4-bench" in cp.stdout and "upstream@0c1e57098 no patches cpu [k2]" in cp.stdout
    cp = run("tiny-gemma4-bench", "--cell", "echo", "--json")
    rows = json.loads(cp.stdout)
    assert [(r["run_id"], r["variant"]) for r in rows] == [(2, "mtp-off"), (2, "mtp-on")] and rows[1]["acceptance"] == 1.0
    cp = run("--kind", "nonsense")
    assert cp.returncode == 2 and "--kind 'nonsense': expected validate, bench or quality" in cp.stderr
    cp = run("nobody")
    assert cp.returncode == 0 and "no runs of nobody recorded" in cp.stdout


def test_after_run_records_enriches_and_renders(tmp_path, capsys):
    from llamactl.cli.report_cmd import after_run

    run = json.loads((FIX / "validate.json").read_text())
    out = after_run(run, tmp_path / "h.sqlite", tmp_path / "v.html", tmp_path / "v.md")
    assert out["kind"] == "validate" and out["machine"]["id"] == fingerprint.machine()["id"]
    assert out["build"]["source"] == "server_binary"          # no manifest next to /b/llama-server
    assert out["history"]["id"] == 1 and History(tmp_path / "h.sqlite").get(1)["machine"]["id"] == out["machine"]["id"]
    assert "History run #1" in (tmp_path / "v.html").read_text()
    assert "history: run #1" in capsys.readouterr().err
    bad = tmp_path / "not-a-dir"
    bad.write_text("")
    out = after_run(run, bad / "h.sqlite", None, None)        # an unwritable history is a warning, not a failure
    assert "history" not in out and "run not recorded in the history" in capsys.readouterr().err
