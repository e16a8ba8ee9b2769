"""What a GGUF file is, from its header alone, and whether llama-server can load it.

The header (magic, version, key-value metadata, tensor index) is read with a small
reader built on the ``gguf`` package's constants: it never touches tensor data and
skips large arrays (the vocabulary, its scores and types) without decoding them, so
a 240 MB model is described in well under a second. Split models
(``NAME-00001-of-00003.gguf`` ...) are understood as one model.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import pickle
import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llamactl.core.errors import BadInput
from llamactl.core.files import atomic_path

SUPPORTED_VERSIONS = (2, 3)          # llama.cpp's gguf reader refuses version 1 and anything newer than 3
SMALL_ARRAY = 1024                   # numeric arrays up to this many elements are read; longer ones are summarised
SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
KEY_SPLIT_NO = "split.no"
KEY_SPLIT_COUNT = "split.count"
KEY_SPLIT_TENSORS = "split.tensors.count"


class ModelFileError(BadInput):
    """A model file llama-server cannot load, found before launch (one line naming the file)."""


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array that was skipped, not decoded: its element type name and length, and where its
    elements lie in the file (``span``: start and end byte offsets; see :func:`array_bytes`)."""

    type: str
    length: int
    span: tuple[int, int] | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"[{self.type} x {self.length}]"


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type: str
    offset: int          # bytes, relative to the start of the data section
    n_elements: int
    n_bytes: int


@dataclass
class Header:
    """The parsed header of one GGUF file (one shard of a split model)."""

    path: Path
    version: int
    byte_order: str                  # "little" or "big"
    kv: dict[str, Any]
    tensors: list[TensorInfo]
    data_offset: int                 # bytes from file start to the first tensor
    file_size: int                   # bytes

    @property
    def split_no(self) -> int:
        """0-based shard index (0 for an unsplit file)."""
        return int(self.kv.get(KEY_SPLIT_NO, 0) or 0)

    @property
    def split_count(self) -> int:
        """Number of shards (1 for an unsplit file)."""
        return max(1, int(self.kv.get(KEY_SPLIT_COUNT, 0) or 0))

    @property
    def data_end(self) -> int:
        """Bytes the file needs to hold every tensor's data."""
        return self.data_offset + max((t.offset + t.n_bytes for t in self.tensors), default=0)


class _Cursor:
    """Bounds-checked reads from a mapped file; running off the end is a truncation error."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path, order: str = "<") -> None:
        self.buf, self.path, self.pos, self.order = buf, path, 0, order
        self.size = len(buf)
        self.where = "the GGUF header"

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ModelFileError(f"{self.path} is truncated: it ends at byte {self.size}, inside {self.where}")

    def unpack(self, fmt: str) -> tuple:
        n = struct.calcsize(self.order + fmt)
        self.need(n)
        vals = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += n
        return vals

    def u32(self) -> int:
        return self.unpack("I")[0]

    def u64(self) -> int:
        return self.unpack("Q")[0]

    def skip_strings(self, count: int) -> None:
        """Skip ``count`` length-prefixed strings (a vocabulary) without decoding them."""
        length = struct.Struct(self.order + "Q").unpack_from
        buf, pos, end = self.buf, self.pos, self.size - 8
        for _ in range(count):
            if pos > end:
                self.pos = pos
                self.need(8)
            pos += 8 + length(buf, pos)[0]
        self.pos = pos
        self.need(0)

    def string(self) -> str:
        n = self.u64()
        self.need(n)
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s


def _scalar_formats() -> dict[int, str]:
    from gguf import GGUFValueType as T   # gguf (with numpy) is imported only when a file is read

    return {T.UINT8: "B", T.INT8: "b", T.UINT16: "H", T.INT16: "h", T.UINT32: "I", T.INT32: "i",
            T.FLOAT32: "f", T.BOOL: "?", T.UINT64: "Q", T.INT64: "q", T.FLOAT64: "d"}


def _value(cur: _Cursor, vtype: int, key: str, fmts: dict[int, str]) -> Any:
    from gguf import GGUFValueType as T

    if vtype in fmts:
        return cur.unpack(fmts[vtype])[0]
    if vtype == T.STRING:
        return cur.string()
    if vtype == T.ARRAY:
        etype, length = cur.u32(), cur.u64()
        if etype in fmts:
            size = struct.calcsize("<" + fmts[etype])
            cur.need(length * size)
            if length <= SMALL_ARRAY:
                return list(cur.unpack(f"{length}{fmts[etype]}"))
            cur.pos += length * size
            return ArrayInfo(T(etype).name.lower(), length, (cur.pos - length * size, cur.pos))
        if etype == T.STRING:
            if length > cur.size:   # each string takes at least 8 bytes: a corrupt count, not a real array
                raise ModelFileError(f"{cur.path}: corrupt GGUF header: key {key!r} claims {length} strings")
            if length <= 16:
                return [cur.string() for _ in range(length)]
            start = cur.pos
            cur.skip_strings(length)
            return ArrayInfo("string", length, (start, cur.pos))
        raise ModelFileError(f"{cur.path}: corrupt GGUF header: key {key!r} is an array of unknown type {etype}")
    raise ModelFileError(f"{cur.path}: corrupt GGUF header: key {key!r} has unknown value type {vtype}")


def _open_checked(path: Path) -> int:
    """Size in bytes of a regular, readable file; ModelFileError naming the problem otherwise."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelFileError(f"model file {path} does not exist") from None
    except OSError as exc:
        raise ModelFileError(f"model file {path} cannot be read: {exc.strerror}") from None
    if path.is_dir():
        raise ModelFileError(f"model {path} is a directory, not a GGUF file")
    if not path.is_file():
        raise ModelFileError(f"model {path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise ModelFileError(f"model file {path} cannot be read: permission denied")
    return st.st_size


HEADER_CACHE_VERSION = 1   # bump when Header or _parse changes what a cached header holds


def _header_cache(path: Path) -> Path | None:
    """Where the parsed header of ``path`` as it is now (path, size, mtime, inode, ctime) is kept; None
    when the file cannot be stat'ed (read_header names the problem)."""
    from llamactl.core import paths

    try:
        st = path.stat()
        real = path.resolve()
    except OSError:
        return None
    key = hashlib.sha256(f"{HEADER_CACHE_VERSION}|{real}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}"
                         .encode()).hexdigest()[:32]
    return paths.cache_root() / "gguf-headers" / f"{key}.pickle"


def read_header(path: Path) -> Header:
    """Parse the GGUF header of ``path`` without reading tensor data.

    A header parsed once is kept in ``<cache>/gguf-headers`` keyed by the file's path, size, mtime,
    inode and ctime, and read back from there (no gguf/numpy import: ``run --detach`` starts sooner);
    a file that changed in any of these is parsed again, and a file that fails is never cached.

    Raises:
        ModelFileError: the file is missing, a directory, unreadable, not a GGUF file, of an
            unsupported GGUF version, corrupt, or truncated (header or tensor data).
    """
    path = Path(path)
    size = _open_checked(path)
    if size == 0:
        raise ModelFileError(f"{path} is empty, not a GGUF file")
    cache = _header_cache(path)
    if cache is not None:
        try:
            cached = pickle.loads(cache.read_bytes())
            if isinstance(cached, Header) and cached.file_size == size:
                return replace(cached, path=path)
        except Exception:   # noqa: BLE001 - a missing, stale or unreadable cache entry is just parsed again
            pass
    import gguf

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            h = _parse(buf, path, size, gguf)
    except PermissionError:
        raise ModelFileError(f"model file {path} cannot be read: permission denied") from None
    except OSError as exc:
        raise ModelFileError(f"model file {path} cannot be read: {exc.strerror or exc}") from None
    if cache is not None:
        try:
            with atomic_path(cache) as tmp:
                tmp.write_bytes(pickle.dumps(h, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            pass   # a cache that cannot be written costs the next run the parse, nothing else
    return h


def _parse(buf: mmap.mmap, path: Path, size: int, gguf: Any) -> Header:
    cur = _Cursor(buf, path)
    cur.need(4)
    magic = bytes(buf[0:4])
    if magic != b"GGUF":
        raise ModelFileError(f"{path} is not a GGUF file (its first bytes are {magic!r}, not b'GGUF')")
    cur.pos = 4
    (version,) = cur.unpack("I")
    order = "little"
    if version not in SUPPORTED_VERSIONS and struct.unpack(">I", struct.pack("<I", version))[0] in SUPPORTED_VERSIONS:
        cur.order, order = ">", "big"
        version = struct.unpack(">I", struct.pack("<I", version))[0]
    if version not in SUPPORTED_VERSIONS:
        raise ModelFileError(f"{path}: GGUF version {version} is not supported "
                             f"(llama.cpp reads versions {', '.join(map(str, SUPPORTED_VERSIONS))})")
    n_tensors, n_kv = cur.unpack("QQ")
    if n_kv > size or n_tensors > size:
        raise ModelFileError(f"{path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} keys in a {size}-byte file)")
    fmts = _scalar_formats()
    kv: dict[str, Any] = {}
    cur.where = "the key-value metadata"
    for _ in range(n_kv):
        key = cur.string()
        vtype = cur.u32()
        kv[key] = _value(cur, vtype, key, fmts)
    cur.where = "the tensor index"
    tensors: list[TensorInfo] = []
    sizes = gguf.GGML_QUANT_SIZES
    for _ in range(n_tensors):
        name = cur.string()
        (n_dims,) = cur.unpack("I")
        if n_dims > 8:
            raise ModelFileError(f"{path}: corrupt GGUF header: tensor {name!r} has {n_dims} dimensions")
        shape = cur.unpack(f"{n_dims}Q")
        ttype, offset = cur.unpack("IQ")
        try:
            qtype = gguf.GGMLQuantizationType(ttype)
            block, type_size = sizes[qtype]
        except (ValueError, KeyError):
            raise ModelFileError(f"{path}: tensor {name!r} has unknown ggml type {ttype}") from None
        n_el = 1
        for d in shape:
            n_el *= int(d)
        tensors.append(TensorInfo(name, tuple(int(d) for d in shape), qtype.name, int(offset), n_el,
                                  n_el // block * type_size))
    align = kv.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise ModelFileError(f"{path}: corrupt GGUF header: general.alignment = {align!r}")
    data_offset = (cur.pos + align - 1) // align * align
    h = Header(path, version, order, kv, tensors, data_offset, size)
    if h.data_end > size:
        missing = h.data_end - size
        raise ModelFileError(f"{path} is truncated: its tensor data needs {h.data_end} bytes, the file has {size} "
                             f"({missing / 2**20:.1f} MiB missing)")
    return h


def array_bytes(h: Header, key: str) -> bytes | None:
    """The stored bytes of array ``key``'s elements, for an array the header skipped (:class:`ArrayInfo`);
    None for a key that is absent or was decoded (a short array is in ``h.kv`` as a list).

    Two arrays of the same element type and byte order hold the same values exactly when these bytes are
    equal, which compares a 262144-token vocabulary without decoding it. Raises ModelFileError when the
    file cannot be read again.
    """
    info = h.kv.get(key)
    if not isinstance(info, ArrayInfo) or info.span is None:
        return None
    start, end = info.span
    try:
        with open(h.path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
    except OSError as exc:
        raise ModelFileError(f"model file {h.path} cannot be read: {exc.strerror or exc}") from None
    if len(data) != end - start:
        raise ModelFileError(f"{h.path} changed while it was read (key {key!r})")
    return data


def strings(h: Header, key: str) -> list[str] | None:
    """Every string of string array ``key`` (decoded from the file when the header skipped it); None when
    ``key`` is absent or not an array of strings."""
    value = h.kv.get(key)
    if isinstance(value, list):
        return list(value) if all(isinstance(v, str) for v in value) else None
    if not isinstance(value, ArrayInfo) or value.type != "string":
        return None
    data = array_bytes(h, key)
    if data is None:
        return None
    cur = _Cursor(data, h.path, "<" if h.byte_order == "little" else ">")
    cur.where = f"key {key!r}"
    return [cur.string() for _ in range(value.length)]


@dataclass(frozen=True)
class Vocab:
    """A model's vocabulary as its GGUF header gives it (``tokenizer.ggml.*``)."""

    model: str | None         # tokenizer.ggml.model: llama (SentencePiece), gpt2 (BPE), gemma4, ...
    size: int | None          # how many tokens tokenizer.ggml.tokens holds
    bos: int | None = None    # tokenizer.ggml.bos_token_id
    eos: int | None = None    # tokenizer.ggml.eos_token_id

    def __str__(self) -> str:
        size = f"{self.size}-token " if self.size is not None else ""
        return f"{size}{self.model + ' ' if self.model else ''}vocabulary"


def vocab(h: Header) -> Vocab | None:
    """The vocabulary facts of a header; None when it has no tokenizer at all."""
    tokens = h.kv.get("tokenizer.ggml.tokens")
    size = tokens.length if isinstance(tokens, ArrayInfo) else (len(tokens) if isinstance(tokens, list) else None)
    model = h.kv.get("tokenizer.ggml.model")
    if size is None and model is None:
        return None
    ids = {k: h.kv.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos")}
    return Vocab(str(model) if model is not None else None, size,
                 *(v if isinstance(v, int) and not isinstance(v, bool) else None for v in ids.values()))


# ---------------------------------------------------------------- split models

def shard_path(first_or_any: Path, index: int, count: int) -> Path:
    """Path of shard ``index`` (0-based) of ``count``, named the way llama.cpp's llama_split_path names it."""
    m = SPLIT_NAME.match(first_or_any.name)
    prefix = m.group("prefix") if m else first_or_any.name.removesuffix(".gguf")
    return first_or_any.with_name(f"{prefix}-{index + 1:05d}-of-{count:05d}.gguf")


def shards(path: Path) -> list[Header]:
    """Headers of every shard of the model ``path`` belongs to (just ``path`` when it is not split).

    Any shard may be given. Raises ModelFileError naming the shard that is missing, unreadable,
    misnamed, from another split, or truncated.
    """
    h = read_header(path)
    count = h.split_count
    if count == 1:
        return [h]
    expected = shard_path(path, h.split_no, count)
    if SPLIT_NAME.match(path.name) is None or expected.name != path.name:
        raise ModelFileError(f"{path} is shard {h.split_no + 1} of {count} of a split model, but llama.cpp finds the "
                             f"other shards by name: rename it {expected.name}")
    heads: list[Header | None] = [None] * count
    heads[h.split_no] = h
    missing = [shard_path(path, i, count) for i in range(count) if i != h.split_no and not shard_path(path, i, count).exists()]
    if missing:
        names = ", ".join(p.name for p in missing)
        raise ModelFileError(f"{path} is shard {h.split_no + 1} of a model split in {count}; "
                             f"missing in {path.parent}: {names}")
    for i in range(count):
        if heads[i] is None:
            p = shard_path(path, i, count)
            other = read_header(p)
            if other.split_count != count or other.split_no != i:
                raise ModelFileError(f"{p} does not belong to this split: it says shard {other.split_no + 1} "
                                     f"of {other.split_count}, its name says {i + 1} of {count}")
            heads[i] = other
    out = [x for x in heads if x is not None]
    total = out[0].kv.get(KEY_SPLIT_TENSORS)
    have = sum(len(x.tensors) for x in out)
    if isinstance(total, int) and total != have:
        raise ModelFileError(f"{shard_path(path, 0, count)}: the split declares {total} tensors, its {count} shards hold {have}")
    return out


def check_launchable(path: Path) -> list[Header]:
    """The pre-launch check of a ``model:`` file: a complete GGUF llama-server can start from.

    Returns the headers of all shards (one for an unsplit model).

    Raises:
        ModelFileError: not a GGUF, truncated, a directory, missing, unreadable, or a split model
            given by a shard other than the first (naming the first shard) or with shards missing
            (naming them).
    """
    path = Path(path)
    h = read_header(path)
    if h.split_count > 1 and h.split_no != 0:
        first = shard_path(path, 0, h.split_count)
        gone = "" if first.exists() else " (not there either)"
        raise ModelFileError(f"{path} is shard {h.split_no + 1} of {h.split_count} of a split model; llama-server loads "
                             f"a split model from its first shard: model: {first}{gone}")
    heads = shards(path)
    head = heads[0]
    if not head.kv.get("general.architecture"):
        raise ModelFileError(f"{head.path} has no general.architecture key: llama.cpp cannot tell what model it is")
    return heads


# ---------------------------------------------------------------- models info

def info(path: Path) -> dict:
    """Architecture, sizes and tokenizer facts from the GGUF header(s); all shards of a split model.

    Sizes are in MiB (``size_mb``) and bytes (``shards[].bytes``); ``parameters`` counts elements.

    Raises:
        ModelFileError: see :func:`read_header` and :func:`shards`.
    """
    heads = shards(Path(path))
    first = heads[0]
    kv = first.kv
    arch = kv.get("general.architecture")
    wanted = ("context_length", "embedding_length", "block_count", "attention.head_count", "attention.head_count_kv",
              "attention.key_length", "attention.sliding_window")
    hp = {k.replace("attention.", ""): kv[f"{arch}.{k}"] for k in wanted if f"{arch}.{k}" in kv}
    words = vocab(first)
    all_tensors = [t for h in heads for t in h.tensors]
    total_bytes = sum(h.file_size for h in heads)
    out: dict[str, Any] = {
        "path": str(first.path),
        "size_mb": round(total_bytes / 2**20, 2),
        "gguf_version": first.version,
        "architecture": arch,
        "name": kv.get("general.name"),
        "file_type": kv.get("general.file_type"),
        **hp,
        "tensors": len(all_tensors),
        "parameters": sum(t.n_elements for t in all_tensors),
        "tensor_bytes": sum(t.n_bytes for t in all_tensors),
        "vocab_size": words.size if words else None,
        "tokenizer": kv.get("tokenizer.ggml.model"),
        "chat_template": "tokenizer.chat_template" in kv,
    }
    if len(heads) > 1:
        out["split"] = len(heads)
        out["shards"] = [{"path": str(h.path), "bytes": h.file_size, "tensors": len(h.tensors)} for h in heads]
    return out
