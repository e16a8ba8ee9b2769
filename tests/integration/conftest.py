"""Integration fixtures: the real vendored tree and the real built llama-server (cached)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from llamactl.core import paths
from llamactl.build.builder import BuildRequest, build
from llamactl.source.vendor import vendor

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def vendored() -> Path:
    vendor()   # no-op when the pinned upstream tree is already there
    return paths.vendor_tree()


@pytest.fixture(scope="session")
def built(vendored):
    """The default CPU build of upstream + its series (built once, then cached by key)."""
    return build(BuildRequest())


@pytest.fixture
def tree(vendored, tmp_path) -> Path:
    """A private clone of the vendored tree (cheap: objects are shared), at the base commit."""
    dest = tmp_path / "llama.cpp"
    subprocess.run(["git", "clone", "-q", "--shared", str(vendored), str(dest)], check=True)
    subprocess.run(["git", "checkout", "-q", "-B", "main", "llamactl-base"], cwd=dest, check=True)
    return dest


def tree_digest(root: Path) -> str:
    """Hash of every file's path, mode and bytes outside .git: 'byte-identical' made checkable."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(filenames):
            p = Path(dirpath) / name
            h.update(str(p.relative_to(root)).encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            else:
                h.update(oct(p.stat().st_mode).encode())
                h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def clean_env() -> dict[str, str]:
    """The environment for llamactl subprocesses, without the run-script override variables."""
    from llamactl.serve.profiles import ENV_VARS

    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["LLAMACTL_NO_PROGRESS"] = "1"
    env["NO_COLOR"] = "1"
    return env
