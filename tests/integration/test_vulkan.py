"""Vulkan build and MTP validation on a real Vulkan device (Mesa's lavapipe on machines without a GPU).

Runs when the Vulkan toolchain is installed (apt-get install glslc libvulkan-dev spirv-headers
mesa-vulkan-drivers) AND either the Vulkan build is already cached or LLAMACTL_TEST_VULKAN=1 asks
for the cold build (~5 min on 2 free cores, longer on busy ones). Otherwise it says why it skips, so
`make test` never spends the Vulkan build time by surprise.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llamactl.build import builder, toolchain
from llamactl.build.builder import BuildRequest
from llamactl.judge import backend
from llamactl.judge.matrix import expand, select
from llamactl.judge.validate import run_matrix
from llamactl.serve import profiles

pytestmark = pytest.mark.vulkan

PROFILE = "tiny-gemma4-mtp-vulkan"


def _cached_vulkan_build() -> dict | None:
    """The manifest of a finished Vulkan build of the vendored tree as it is (nothing is built)."""
    from llamactl.source.patches import load_series, series_hashes
    from llamactl.source.vendor import read_provenance
    req = BuildRequest(backend="vulkan")
    prov = read_provenance()
    if prov is None:
        return None
    material = builder.key_material(req, prov.identity, series_hashes(load_series(prov.series)), None,
                                    toolchain.compiler_ids(), series_hashes(builder.backend_series(prov.series, "vulkan")))
    return builder._load_manifest(builder.build_root_for("vulkan", builder.build_key(material)))


def _why_skip() -> str | None:
    tc = toolchain.detect("vulkan")
    if tc.missing:
        return f"Vulkan toolchain missing: {', '.join(tc.missing)} (apt-get install glslc libvulkan-dev spirv-headers mesa-vulkan-drivers)"
    if not any(Path(d).glob("*.json") for d in ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d")):
        return "no Vulkan driver (ICD) installed: apt-get install mesa-vulkan-drivers (lavapipe runs on the CPU)"
    if os.environ.get("LLAMACTL_TEST_VULKAN") == "1":
        return None
    if _cached_vulkan_build() is None:
        return ("the Vulkan llama-server is not built yet: set LLAMACTL_TEST_VULKAN=1 to build it here "
                "(several minutes cold) or run `llamactl build --backend vulkan` first")
    return None


@pytest.fixture(scope="module")
def vulkan_profile(vendored):
    why = _why_skip()
    if why:
        pytest.skip(why)
    return profiles.resolve(PROFILE, environ={})


def test_mtp_on_the_vulkan_device(vulkan_profile):
    cells = select(expand(vulkan_profile.profile.matrix), ["parallel=2,enable_mtp=1,kv=f16/f16"])
    assert len(cells) == 1
    report = run_matrix(vulkan_profile, cells)
    cell = report.cells[0]
    assert cell.status == "pass", cell.reason
    assert "--log-verbosity" in cell.argv or "-lv" in cell.argv
    # backend truth: both models on the Vulkan device, every layer offloaded
    info = cell.backend
    assert info["backend"] == "vulkan"
    assert any(d["backend"] == "vulkan" for d in info["devices"])
    main, draft = info["models"]
    assert main["offloaded"] == main["layers"] and main["layers"] >= 5
    assert draft["offloaded"] == draft["layers"]
    assert any(name.startswith("Vulkan") for name in main["weights_mib"])
    # the echo drafter is accepted on the Vulkan device as on the CPU
    assert cell.acceptance is not None and cell.acceptance >= 0.9
    assert cell.tokens_per_s and cell.tokens_per_s > 0
    # the same log judged against a CPU expectation fails with both backends named
    wrong = backend.check(Path(cell.log), "cpu", None)
    assert wrong.status == "fail" and "on vulkan, expected cpu" in wrong.detail


def test_vulkan_build_manifest_names_the_compat_patch(vulkan_profile):
    res = builder.build(BuildRequest(backend="vulkan"))
    assert res.manifest["backend"] == "vulkan"
    assert "vulkan" in " ".join(res.manifest["cmake"]["configure"]).lower()
    if toolchain.vulkan_header_version() is not None and toolchain.vulkan_header_version() < 272:
        assert [p["name"] for p in res.manifest["backend_patches"]] == [
            "0001-ggml-vulkan-build-with-Vulkan-headers-that-lack-VK_E.patch"]
    assert res.binary.is_file()
