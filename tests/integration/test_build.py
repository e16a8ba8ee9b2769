"""The real CPU build of the vendored upstream tree with its series."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llamactl.core import paths
from llamactl.build.builder import BuildRequest, build
from llamactl.core.errors import LlamactlError
from llamactl.source.vendor import read_provenance, vendor


def test_build_answers_version_and_has_manifest(built):
    m = built.manifest
    cp = subprocess.run([str(built.binary), "--version"], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0 and "version:" in (cp.stdout + cp.stderr)
    assert m["source"]["source"] == "upstream" and m["source"]["hash"].startswith("832db069")
    assert [p["name"] for p in m["patches"]] == sorted(p.name for p in (paths.patches_dir() / "upstream").glob("*.patch"))
    assert m["cmake"]["configure"][0] == "cmake" and "-DCMAKE_BUILD_TYPE=Release" in m["cmake"]["configure"]
    assert "version:" in m["version"] and m["toolchain"]["cmake"]
    saved = json.loads((built.build_root / "manifest.json").read_text())
    assert saved["key"] == m["key"]


def test_second_build_does_no_work(built):
    again = build(BuildRequest())
    assert again.cached and again.manifest["key"] == built.manifest["key"]
    log = Path(again.manifest["log"])
    assert log.stat().st_mtime == Path(built.manifest["log"]).stat().st_mtime   # nothing re-ran


def test_cli_build_json_is_the_manifest(built, clean_env):
    cp = subprocess.run([sys.executable, "-m", "llamactl", "build", "--json"], capture_output=True, text=True,
                        env=clean_env, timeout=120)
    assert cp.returncode == 0, cp.stderr
    data = json.loads(cp.stdout)
    assert data["cached"] is True and data["key"] == built.manifest["key"]


def test_dry_run_names_the_real_build_dir(built):
    """Builds compile in the configuration's work dir; dry-run derives the same one as the build did."""
    from llamactl.build.builder import dry_run, work_dir_for

    plan = dry_run(BuildRequest())
    m = built.manifest
    assert plan.build_dir == work_dir_for("cpu", m["key_material"]) / "build"
    if "work_dir" in m:     # built since builds moved into work dirs
        assert plan.build_dir == Path(m["work_dir"]) / "build"
        assert plan.configure == m["cmake"]["configure"]


def test_hip_dry_run_without_toolchain(clean_env):
    cp = subprocess.run([sys.executable, "-m", "llamactl", "build", "--backend", "hip", "--gpu-targets", "gfx1100", "--dry-run"],
                        capture_output=True, text=True, env=clean_env, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert "-DGGML_HIP=ON -DGGML_HIP_ROCWMMA_FATTN=ON -DGPU_TARGETS=gfx1100" in cp.stdout
    assert "HIPCXX=" in cp.stdout and "cmake --build" in cp.stdout


def test_missing_hip_toolchain_is_one_line(clean_env):
    cp = subprocess.run([sys.executable, "-m", "llamactl", "build", "--backend", "hip", "--gpu-targets", "gfx1100"],
                        capture_output=True, text=True, env=clean_env, timeout=120)
    assert cp.returncode == 3
    assert "hip build needs hipconfig" in cp.stderr and "Traceback" not in cp.stderr
    assert len(cp.stderr.strip().splitlines()) <= 2


def test_hash_mismatch_refused_and_tree_kept(vendored, tmp_path, monkeypatch):
    """A wrong sha256 in the lock is refused by pip's hash check; the vendored tree stays as it was."""
    lock = yaml.safe_load((paths.vendor_dir() / "sources.yaml").read_text())
    lock["sources"]["tampered"] = dict(lock["sources"]["upstream"], sha256="0" * 64)
    home = tmp_path / "proj"
    (home / "vendor").mkdir(parents=True)
    (home / "profiles").mkdir()
    (home / "patches").mkdir()
    (home / "vendor" / "sources.yaml").write_text(yaml.safe_dump(lock))
    tree = home / "vendor" / "llama.cpp"
    tree.mkdir()
    (tree / "KEEP").write_text("existing tree\n")
    monkeypatch.setenv("LLAMACTL_HOME", str(home))
    with pytest.raises(LlamactlError) as exc:
        vendor("tampered")
    assert "sha256 mismatch" in str(exc.value) and "0.3.36" in str(exc.value)
    assert (tree / "KEEP").read_text() == "existing tree\n" and sorted(p.name for p in tree.iterdir()) == ["KEEP"]


def test_unreachable_git_source_is_clear(tmp_path, monkeypatch):
    lock = yaml.safe_load((paths.vendor_dir() / "sources.yaml").read_text())
    lock["sources"]["nowhere"] = {"kind": "git", "url": str(tmp_path / "no-such-repo"), "commit": "1" * 40}
    home = tmp_path / "proj"
    for d in ("vendor", "profiles", "patches"):
        (home / d).mkdir(parents=True)
    (home / "vendor" / "sources.yaml").write_text(yaml.safe_dump(lock))
    monkeypatch.setenv("LLAMACTL_HOME", str(home))
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(LlamactlError, match="cannot fetch"):
        vendor("nowhere")
    assert not (home / "vendor" / "llama.cpp").exists()


def test_vendor_is_idempotent(vendored):
    before = read_provenance()
    again = vendor()
    assert again.vendored_at == before.vendored_at and again.base_commit == before.base_commit


def test_failed_build_names_the_error_and_the_log(built, clean_env):
    cp = subprocess.run([sys.executable, "-m", "llamactl", "build", "-D", "CMAKE_CXX_COMPILER=/nonexistent/c++"],
                        capture_output=True, text=True, env=clean_env, timeout=300)
    assert cp.returncode == 3    # BUILD_FAILED
    assert "configuring failed:" in cp.stderr and "CMake Error" in cp.stderr
    log = cp.stderr.split("full log: ")[1].split(")")[0].strip()
    assert Path(log).is_file() and "CMAKE_CXX_COMPILER" in Path(log).read_text()
    assert "Traceback" not in cp.stderr
