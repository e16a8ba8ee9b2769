"""Render a resolved profile into llama-server argv for one specific binary.

Driven by the schema: each Profile field carries a :class:`~llamactl.serve.profiles.Flag`
marker (its candidate flag spellings, env vars and a kind), one renderer per kind; the binary's parsed ``--help`` decides which spelling exists and which values
are allowed. Values the build cannot take are refused before launch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from llamactl.serve.dialect import Help, Option
from llamactl.core.errors import BadInput, ExitCode, LlamactlError
from llamactl.serve.profiles import Flag, Profile, field_flag, flag_fields

MTP_SPEC_TYPES = ("draft-mtp", "mtp")   # upstream, AtomicBot fork at the seed's base


def feature_source(field: str, value: object) -> str | None:
    """Which known source provides a value this build lacks."""
    if isinstance(value, str) and value.startswith("turbo"):
        return "the atomic-turboquant source (`--source atomic-turboquant`) has turbo2/turbo3/turbo4 KV types"
    if field == "enable_mtp":
        return "upstream llama.cpp (`--spec-type draft-mtp`) and atomic-turboquant (`--spec-type mtp`) have Gemma 4 MTP"
    return None


class Unsupported(LlamactlError):
    """A profile value the chosen llama-server build does not support."""

    exit_code = ExitCode.UNSUPPORTED

    def __init__(self, field: str, value: object, supported: list[str] | None, binary: str) -> None:
        what = f"supported: {', '.join(supported)}" if supported else "no such option"
        src = feature_source(field, value)
        msg = f"{field}={value} is not supported by {binary} ({what})"
        super().__init__(msg, hint=src)
        self.field = field
        self.value = value


class Refused(BadInput):
    """A combination of profile values llama-server is known to reject (or silently change) at start.

    Found before launch; the message names the profile key to change.
    """

    def __init__(self, message: str, key: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.key = key


# ggml types that need flash attention in the V cache: every block-quantized KV type
# (upstream llama_init_from_model: "quantized V cache requires flash_attn to be enabled";
# the fork at 0a635dcd9: "V cache quantization requires flash_attn")
UNQUANTIZED_KV = ("f32", "f16", "bf16")
# The AtomicBot fork (0a635dcd9, llama_init_from_model): turbo2/turbo3/turbo4 in K *or* V need flash
# attention, and with flash_attn off the fork turns it on by itself ("turbo cache types require
# flash_attn - enabling automatically"): the server would not run what the profile says.
TURBO_KV = ("turbo2", "turbo3", "turbo4")


def _fa_off(value: object) -> bool:
    """flash_attn off, spelled as the word or as YAML 1.1's boolean for an unquoted ``off``."""
    return value is False or (isinstance(value, str) and value.strip().lower() in ("off", "false", "no", "0"))


def prelaunch_rules(profile: Profile) -> None:
    """Refuse value combinations llama-server rejects at start, naming the key to change.

    Raises:
        Refused: a quantized V cache (kv_v, or kv_v_draft with MTP) with ``flash_attn: off``;
            a turbo* K or V cache type with ``flash_attn: off``.
    """
    if not _fa_off(profile.flash_attn):
        return
    pairs = [("kv_k", profile.kv_k), ("kv_v", profile.kv_v)]
    if profile.enable_mtp:
        pairs += [("kv_k_draft", profile.kv_k_draft), ("kv_v_draft", profile.kv_v_draft)]
    for key, value in pairs:
        if value in TURBO_KV:
            raise Refused(f"{key}={value} needs flash attention, but flash_attn=off (the fork would turn it on "
                          f"by itself, so the server would not run this profile)", "flash_attn",
                          hint=f"set flash_attn: on (or auto), or a {key} that is not turbo*")
    for key, value in pairs:
        if key.startswith("kv_v") and value is not None and value not in UNQUANTIZED_KV:
            raise Refused(f"{key}={value} (a quantized V cache) needs flash attention, but flash_attn=off: "
                          f"llama-server refuses to create the context", "flash_attn",
                          hint=f"set flash_attn: on (or auto), or {key}: f16")


def _fmt(v: object) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


@dataclass(frozen=True)
class _Target:
    """What every renderer needs to know about the launch besides the value."""

    profile: Profile
    help: Help
    binary: str
    model_paths: dict[str, Path]
    rpc_endpoints: list[str] | None


def _flag(t: _Target, spec: Flag, fname: str, value: object) -> str:
    return _need(t.help, list(spec.flags), fname, value, t.binary)


def _render_value(t: _Target, spec: Flag, fname: str, value: Any) -> list[str]:
    """``flag VALUE``, the value checked against the choices the build's --help lists (kinds value, kv)."""
    flag = _flag(t, spec, fname, value)
    allowed = t.help.allowed(flag)
    if allowed is not None and _fmt(value) not in allowed:
        raise Unsupported(fname, value, allowed, t.binary)
    return [flag, _fmt(value)]


def _render_model(t: _Target, spec: Flag, fname: str, value: Any) -> list[str]:
    return [_flag(t, spec, fname, value), str(t.model_paths.get(fname, value))]


def _render_onoff(t: _Target, spec: Flag, fname: str, value: Any) -> list[str]:
    flag = _flag(t, spec, fname, value)
    off = "--no-" + flag.lstrip("-")
    if not value and not t.help.has(off):
        raise Unsupported(fname, value, None, t.binary)
    return [flag if value else off]


def _render_switch(t: _Target, spec: Flag, fname: str, value: Any) -> list[str]:
    if value:
        return [_flag(t, spec, fname, value)]
    return ["--no-slots"] if fname == "slots" and t.help.has("--no-slots") else []


def _render_mtp_kind(t: _Target, spec: Flag, fname: str, value: Any) -> list[str]:
    return _render_mtp(t.profile, t.help, t.binary) if value else []


def _render_rpc(t: _Target, spec: Flag, fname: str, value: Any) -> list[str]:
    flag = _flag(t, spec, fname, "workers")
    return [flag, ",".join(t.rpc_endpoints or value.workers or ["127.0.0.1:0"] * value.local_workers)]


def _render_list(t: _Target, spec: Flag, fname: str, value: Any) -> list[str]:
    return [_flag(t, spec, fname, value), ",".join(_fmt(x) for x in value)]


def _render_extra(t: _Target, spec: Flag, fname: str, value: Any) -> list[str]:
    check_extra_args([str(a) for a in value], t.help)
    return [str(a) for a in value]


# one renderer per FlagKind ("none": read by llamactl, never rendered)
RENDERERS: dict[str, Callable[[_Target, Flag, str, Any], list[str]]] = {
    "value": _render_value, "kv": _render_value, "model": _render_model, "onoff": _render_onoff,
    "switch": _render_switch, "mtp": _render_mtp_kind, "rpc": _render_rpc, "list": _render_list,
    "extra": _render_extra,
}


def render_argv(
    profile: Profile,
    help_: Help,
    binary: Path,
    *,
    port: int,
    model_paths: dict[str, Path] | None = None,
    rpc_endpoints: list[str] | None = None,
) -> list[str]:
    """argv for ``binary``; ``model_paths`` maps field name -> resolved file for model fields.

    Each field with a :class:`~llamactl.serve.profiles.Flag` marker is rendered by the renderer of
    its kind (:data:`RENDERERS`), in declaration order; unset values and MTP-only fields without MTP
    render nothing. ``rpc_endpoints`` (host:port) are the RPC workers of this launch: ``rpc.workers``,
    or the loopback ports chosen for ``rpc.local_workers`` (placeholders when only checking support).

    Raises:
        Unsupported: a value or flag this build lacks (a matrix cell is skipped).
        Refused: a combination llama-server rejects at start (:func:`prelaunch_rules`).
    """
    t = _Target(profile, help_, binary.name, model_paths or {}, rpc_endpoints)
    argv: list[str] = [str(binary)]
    for fname, spec in flag_fields():
        render = RENDERERS.get(spec.kind)
        value = port if fname == "port" else getattr(profile, fname)
        if render is None or value is None or (spec.mtp_only and not profile.enable_mtp):
            continue
        argv += render(t, spec, fname, value)
    prelaunch_rules(profile)   # after the support checks: a value this build lacks is a SKIP, not a refusal
    return argv


def _need(help_: Help, cands: list[str], fname: str, value: object, binary: str) -> str:
    flag = help_.first(cands)
    if flag is None:
        raise Unsupported(fname, value, None, binary)
    return flag


def _render_mtp(profile: Profile, help_: Help, binary: str) -> list[str]:
    allowed = help_.allowed("--spec-type") or []
    spec = next((t for t in MTP_SPEC_TYPES if t in allowed), None)
    if spec is None:
        raise Unsupported("enable_mtp", True, [t for t in allowed] or None, binary)
    if not profile.draft_model:
        raise LlamactlError("enable_mtp needs draft_model (the MTP assistant GGUF; env DRAFT_GGUF)")
    return ["--spec-type", spec]


def supported_kv_types(help_: Help) -> list[str]:
    return help_.allowed("--cache-type-k") or []


def check_supported(profile: Profile, help_: Help, binary: str = "llama-server") -> Unsupported | None:
    """The first unsupported value, or None; used to skip matrix cells with a reason."""
    try:
        render_argv(profile, help_, Path(binary), port=1)
    except Unsupported as exc:
        return exc
    return None


class ExtraArgConflict(BadInput):
    """An ``extra_args`` flag that a profile key already renders (llama-server would take the last one)."""

    def __init__(self, token: str, option: Option, key: str, value: str | None) -> None:
        spelled = ", ".join(option.names)
        example = f"--set {key}={value}" if value is not None else f"--set {key}=..."
        super().__init__(f"extra_args {token!r} sets llama-server's {spelled}, which profile key '{key}' renders "
                         f"(the last one would win, and reports would show the wrong value)",
                         hint=f"set '{key}' instead, e.g. {example}")
        self.token, self.key = token, key


def owned_options(help_: Help) -> dict[int, tuple[Option, str]]:
    """id(option) -> (option, profile key) for every llama-server option a profile key renders."""
    owned: dict[int, tuple[Option, str]] = {}
    for fname, spec in flag_fields():
        cands = list(spec.flags)
        if spec.kind == "mtp":
            cands.append("--spec-type")
        for c in cands:
            opt = help_.option(c)
            if opt is not None:
                owned.setdefault(id(opt), (opt, fname))
    return owned


def check_extra_args(args: list[str], help_: Help) -> None:
    """Refuse extra arguments that fight a rendered flag, in any spelling the binary's --help gives it
    (short, long, alias, ``--flag=value``, ``--no-flag``). Repeatable flags and flags no key renders pass.

    Raises:
        ExtraArgConflict: naming the token and the profile key to use instead.
    """
    owned = owned_options(help_)
    for i, tok in enumerate(args):
        opt = help_.option(tok)
        if opt is None or id(opt) not in owned or opt.repeatable:
            continue
        key = owned[id(opt)][1]
        value: str | None = tok.split("=", 1)[1] if "=" in tok else None
        if getattr(field_flag(key), "kind", None) in ("switch", "onoff", "mtp"):
            value = "false" if tok.split("=", 1)[0].startswith(("--no-", "-no-")) else "true"
        elif value is None and i + 1 < len(args) and help_.option(args[i + 1]) is None:
            value = args[i + 1]
        raise ExtraArgConflict(tok, opt, key, value)
