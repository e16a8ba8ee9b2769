"""Detect the tools each backend needs; name exactly what is missing."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from llamactl.core import proc
from llamactl.core.errors import LlamactlError, ToolchainMissing

BACKENDS = ("cpu", "hip", "cuda", "vulkan")

# tool -> what to install (Debian/Ubuntu package names, or the vendor toolkit)
INSTALL_HINTS = {
    "cmake": "cmake (apt-get install cmake, or pip install cmake)",
    "ninja": "ninja (apt-get install ninja-build, or pip install ninja)",
    "c++": "a C++ compiler (apt-get install g++)",
    "hipconfig": "ROCm with HIP (hipconfig, hipcc: the rocm-hip-sdk package from AMD's ROCm repository)",
    "rocwmma": "rocWMMA headers (the rocwmma-dev package of ROCm)",
    "nvcc": "the CUDA toolkit (nvcc: cuda-toolkit from NVIDIA)",
    "cublas": "cuBLAS, which ggml-cuda links (cublas_v2.h and libcublas: cuda-toolkit from NVIDIA, or apt-get install nvidia-cuda-toolkit)",
    "glslc": "glslc, the Vulkan shader compiler (apt-get install glslc libvulkan-dev spirv-headers)",
    "vulkan-headers": "the Vulkan headers and loader (apt-get install libvulkan-dev)",
    "spirv-headers": "SPIRV-Headers, which ggml-vulkan's CMake looks for (apt-get install spirv-headers)",
}

# Where SPIRV-Headers' CMake package and the Vulkan headers live on Debian/Ubuntu (or under $VULKAN_SDK).
_SPIRV_CONFIG = ("share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake", "lib/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake",
                 "share/SPIRV-Headers/cmake/SPIRV-HeadersConfig.cmake")
_HEADER_VERSION = re.compile(r"^#define\s+VK_HEADER_VERSION\s+(\d+)", re.M)


@dataclass
class Toolchain:
    backend: str
    tools: dict[str, str | None] = field(default_factory=dict)  # name -> version line or None
    env: dict[str, str] = field(default_factory=dict)            # env the configure step needs
    gpu_targets: str | None = None
    missing: list[str] = field(default_factory=list)

    def require(self) -> None:
        if self.missing:
            first = self.missing[0]
            more = f" (also missing: {', '.join(self.missing[1:])})" if len(self.missing) > 1 else ""
            raise ToolchainMissing(f"{self.backend} build needs {first}: install {INSTALL_HINTS.get(first, first)}{more}")


def compiler_ids() -> dict[str, str | None]:
    cc = os.environ.get("CC", "cc")
    cxx = os.environ.get("CXX", "c++")
    return {"cc": proc.first_line([cc, "--version"]), "c++": proc.first_line([cxx, "--version"])}


def detect(backend: str, gpu_targets: str | None = None) -> Toolchain:
    tc = Toolchain(backend=backend)
    tc.tools["cmake"] = proc.first_line(["cmake", "--version"])
    tc.tools["ninja"] = proc.first_line(["ninja", "--version"])
    tc.tools.update(compiler_ids())
    tc.tools["ccache"] = proc.first_line(["ccache", "--version"])
    for req in ("cmake", "ninja", "c++"):
        if tc.tools.get(req) is None:
            tc.missing.append(req)
    if backend == "hip":
        _detect_hip(tc, gpu_targets)
    elif backend == "cuda":
        tc.tools["nvcc"] = _nvcc_version()
        if tc.tools["nvcc"] is None:
            tc.missing.append("nvcc")
        else:
            tc.tools["cublas"] = cuda_header("cublas_v2.h")
            if tc.tools["cublas"] is None:
                tc.missing.append("cublas")
        tc.gpu_targets = gpu_targets or _cuda_arch()
    elif backend == "vulkan":
        _detect_vulkan(tc)
    return tc


def _prefixes() -> list[Path]:
    sdk = os.environ.get("VULKAN_SDK")
    return [*([Path(sdk)] if sdk else []), Path("/usr"), Path("/usr/local")]


def vulkan_header_version(prefixes: list[Path] | None = None) -> int | None:
    """VK_HEADER_VERSION of the first vulkan_core.h found (Debian 12: 239), or None without the headers."""
    for pre in prefixes or _prefixes():
        h = pre / "include" / "vulkan" / "vulkan_core.h"
        if h.is_file():
            m = _HEADER_VERSION.search(h.read_text(errors="replace"))
            if m:
                return int(m.group(1))
    return None


def _detect_vulkan(tc: Toolchain) -> None:
    tc.tools["glslc"] = proc.first_line(["glslc", "--version"])
    if tc.tools["glslc"] is None:
        tc.missing.append("glslc")
    version = vulkan_header_version()
    tc.tools["vulkan-headers"] = f"VK_HEADER_VERSION {version}" if version is not None else None
    if version is None:
        tc.missing.append("vulkan-headers")
    spirv = next((str(pre / rel) for pre in _prefixes() for rel in _SPIRV_CONFIG if (pre / rel).is_file()), None)
    tc.tools["spirv-headers"] = spirv
    if spirv is None:
        tc.missing.append("spirv-headers")


def _detect_hip(tc: Toolchain, gpu_targets: str | None) -> None:
    tc.tools["hipconfig"] = proc.first_line(["hipconfig", "--version"])
    if tc.tools["hipconfig"] is None:
        tc.missing.append("hipconfig")
        tc.gpu_targets = gpu_targets
        return
    clang_dir = proc.run(["hipconfig", "-l"], check=False).stdout.strip()
    rocm = proc.run(["hipconfig", "-R"], check=False).stdout.strip()
    tc.env = {"HIPCXX": f"{clang_dir}/clang", "HIP_PATH": rocm}
    if not (Path(rocm) / "include" / "rocwmma" / "rocwmma.hpp").exists():
        tc.missing.append("rocwmma")
    tc.gpu_targets = gpu_targets or detect_amdgpu_targets()


def detect_amdgpu_targets() -> str | None:
    """gfx targets of the GPUs present, from amdgpu-arch or rocminfo."""
    if proc.which("amdgpu-arch"):
        out = proc.run(["amdgpu-arch"], check=False).stdout
        found = sorted(set(re.findall(r"gfx[0-9a-f]+", out)))
        if found:
            return ";".join(found)
    if proc.which("rocminfo"):
        out = proc.run(["rocminfo"], check=False).stdout
        found = sorted(set(t for t in re.findall(r"\bgfx[0-9a-f]+\b", out) if t != "gfx000"))
        if found:
            return ";".join(found)
    return None


def _nvcc_version() -> str | None:
    if proc.which("nvcc") is None:
        return None
    out = proc.run(["nvcc", "--version"], check=False).stdout
    m = re.search(r"release [\d.]+, V[\d.]+", out)
    if m:
        return m.group(0)
    lines = out.strip().splitlines()
    return lines[-1] if lines else None


def cuda_header(name: str, roots: list[Path] | None = None) -> str | None:
    """Path of a CUDA toolkit header (e.g. cublas_v2.h) under $CUDA_PATH, $CUDA_HOME, /usr/local/cuda or /usr."""
    if roots is None:
        env = [os.environ[v] for v in ("CUDA_PATH", "CUDA_HOME") if os.environ.get(v)]
        roots = [Path(p) for p in (*env, "/usr/local/cuda", "/opt/cuda", "/usr")]
    for root in roots:
        for inc in (root / "include", *sorted(root.glob("targets/*/include"))):
            if (inc / name).is_file():
                return str(inc / name)
    return None


def _cuda_arch() -> str | None:
    if proc.which("nvidia-smi") is None:
        return None
    out = proc.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], check=False).stdout
    caps = sorted(set(c.strip().replace(".", "") for c in out.splitlines() if c.strip()))
    return ";".join(caps) or None


BACKEND_TOOLS = {"cuda": ["nvcc"], "vulkan": ["glslc"], "hip": ["hipconfig"]}


def preflight(backend: str, gpu_targets: str | None = None) -> None:
    """Checks that run before anything is vendored, patched or copied.

    Cheap PATH lookups for every backend (no tool is run); for hip also the ROCm layout
    (rocWMMA headers) and a GPU target. Raises ToolchainMissing naming what to install, or
    LlamactlError for an unknown backend or a hip build without a GPU target.
    """
    if backend not in BACKENDS:
        raise LlamactlError(f"unknown backend {backend!r}", hint=f"one of {', '.join(BACKENDS)}")
    cxx = (os.environ.get("CXX") or "c++").split()[0]
    needed = {"cmake": "cmake", "ninja": "ninja", "c++": cxx}
    needed.update({t: t for t in BACKEND_TOOLS.get(backend, [])})
    missing = [name for name, exe in needed.items() if proc.which(exe) is None]
    if missing:
        Toolchain(backend=backend, missing=missing).require()
    if backend == "hip":
        tc = detect(backend, gpu_targets)
        tc.require()
        if not tc.gpu_targets:
            raise LlamactlError("no AMD GPU target detected", hint="pass --gpu-targets gfx1100 (or set it in the profile)")
