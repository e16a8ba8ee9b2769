"""What a run ran on: the machine fingerprint and the build identity.

Two bench runs are comparable only on the same machine; a trend is plotted across builds.
The machine fingerprint holds what changes speed (CPU model, cores, memory, OS, GPUs), not
what changes every boot (kernel build, hostname, load). The build identity is the build
manifest's key material: source, commit, patch hashes, backend, toolchain and CMake options.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from llamactl.core.hashing import stable_key


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> int | None:
    """Physical memory in GiB, rounded (a VM's odd few MiB do not make another machine)."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    except (ValueError, OSError, AttributeError):
        return None


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}"


def _capture(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return ""
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return cp.stdout if cp.returncode == 0 else ""


def _gpus() -> list[str]:
    """GPU names from nvidia-smi and gfx targets from rocminfo; [] on a CPU-only machine."""
    out = [ln.strip() for ln in _capture(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]).splitlines() if ln.strip()]
    out += sorted(set(re.findall(r"^\s*Name:\s+(gfx[0-9a-f]+)\s*$", _capture(["rocminfo"]), re.M)))
    return out


@functools.lru_cache(maxsize=1)
def machine() -> dict[str, Any]:
    """This machine's fingerprint: cpu, cores, memory_gib, os, arch, gpus, and its ``id`` (a hash of the rest)."""
    m: dict[str, Any] = {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": _memory_gib(),
                         "os": _os_name(), "arch": platform.machine(), "gpus": _gpus()}
    m["id"] = machine_id(m)
    return m


def machine_id(m: dict[str, Any]) -> str:
    """A short stable hash of a fingerprint (its ``id`` field and the hostname play no part)."""
    return stable_key({k: v for k, v in m.items() if k != "id"}, 12)


def manifest_for_binary(binary: str | Path | None) -> dict | None:
    """The build manifest next to a llamactl-built binary (``<build_root>/build/bin/X``), else None."""
    if not binary:
        return None
    root = Path(binary).parent.parent.parent
    try:
        return json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def build_identity(manifest: dict | None, binary: str | None = None, version: str | None = None) -> dict[str, Any]:
    """What identifies a build in the history: ``key`` plus source, commit, patches, backend, toolchain, options.

    Without a manifest (a ``server_binary`` llamactl did not build), the key hashes the binary's
    path and ``--version`` text.
    """
    if not manifest:
        return {"key": "binary-" + stable_key([binary, version], 12), "source": "server_binary",
                "binary": binary, "version": (version or "").splitlines()[0] if version else None}
    src = manifest.get("source") or {}
    material = manifest.get("key_material") or {}
    return {
        "key": manifest.get("key") or stable_key(material),
        "source": src.get("source"),
        "kind": src.get("kind"),
        "version": src.get("version"),
        "commit": src.get("upstream_commit") or src.get("version"),
        "series": src.get("series") if manifest.get("patches") else None,
        "patches": [p.get("sha256", "")[:12] + " " + p.get("name", "") for p in manifest.get("patches") or []],
        "local_changes": manifest.get("local_changes"),
        "backend": manifest.get("backend"),
        "gpu_targets": manifest.get("gpu_targets"),
        "toolchain": material.get("compilers") or {k: v for k, v in (manifest.get("toolchain") or {}).items() if v},
        "options": material.get("cmake_options") or [],
        "built_at": manifest.get("built_at"),
    }


def build_label(build: dict[str, Any] | None) -> str:
    """A short human label: ``upstream@0c1e57098+1 patch cpu [key]``."""
    if not build:
        return "?"
    if build.get("source") == "server_binary":
        return f"binary {build.get('binary')} [{build.get('key', '')[-6:]}]"
    n = len(build.get("patches") or [])
    patches = f"+{n} patch{'es' if n != 1 else ''}" if n else " no patches"
    return f"{build.get('source')}@{str(build.get('commit') or '?')[:10]}{patches} {build.get('backend')} [{str(build.get('key', ''))[:8]}]"


def backend_devices(binary: str | Path | None, timeout: float = 20.0) -> list[str]:
    """The devices ``llama-server --list-devices`` names (e.g. ``Vulkan0: llvmpipe (2048 MiB, ...)``); [] if none or unknown."""
    if not binary or not Path(binary).is_file():
        return []
    try:
        cp = subprocess.run([str(binary), "--list-devices"], capture_output=True, text=True, errors="replace",
                            timeout=timeout, stdin=subprocess.DEVNULL, start_new_session=True)
    except (OSError, subprocess.TimeoutExpired):
        return []
    lines = (cp.stdout + "\n" + cp.stderr).splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip().lower().startswith("available devices"))
    except StopIteration:
        return []
    out = []
    for ln in lines[start + 1:]:
        if not ln.startswith((" ", "\t")) or not ln.strip():
            break
        if ln.strip() != "(none)":    # a CPU-only build lists no device
            out.append(ln.strip())
    return out


def run_fingerprint(binary: str | None, version: str | None = None) -> dict[str, Any]:
    """What a report carries about where it ran: host name, CPU, cores, memory, OS, GPUs, backend devices,
    toolchain versions and the build key (for ``report merge`` across machines)."""
    import socket

    manifest = manifest_for_binary(binary)
    build = build_identity(manifest, binary, version)
    return {**machine(), "host": socket.gethostname(), "devices": backend_devices(binary),
            "toolchain": {k: v for k, v in ((manifest or {}).get("toolchain") or {}).items() if v},
            "build_key": build.get("key"), "build": build_label(build)}
