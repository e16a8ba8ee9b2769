"""Render the exact CMake configure and build commands for a backend (pure; golden-tested)."""

from __future__ import annotations

import platform
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from llamactl.core.errors import LlamactlError
from llamactl.build.toolchain import BACKENDS

# Options every build gets: Release, Ninja, only what llama-server needs, nothing downloaded.
COMMON_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_WEBUI=OFF",
    "-DGGML_CCACHE=OFF",
    "-DGGML_RPC=ON",
]

# Built next to llama-server in every build: the GGUF splitter and the RPC worker.
# The worker's target is `ggml-rpc-server` in current upstream trees, `rpc-server` in older ones.
TOOL_TARGETS = ["llama-gguf-split"]
RPC_TARGETS = ("ggml-rpc-server", "rpc-server")


def rpc_target(source_dir: Path) -> str | None:
    """The RPC worker's CMake target in the tree at ``source_dir`` (from tools/rpc or examples/rpc), or None."""
    for sub in ("tools/rpc", "examples/rpc"):
        cm = source_dir / sub / "CMakeLists.txt"
        if cm.is_file():
            text = cm.read_text(errors="replace")
            for t in RPC_TARGETS:
                if re.search(rf"set\(TARGET\s+{re.escape(t)}\)", text):
                    return t
    return None

# CPU builds use a portable x86-64-v3 baseline instead of -march=native: native builds
# pick up AMX on Sapphire Rapids, and ggml's AMX matmul segfaults in VMs that do not
# grant AMX tile state (seen on this project's machines with Q4_K models).
CPU_X86_BASELINE = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON"]
CPU_OPTIONS = CPU_X86_BASELINE if platform.machine() in ("x86_64", "AMD64") else ["-DGGML_NATIVE=ON"]

BACKEND_OPTIONS: dict[str, list[str]] = {
    "cpu": CPU_OPTIONS,
    "hip": ["-DGGML_HIP=ON", "-DGGML_HIP_ROCWMMA_FATTN=ON"],
    "cuda": ["-DGGML_CUDA=ON"],
    "vulkan": ["-DGGML_VULKAN=ON"],
}

PLACEHOLDER_TARGETS = {"hip": "<gfx target: pass --gpu-targets or install rocminfo>", "cuda": "native"}


@dataclass
class CMakePlan:
    backend: str
    source_dir: Path
    build_dir: Path
    configure: list[str]
    build: list[str]
    env: dict[str, str] = field(default_factory=dict)
    target: str = "llama-server"
    extra_targets: list[str] = field(default_factory=list)

    def shell_lines(self) -> list[str]:
        """The commands as a person would paste them (display only; never executed via a shell)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        conf = " ".join(shlex.quote(a) for a in self.configure)
        return [f"{env} {conf}".strip(), " ".join(shlex.quote(a) for a in self.build)]


def plan(
    backend: str,
    source_dir: Path,
    build_dir: Path,
    *,
    target: str = "llama-server",
    extra_targets: list[str] | None = None,
    jobs: int = 2,
    gpu_targets: str | None = None,
    extra_options: list[str] | None = None,
    env: dict[str, str] | None = None,
    ccache: bool = False,
) -> CMakePlan:
    if backend not in BACKENDS:
        raise LlamactlError(f"unknown backend {backend!r}", hint=f"one of {', '.join(BACKENDS)}")
    opts = ["cmake", "-S", str(source_dir), "-B", str(build_dir), "-G", "Ninja", *COMMON_OPTIONS, *BACKEND_OPTIONS[backend]]
    if backend == "hip":
        targets = gpu_targets or PLACEHOLDER_TARGETS["hip"]
        # newer trees read GPU_TARGETS, older ones (the fork's base) AMDGPU_TARGETS
        opts += [f"-DGPU_TARGETS={targets}", f"-DAMDGPU_TARGETS={targets}"]
        if env is None:
            env = {"HIPCXX": "$(hipconfig -l)/clang", "HIP_PATH": "$(hipconfig -R)"}
    elif backend == "cuda":
        opts.append(f"-DCMAKE_CUDA_ARCHITECTURES={gpu_targets or PLACEHOLDER_TARGETS['cuda']}")
    if ccache:
        opts += ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
        if backend == "cuda":
            opts.append("-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache")
    opts += list(extra_options or [])
    extra = list(extra_targets or [])
    build = ["cmake", "--build", str(build_dir), "--target", target, *extra, "-j", str(jobs)]
    return CMakePlan(backend, source_dir, build_dir, opts, build, dict(env or {}), target, extra)
