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
