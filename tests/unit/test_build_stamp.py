"""The cheap cache stamp, and which work directory a build compiles in."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from llamactl.build import builder
from llamactl.build.builder import (BuildRequest, _record_stamp, _stamp_hit, build_key, build_root_for, key_material,
                                    stamp_material, work_dir_for)

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@x", "-c", "commit.gpgsign=false"]
PROV = {"source": "upstream", "kind": "pypi-sdist", "version": "0.3.36", "hash": "832d", "upstream_commit": None,
        "series": "demo", "base_commit": "x", "vendored_at": "2026-01-01T00:00:00Z"}


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    tree = h / "vendor" / "llama.cpp"
    tree.mkdir(parents=True)
    (h / "profiles").mkdir()
    (h / "patches" / "demo").mkdir(parents=True)
    (h / "patches" / "demo" / "0001-x.patch").write_text("Subject: [PATCH] x\n")
    (h / "vendor" / "sources.yaml").write_text("default: upstream\nsources: {}\n")
    (h / "vendor" / "llama.cpp.provenance.json").write_text(json.dumps(PROV))
    (tree / "a.c").write_text("int a;\n")
    subprocess.run([*GIT, "init", "-q"], cwd=tree, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=tree, check=True)
    subprocess.run([*GIT, "commit", "-qm", "base"], cwd=tree, check=True)
    monkeypatch.setenv("LLAMACTL_HOME", str(h))
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    return h


def stamp(req: BuildRequest | None = None) -> str:
    m = stamp_material(req or BuildRequest())
    assert m is not None
    return json.dumps(m, sort_keys=True)


def test_stamp_is_stable(home):
    assert stamp() == stamp()
    assert stamp(BuildRequest(jobs=16)) == stamp()      # parallelism is no input


@pytest.mark.parametrize("change", [
    lambda h: (h / "patches" / "demo" / "0001-x.patch").write_text("Subject: [PATCH] x\n+edited\n"),
    lambda h: (h / "patches" / "demo" / "0002-y.patch").write_text("Subject: [PATCH] y\n"),
    lambda h: (h / "vendor" / "llama.cpp" / "a.c").write_text("int a = 1;\n"),
    lambda h: subprocess.run([*GIT, "commit", "-q", "--allow-empty", "-m", "more"], cwd=h / "vendor" / "llama.cpp",
                             check=True),
    lambda h: (h / "vendor" / "llama.cpp.provenance.json").write_text(json.dumps(dict(PROV, vendored_at="later"))),
    lambda h: (h / "vendor" / "sources.yaml").write_text("default: upstream\nsources: {}\n# edited\n"),
])
def test_each_input_changes_the_stamp(home, change):
    before = stamp()
    change(home)
    assert stamp() != before


def test_two_different_uncommitted_edits_differ(home):
    (home / "vendor" / "llama.cpp" / "a.c").write_text("int a = 1;\n")
    one = stamp()
    (home / "vendor" / "llama.cpp" / "a.c").write_text("int a = 2;\n")
    assert stamp() != one


@pytest.mark.parametrize("req", [
    BuildRequest(backend="hip"), BuildRequest(cmake_options=["-DGGML_OPENMP=OFF"]), BuildRequest(no_patches=True),
    BuildRequest(series="other"), BuildRequest(target="llama-cli"), BuildRequest(gpu_targets="gfx1100"),
])
def test_request_fields_change_the_stamp(home, req):
    assert stamp(req) != stamp()


def test_another_compiler_changes_the_stamp(home, monkeypatch, tmp_path):
    before = stamp()
    fake = tmp_path / "bin" / "cc"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    assert stamp() != before


def test_no_stamp_for_path_sources_or_another_source(home):
    assert stamp_material(BuildRequest(source="atomic-turboquant")) is None
    assert stamp_material(BuildRequest(source="path:/somewhere")) is None
    (home / "vendor" / "llama.cpp.provenance.json").write_text(json.dumps(dict(PROV, source="mine", kind="path")))
    assert stamp_material(BuildRequest()) is None


def fake_build(key: str, backend: str = "cpu") -> Path:
    root = build_root_for(backend, key)
    (root / "build" / "bin").mkdir(parents=True)
    (root / "build" / "bin" / "llama-server").write_text("")
    (root / builder.HELP_FILE).write_text("usage")
    (root / builder.MANIFEST).write_text(json.dumps({"key": key, "binaries": {
        "llama-server": str(root / "build" / "bin" / "llama-server")}}))
    return root


def test_stamp_hit_finds_the_recorded_build_until_an_input_changes(home):
    req = BuildRequest()
    assert _stamp_hit(req) is None
    fake_build("k1")
    _record_stamp(req, "k1")
    assert _stamp_hit(req)["key"] == "k1"
    (home / "vendor" / "llama.cpp" / "a.c").write_text("int a = 5;\n")
    assert _stamp_hit(req) is None


def test_stamp_hit_ignores_an_incomplete_build(home):
    root = fake_build("k2")
    _record_stamp(BuildRequest(), "k2")
    (root / "build" / "bin" / "llama-server").unlink()
    assert _stamp_hit(BuildRequest()) is None


IDENT = {"source": "upstream", "kind": "pypi-sdist", "version": "0.3.36", "hash": "832d"}
COMPILERS = {"cc": "gcc 12", "c++": "g++ 12"}


def work(req: BuildRequest | None = None, ident=IDENT, patches=(), local=None, compilers=COMPILERS) -> Path:
    return work_dir_for((req or BuildRequest()).backend, key_material(req or BuildRequest(), ident, list(patches), local,
                                                                      compilers))


def test_source_content_shares_the_work_dir(home):
    base = work()
    assert work(ident=dict(IDENT, hash="ffff", version="0.3.37")) == base      # a newer sdist
    assert work(patches=[{"name": "0001-x.patch", "sha256": "aa"}]) == base   # a patch added
    assert work(local="d1ff") == base                                          # an edit in vendor/llama.cpp


def test_targets_share_the_work_dir(home):
    """llama-perplexity (``llamactl quality``) compiles where llama-server did: only what it adds."""
    assert work(req=BuildRequest(target="llama-perplexity")) == work()
    assert work(req=BuildRequest(target="llama-cli")) == work()
    material = key_material(BuildRequest(target="llama-perplexity"), IDENT, [], None, COMPILERS)
    assert build_key(material) != build_key(key_material(BuildRequest(), IDENT, [], None, COMPILERS))   # own build dir


@pytest.mark.parametrize("variant", [
    dict(req=BuildRequest(backend="hip", gpu_targets="gfx1100")),
    dict(req=BuildRequest(cmake_options=["-DGGML_OPENMP=OFF"])),
    dict(ident=dict(IDENT, source="atomic-turboquant")),
    dict(compilers=dict(COMPILERS, cc="clang 17")),
])
def test_configuration_separates_work_dirs(home, variant):
    assert work(**variant) != work()
