import os
from pathlib import Path

import numpy as np
import pytest

from llamactl.core.errors import LlamactlError
from llamactl.models import catalog, tiny_gemma4
from llamactl.models.gguf_info import ArrayInfo, ModelFileError, check_launchable, info, read_header, shard_path


def test_info_reads_a_tiny_pair(tmp_path):
    pair = tiny_gemma4.write_pair(tiny_gemma4.TinySpec(layout="upstream", drafter="echo"), tmp_path)
    t = info(pair.target)
    assert t["architecture"] == "gemma4" and t["block_count"] == 4 and t["embedding_length"] == 128
    assert t["vocab_size"] == 340 and t["chat_template"] is True and t["parameters"] > 0
    d = info(pair.drafter)
    assert d["architecture"] == "gemma4-assistant" and d["embedding_length"] == 64


def test_header_matches_the_gguf_packages_reader(tmp_path):
    """Same keys, tensors, shapes and data offsets as gguf.GGUFReader, which parses everything."""
    import gguf

    pair = tiny_gemma4.write_pair(tiny_gemma4.TinySpec(layout="atomic", drafter="echo"), tmp_path)
    for path in (pair.target, pair.drafter):
        h, r = read_header(path), gguf.GGUFReader(str(path))
        assert set(h.kv) == {k for k in r.fields if not k.startswith("GGUF.")}
        assert [t.name for t in h.tensors] == [t.name for t in r.tensors]
        assert [t.n_elements for t in h.tensors] == [int(t.n_elements) for t in r.tensors]
        assert [h.data_offset + t.offset for t in h.tensors] == [int(t.data_offset) for t in r.tensors]
        assert [t.n_bytes for t in h.tensors] == [int(t.n_bytes) for t in r.tensors]
        assert h.kv["general.architecture"] == r.get_field("general.architecture").contents()


def write_gguf(path: Path, arch: str = "llama", n_tensors: int = 3, kv: dict | None = None, vocab: int = 0) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("t")
    for k, v in (kv or {}).items():
        if isinstance(v, tuple):
            getattr(w, f"add_{v[0]}")(k, v[1])
        else:
            w.add_uint32(k, v)
    if vocab:
        w.add_token_list([f"tok{i}" for i in range(vocab)])
        w.add_token_scores([0.0] * vocab)
    for i in range(n_tensors):
        w.add_tensor(f"blk.{i}.w", np.arange(64, dtype=np.float32).reshape(8, 8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_split(d: Path, count: int = 3, per: int = 2, prefix: str = "m") -> list[Path]:
    out = []
    for i in range(count):
        kv = {"split.no": ("uint16", i), "split.count": ("uint16", count), "split.tensors.count": ("int32", count * per)}
        p = write_gguf(d / f"{prefix}-{i + 1:05d}-of-{count:05d}.gguf", n_tensors=per, kv=kv)
        out.append(p)
    return out


def test_large_arrays_are_summarised_not_decoded(tmp_path):
    p = write_gguf(tmp_path / "v.gguf", vocab=5000)
    h = read_header(p)
    assert h.kv["tokenizer.ggml.tokens"] == ArrayInfo("string", 5000)
    assert h.kv["tokenizer.ggml.scores"] == ArrayInfo("float32", 5000)
    assert info(p)["vocab_size"] == 5000


def test_gemma3_270m_header_only(monkeypatch):
    """The shipped 270M model (236 tensors, 262144-token vocabulary): the vocabulary is skipped, not decoded.

    Counted, not timed: only keys, short values and tensor names are decoded into strings.
    """
    from llamactl.core import paths
    from llamactl.models import gguf_info

    spec = catalog.CATALOG["gemma3-270m"]
    f = paths.models_dir() / spec.sha256[:16] / spec.filename
    if not f.exists():
        pytest.skip("gemma3-270m not fetched (llamactl models fetch gemma3-270m)")
    decoded = []
    real = gguf_info._Cursor.string
    monkeypatch.setattr(gguf_info._Cursor, "string", lambda self: decoded.append(1) or real(self))
    d = info(f)
    assert d["tensors"] == 236 and d["parameters"] == 268098176 and d["vocab_size"] == 262144
    assert len(decoded) < 600


# ------------------------------------------------------------ files llama-server cannot load

def test_not_a_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelFileError, match=r"x.gguf is not a GGUF file \(its first bytes are b'not ', not b'GGUF'\)"):
        check_launchable(p)


def test_empty_file(tmp_path):
    p = tmp_path / "e.gguf"
    p.write_bytes(b"")
    with pytest.raises(ModelFileError, match="e.gguf is empty"):
        check_launchable(p)


@pytest.mark.parametrize("keep,where", [(3, "the GGUF header"), (20, "the GGUF header"), (60, "the key-value metadata")])
def test_truncated_header(tmp_path, keep, where):
    full = write_gguf(tmp_path / "full.gguf").read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(full[:keep])
    with pytest.raises(ModelFileError) as exc:
        check_launchable(p)
    assert str(exc.value) == f"{p} is truncated: it ends at byte {keep}, inside {where}"


def test_truncated_tensor_data(tmp_path):
    full = write_gguf(tmp_path / "full.gguf").read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(full[:-100])
    with pytest.raises(ModelFileError, match=r"cut.gguf is truncated: its tensor data needs \d+ bytes, the file has \d+"):
        check_launchable(p)


def test_truncated_inside_the_vocabulary(tmp_path):
    full = write_gguf(tmp_path / "full.gguf", vocab=3000).read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(full[:20000])
    with pytest.raises(ModelFileError, match="inside the key-value metadata"):
        read_header(p)


def test_unsupported_version(tmp_path):
    data = bytearray(write_gguf(tmp_path / "a.gguf").read_bytes())
    data[4:8] = (7).to_bytes(4, "little")
    p = tmp_path / "v7.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="GGUF version 7 is not supported"):
        check_launchable(p)


def test_directory_missing_unreadable(tmp_path, monkeypatch):
    with pytest.raises(ModelFileError, match=f"model {tmp_path} is a directory, not a GGUF file"):
        check_launchable(tmp_path)
    with pytest.raises(ModelFileError, match="model file .*nope.gguf does not exist"):
        check_launchable(tmp_path / "nope.gguf")
    p = write_gguf(tmp_path / "a.gguf")
    monkeypatch.setattr(os, "access", lambda *a, **k: False)   # root reads everything; pretend it cannot
    with pytest.raises(ModelFileError, match="a.gguf cannot be read: permission denied"):
        check_launchable(p)


def test_catalog_resolve_names_paths_precisely(tmp_path):
    with pytest.raises(LlamactlError, match="is a directory, not a GGUF file"):
        catalog.resolve(str(tmp_path))
    with pytest.raises(LlamactlError, match="model file .*missing.gguf does not exist"):
        catalog.resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(LlamactlError, match="neither a file nor a known model"):
        catalog.resolve("gemma9-1t")


def test_catalog_resolve_keeps_symlinked_shard_names(tmp_path):
    """A hub cache links shard names to hash-named blobs; llama.cpp needs the shard name."""
    blob = write_gguf(tmp_path / "blob-abc123")
    link = tmp_path / "m-00001-of-00001.gguf"
    link.symlink_to(blob)
    assert catalog.resolve(str(link)) == link


# ------------------------------------------------------------ split models

def test_split_complete(tmp_path):
    parts = write_split(tmp_path)
    heads = check_launchable(parts[0])
    assert [h.split_no for h in heads] == [0, 1, 2]
    d = info(parts[0])
    assert d["split"] == 3 and d["tensors"] == 6 and d["parameters"] == 6 * 64
    assert [s["path"] for s in d["shards"]] == [str(p) for p in parts]
    assert d["size_mb"] == round(sum(p.stat().st_size for p in parts) / 2**20, 2)
    assert info(parts[2])["tensors"] == 6   # info of any shard covers the whole model


def test_split_later_shard_names_the_first(tmp_path):
    parts = write_split(tmp_path)
    with pytest.raises(ModelFileError) as exc:
        check_launchable(parts[2])
    assert str(exc.value) == (f"{parts[2]} is shard 3 of 3 of a split model; llama-server loads a split model "
                              f"from its first shard: model: {parts[0]}")
    parts[0].unlink()
    with pytest.raises(ModelFileError, match=r"model: .*m-00001-of-00003.gguf \(not there either\)$"):
        check_launchable(parts[1])


def test_split_missing_shards_are_named(tmp_path):
    parts = write_split(tmp_path, count=4)
    parts[1].unlink()
    parts[3].unlink()
    with pytest.raises(ModelFileError) as exc:
        check_launchable(parts[0])
    assert str(exc.value) == (f"{parts[0]} is shard 1 of a model split in 4; missing in {tmp_path}: "
                              "m-00002-of-00004.gguf, m-00004-of-00004.gguf")


def test_split_renamed_first_shard(tmp_path):
    parts = write_split(tmp_path)
    renamed = parts[0].rename(tmp_path / "model.gguf")
    with pytest.raises(ModelFileError, match="rename it model-00001-of-00003.gguf"):
        check_launchable(renamed)


def test_split_shard_from_another_split(tmp_path):
    parts = write_split(tmp_path)
    (tmp_path / "o").mkdir()
    other = write_split(tmp_path / "o", count=2)
    parts[1].unlink()
    other[1].rename(parts[1])   # says 2 of 2
    with pytest.raises(ModelFileError, match="does not belong to this split: it says shard 2 of 2"):
        check_launchable(parts[0])


def test_split_truncated_shard(tmp_path):
    parts = write_split(tmp_path)
    data = parts[1].read_bytes()
    parts[1].write_bytes(data[:-50])
    with pytest.raises(ModelFileError, match="m-00002-of-00003.gguf is truncated"):
        check_launchable(parts[0])


def test_shard_path_names():
    assert shard_path(Path("/d/g3-00002-of-00003.gguf"), 0, 3) == Path("/d/g3-00001-of-00003.gguf")
    assert shard_path(Path("/d/model.gguf"), 1, 2) == Path("/d/model-00002-of-00002.gguf")


def test_no_architecture(tmp_path):
    import gguf

    p = tmp_path / "noarch.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.kv_data[0].pop("general.architecture")
    w.add_tensor("a", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelFileError, match="no general.architecture"):
        check_launchable(p)


def test_a_parsed_header_is_read_back_from_the_cache_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    p = write_gguf(tmp_path / "m.gguf", n_tensors=3)
    first = read_header(p)
    cached = list((tmp_path / "cache" / "gguf-headers").glob("*.pickle"))
    assert len(cached) == 1
    again = read_header(p)
    assert again == first and again.path == p
    # the same file under another name is the same header, named as asked
    link = tmp_path / "link.gguf"
    link.symlink_to(p)
    assert read_header(link).path == link
    # rewritten (a new inode, size and mtime): parsed again, and a truncated file is refused, never served stale
    data = p.read_bytes()
    p.unlink()
    p.write_bytes(data[: len(data) - 8])
    with pytest.raises(ModelFileError, match="truncated"):
        read_header(p)
    # a corrupt cache entry is parsed again
    p.write_bytes(data)
    for f in (tmp_path / "cache" / "gguf-headers").glob("*.pickle"):
        f.write_bytes(b"not a pickle")
    assert read_header(p).tensors == first.tensors
