"""The work dir's source sync: only changed files are rewritten; everything else keeps its mtime."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from llamactl.build.srcsync import sync_tree

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@x", "-c", "commit.gpgsign=false"]


def commit(repo: Path, msg: str = "c") -> None:
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", msg], cwd=repo, check=True)


@pytest.fixture
def repo(tmp_path) -> Path:
    r = tmp_path / "repo"
    (r / "sub").mkdir(parents=True)
    (r / "a.c").write_text("int a;\n")
    (r / "b.c").write_text("int b;\n")
    (r / "sub" / "c.h").write_text("#define C 1\n")
    (r / "run.sh").write_text("#!/bin/sh\n")
    (r / "run.sh").chmod(0o755)
    os.symlink("a.c", r / "link.c")
    subprocess.run([*GIT, "init", "-q"], cwd=r, check=True)
    commit(r)
    return r


def sync(repo: Path, tmp_path: Path, rev: str = "HEAD"):
    return sync_tree(repo, rev, tmp_path / "work" / "src", tmp_path / "work" / "src.index.json")


def mtimes(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.lstat().st_mtime_ns for p in d.rglob("*") if not p.is_dir()}


def test_first_sync_copies_the_tree_exactly(repo, tmp_path):
    res = sync(repo, tmp_path)
    dest = tmp_path / "work" / "src"
    assert sorted(res.written) == ["a.c", "b.c", "link.c", "run.sh", "sub/c.h"] and res.unchanged == 0
    assert (dest / "sub" / "c.h").read_text() == "#define C 1\n"
    assert os.access(dest / "run.sh", os.X_OK) and not os.access(dest / "a.c", os.X_OK)
    assert (dest / "link.c").is_symlink() and os.readlink(dest / "link.c") == "a.c"


def test_noop_sync_touches_nothing(repo, tmp_path):
    sync(repo, tmp_path)
    before = mtimes(tmp_path / "work" / "src")
    res = sync(repo, tmp_path)
    assert res.written == [] and res.removed == [] and res.unchanged == 5
    assert mtimes(tmp_path / "work" / "src") == before


def test_one_changed_file_is_the_only_one_rewritten(repo, tmp_path):
    sync(repo, tmp_path)
    dest = tmp_path / "work" / "src"
    before = mtimes(dest)
    (repo / "b.c").write_text("int b = 2;\n")
    commit(repo)
    res = sync(repo, tmp_path)
    assert res.written == ["b.c"] and res.unchanged == 4
    after = mtimes(dest)
    assert after["b.c"] > before["b.c"] and (dest / "b.c").read_text() == "int b = 2;\n"
    assert {k: v for k, v in after.items() if k != "b.c"} == {k: v for k, v in before.items() if k != "b.c"}


def test_deleted_files_and_their_empty_dirs_go(repo, tmp_path):
    sync(repo, tmp_path)
    subprocess.run(["git", "rm", "-q", "sub/c.h"], cwd=repo, check=True)
    commit(repo)
    res = sync(repo, tmp_path)
    assert res.removed == ["sub/c.h"] and not (tmp_path / "work" / "src" / "sub").exists()


def test_hand_edits_and_stray_files_in_the_work_dir_are_undone(repo, tmp_path):
    sync(repo, tmp_path)
    dest = tmp_path / "work" / "src"
    (dest / "a.c").write_text("int a = 99;  /* edited by hand */\n")
    (dest / "stray.c").write_text("int stray;\n")
    res = sync(repo, tmp_path)
    assert res.written == ["a.c"] and res.removed == ["stray.c"]
    assert (dest / "a.c").read_text() == "int a;\n" and not (dest / "stray.c").exists()


def test_a_lost_index_rewrites_everything(repo, tmp_path):
    sync(repo, tmp_path)
    (tmp_path / "work" / "src.index.json").unlink()
    res = sync(repo, tmp_path)
    assert len(res.written) == 5


def test_content_back_to_an_older_state_gets_a_new_mtime(repo, tmp_path):
    """Ninja must rebuild when a file returns to earlier content: the object on disk is from the newer one."""
    first = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    sync(repo, tmp_path)
    (repo / "a.c").write_text("int a = 1;\n")
    commit(repo)
    sync(repo, tmp_path)
    mid = (tmp_path / "work" / "src" / "a.c").stat().st_mtime_ns
    res = sync(repo, tmp_path, first)
    assert res.written == ["a.c"] and (tmp_path / "work" / "src" / "a.c").stat().st_mtime_ns >= mid
    assert (tmp_path / "work" / "src" / "a.c").read_text() == "int a;\n"


def test_uncommitted_edits_via_stash_create(repo, tmp_path):
    (repo / "a.c").write_text("int a = 3;  /* not committed */\n")
    rev = subprocess.run(["git", "stash", "create"], cwd=repo, capture_output=True, text=True).stdout.strip()
    sync(repo, tmp_path, rev)
    assert (tmp_path / "work" / "src" / "a.c").read_text() == "int a = 3;  /* not committed */\n"
