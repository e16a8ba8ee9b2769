import pytest

from llamactl.core.errors import LlamactlError
from llamactl.judge.matrix import expand, select
from llamactl.serve.profiles import MatrixSpec, resolve


def test_axes_product_with_kv_pairs():
    cells = expand(MatrixSpec(axes={"parallel": [1, 2], "kv": ["f16/f16", "q8_0"]}))
    assert [c.id for c in cells] == [
        "parallel=1,kv=f16/f16", "parallel=1,kv=q8_0/q8_0", "parallel=2,kv=f16/f16", "parallel=2,kv=q8_0/q8_0"]
    assert cells[1].values == {"parallel": 1, "kv_k": "q8_0", "kv_v": "q8_0"}


def test_exclude_and_include():
    spec = MatrixSpec(axes={"parallel": [1, 2], "mtp": [False, True]},
                      exclude=[{"parallel": 1, "mtp": False}],
                      include=[{"parallel": 4, "mtp": True, "kv": "f16/f16"}, {"parallel": 2, "mtp": True}])
    ids = [c.id for c in expand(spec)]
    assert ids == ["parallel=1,enable_mtp=1", "parallel=2,enable_mtp=0", "parallel=2,enable_mtp=1",
                   "parallel=4,enable_mtp=1,kv=f16/f16"]


def test_seed_matrix_is_the_seeds():
    m = resolve("gemma4-26b-a4b-mtp", environ={}).profile.matrix
    assert [c.values for c in expand(m)] == [
        {"parallel": 1, "enable_mtp": True}, {"parallel": 2, "enable_mtp": False},
        {"parallel": 2, "enable_mtp": True}, {"parallel": 2, "enable_mtp": True, "kv_k": "f16", "kv_v": "f16"}]


def test_select_cells():
    cells = expand(MatrixSpec(axes={"parallel": [1, 2], "mtp": [False, True]}))
    assert [c.id for c in select(cells, ["parallel=2", "enable_mtp=1"])] == ["parallel=2,enable_mtp=1"]
    with pytest.raises(LlamactlError, match="no matrix cell"):
        select(cells, ["parallel=3"])


def test_unknown_axis_key():
    with pytest.raises(LlamactlError, match="unknown key"):
        expand(MatrixSpec(axes={"paralel": [1]}))


def test_no_matrix_is_one_cell():
    assert [c.id for c in expand(None)] == ["base"]


def test_select_by_cell_name():
    spec = MatrixSpec(include=[{"name": "echo", "parallel": 1}, {"name": "random", "parallel": 1, "mtp": True}])
    cells = expand(spec)
    assert [c.id for c in cells] == ["echo", "random"]
    assert [c.id for c in select(cells, ["random"])] == ["random"]
