"""`patch rebase`: each patch's fate on a new base (cleanly, offsets, already upstream, conflicts) and --write."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from llamactl.core import paths
from llamactl.source import rebase
from llamactl.source.git import Repo
from llamactl.source.patches import load_series

LINES = [f"line {i}\n" for i in range(1, 31)]


def git(repo: Path, *args: str) -> str:
    return Repo(repo).out(*args)


def make_repo(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    Repo(path).init_with_base("base")
    return path


def commit_patch(repo: Path, edit: dict[str, str], subject: str, out_dir: Path, name: str) -> Path:
    """Edit files in ``repo``, commit, and save the commit as ``out_dir/name`` (format-patch)."""
    for f, text in edit.items():
        (repo / f).write_text(text)
    r = Repo(repo)
    r.git("commit", "-qam", subject)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = r.git("format-patch", "--zero-commit", "--no-signature", "--no-numbered", "--stdout", "-1", "HEAD").stdout
    (out_dir / name).write_text(text)
    return out_dir / name


@pytest.fixture
def series(tmp_path):
    """An old base (f.txt, g.txt of 30 lines) and a series of two patches made on it."""
    old = make_repo(tmp_path / "old", {"f.txt": "".join(LINES), "g.txt": "".join(LINES)})
    sdir = tmp_path / "patches" / "s"
    f = list(LINES)
    f[14] = "line 15 patched\n"
    commit_patch(old, {"f.txt": "".join(f)}, "f: patch line 15", sdir, "0001-f.patch")
    g = list(LINES)
    g[4] = "line 5 patched\n"
    commit_patch(old, {"g.txt": "".join(g)}, "g: patch line 5", sdir, "0002-g.patch")
    return old, load_series(str(sdir)), f, g


def run(tmp_path: Path, old: Path, patches, files: dict[str, str], write: bool = False):
    new = make_repo(tmp_path / "new", files)
    out = tmp_path / "rebased" if write else None
    got, written = rebase.rebase_tree([("", patches)], new, tmp_path / "scratch", lend_objects=[old / ".git" / "objects"],
                                      conflicts_dir=tmp_path / "conflicts", write_to=out)
    return {o.name: o for o in got}, written


def test_cleanly_and_with_offsets(tmp_path, series):
    old, patches, _f, _g = series
    shifted = ["new top line\n"] * 5 + LINES
    got, _ = run(tmp_path, old, patches, {"f.txt": "".join(shifted), "g.txt": "".join(LINES)})
    assert got["0001-f.patch"].status == rebase.OFFSETS and got["0001-f.patch"].label == "applies with offsets"
    assert got["0001-f.patch"].offsets == ["f.txt hunk #1 at 17 (offset 5 lines)"]
    assert got["0002-g.patch"].status == rebase.CLEAN and not got["0002-g.patch"].offsets


def test_already_upstream_when_the_new_base_has_the_change(tmp_path, series):
    old, patches, f, _g = series
    got, _ = run(tmp_path, old, patches, {"f.txt": "".join(f), "g.txt": "".join(LINES)})
    assert got["0001-f.patch"].status == rebase.UPSTREAM and "reverse-applies" in got["0001-f.patch"].detail
    assert got["0002-g.patch"].status == rebase.CLEAN


def test_three_way_merge_when_the_context_changed(tmp_path, series):
    old, patches, _f, _g = series
    f = list(LINES)
    f[11] = "line 12 changed upstream\n"     # a context line of 0001's hunk: plain apply fails, 3-way merges
    got, _ = run(tmp_path, old, patches, {"f.txt": "".join(f), "g.txt": "".join(LINES)})
    o = got["0001-f.patch"]
    assert o.status == rebase.OFFSETS and "3-way" in o.detail and o.failed_hunks == ["f.txt hunk #1 (-12,7 +12,7)"]


def test_conflicts_name_files_and_hunks_and_are_written_out(tmp_path, series):
    old, patches, _f, _g = series
    f = list(LINES)
    f[14] = "line 15 changed upstream\n"     # the very line 0001 changes
    got, written = run(tmp_path, old, patches, {"f.txt": "".join(f), "g.txt": "".join(LINES)}, write=True)
    o = got["0001-f.patch"]
    assert o.status == rebase.CONFLICTS and o.conflicts == {"f.txt": 1}
    assert o.failed_hunks == ["f.txt hunk #1 (-12,7 +12,7)"]
    marked = (Path(o.conflict_dir or "") / "f.txt").read_text()
    assert "<<<<<<<" in marked and "line 15 patched" in marked and "line 15 changed upstream" in marked
    assert (Path(o.conflict_dir or "") / "0001-f.patch").is_file()
    assert got["0002-g.patch"].status == rebase.CLEAN and "after 0001-f.patch conflicted" in got["0002-g.patch"].detail
    assert written == [] and not (tmp_path / "rebased").exists()     # --write needs every patch to resolve


def test_write_regenerates_the_series_with_the_same_names_and_drops_upstream(tmp_path, series):
    old, patches, f, _g = series
    shifted = ["top\n"] * 3 + LINES
    got, written = run(tmp_path, old, patches, {"f.txt": "".join(f), "g.txt": "".join(shifted)}, write=True)
    assert [Path(w).name for w in written] == ["0002-g.patch"]
    text = (tmp_path / "rebased" / "0002-g.patch").read_text()
    assert "Subject: [PATCH] g: patch line 5" in text and "@@ -5,7 +5,7 @@" in text   # its hunk where it is now
    assert not (tmp_path / "rebased" / "0001-f.patch").exists()
    new_series = load_series(str(tmp_path / "rebased"))
    again, _ = rebase.rebase_tree([("", new_series)], tmp_path / "new", tmp_path / "scratch2")
    assert [o.status for o in again] == [rebase.CLEAN]


def test_upstream_series_onto_a_base_that_already_has_one_of_its_patches(tmp_path, monkeypatch):
    """The real patches/upstream/ series onto a made-up base: the files it touches, as the vendored
    base has them, with patch 0001 already applied. 0001 is already upstream; --write drops it."""
    tree = paths.vendor_tree()
    if not (tree / ".git").is_dir():
        pytest.skip("needs the vendored upstream tree (llamactl vendor)")
    groups = rebase.series_groups("upstream")
    touched = sorted({ln.split(" b/", 1)[1] for _g, ps in groups for p in ps
                      for ln in p.path.read_text().splitlines() if ln.startswith("diff --git ")})
    base = Repo(tree).base()
    made = tmp_path / "madeup"
    make_repo(made, {f: Repo(tree).git("show", f"{base}:{f}").stdout for f in touched})
    first = groups[0][1][0]
    subprocess.run(["git", "apply", str(first.path)], cwd=made, check=True)
    Repo(made).git("commit", "-qam", "upstream merged our patch")
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(rebase, "old_base_objects", lambda series, notes: [])
    report = rebase.rebase(f"path:{made}", "upstream", write=True, write_to=tmp_path / "out")
    by = {p.name: p for p in report.patches}
    assert by[first.name].status == rebase.UPSTREAM
    assert report.ok and report.dropped == [first.name]
    assert all(p.status == rebase.CLEAN for n, p in by.items() if n != first.name)
    assert not (tmp_path / "out" / first.name).exists()
    assert [Path(w).relative_to(tmp_path / "out").as_posix() for w in report.written] == \
        [f"{g}/{p.name}" for g, ps in groups[1:] for p in ps]


def test_cli_conflict_exits_1_and_says_where_the_conflict_is(tmp_path, series, monkeypatch, capsys):
    import json

    from llamactl.cli import run as cli

    old, patches, _f, _g = series
    f = list(LINES)
    f[14] = "line 15 changed upstream\n"
    new = make_repo(tmp_path / "new", {"f.txt": "".join(f), "g.txt": "".join(LINES)})
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    sdir = str(patches[0].path.parent)
    assert cli(["patch", "rebase", "--onto", f"path:{new}", "--series", sdir, "--conflicts-dir", str(tmp_path / "c")]) == 1
    printed = capsys.readouterr().out
    assert "conflicts" in printed and str(tmp_path / "c" / "0001-f") in printed.replace("\n", "")
    assert cli(["patch", "rebase", "--onto", f"path:{new}", "--series", sdir, "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and [p["status"] for p in data["patches"]] == ["conflicts", "clean"]
    assert data["patches"][0]["conflicts"] == {"f.txt": 1}


def test_already_upstream_by_patch_id_when_upstream_changed_the_lines_again(tmp_path, series, monkeypatch):
    """Upstream took 0001 as a commit and then edited the same line: it no longer reverse-applies and
    a 3-way merge conflicts, but its patch-id is in the new base's history."""
    old, patches, f, _g = series
    hist = make_repo(tmp_path / "upstream", {"f.txt": "".join(LINES), "g.txt": "".join(LINES)})
    subprocess.run(["git", "-c", "user.name=u", "-c", "user.email=u@u", "am", "-q", str(patches[0].path)], cwd=hist, check=True)
    f2 = list(f)
    f2[14] = "line 15 patched, then changed again\n"
    (hist / "f.txt").write_text("".join(f2))
    Repo(hist).git("commit", "-qam", "upstream: change line 15 again")
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(rebase, "old_base_objects", lambda series, notes: [old / ".git" / "objects"])
    report = rebase.rebase(f"path:{hist}", str(patches[0].path.parent))
    by = {p.name: p for p in report.patches}
    assert by["0001-f.patch"].status == rebase.UPSTREAM and "same patch-id as upstream commit" in by["0001-f.patch"].detail
    assert by["0002-g.patch"].status == rebase.CLEAN and report.ok
    ids = rebase.history_patch_ids(hist / ".git", "HEAD")
    assert len(ids) == 3     # base, 0001, the later edit
