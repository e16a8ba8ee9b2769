"""YAML profiles: schema, ``extends``, and precedence with origins.

Precedence, lowest to highest: schema default < profile (and what it extends) <
the user's environment variables, spelled as their run scripts spell them <
command-line options. Every resolved value remembers where it came from.
"""

from __future__ import annotations

import os
import re
import shlex
import types
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llamactl.core import paths, yamlio
from llamactl.core.errors import BadInput

SplitMode = Literal["none", "layer", "row", "tensor"]
FlashAttn = Literal["on", "off", "auto"]
Backend = Literal["cpu", "hip", "cuda", "vulkan"]


# Words a user types for a boolean (any case). YAML 1.1 read on/off/yes/no/y/n as booleans; our loader
# keeps them as words (so enum keys such as flash_attn get what was typed) and bool keys accept them here.
BOOL_WORDS: dict[str, bool] = {
    "true": True, "on": True, "yes": True, "y": True, "1": True,
    "false": False, "off": False, "no": False, "n": False, "0": False,
}


def as_bool(v: Any, extra: dict[str, bool] | None = None) -> Any:
    """A boolean from a bool, 0/1, or a word of :data:`BOOL_WORDS` (any case); None stays None.

    Raises ValueError (a pydantic validation error) for anything else.
    """
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    words = {**BOOL_WORDS, **(extra or {})}
    if isinstance(v, str) and v.strip().lower() in words:
        return words[v.strip().lower()]
    raise ValueError(f"expected a boolean (true/false, on/off, yes/no, 1/0), got {v!r}")


def enum_word(v: Any) -> Any:
    """Enum keys whose words YAML/JSON may hand over as booleans or in another case."""
    if v is True:
        return "on"
    if v is False:
        return "off"
    return v.strip().lower() if isinstance(v, str) else v


# How a value becomes argv (serve/render.py has one renderer per kind): value (flag VALUE, checked against
# the choices --help lists), model (flag PATH), kv (a cache type), onoff (--flag / --no-flag), switch (--flag
# when true), mtp (--spec-type of the build), rpc (--rpc host:port,...), list (flag a,b), extra (extra_args
# as they are), none (not a flag: read by llamactl itself).
FlagKind = Literal["value", "model", "kv", "onoff", "switch", "mtp", "rpc", "list", "extra", "none"]


@dataclass(frozen=True)
class Flag:
    """A profile key's way to llama-server, attached to the field as ``Annotated[type, Flag(...)]``.

    ``flags``: llama-server spellings, the first the build's ``--help`` knows wins; ``env``: the
    environment variables of the user's run scripts that set the key; ``mtp_only``: rendered only
    with ``enable_mtp``; ``kind``: how the value is rendered (:data:`FlagKind`).
    """

    flags: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    mtp_only: bool = False
    kind: FlagKind = "value"


def flag(*candidates: str, env: tuple[str, ...] = (), mtp: bool = False, kind: FlagKind = "value") -> Flag:
    """A :class:`Flag` marker: ``flag("--ctx-size", env=("CTX",))``."""
    return Flag(tuple(candidates), tuple(env), mtp, kind)


class _Strict(BaseModel):
    """Every profile block: unknown keys refused; .inf/.nan (YAML floats) are never a setting."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class BuildSpec(_Strict):
    source: str = Field(default="upstream", description="vendor/sources.yaml name or path:/dir")
    backend: Backend = "cpu"
    gpu_targets: str | None = Field(default=None, description="gfx targets (hip) or CUDA architectures")
    series: str | None = Field(default=None, description="patch series; default: the source's own")
    no_patches: bool = False
    cmake_options: list[str] = Field(default_factory=list)

    @field_validator("no_patches", mode="before")
    @classmethod
    def _bool(cls, v: Any) -> Any:
        return as_bool(v)

    @field_validator("backend", mode="before")
    @classmethod
    def _backend(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v


class RpcSpec(_Strict):
    """llama.cpp's RPC backend: workers already running (``workers``) or N started on loopback (``local_workers``)."""

    workers: list[str] = Field(default_factory=list, description="host:port of RPC workers already running")
    local_workers: int = Field(0, ge=0, le=16, description="RPC workers llamactl starts on 127.0.0.1 and stops after the server")

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [w for w in v.split(",") if w.strip()]
        if isinstance(v, list):
            for w in v:
                host, _, port = str(w).strip().rpartition(":")
                if not host or not port.isdigit() or not 0 < int(port) < 65536:
                    raise ValueError(f"a worker is host:port (e.g. 127.0.0.1:50052), got {w!r}")
            return [str(w).strip() for w in v]
        return v

    @model_validator(mode="after")
    def _one_form(self) -> "RpcSpec":
        if bool(self.workers) == bool(self.local_workers):
            raise ValueError("give exactly one of workers: [host:port, ...] or local_workers: N (N >= 1)")
        return self


class MatrixSpec(_Strict):
    axes: dict[str, list[Any]] = Field(default_factory=dict)
    include: list[dict[str, Any]] = Field(default_factory=list)
    exclude: list[dict[str, Any]] = Field(default_factory=list)


class QualityBounds(_Strict):
    """kv_quality's bounds for one cell: mean KL (nats, over the reference's top-N) and top-1 agreement."""

    kl_max: float = Field(gt=0, description="mean KL in nats at most this")
    top1_min: float = Field(ge=0, le=1, description="top-1 agreement (0-1) at least this")


class SoakBounds(_Strict):
    """``soak``'s verdict thresholds for one profile or cell (``harness.soak``)."""

    memory_slope_mib_per_h: float = Field(
        default=512.0, gt=0, description="soak: growth of RssAnon+VmSwap less the prompt cache's own size after warm-up, MiB per hour, at most")
    slot_release_s: float = Field(
        default=2.0, gt=0, description="soak: seconds a slot may stay busy after its client left (or with no client)")
    acceptance_drop_max: float = Field(
        default=0.10, ge=0, le=1, description="soak: draft acceptance in the last tenth at most this much (0-1) under the first tenth's")
    tps_ratio_min: float = Field(
        default=0.70, gt=0, le=1, description="soak: server decode tok/s in the last tenth at least this ratio of the first tenth's")
    warmup: float = Field(default=0.2, ge=0, lt=0.9, description="soak: fraction of the run left out of the memory slope")


class Harness(_Strict):
    """What llamactl's harness (validate, bench) expects of a cell and how long it waits: not llama-server
    flags. A profile's ``harness:`` block; the same keys at the top level (the older form) and in matrix
    cells are moved into it."""


    request_timeout: float = Field(
        default=120.0, gt=0, description="validate: seconds one HTTP request may take (connect, send, whole answer)")
    cell_timeout: float | None = Field(
        default=900.0, gt=0, description="validate: deadline in seconds for a whole cell (start, /health, every check); null = none")
    concurrent_max_tokens: int = Field(default=48, ge=1, description="validate: tokens per concurrent request (long enough that all slots decode together)")
    expect_failure: str | None = Field(
        default=None, description="validate: a known bug; the cell must fail with this text in its reason (reported as XFAIL)")
    expect_acceptance: tuple[float, float] | None = Field(
        default=None, description="validate: MTP draft acceptance must fall in [min, max] (a drafter with a known answer)")
    expect_backend: Literal["hip", "cuda", "vulkan", "cpu", "rpc"] | None = Field(
        default=None, description="validate: the backend that must hold the models' weights (read from the server log)")
    expect_offload: int | Literal["all"] | None = Field(
        default=None, description="validate: layers offloaded to the GPU, 'all' or at least N (main model and drafter)")

    answers: bool = Field(
        default=True, description="validate: the right-answers checks (answers, lossless_drafting, slot_isolation, "
                                  "repeatable, kv_quality); false leaves them out")
    exact_answers: bool = Field(
        default=False, description="validate: any difference between answers fails, even at a near tie (the CPU "
                                   "profiles set it: the same kernels give the same tokens there)")
    tie_margin: float = Field(
        default=0.05, ge=0, le=1, description="validate: answers that part where the reference's top-2 probability "
                                              "margin is under this are WARN 'numerics', not FAIL")
    soak: SoakBounds = Field(default_factory=SoakBounds, description="soak: verdict thresholds (memory slope, slot release, drift)")
    reference_kv: str = Field(default="f16", description="validate: the KV cache type kv_quality compares against")
    expect_quality: QualityBounds | None = Field(
        default=None, description="validate: kv_quality bounds {kl_max, top1_min}; default by KV type (8-bit: 0.01 "
                                  "and 0.95, 4-bit: 0.03 and 0.93); KL > 0.1 or top-1 < 0.85 fails always")

    @field_validator("answers", "exact_answers", mode="before")
    @classmethod
    def _flags(cls, v: Any) -> Any:
        return as_bool(v)

    @field_validator("expect_offload", mode="before")
    @classmethod
    def _offload(cls, v: Any) -> Any:
        if v is None or v == "all":
            return v
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"'all' or a number of layers (0 or more), got {v!r}")
        return v


HARNESS_KEYS = tuple(Harness.model_fields)


def nest_harness(data: dict) -> dict:
    """``data`` with top-level harness keys (``expect_backend: cpu``, the older flat form, and matrix cells)
    moved into its ``harness:`` block; a flat key wins over the block's (a cell over its profile)."""
    flat = {k: data[k] for k in HARNESS_KEYS if k in data}
    if not flat:
        return data
    block = data.get("harness")
    out = {k: v for k, v in data.items() if k not in flat}
    out["harness"] = {**(block if isinstance(block, dict) else {}), **flat}
    return out


class Profile(_Strict):
    """A llama-server launch, in semantic terms. Field metadata drives env mapping and argv rendering."""

    model_config = ConfigDict(validate_assignment=True)   # merged with _Strict's

    description: str = ""
    extends: str | None = None
    build: BuildSpec = Field(default_factory=BuildSpec)
    server_binary: Annotated[Path | None, flag(env=("LLAMA_SERVER",), kind="none")] = None

    model: Annotated[str, flag("--model", "-m", env=("MAIN_GGUF",), kind="model")] = Field(...)
    draft_model: Annotated[str | None, flag("--model-draft", "--mtp-head", env=("DRAFT_GGUF",), mtp=True, kind="model")] = None
    alias: Annotated[str | None, flag("--alias")] = None
    ctx: Annotated[int | None, flag("--ctx-size", env=("CTX",))] = Field(None, ge=0)
    parallel: Annotated[int, flag("--parallel", env=("PARALLEL",))] = Field(1, ge=1, le=256)
    batch: Annotated[int | None, flag("--batch-size", env=("BATCH",))] = Field(None, ge=1)
    ubatch: Annotated[int | None, flag("--ubatch-size", env=("UBATCH",))] = Field(None, ge=1)
    split_mode: Annotated[SplitMode | None, flag("--split-mode", env=("SPLIT_MODE",))] = None
    kv_k: Annotated[str | None, flag("--cache-type-k", env=("KV_K", "CTK"), kind="kv")] = None
    kv_v: Annotated[str | None, flag("--cache-type-v", env=("KV_V", "CTV"), kind="kv")] = None
    kv_k_draft: Annotated[str | None, flag("--cache-type-k-draft", "--spec-draft-type-k", env=("CTKD",), mtp=True, kind="kv")] = None
    kv_v_draft: Annotated[str | None, flag("--cache-type-v-draft", "--spec-draft-type-v", env=("CTVD",), mtp=True, kind="kv")] = None
    kv_unified: Annotated[bool | None, flag("--kv-unified", kind="onoff")] = None
    reasoning_budget: Annotated[int | None, flag("--reasoning-budget", env=("REASONING_BUDGET",))] = Field(None, ge=-1)
    enable_mtp: Annotated[bool, flag(env=("ENABLE_MTP",), kind="mtp")] = False
    draft_n: Annotated[int | None, flag("--spec-draft-n-max", "--draft-max", env=("DRAFT_N",), mtp=True)] = Field(None, ge=1)
    draft_block_size: Annotated[int | None, flag("--draft-block-size", mtp=True)] = Field(None, ge=2)
    n_gpu_layers: Annotated[int | str | None, flag("--n-gpu-layers", env=("NGL",))] = None
    n_gpu_layers_draft: Annotated[int | str | None, flag("--n-gpu-layers-draft", env=("NGL_DRAFT",), mtp=True)] = None
    flash_attn: Annotated[FlashAttn | None, flag("--flash-attn", env=("FA",))] = None
    threads: Annotated[int | None, flag("--threads")] = Field(None, ge=1)
    rpc: Annotated[RpcSpec | None, flag("--rpc", kind="rpc")] = None
    tensor_split: Annotated[list[float] | None, flag("--tensor-split", kind="list")] = None
    temperature: Annotated[float | None, flag("--temp")] = Field(None, ge=0)
    host: Annotated[str, flag("--host")] = "127.0.0.1"
    port: Annotated[int | Literal["auto"], flag("--port", env=("PORT",))] = "auto"
    no_warmup: Annotated[bool, flag("--no-warmup", env=("NO_WARMUP",), kind="switch")] = False
    metrics: Annotated[bool, flag("--metrics", env=("ENABLE_METRICS",), kind="switch")] = True
    slots: Annotated[bool, flag("--slots", env=("ENABLE_SLOTS",), kind="switch")] = True
    api_key: Annotated[str | None, flag("--api-key")] = None
    extra_args: Annotated[list[str], flag(kind="extra")] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    health_timeout: float = Field(120.0, gt=0, description="seconds from launch until /health must answer 200")
    harness: Harness = Field(default_factory=Harness, description="what validate and bench expect of a cell, and their timeouts")
    log_verbosity: Annotated[int | None, flag("--log-verbosity", "-lv")] = Field(
        None, ge=0, le=5, description="--log-verbosity; 4 when expect_backend/expect_offload is set (device, buffer and "
                                      "offload lines)")
    matrix: MatrixSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _harness_and_backend_evidence(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = nest_harness(data)
        h = data.get("harness") if isinstance(data.get("harness"), dict) else {}
        # upstream logs devices, buffers and offloaded layers only from verbosity 4 on
        if data.get("log_verbosity") is None and (
                h.get("expect_backend") is not None or h.get("expect_offload") is not None
                or data.get("rpc") is not None):      # rpc_placement reads the RPC devices and buffers too
            data = {**data, "log_verbosity": 4}
        return data

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, v: Any) -> Any:
        if isinstance(v, str):
            text = v.strip().lower()
            if text == "auto":
                return "auto"
            try:
                v = int(text, 10)
            except ValueError:
                raise ValueError(f"port must be a number 1-65535, or 0/'auto' for a free one; got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"port must be a number 1-65535, or 0/'auto' for a free one; got {v!r}")
        if v == 0:
            return "auto"
        if not 0 < v < 65536:
            raise ValueError(f"port must be 1-65535, or 0/'auto' for a free one; got {v}")
        return v

    @field_validator("no_warmup", "metrics", "slots", "kv_unified", mode="before")
    @classmethod
    def _bool(cls, v: Any) -> Any:
        return as_bool(v)

    @field_validator("flash_attn", "split_mode", mode="before")
    @classmethod
    def _enum_word(cls, v: Any) -> Any:
        return enum_word(v)

    @field_validator("extra_args", "env", mode="before")
    @classmethod
    def _strings(cls, v: Any) -> Any:
        """extra_args: a list (or one shell-quoted string); env: values as strings (4 -> "4", true -> "true")."""
        def text(x: Any) -> Any:
            if isinstance(x, bool):
                return "true" if x else "false"
            return str(x) if isinstance(x, (int, float)) else x
        if isinstance(v, str):
            return shlex.split(v)
        if isinstance(v, list):
            return [text(x) for x in v]
        if isinstance(v, dict):
            return {k: text(x) for k, x in v.items()}
        return v

    @field_validator("n_gpu_layers", "n_gpu_layers_draft", mode="before")
    @classmethod
    def _ngl(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            return int(v)
        if isinstance(v, str) and v not in ("auto", "all"):
            raise ValueError("an integer, 'auto' or 'all'")
        return v

    @field_validator("tensor_split", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        """``[3, 1]`` or ``"3,1"`` (proportions per device, in llama-server's device order)."""
        if isinstance(v, str):
            v = [x for x in re.split(r"[,/ ]+", v.strip()) if x]
        if isinstance(v, list) and (not v or any(isinstance(x, bool) or not isinstance(x, (int, float, str)) for x in v)):
            raise ValueError(f"tensor_split is a list of proportions, e.g. [1, 1] or '3,1'; got {v!r}")
        if isinstance(v, list):
            try:
                out = [float(x) for x in v]
            except ValueError:
                raise ValueError(f"tensor_split is a list of proportions, e.g. [1, 1] or '3,1'; got {v!r}") from None
            if any(x < 0 for x in out) or not any(out):
                raise ValueError(f"tensor_split proportions must be >= 0 and not all 0; got {v!r}")
            return out
        return v

    @field_validator("enable_mtp", mode="before")
    @classmethod
    def _mtp(cls, v: Any) -> Any:
        return as_bool(v, {"mtp": True, "draft-mtp": True, "none": False})   # SPEC=mtp|off too


def file_schema() -> dict[str, Any]:
    """The JSON Schema of a profile file (``llamactl profile schema``; profiles/profile.schema.json).

    Profile's own schema, with each llama-server key's flag spellings and env vars as ``x-flags`` and
    ``x-env``, the older flat harness keys accepted (marked deprecated), and no key required: a file
    that ``extends`` another may leave ``model`` to its parent.
    """
    schema = Profile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "llamactl profile"
    props = schema["properties"]
    for name, f in flag_fields():
        if f.flags:
            props[name]["x-flags"] = list(f.flags)
        if f.env:
            props[name]["x-env"] = list(f.env)
    for name, sub in Harness.model_json_schema()["properties"].items():
        props[name] = {**sub, "deprecated": True, "description": f"the older form of harness.{name}"}
    schema.pop("required", None)
    return schema


def field_flag(name: str) -> Flag | None:
    """The :class:`Flag` marker of Profile field ``name`` (None: not a llama-server flag, no env var)."""
    return next((m for m in Profile.model_fields[name].metadata if isinstance(m, Flag)), None)


def flag_fields() -> list[tuple[str, Flag]]:
    """Every Profile field with a :class:`Flag` marker, in declaration order (the order argv is rendered in)."""
    return [(name, f) for name in Profile.model_fields if (f := field_flag(name)) is not None]


# environment variable -> field (the user's script names, plus the fork scripts' names)
ENV_VARS: dict[str, str] = {env: name for name, f in flag_fields() for env in f.env}
ENV_VARS["SPEC"] = "enable_mtp"


@dataclass
class Resolved:
    name: str
    profile: Profile
    origins: dict[str, str] = field(default_factory=dict)   # dotted key -> where it came from
    path: Path | None = None

    def origin(self, key: str) -> str:
        return self.origins.get(key, "default")


def _looks_like_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or os.sep in name or name.startswith(("~", "."))


def profile_path(name: str, root: Path | None = None) -> Path:
    """``profiles/NAME.yaml`` under ``root`` (default: the shipped profiles), or ``name`` itself when it is a path."""
    if _looks_like_path(name):
        p = Path(name).expanduser()
        if p.suffix in (".yaml", ".yml") or p.exists():
            return p.resolve() if p.exists() else p
    return (root or paths.profiles_dir()) / f"{name}.yaml"


def list_profiles(root: Path | None = None) -> list[str]:
    root = root or paths.profiles_dir()
    return sorted(p.stem for p in root.glob("*.yaml") if not p.stem.startswith("_"))


def _read_yaml(path: Path, lines: dict[str, int] | None = None) -> dict:
    if not path.exists() and not path.is_symlink():
        # the profiles beside where it was looked for, else the shipped ones (a name that is no path at all)
        known = ", ".join((list_profiles(path.parent) if path.parent.is_dir() else []) or list_profiles())
        raise BadInput(f"profile {path.stem!r} not found ({path})", hint=f"known profiles: {known or 'none'}")
    raw: dict[str, str] = {}
    data = yamlio.load_file(path, "profile", lines=lines, raw=raw)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadInput(f"{path}: a profile must be a mapping of keys to values, got {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise BadInput(f"{path}: profile keys must be names, got {bad[0]!r}")
    return _text_as_written(data, raw)


def _text_as_written(data: dict, raw: dict[str, str]) -> dict:
    """``data`` with the text as written for keys that take text where YAML read a number or a boolean
    (``api_key: 0755``, ``alias: 1e3``, ``host: 0x7f000001``, ``build.source: 123``), as ``--set`` keeps it."""
    for key, text in raw.items():
        annotation = field_annotation(key)
        if annotation is None or not takes_text(annotation):
            continue
        head, _, tail = key.partition(".")
        if not tail and not isinstance(data.get(key), str):
            data[key] = text
        elif tail and isinstance(data.get(head), dict) and not isinstance(data[head].get(tail), str):
            data[head] = {**data[head], tail: text}
    return data


def _parent_path(parent: str, child: Path, root: Path | None) -> Path:
    """Where ``extends: parent`` points: next to the child first, then the shipped profiles."""
    if _looks_like_path(parent):
        p = Path(parent).expanduser()
        return (p if p.is_absolute() else child.parent / p).resolve()
    for base in (child.parent, root, paths.profiles_dir()):
        cand = base / f"{parent}.yaml" if base is not None else None
        if cand is not None and cand.is_file() and cand.resolve() != child.resolve():   # ./default.yaml may extend the shipped default
            return cand
    return child.parent / f"{parent}.yaml"


NESTED = ("build", "env", "harness")   # blocks merged key by key (a parent's other keys stay)


def merge(base: dict, over: dict, origins: dict[str, str], origin: str, prefix: str = "") -> dict:
    out = dict(base)
    for k, v in over.items():
        key = f"{prefix}{k}"
        if k in NESTED and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v, origins, origin, prefix=f"{key}.")
        else:
            out[k] = v
            origins[key] = origin
        if isinstance(v, dict) and k in NESTED:
            for sub in v:
                origins[f"{key}.{sub}"] = origin
    return out


def _load_chain(path: Path, origins: dict[str, str], seen: tuple[Path, ...] = (), root: Path | None = None,
                where: dict[str, tuple[Path, int]] | None = None) -> dict:
    """The merged data of ``path`` and its ``extends`` parents; ``where`` gets each key's (file, line)."""
    if path in seen:
        chain = " -> ".join(p.stem for p in (*seen, path))
        raise BadInput(f"{path}: extends forms a cycle: {chain}")
    lines: dict[str, int] = {}
    data = _read_yaml(path, lines)
    parent = data.get("extends")
    merged: dict = {}
    if parent is not None:
        if not isinstance(parent, str) or not parent.strip():
            raise BadInput(f"{path}: key 'extends' must name another profile, got {parent!r}")
        ppath = _parent_path(parent.strip(), path, root)
        if not ppath.exists():
            known = ", ".join(sorted(set(list_profiles(path.parent)) | set(list_profiles(root or paths.profiles_dir()))))
            raise BadInput(f"{path}:{lines.get('extends', 1)}: extends {parent!r}: no such profile next to it or "
                           f"among the shipped ones", hint=f"known profiles: {known or 'none'}")
        merged = _load_chain(ppath, origins, (*seen, path), root, where)
    if where is not None:
        where.update({k: (path, ln) for k, ln in lines.items()})
    own = nest_harness({k: v for k, v in data.items() if k != "extends"})
    return merge(merged, own, origins, f"profile {path.name}")


def _env_layer(environ: dict[str, str]) -> tuple[dict, dict[str, str]]:
    layer: dict = {}
    origins: dict[str, str] = {}
    for var, fname in ENV_VARS.items():
        if var in environ and environ[var] != "":
            layer[fname] = environ[var]
            origins[fname] = f"env {var}"
    return layer, origins


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types an annotation admits: each member of a union (``str | None``: str, NoneType), else itself."""
    if get_origin(annotation) is Annotated:
        return _members(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(m for a in get_args(annotation) for m in _members(a))
    return (annotation,)


def field_annotation(key: str) -> Any:
    """The type of dotted profile key ``key`` (``host``, ``build.source``, ``harness.expect_failure``, or a
    harness key written flat, ``expect_failure``); None for a key the schema does not have."""
    model: type[BaseModel] = Profile
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields
        if model is Profile and part not in fields:
            fields = Harness.model_fields if part in HARNESS_KEYS else fields
        if part not in fields:
            return None
        annotation = fields[part].annotation
        if i == len(parts) - 1:
            return annotation
        sub = next((m for m in _members(annotation) if isinstance(m, type) and issubclass(m, BaseModel)), None)
        if sub is None:
            return None
        model = sub
    return None


NULL_WORDS = ("null", "Null", "NULL", "~")     # YAML's spellings of null


def takes_text(annotation: Any) -> bool:
    """Whether a key of this type takes text: str (or a path) alone or in a union (``str | None``, ``int | str``)."""
    return any(isinstance(m, type) and issubclass(m, (str, PurePath)) for m in _members(annotation))


def cli_value(key: str, raw: str) -> Any:
    """The value of profile key ``key`` typed on the command line (``--set key=value``, ``--cell key=value``).

    Read as YAML 1.2 (:func:`llamactl.core.yamlio.parse_scalar`: ``8192`` a number, ``true`` a boolean,
    ``[a, b]`` a list), except for a key that takes text (str, str | None, a path, str in a union, nested ones
    such as ``build.source`` too): there the text as typed wins, so ``host=127.1``, ``host=0x7f000001``,
    ``alias=2026-01-01``, ``kv_k=1e3`` or ``model=123`` are those words, not a float, an int or a date. Three
    exceptions: ``null`` (or ``~``) unsets a key that may be unset (``alias=null``: no ``--alias``; for a
    key that must be set it is the word); a value quoted whole is YAML's string (``alias='"null"'`` is the
    word null); a number for a key that also takes numbers stays one (``n_gpu_layers=99``).
    """
    value = yamlio.parse_scalar(raw)
    annotation = field_annotation(key)
    if annotation is None or not takes_text(annotation):
        return value
    text = raw.strip()
    members = _members(annotation)
    if value is None and text in NULL_WORDS:
        return None if type(None) in members else text
    if isinstance(value, str) and text[:1] in ("'", '"'):
        return value
    if not isinstance(value, str) and value is not None and any(type(value) is m for m in members):
        return value
    return text


def parse_set(items: list[str]) -> dict:
    """``--set key=value`` (dotted keys reach into build/env/harness); values as :func:`cli_value` types them,
    ``env.NAME`` values as the text typed."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise BadInput(f"--set {item!r}: expected key=value (e.g. --set ctx=8192, --set build.backend=cpu)")
        key, raw = item.split("=", 1)
        parts = [p.strip() for p in key.strip().split(".")]
        if not all(parts):
            raise BadInput(f"--set {item!r}: empty key name", hint="key=value, dotted keys reach into build/env")
        # env values are the text typed (no YAML typing): --set env.OMP_NUM_THREADS=04 passes "04"
        value = raw if parts[0] == "env" and len(parts) > 1 else cli_value(".".join(parts), raw)
        target = out
        for i, p in enumerate(parts[:-1]):
            nxt = target.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise BadInput(f"--set {item!r}: {'.'.join(parts[:i + 1])} was already set to a value, not a mapping")
            target = nxt
        target[parts[-1]] = value
    return out


def resolve(
    name: str,
    *,
    environ: dict[str, str] | None = None,
    cli: dict | None = None,
    root: Path | None = None,
) -> Resolved:
    """Load a profile with its parents, then apply env vars, then CLI overrides; validate once."""
    path = profile_path(name, root)
    origins: dict[str, str] = {}
    where: dict[str, tuple[Path, int]] = {}
    data = _load_chain(path, origins, root=root, where=where)
    env_layer, env_origins = _env_layer(dict(os.environ if environ is None else environ))
    data = merge(data, env_layer, {}, "")
    origins.update(env_origins)
    if cli:
        data = merge(data, nest_harness(cli), origins, "cli")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise BadInput(format_validation_error(exc, path, origins, where)) from exc
    return Resolved(path.stem, profile, origins, path)


def format_validation_error(exc: ValidationError, path: Path, origins: dict[str, str],
                            where: dict[str, tuple[Path, int]] | None = None) -> str:
    """One line: file and line, key, what is wrong, what is allowed, and which layer set it."""
    parts = []
    first: str | None = None
    for err in exc.errors()[:3]:
        # pydantic appends union-member tags (int, literal['auto'], ...) to the location: drop them
        key = ".".join(str(x) for x in err["loc"] if not str(x).startswith(("int", "literal", "str", "float", "bool", "list[", "tuple[")))
        # the deepest key a layer set (harness.soak.warmup: the soak block, or all of harness, was set there)
        prefixes = [".".join(key.split(".")[:n]) for n in range(key.count(".") + 1, 0, -1)]
        origin = next((origins[k] for k in prefixes if k in origins), "")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key (allowed: {', '.join(_allowed_keys(err['loc']))})"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and "got " not in msg:
            shown = repr(err["input"])
            msg = f"{msg}, got {shown if len(shown) <= 80 else shown[:77] + '...'}"   # what was typed, as read
        layer = f" [{origin}]" if origin and not origin.startswith("profile") else ""
        loc = next(((where or {})[k] for k in prefixes if k in (where or {})), None)
        if loc and (not origin or origin.startswith("profile")):
            if first is None:
                first = f"{loc[0]}:{loc[1]}"
            elif f"{loc[0]}:" in first:
                layer = f" (line {loc[1]})"
            else:
                layer = f" ({loc[0]}:{loc[1]})"
        parts.append(f"key '{key}': {msg}{layer}")
    more = f" (+{len(exc.errors()) - 3} more)" if len(exc.errors()) > 3 else ""
    if first is None and all(" [" in p for p in parts):   # every bad value came from the environment or the command line
        return f"profile {path.stem}: " + "; ".join(parts) + more
    return f"{first or path}: " + "; ".join(parts) + more


def _allowed_keys(loc: tuple) -> list[str]:
    if len(loc) > 1 and loc[0] == "build":
        return list(BuildSpec.model_fields)
    if len(loc) > 1 and loc[0] == "rpc":
        return list(RpcSpec.model_fields)
    if len(loc) > 1 and loc[0] == "harness":
        return list(Harness.model_fields)
    if len(loc) > 1 and loc[0] == "matrix":
        return list(MatrixSpec.model_fields)
    return list(Profile.model_fields)
