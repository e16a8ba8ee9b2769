"""The patch mechanism on the real vendored llama.cpp tree (a private clone of it)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from llamactl.source import patches
from llamactl.core.errors import LlamactlError
from tests.conftest import FIXTURES
from tests.integration.conftest import tree_digest

SERIES_ROOT = FIXTURES / "patches"


def head_tree(tree) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD^{tree}"], cwd=tree, capture_output=True, text=True, check=True).stdout.strip()


def test_status_then_apply_is_idempotent(tree, monkeypatch):
    monkeypatch.setattr("llamactl.core.paths.patches_dir", lambda: SERIES_ROOT)
    states = patches.status(tree, "demo")
    assert [s.state for s in states] == [patches.NOT_APPLIED] * 3
    first = patches.apply(tree, "demo")
    assert first.applied == [p.name for p in patches.load_series("demo")] and first.skipped == []
    assert "LLAMACTL_DEMO_PATCH" in (tree / "include" / "llama.h").read_text()
    second = patches.apply(tree, "demo")
    assert second.applied == [] and len(second.skipped) == 3 and second.head == first.head
    assert [s.state for s in patches.status(tree, "demo")] == [patches.APPLIED] * 3


def test_failing_patch_leaves_tree_byte_identical(tree, monkeypatch):
    monkeypatch.setattr("llamactl.core.paths.patches_dir", lambda: SERIES_ROOT)
    before = tree_digest(tree)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True).stdout
    with pytest.raises(LlamactlError) as exc:
        patches.apply(tree, "conflict")   # patches 1 and 2 apply, 3 does not
    msg = str(exc.value)
    assert "0003-server-add-a-marker-comment.patch" in msg
    assert "tools/server/server.cpp" in msg and "hunk #1" in msg
    assert tree_digest(tree) == before
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True).stdout == head
    states = patches.status(tree, "conflict")
    assert [s.state for s in states] == [patches.NOT_APPLIED, patches.NOT_APPLIED, patches.CONFLICTS]
    with pytest.raises(LlamactlError, match="0003"):
        patches.check(tree, "conflict")
    assert tree_digest(tree) == before   # check is a dry run


def test_export_round_trip(tree, tmp_path, monkeypatch):
    monkeypatch.setattr("llamactl.core.paths.patches_dir", lambda: SERIES_ROOT)
    patches.apply(tree, "demo")
    applied_tree = head_tree(tree)
    out_root = tmp_path / "patches"
    written = patches.export(tree, "roundtrip", root=out_root)
    assert [w.name for w in written] == [p.name for p in patches.load_series("demo")]
    patches.revert(tree, series="demo")
    assert "LLAMACTL_DEMO_PATCH" not in (tree / "include" / "llama.h").read_text()
    monkeypatch.setattr("llamactl.core.paths.patches_dir", lambda: out_root)
    patches.apply(tree, "roundtrip")
    assert head_tree(tree) == applied_tree


def test_edit_then_export_regenerates_series(tree, tmp_path, monkeypatch):
    root = tmp_path / "patches"
    shutil.copytree(SERIES_ROOT / "demo", root / "demo")
    monkeypatch.setattr("llamactl.core.paths.patches_dir", lambda: root)
    patches.apply(tree, "demo")
    (tree / "README.md").write_text((tree / "README.md").read_text() + "\nEdited by a maintainer.\n")
    subprocess.run(["git", "commit", "-qam", "docs: maintainer edit"], cwd=tree, check=True,
                   env={"GIT_AUTHOR_NAME": "m", "GIT_AUTHOR_EMAIL": "m@x", "GIT_COMMITTER_NAME": "m",
                        "GIT_COMMITTER_EMAIL": "m@x", "PATH": "/usr/bin:/bin"})
    with pytest.raises(LlamactlError, match="not in patches/demo"):
        patches.apply(tree, "demo")     # an unexported commit is never silently dropped
    written = patches.export(tree, "demo")
    assert len(written) == 4 and written[-1].name.startswith("0004-docs-maintainer-edit")


def test_dirty_tree_refused(tree, monkeypatch):
    monkeypatch.setattr("llamactl.core.paths.patches_dir", lambda: SERIES_ROOT)
    (tree / "README.md").write_text("local edit\n")
    with pytest.raises(LlamactlError, match="uncommitted changes"):
        patches.apply(tree, "demo")
    assert (tree / "README.md").read_text() == "local edit\n"


def test_real_upstream_series_applies(tree):
    states = patches.check(tree, "upstream")
    assert states and all(s.state == patches.NOT_APPLIED for s in states)
