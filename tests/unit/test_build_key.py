"""The build key changes for each input, and only then."""

import copy

import pytest

from llamactl.build.builder import BuildRequest, build_key, key_material

IDENT = {"source": "upstream", "kind": "pypi-sdist", "version": "0.3.36", "hash": "832d"}
PATCHES = [{"name": "0001-x.patch", "sha256": "aa"}]
COMPILERS = {"cc": "cc (Debian 12.2.0-14) 12.2.0", "c++": "c++ (Debian 12.2.0-14) 12.2.0"}


def key(req=None, ident=IDENT, patches=PATCHES, local=None, compilers=COMPILERS):
    return build_key(key_material(req or BuildRequest(), ident, patches, local, compilers))


def test_same_inputs_same_key():
    assert key() == key(BuildRequest(), copy.deepcopy(IDENT), copy.deepcopy(PATCHES), None, dict(COMPILERS))
    assert key(BuildRequest(jobs=8)) == key()          # parallelism does not change the binary


@pytest.mark.parametrize("variant", [
    dict(req=BuildRequest(backend="hip", gpu_targets="gfx1100")),
    dict(req=BuildRequest(gpu_targets="gfx1030")),
    dict(req=BuildRequest(cmake_options=["-DGGML_OPENMP=OFF"])),
    dict(req=BuildRequest(target="llama-cli")),
    dict(ident=dict(IDENT, hash="ffff")),
    dict(ident=dict(IDENT, source="atomic-turboquant")),
    dict(patches=[]),
    dict(patches=[{"name": "0001-x.patch", "sha256": "ab"}]),
    dict(patches=PATCHES + [{"name": "0002-y.patch", "sha256": "cc"}]),
    dict(local="d1ff"),
    dict(compilers=dict(COMPILERS, cc="clang 17")),
])
def test_each_input_changes_key(variant):
    assert key(**variant) != key()


def test_backend_patches_change_only_their_backends_key():
    req = BuildRequest(backend="vulkan")
    plain = build_key(key_material(req, IDENT, PATCHES, None, COMPILERS))
    assert build_key(key_material(req, IDENT, PATCHES, None, COMPILERS, [])) == plain     # none: key as before
    assert build_key(key_material(req, IDENT, PATCHES, None, COMPILERS, [{"name": "0001-vk.patch", "sha256": "b"}])) != plain


def test_shipped_vulkan_compat_patch_is_vulkan_only():
    from llamactl.build.builder import backend_series
    assert [p.name for p in backend_series("upstream", "vulkan")] == [
        "0001-ggml-vulkan-build-with-Vulkan-headers-that-lack-VK_E.patch"]
    assert backend_series("upstream", "cpu") == [] and backend_series(None, "vulkan") == []


def test_backend_patch_is_applied_once_to_the_build_source(tmp_path):
    from llamactl.build.builder import apply_backend_patches
    from llamactl.core.errors import LlamactlError
    from llamactl.source.patches import load_series
    src = tmp_path / "work" / "src"
    src.mkdir(parents=True)
    (src / "a.txt").write_text("one\n")
    series = tmp_path / "patches" / "s" / "vulkan"
    series.mkdir(parents=True)
    (series / "0001-two.patch").write_text("--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-one\n+two\n")
    patches = load_series("s/vulkan", root=tmp_path / "patches")
    apply_backend_patches(src, patches)
    assert (src / "a.txt").read_text() == "two\n"
    apply_backend_patches(src, patches)                     # already applied: left as it is
    assert (src / "a.txt").read_text() == "two\n"
    (src / "a.txt").write_text("changed\n")
    with pytest.raises(LlamactlError, match="backend patch 0001-two.patch does not apply"):
        apply_backend_patches(src, patches)


def test_build_tests_adds_test_backend_ops_beside_llama_server(tmp_path, monkeypatch):
    import json
    import os
    from llamactl.build.builder import BuildResult, build_tests
    fake = tmp_path / "fakebin"
    fake.mkdir()
    calls = tmp_path / "calls.txt"
    (fake / "cmake").write_text(
        "#!/bin/sh\n"
        f"echo \"$@\" >> {calls}\n"
        "if [ \"$1\" = --build ]; then mkdir -p \"$2/bin\" && touch \"$2/bin/test-backend-ops\"; echo '[1/1] Linking'; fi\n")
    (fake / "cmake").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    root = tmp_path / "vulkan-key"
    (root / "build" / "bin").mkdir(parents=True)
    manifest = {"build_root": str(root), "target": "llama-server", "binaries": {},
                "cmake": {"configure": ["cmake", "-S", "src", "-B", str(root / "build"), "-DLLAMA_BUILD_TESTS=OFF"], "env": {}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    found = build_tests(BuildResult(manifest, True, 0.0), jobs=3)
    assert found == {"test-backend-ops": str(root / "build" / "bin" / "test-backend-ops")}
    lines = calls.read_text().splitlines()
    assert lines[0].endswith("-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TESTS=ON")      # the last -D wins
    assert lines[1] == f"--build {root / 'build'} --target test-backend-ops -j 3"
    saved = json.loads((root / "manifest.json").read_text())
    assert saved["tests"]["binaries"] == found and saved["binaries"] == {}


def test_expected_identity_is_what_vendoring_records_and_keeps_tree_keys(tmp_path):
    from llamactl.core.hashing import stable_key
    from llamactl.source import vendor
    from llamactl.source.sources import PathSource, resolve

    name, spec = resolve("upstream")
    assert vendor.expected_identity(name, spec) == {"source": "upstream", "kind": "pypi-sdist",
                                                    "version": spec.version, "hash": spec.sha256}
    plain = PathSource(kind="path", path=str(tmp_path))
    assert vendor.expected_identity("path:x", plain)["version"] == "worktree"
    assert vendor.tree_key("path:x", plain) == stable_key({"source": "path:x", "kind": "path", "version": "worktree"})
