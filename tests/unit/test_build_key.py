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
