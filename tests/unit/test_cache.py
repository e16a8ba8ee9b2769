"""`llamactl cache list|prune`: what is stale, what is in use, and that prune keeps what is in use."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamactl.build import cache
from llamactl.build.builder import BuildRequest, build_key, key_material
from llamactl.build import toolchain
from llamactl.core import proc
from llamactl.models.catalog import CATALOG
from llamactl.source.patches import load_series, series_hashes
from llamactl.source.sources import load_lock
from tests.unit.test_locks_toolchain import holder

DAY = 86400


def write_build(root: Path, patches: list[dict]) -> Path:
    lock = load_lock()
    up = lock.sources["upstream"]
    ident = {"source": "upstream", "kind": "pypi-sdist", "version": up.version, "hash": up.sha256}
    material = key_material(BuildRequest(), ident, patches, None, toolchain.compiler_ids())
    key = build_key(material)
    d = root / "builds" / f"cpu-{key}"
    (d / "build" / "bin").mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"key": key, "key_material": material}))
    return d


def age(p: Path, days: float) -> None:
    t = time.time() - days * DAY
    for dirpath, dirnames, filenames in os.walk(p):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (t, t), follow_symlinks=False)
    os.utime(p, (t, t))


@pytest.fixture
def filled(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("LLAMACTL_CACHE", str(root))
    current = write_build(root, series_hashes(load_series("upstream")))
    old_series = write_build(root, [{"name": "0001-x.patch", "sha256": "0" * 64}])
    incomplete = root / "builds" / "cpu-0000000000000000"
    (incomplete / "src").mkdir(parents=True)
    building = root / "builds" / "cpu-1111111111111111"
    (building / "src").mkdir(parents=True)
    running = write_build(root, [{"name": "0002-y.patch", "sha256": "1" * 64}])   # stale, but a server runs from it
    exe = running / "build" / "bin" / "llama-server"
    shutil.copy("/bin/sleep", exe)
    server = subprocess.Popen([str(exe), "300"])
    pinned = root / "downloads" / load_lock().sources["upstream"].sha256
    pinned.mkdir(parents=True)
    (pinned / "x.tar.gz").write_bytes(b"x" * 1000)
    (root / "downloads" / ("f" * 64)).mkdir()
    model = root / "models" / next(iter(CATALOG.values())).sha256[:16]
    model.mkdir(parents=True)
    (root / "models" / "0123456789abcdef").mkdir()
    old_run = root / "runs" / "20200101-000000-default"
    old_run.mkdir(parents=True)
    (old_run / "server.log").write_text("log")
    age(old_run, 30)
    new_run = root / "runs" / "20990101-000000-default"
    new_run.mkdir()
    detached = root / "runs" / "20200101-000001-detached"
    detached.mkdir()
    sleeper = subprocess.Popen(["sleep", "300"])
    (detached / "run.json").write_text(json.dumps(dict(proc.identify(sleeper.pid).to_json(), state="running")))
    age(detached, 30)
    lock_holder = holder(building)
    yield {"current": current, "old_series": old_series, "incomplete": incomplete, "building": building,
           "running": running, "pinned": pinned, "unpinned": root / "downloads" / ("f" * 64), "model": model,
           "unknown_model": root / "models" / "0123456789abcdef", "old_run": old_run, "new_run": new_run,
           "detached": detached}
    for p in (server, sleeper, lock_holder):
        p.kill()
        p.wait()


def by_path(entries: list[cache.Entry]) -> dict[str, cache.Entry]:
    return {e.path: e for e in entries}


def test_scan_says_what_is_stale_and_what_is_in_use(filled):
    es = by_path(cache.scan())
    state = {k: (bool(es[str(p)].stale), bool(es[str(p)].in_use)) for k, p in filled.items()}
    assert state == {
        "current": (False, False), "old_series": (True, False), "incomplete": (True, False),
        "building": (False, True), "running": (True, True), "pinned": (False, False), "unpinned": (True, False),
        "model": (False, False), "unknown_model": (True, False), "old_run": (True, False), "new_run": (False, False),
        "detached": (False, True),
    }
    assert es[str(filled["old_series"])].stale == "its patches are no longer a series under patches/"
    assert es[str(filled["running"])].in_use.startswith("used by llama-server (pid ")
    assert "build lock" in es[str(filled["building"])].in_use
    assert es[str(filled["pinned"])].size == 1000
    assert 29 < es[str(filled["old_run"])].age_days < 31


def test_prune_dry_run_removes_nothing_then_prune_removes_only_stale(filled):
    would = {e.path for e in cache.prune(cache.scan(), dry_run=True)}
    assert would == {str(filled[k]) for k in ("old_series", "incomplete", "unpinned", "unknown_model", "old_run")}
    assert all(Path(p).exists() for p in would)
    gone = {e.path for e in cache.prune(cache.scan())}
    assert gone == would and not any(Path(p).exists() for p in gone)
    assert all(filled[k].exists() for k in ("current", "building", "running", "pinned", "model", "new_run", "detached"))


def test_prune_all_keeps_what_is_in_use(filled):
    cache.prune(cache.scan(), all_=True)
    left = {k for k, p in filled.items() if p.exists()}
    assert left == {"building", "running", "detached"}


def test_older_than_marks_unused_entries_stale(filled):
    es = by_path(cache.scan(older_than=0))
    assert es[str(filled["current"])].stale.startswith("not used for")
    assert es[str(filled["new_run"])].stale == "older than 0 days"


def test_cli_cache_list_json_and_prune_dry_run(filled):
    env = dict(os.environ, NO_COLOR="1", COLUMNS="250")
    cp = subprocess.run([sys.executable, "-m", "llamactl", "cache", "list", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert cp.returncode == 0, cp.stderr
    rows = json.loads(cp.stdout)
    assert {r["kind"] for r in rows} == {"build", "download", "model", "run"}
    assert all({"size", "last_used", "age_days", "stale", "in_use", "path"} <= set(r) for r in rows)
    cp = subprocess.run([sys.executable, "-m", "llamactl", "cache", "prune", "--dry-run"], capture_output=True, text=True, env=env, timeout=60)
    assert cp.returncode == 0 and "would free" in cp.stdout and filled["old_run"].exists()


def test_a_build_still_writing_its_log_is_in_use(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    b = tmp_path / "cache" / "builds" / "cpu-2222222222222222"
    b.mkdir(parents=True)
    (b / "build.log").write_text("[1/200] Building CXX object\n")
    e = by_path(cache.scan())[str(b)]
    assert e.in_use == "a build is writing its log" and cache.select([e], all_=True) == []
    age(b, 1)
    e = by_path(cache.scan())[str(b)]
    assert e.in_use is None and e.stale.startswith("incomplete")


def test_work_dirs_stay_while_a_kept_build_came_from_them(filled):
    root = filled["current"].parents[1]
    used, orphan, busy = (root / "build-work" / n for n in ("cpu-aaaa", "cpu-bbbb", "cpu-cccc"))
    for w in (used, orphan, busy):
        (w / "src").mkdir(parents=True)
    m = json.loads((filled["current"] / "manifest.json").read_text())
    (filled["current"] / "manifest.json").write_text(json.dumps(dict(m, work_dir=str(used))))
    h = holder(busy)
    try:
        es = by_path(cache.scan())
        assert (es[str(used)].stale, es[str(used)].in_use) == (None, None)
        assert es[str(orphan)].stale == "no kept build was compiled in it"
        assert es[str(busy)].in_use == "a build is compiling in it"
    finally:
        h.kill()
        h.wait()
