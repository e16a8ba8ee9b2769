"""llama-server's INI presets (``--models-preset FILE``), both ways: profile -> section, section -> profile.

A preset file (llama.cpp ``common/preset.cpp``, since December 2025) holds one ``[section]`` per model;
its keys are llama-server's flags without the leading dashes (short forms and ``LLAMA_ARG_*`` names are
accepted too), ``[*]`` holds values shared by every section, and keys written before any section
belong to a section named ``default``. Values are raw text up to the end of the line or a ``;``/``#``
comment. In router mode the router sets each child's ``--host``, ``--port`` and ``--alias`` (the
section name) itself, and command-line arguments of the router override every section.

Export renders a resolved profile with :func:`llamactl.serve.render.render_argv` (the build's own
flag names) and turns that argv into a section; import maps each key to the option the build's
``--help`` names and that option to the profile key that renders it (any other option goes to
``extra_args``). Anything a section cannot say (``build:``, ``env:``, ``harness:``, ``matrix:``) is
named in comments on export.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llamactl.build.builder import cached_build
from llamactl.core.errors import BadInput
from llamactl.serve import launcher
from llamactl.serve.dialect import Help, Option, parse_help
from llamactl.serve.profiles import Profile, field_flag
from llamactl.serve.render import MTP_SPEC_TYPES, owned_options

GLOBAL = "*"                 # the section every other one inherits from
DEFAULT_SECTION = "default"  # llama.cpp's COMMON_PRESET_DEFAULT_NAME: keys before any [section]
# keys that are not command-line flags (common_params_add_preset_options): router settings per model
PRESET_ONLY = ("load-on-startup", "stop-timeout", "dedup-cache-models")
# set by the router for each child (server-models.cpp: update_args), so never written on export
ROUTER_SETS = ("--host", "--port")
# llama.cpp's common_arg_utils::is_truthy / is_falsey
TRUTHY = ("on", "enabled", "1", "true")
FALSEY = ("off", "disabled", "0", "false")

_HEADER = re.compile(r"^\[[ \t]*(?P<name>[^\]]*?)[ \t]*\][ \t]*(?:[;#].*)?$")
_KV = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)[ \t]*=[ \t]*(?P<value>[^;#\r\n]*?)[ \t]*(?:[;#].*)?$")
_COMMENT = re.compile(r"^[ \t]*(?:[;#].*)?$")
_UNSAFE_VALUE = re.compile(r"[;#\r\n]")
_PROFILE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Section:
    """One ``[name]`` of a preset: its keys in file order, each with its line number (1-based)."""

    name: str
    line: int
    values: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)


@dataclass
class Preset:
    """A parsed preset file: the model sections in file order, and ``[*]`` (None when absent)."""

    path: str
    sections: list[Section]
    shared: Section | None = None


# --- reading and writing the INI text --------------------------------------------------------

def parse_ini(text: str, path: str = "<preset>") -> Preset:
    """Parse preset text the way llama.cpp's grammar reads it (``common/preset.cpp``: header lines,
    ``key = value`` lines starting in column 1, ``;``/``#`` comments, blank lines).

    Stricter than llama.cpp where it would silently lose something: a section given twice (llama.cpp
    keeps only the second) and a key given twice in one section (llama.cpp keeps the last) are errors.

    Raises:
        BadInput: ``PATH:LINE: ...`` for a line that is not INI, an empty section name, a duplicate
            section or key.
    """
    sections: dict[str, Section] = {}
    current: Section | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if _COMMENT.match(line):
            continue
        m = _HEADER.match(line)
        if m:
            name = m.group("name")
            if not name:
                raise BadInput(f"{path}:{n}: empty section name []")
            if name in sections:
                raise BadInput(f"{path}:{n}: section [{name}] given twice (first at line {sections[name].line}); "
                               "llama-server would keep only the second")
            current = sections[name] = Section(name, n)
            continue
        m = _KV.match(line)
        if not m:
            why = ("a key must start in column 1" if line[:1] in (" ", "\t") and "=" in line
                   else "expected [section], key = value, or a ; comment")
            raise BadInput(f"{path}:{n}: not a preset line ({why}): {line.strip()[:60]!r}",
                           hint="llama-server refuses the whole file then (failed to parse server config file)")
        if current is None:
            current = sections[DEFAULT_SECTION] = Section(DEFAULT_SECTION, n)
        key, value = m.group("key"), m.group("value")
        if key in current.values:
            raise BadInput(f"{path}:{n}: key '{key}' given twice in [{current.name}] (first at line {current.lines[key]})")
        current.values[key] = value
        current.lines[key] = n
    if DEFAULT_SECTION in sections and set(sections[DEFAULT_SECTION].values) <= {"version"}:
        del sections[DEFAULT_SECTION]      # llama.cpp drops an empty default preset (version is reserved)
    shared = sections.pop(GLOBAL, None)
    return Preset(path, list(sections.values()), shared)


def check_value(key: str, value: str, where: str) -> None:
    """A value a preset line can carry as it is: no ``;``, ``#`` or line break (they end the value),
    no leading or trailing blanks (trimmed by the parser).

    Raises:
        BadInput: naming ``where`` (the profile), the key and the character.
    """
    bad = _UNSAFE_VALUE.search(value)
    if bad:
        raise BadInput(f"{where}: {key} = {value!r} cannot be written in a preset ({bad.group()!r} ends a value "
                       "there)", hint="llama-server's INI format has no quoting")
    if value != value.strip(" \t"):
        raise BadInput(f"{where}: {key} = {value!r} cannot be written in a preset (leading or trailing blanks are "
                       "trimmed)")


def render_ini(sections: list[Section], shared: Section | None = None, comments: dict[str, list[str]] | None = None,
               header: list[str] | None = None) -> str:
    """Preset text: ``header`` comment lines, ``[*]`` (when given), then each section with its
    ``comments`` (section name -> lines) above it. Keys are written in their order."""
    out = [f"; {c}" for c in header or []]
    out += ["version = 1", ""]
    for sec in ([shared] if shared else []) + sections:
        out += [f"; {c}" for c in (comments or {}).get(sec.name, [])]
        out.append(f"[{sec.name}]")
        width = max((len(k) for k in sec.values), default=0)
        out += [f"{k.ljust(width)} = {v}" for k, v in sec.values.items()]
        out.append("")
    return "\n".join(out)


# --- the build's options -----------------------------------------------------------------------

def help_for_source(source: str = "upstream", backend: str = "cpu") -> tuple[Help, str]:
    """The ``--help`` keys are checked against, and where it came from: the cached build of ``source``
    for ``backend`` when there is one (``llama-server.help.txt`` in its build directory), else the
    source's recorded help (``serve/recorded_help/<source>.txt``).

    Raises:
        BadInput: neither is there (a ``path:`` source never built).
    """
    prof = Profile.model_validate({"model": "unused", "build": {"source": source, "backend": backend}})
    manifest = cached_build(launcher.build_request(prof))
    if manifest:
        p = Path(manifest.get("build_root", "")) / "llama-server.help.txt"
        if p.is_file():
            return parse_help(p.read_text(errors="replace")), f"--help of the cached {backend} build of {source}"
    rec = launcher.recorded_help_path(source)
    if rec.is_file():
        return parse_help(rec.read_text()), f"recorded --help of {source}"
    raise BadInput(f"no --help known for source {source!r}: build it first (`llamactl build --source {source}`)")


def option_for_key(help_: Help, key: str) -> Option | None:
    """The llama-server option a preset key names: a long or short flag without dashes, or an env name
    (``ctx-size``, ``c``, ``LLAMA_ARG_CTX_SIZE``); None when the build has none (removed ones included)."""
    for spelled in (f"--{key}", f"-{key}"):
        opt = help_.option(spelled)
        if opt is not None:
            return None if opt.removed else opt
    if key.isupper():
        return next((o for o in help_.options if key in o.env and not o.removed), None)
    return None


def takes_value(opt: Option) -> bool:
    """Whether the option reads a value after it (its --help shows an argument: ``N``, ``FNAME``, ``[on|off|auto]``)."""
    return bool(opt.arg.strip())


def negated(opt: Option, key: str) -> bool:
    """Whether ``key`` is the negative spelling of a boolean option (``no-slots`` of ``--slots, --no-slots``)."""
    bare = key.lstrip("-")
    for prefix in ("no-", "no_"):
        if bare.startswith(prefix) and any(n.lstrip("-") == bare[len(prefix):] for n in opt.names):
            return True
    return False


def truth(text: str, where: str) -> bool:
    """llama.cpp's reading of a flag's value (``true``/``on``/``enabled``/``1`` and the opposites)."""
    low = text.strip().lower()
    if low in TRUTHY:
        return True
    if low in FALSEY:
        return False
    raise BadInput(f"{where}: expected true/false (on/off, enabled/disabled, 1/0), got {text!r}")


# --- profile -> section ------------------------------------------------------------------------

def argv_to_values(argv: list[str], help_: Help, where: str) -> dict[str, str]:
    """The rendered llama-server argv (binary first) as preset keys in the spellings used, minus what the
    router sets per child (:data:`ROUTER_SETS`). A flag without a value becomes ``key = true``.

    Raises:
        BadInput: a token that is no option of this build, a flag given twice (a section holds each key
            once), or a value a preset cannot carry (:func:`check_value`).
    """
    values: dict[str, str] = {}
    seen: dict[int, str] = {}
    i = 1
    while i < len(argv):
        tok = argv[i]
        opt = help_.option(tok)
        if opt is None:
            raise BadInput(f"{where}: argv token {tok!r} is not an option of this llama-server; a preset cannot carry it")
        spelled, _, inline = tok.partition("=")
        if takes_value(opt) and not inline:
            if i + 1 >= len(argv):
                raise BadInput(f"{where}: {tok} has no value")
            value, i = argv[i + 1], i + 2
        else:
            value, i = (inline if "=" in tok else "true"), i + 1
        if spelled in ROUTER_SETS:
            continue
        if id(opt) in seen:
            raise BadInput(f"{where}: {spelled} is given twice ({seen[id(opt)]} before); a preset section holds "
                           "each key once", hint="drop the repeated flag from extra_args")
        seen[id(opt)] = spelled
        key = spelled.lstrip("-")
        check_value(key, value, where)
        values[key] = value
    return values


def not_in_section(profile: Profile) -> list[str]:
    """What a profile holds that a preset section cannot say (comment lines for the export)."""
    notes = [f"build: {profile.build.source}/{profile.build.backend} (a preset names no build: run it with that "
             "build's llama-server)"]
    if profile.env:
        notes.append(f"env: {', '.join(sorted(profile.env))} (the router's environment is every child's)")
    if profile.matrix:
        notes.append("matrix: not exported (one section is one launch)")
    notes.append("host/port: set by the router for each child; the model is served under the section name")
    return notes


def profile_section(name: str, argv: list[str], help_: Help) -> Section:
    """The preset section of one rendered profile (``argv`` from :func:`render_argv`, with resolved model paths).

    Raises:
        BadInput: as :func:`argv_to_values`, or a section name llama.cpp would read differently.
    """
    if not name or "]" in name or name != name.strip() or name == GLOBAL:
        raise BadInput(f"section name {name!r} cannot be written in a preset")
    return Section(name, 0, argv_to_values(argv, help_, f"profile {name}"))


def export_ini(items: list[tuple[str, Profile, list[str]]], help_: Help, origin: str,
               extra: list[Section] | None = None) -> str:
    """Preset text for ``(section name, profile, rendered argv)`` items, one section each, with comments
    naming what a section cannot carry (:func:`not_in_section`); ``extra`` sections are appended as given.

    Raises:
        BadInput: as :func:`profile_section`; two items with one section name.
    """
    sections: list[Section] = []
    comments: dict[str, list[str]] = {}
    for name, prof, argv in items:
        if any(s.name == name for s in sections):
            raise BadInput(f"section [{name}] would be written twice")
        sections.append(profile_section(name, argv, help_))
        comments[name] = [f"llamactl profile {name}", *not_in_section(prof)]
    header = [f"llama-server model presets (--models-preset), written by llamactl from {origin}"]
    return render_ini(sections + list(extra or []), None, comments, header)


# --- section -> profile ------------------------------------------------------------------------

@dataclass
class Imported:
    """One section made into a profile: its file name, the profile's data, and notes on what was not kept."""

    name: str
    section: str
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def profile_name(section: str) -> str:
    """A profile file name for a section name (``ggml-org/gemma:Q8_0`` -> ``ggml-org-gemma-Q8_0``)."""
    return _PROFILE_NAME.sub("-", section).strip("-.") or "preset"


def _owners(help_: Help) -> dict[int, str]:
    """id(option) -> the profile key that renders it (``--spec-type`` -> enable_mtp)."""
    return {oid: key for oid, (_opt, key) in owned_options(help_).items()}


def _field_value(key: str, opt: Option, spelled: str, text: str, where: str) -> tuple[str, Any]:
    """(profile key, raw value) for an option a profile key renders; pydantic types the value later."""
    spec = field_flag(key)
    kind = spec.kind if spec else "value"
    if kind in ("onoff", "switch"):
        on = truth(text, where) != negated(opt, spelled)   # the option's positive sense
        own = spec.flags[0] if spec and spec.flags else ""
        return key, on != negated(opt, own)                 # relative to the key's own flag (no_warmup)
    if kind == "mtp":
        if text in MTP_SPEC_TYPES:
            return key, True
        if text == "none":
            return key, False
        raise BadInput(f"{where}: spec-type = {text} has no profile key (enable_mtp renders "
                       f"{'/'.join(MTP_SPEC_TYPES)}); only MTP speculative decoding is a profile setting")
    if kind == "rpc":
        return key, {"workers": [w.strip() for w in text.split(",") if w.strip()]}
    return key, text


def _extra(opt: Option, spelled: str, text: str, where: str) -> list[str]:
    """extra_args for an option no profile key renders, in the spelling used (an env-name key: the long flag)."""
    flag_ = next((n for n in opt.names if n.lstrip("-") == spelled), None)
    if flag_ is None:
        flag_ = next((n for n in opt.names if n.startswith("--")), opt.names[0])
    if takes_value(opt):
        return [flag_, text]
    on = truth(text, where) != negated(opt, flag_)
    positive = next((n for n in opt.names if not negated(opt, n)), flag_)
    negative = next((n for n in opt.names if negated(opt, n)), None)
    if on:
        return [positive]
    if negative is None:
        return []          # llama.cpp skips a false flag that has no negative form (common_preset::to_args)
    return [negative]


def section_to_profile(sec: Section, shared: Section | None, help_: Help, path: str,
                       build: dict[str, str] | None = None) -> Imported:
    """The profile data of one section with ``[*]`` under it (the section's keys win).

    ``alias`` is the section's own ``alias`` key, else the section name (what the router serves it as).
    Text keys (model, alias, kv types, host, api_key, ...) keep the text as written, so ``on``, ``0x1``,
    ``1e3`` or ``08`` stay words; numeric keys are typed by the profile schema.

    Raises:
        BadInput: ``PATH:LINE: [section] key '...'`` for a key this build's --help does not know, a value
            the profile key cannot take, a section without ``model``.
    """
    # each key to its option, [*] first, the section over it (by option: `c` in [*], `ctx-size` in the section)
    merged: dict[Any, tuple[str, str, int, Option | None]] = {}
    for src in ([shared] if shared else []) + [sec]:
        mine: dict[Any, str] = {}
        for key, text in src.values.items():
            n = src.lines[key]
            if key == "version":
                continue
            opt = None if key in PRESET_ONLY else option_for_key(help_, key)
            if opt is None and key not in PRESET_ONLY:
                raise BadInput(f"{path}:{n}: [{src.name}] key '{key}' is not a llama-server option of this build",
                               hint="keys are llama-server's flags without the leading dashes, e.g. ctx-size")
            ident = key if opt is None else id(opt)
            if ident in mine:
                raise BadInput(f"{path}:{n}: [{src.name}] key '{key}' sets the same option as '{mine[ident]}'")
            mine[ident] = key
            merged[ident] = (key, text, n, opt)
    owners = _owners(help_)
    data: dict[str, Any] = {}
    extra: list[str] = []
    notes: list[str] = []
    lines: dict[str, int] = {}
    for key, text, n, opt in merged.values():
        where = f"{path}:{n}: [{sec.name}] {key}"
        if opt is None:
            notes.append(f"{key} = {text} not kept (a router setting of the preset, no profile key)")
            continue
        owner = owners.get(id(opt))
        if owner is None:
            extra += _extra(opt, key, text, where)
            continue
        pkey, value = _field_value(owner, opt, key, text, where)
        if pkey in data:
            raise BadInput(f"{where}: sets profile key '{pkey}' a second time (line {lines[pkey]})")
        data[pkey], lines[pkey] = value, n
    if "model" not in data:
        raise BadInput(f"{path}:{sec.line}: [{sec.name}] has no model key (a profile needs a GGUF path)",
                       hint="add model = /path/to/model.gguf")
    data.setdefault("alias", sec.name)
    if "metrics" not in data:
        data["metrics"] = False        # llama-server's default; the profile schema's is true
    if "parallel" not in data:
        notes.append("parallel not set: llama-server picks the slot count (-1, auto); the profile says 1")
    data = {"description": f"imported from [{sec.name}] of {Path(path).name}", **({"build": build} if build else {}),
            **data}
    if extra:
        data["extra_args"] = extra
    try:
        prof = Profile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        k = str(err["loc"][0]) if err["loc"] else "?"
        at = f"{path}:{lines.get(k, sec.line)}: [{sec.name}]"
        raise BadInput(f"{at} profile key '{k}': {err['msg'].removeprefix('Value error, ')}") from exc
    dumped = prof.model_dump(mode="json")
    # a value the schema kept as text stays exactly as written ("08", "1e3", "on"); others as typed
    out = {k: data[k] if isinstance(data[k], str) and isinstance(dumped[k], str) else dumped[k] for k in data}
    return Imported(profile_name(sec.name), sec.name, out, notes)


def import_preset(text: str, path: str, help_: Help, build: dict[str, str] | None = None) -> list[Imported]:
    """Every section of a preset as profile data (:func:`section_to_profile`), ``[*]`` applied to each.

    Raises:
        BadInput: as :func:`parse_ini` and :func:`section_to_profile`; no sections; two sections that make
            the same profile name.
    """
    preset = parse_ini(text, path)
    if not preset.sections:
        raise BadInput(f"{path}: no model sections (only [*] or nothing)")
    out = [section_to_profile(s, preset.shared, help_, path, build) for s in preset.sections]
    names: dict[str, str] = {}
    for imp in out:
        if imp.name in names:
            raise BadInput(f"{path}: sections [{names[imp.name]}] and [{imp.section}] both make profile {imp.name!r}")
        names[imp.name] = imp.section
    return out


def _yaml_scalar(v: Any) -> str:
    """A YAML scalar that reads back as exactly ``v``: strings always double-quoted (JSON strings are YAML)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return json.dumps(v)
    return json.dumps(str(v), ensure_ascii=False)


def profile_yaml(imp: Imported, source: str) -> str:
    """The YAML text of an imported profile, strings quoted so that YAML never retypes them."""
    out = ["# yaml-language-server: $schema=profile.schema.json",
           f"# imported from [{imp.section}] of {source} by `llamactl profile import`"]
    out += [f"# note: {n}" for n in imp.notes]
    for k, v in imp.data.items():
        if isinstance(v, dict):
            out.append(f"{k}:")
            for sk, sv in v.items():
                inner = "[" + ", ".join(_yaml_scalar(x) for x in sv) + "]" if isinstance(sv, list) else _yaml_scalar(sv)
                out.append(f"  {sk}: {inner}")
        elif isinstance(v, list):
            out.append(f"{k}: [" + ", ".join(_yaml_scalar(x) for x in v) + "]")
        else:
            out.append(f"{k}: {_yaml_scalar(v)}")
    return "\n".join(out) + "\n"
