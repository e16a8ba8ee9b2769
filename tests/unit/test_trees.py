"""The one tree-export helper: git archive of a commit, tar extraction (an sdist's subtree too)."""

import io
import subprocess
import tarfile

import pytest

from llamactl.core.errors import LlamactlError
from llamactl.source import trees


def _tar(files: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def test_an_sdist_subtree_moves_up_and_a_missing_one_is_refused(tmp_path):
    trees.extract(_tar({"pkg-1.0/vendor/llama.cpp/CMakeLists.txt": b"x", "pkg-1.0/setup.py": b"y"}),
                  tmp_path / "a", "vendor/llama.cpp")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["CMakeLists.txt"]
    with pytest.raises(LlamactlError, match="has no vendor/llama.cpp/ subtree"):
        trees.extract(_tar({"pkg-1.0/setup.py": b"y"}), tmp_path / "b", "vendor/llama.cpp")


def test_export_commit_writes_that_commits_files_only(tmp_path):
    repo = tmp_path / "r"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "a.txt").write_text("one\n")
    subprocess.run([*git, "add", "a.txt"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "one"], cwd=repo, check=True)
    first = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()
    (repo / "a.txt").write_text("two\n")
    subprocess.run([*git, "commit", "-qam", "two"], cwd=repo, check=True)
    trees.export_commit(repo / ".git", first, tmp_path / "out")
    assert (tmp_path / "out" / "a.txt").read_text() == "one\n" and not (tmp_path / "out" / ".git").exists()
    with pytest.raises(LlamactlError, match="git archive"):
        trees.export_commit(repo / ".git", "0" * 40, tmp_path / "bad")
