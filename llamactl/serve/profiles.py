"""YAML profiles: schema, ``extends``, and precedence with origins.

Precedence, lowest to highest: schema default < profile (and what it extends) <
the user's environment variables, spelled as their run scripts spell them <
command-line options. Every resolved value remembers where it came from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llamactl.core import paths
from llamactl.core.errors import LlamactlError

SplitMode = Literal["none", "layer", "row", "tensor"]
FlashAttn = Literal["on", "off", "auto"]
Backend = Literal["cpu", "hip", "cuda", "vulkan"]


def flag(*candidates: str, env: tuple[str, ...] = (), mtp: bool = False, kind: str = "value") -> dict:
    """Schema metadata: llama-server spellings (first the build knows wins) and the env vars of the user's scripts."""
    return {"flags": list(candidates), "env": list(env), "mtp_only": mtp, "kind": kind}


class BuildSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field("upstream", description="vendor/sources.yaml name or path:/dir")
    backend: Backend = "cpu"
    gpu_targets: str | None = Field(None, description="gfx targets (hip) or CUDA architectures")
    series: str | None = Field(None, description="patch series; default: the source's own")
    no_patches: bool = False
    cmake_options: list[str] = Field(default_factory=list)


class MatrixSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    axes: dict[str, list[Any]] = Field(default_factory=dict)
    include: list[dict[str, Any]] = Field(default_factory=list)
    exclude: list[dict[str, Any]] = Field(default_factory=list)


class Profile(BaseModel):
    """A llama-server launch, in semantic terms. Field metadata drives env mapping and argv rendering."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    description: str = ""
    extends: str | None = None
    build: BuildSpec = Field(default_factory=BuildSpec)
    server_binary: Path | None = Field(None, json_schema_extra=flag(env=("LLAMA_SERVER",), kind="none"))

    model: str = Field(..., json_schema_extra=flag("--model", "-m", env=("MAIN_GGUF",), kind="model"))
    draft_model: str | None = Field(None, json_schema_extra=flag("--model-draft", "--mtp-head", env=("DRAFT_GGUF",), mtp=True, kind="model"))
    alias: str | None = Field(None, json_schema_extra=flag("--alias"))
    ctx: int | None = Field(None, ge=0, json_schema_extra=flag("--ctx-size", env=("CTX",)))
    parallel: int = Field(1, ge=1, le=256, json_schema_extra=flag("--parallel", env=("PARALLEL",)))
    batch: int | None = Field(None, ge=1, json_schema_extra=flag("--batch-size", env=("BATCH",)))
    ubatch: int | None = Field(None, ge=1, json_schema_extra=flag("--ubatch-size", env=("UBATCH",)))
    split_mode: SplitMode | None = Field(None, json_schema_extra=flag("--split-mode", env=("SPLIT_MODE",)))
    kv_k: str | None = Field(None, json_schema_extra=flag("--cache-type-k", env=("KV_K", "CTK"), kind="kv"))
    kv_v: str | None = Field(None, json_schema_extra=flag("--cache-type-v", env=("KV_V", "CTV"), kind="kv"))
    kv_k_draft: str | None = Field(None, json_schema_extra=flag("--cache-type-k-draft", "--spec-draft-type-k", env=("CTKD",), mtp=True, kind="kv"))
    kv_v_draft: str | None = Field(None, json_schema_extra=flag("--cache-type-v-draft", "--spec-draft-type-v", env=("CTVD",), mtp=True, kind="kv"))
    kv_unified: bool | None = Field(None, json_schema_extra=flag("--kv-unified", kind="onoff"))
    reasoning_budget: int | None = Field(None, ge=-1, json_schema_extra=flag("--reasoning-budget", env=("REASONING_BUDGET",)))
    enable_mtp: bool = Field(False, json_schema_extra=flag(env=("ENABLE_MTP",), kind="mtp"))
    draft_n: int | None = Field(None, ge=1, json_schema_extra=flag("--spec-draft-n-max", "--draft-max", env=("DRAFT_N",), mtp=True))
    draft_block_size: int | None = Field(None, ge=2, json_schema_extra=flag("--draft-block-size", mtp=True))
    n_gpu_layers: int | str | None = Field(None, json_schema_extra=flag("--n-gpu-layers", env=("NGL",)))
    n_gpu_layers_draft: int | str | None = Field(None, json_schema_extra=flag("--n-gpu-layers-draft", env=("NGL_DRAFT",), mtp=True))
    flash_attn: FlashAttn | None = Field(None, json_schema_extra=flag("--flash-attn", env=("FA",)))
    threads: int | None = Field(None, ge=1, json_schema_extra=flag("--threads"))
    temperature: float | None = Field(None, ge=0, json_schema_extra=flag("--temp"))
    host: str = Field("127.0.0.1", json_schema_extra=flag("--host"))
    port: int | Literal["auto"] = Field("auto", json_schema_extra=flag("--port", env=("PORT",)))
    no_warmup: bool = Field(False, json_schema_extra=flag("--no-warmup", env=("NO_WARMUP",), kind="switch"))
    metrics: bool = Field(True, json_schema_extra=flag("--metrics", env=("ENABLE_METRICS",), kind="switch"))
    slots: bool = Field(True, json_schema_extra=flag("--slots", env=("ENABLE_SLOTS",), kind="switch"))
    api_key: str | None = Field(None, json_schema_extra=flag("--api-key"))
    extra_args: list[str] = Field(default_factory=list, json_schema_extra=flag(kind="extra"))
    env: dict[str, str] = Field(default_factory=dict)
    health_timeout: float = Field(120.0, gt=0)
    concurrent_max_tokens: int = Field(48, ge=1, description="validate: tokens per concurrent request (long enough that all slots decode together)")
    expect_failure: str | None = Field(
        None, description="validate: a known bug; the cell must fail with this text in its reason (reported as XFAIL)")
    expect_acceptance: tuple[float, float] | None = Field(
        None, description="validate: MTP draft acceptance must fall in [min, max] (a drafter with a known answer)")
    matrix: MatrixSpec | None = None

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if v == 0:
            return "auto"
        if isinstance(v, int) and not 0 < v < 65536:
            raise ValueError("port must be 1-65535 or 'auto'")
        return v

    @field_validator("n_gpu_layers", "n_gpu_layers_draft", mode="before")
    @classmethod
    def _ngl(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            return int(v)
        if isinstance(v, str) and v not in ("auto", "all"):
            raise ValueError("an integer, 'auto' or 'all'")
        return v

    @field_validator("enable_mtp", mode="before")
    @classmethod
    def _mtp(cls, v: Any) -> Any:
        if isinstance(v, str) and v.lower() in ("mtp", "on"):
            return True
        if isinstance(v, str) and v.lower() in ("off", "none"):
            return False
        return v


def field_meta(name: str) -> dict:
    extra = Profile.model_fields[name].json_schema_extra
    return extra if isinstance(extra, dict) else {}


# environment variable -> field (the user's script names, plus the fork scripts' names)
ENV_VARS: dict[str, str] = {
    env: name for name in Profile.model_fields for env in field_meta(name).get("env", [])
}
ENV_VARS["SPEC"] = "enable_mtp"


@dataclass
class Resolved:
    name: str
    profile: Profile
    origins: dict[str, str] = field(default_factory=dict)   # dotted key -> where it came from
    path: Path | None = None

    def origin(self, key: str) -> str:
        return self.origins.get(key, "default")


def profile_path(name: str, root: Path | None = None) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p.resolve()
    return (root or paths.profiles_dir()) / f"{name}.yaml"


def list_profiles(root: Path | None = None) -> list[str]:
    root = root or paths.profiles_dir()
    return sorted(p.stem for p in root.glob("*.yaml") if not p.stem.startswith("_"))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        known = ", ".join(list_profiles(path.parent)) or "none"
        raise LlamactlError(f"profile {path.stem!r} not found ({path})", hint=f"known profiles: {known}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise LlamactlError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise LlamactlError(f"{path}: a profile must be a mapping of keys to values, got {type(data).__name__}")
    return data


def merge(base: dict, over: dict, origins: dict[str, str], origin: str, prefix: str = "") -> dict:
    out = dict(base)
    for k, v in over.items():
        key = f"{prefix}{k}"
        if k in ("build", "env") and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v, origins, origin, prefix=f"{key}.")
        else:
            out[k] = v
            origins[key] = origin
        if isinstance(v, dict) and k in ("build", "env"):
            for sub in v:
                origins[f"{key}.{sub}"] = origin
    return out


def _load_chain(path: Path, origins: dict[str, str], seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        chain = " -> ".join(p.stem for p in (*seen, path))
        raise LlamactlError(f"{path}: extends forms a cycle: {chain}")
    data = _read_yaml(path)
    parent = data.get("extends")
    merged: dict = {}
    if parent is not None:
        if not isinstance(parent, str):
            raise LlamactlError(f"{path}: key 'extends' must name another profile")
        merged = _load_chain(profile_path(parent, path.parent), origins, (*seen, path))
    own = {k: v for k, v in data.items() if k != "extends"}
    return merge(merged, own, origins, f"profile {path.name}")


def _env_layer(environ: dict[str, str]) -> tuple[dict, dict[str, str]]:
    layer: dict = {}
    origins: dict[str, str] = {}
    for var, fname in ENV_VARS.items():
        if var in environ and environ[var] != "":
            layer[fname] = environ[var]
            origins[fname] = f"env {var}"
    return layer, origins


def parse_set(items: list[str]) -> dict:
    """``--set key=value`` (YAML-typed values; dotted keys reach into build/env)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise LlamactlError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        target = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            target = target.setdefault(p, {})
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
    data = _load_chain(path, origins)
    env_layer, env_origins = _env_layer(dict(os.environ if environ is None else environ))
    data = merge(data, env_layer, {}, "")
    origins.update(env_origins)
    if cli:
        data = merge(data, cli, origins, "cli")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise LlamactlError(format_validation_error(exc, path, origins)) from exc
    return Resolved(path.stem, profile, origins, path)


def format_validation_error(exc: ValidationError, path: Path, origins: dict[str, str]) -> str:
    """One line: file, key, what is wrong, what is allowed, and which layer set it."""
    parts = []
    for err in exc.errors()[:3]:
        # pydantic appends union-member tags (int, literal['auto'], ...) to the location: drop them
        key = ".".join(str(x) for x in err["loc"][:2] if not str(x).startswith(("int", "literal", "str", "float", "bool")))
        origin = origins.get(key) or origins.get(str(err["loc"][0]), "")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key (allowed: {', '.join(_allowed_keys(err['loc']))})"
        elif err["type"] == "missing":
            msg = "required key is missing"
        where = f" [{origin}]" if origin and not origin.startswith("profile") else ""
        parts.append(f"key '{key}': {msg}{where}")
    more = f" (+{len(exc.errors()) - 3} more)" if len(exc.errors()) > 3 else ""
    return f"{path}: " + "; ".join(parts) + more


def _allowed_keys(loc: tuple) -> list[str]:
    if len(loc) > 1 and loc[0] == "build":
        return list(BuildSpec.model_fields)
    if len(loc) > 1 and loc[0] == "matrix":
        return list(MatrixSpec.model_fields)
    return list(Profile.model_fields)
