"""Golden command lines for every backend (the exact CMake invocations)."""

from pathlib import Path

import pytest

from llamactl.build import cmake
from llamactl.core.errors import LlamactlError, ToolchainMissing
from llamactl.build.toolchain import Toolchain

S, B = Path("/c/src"), Path("/c/build")
COMMON = " ".join(cmake.COMMON_OPTIONS)


def line(plan: cmake.CMakePlan) -> str:
    return " ".join(plan.configure)


def test_hip_rocwmma_golden():
    p = cmake.plan("hip", S, B, gpu_targets="gfx1100", jobs=16,
                   env={"HIPCXX": "/opt/rocm/llvm/bin/clang", "HIP_PATH": "/opt/rocm"})
    assert line(p) == (f"cmake -S /c/src -B /c/build -G Ninja {COMMON} -DGGML_HIP=ON -DGGML_HIP_ROCWMMA_FATTN=ON "
                       "-DGPU_TARGETS=gfx1100 -DAMDGPU_TARGETS=gfx1100")
    assert p.build == ["cmake", "--build", "/c/build", "--target", "llama-server", "-j", "16"]
    assert p.shell_lines()[0].startswith("HIPCXX=/opt/rocm/llvm/bin/clang HIP_PATH=/opt/rocm cmake -S")


def test_hip_without_toolchain_shows_how_env_is_derived():
    p = cmake.plan("hip", S, B)
    assert p.env == {"HIPCXX": "$(hipconfig -l)/clang", "HIP_PATH": "$(hipconfig -R)"}
    assert "-DGPU_TARGETS=<gfx target" in line(p)


def test_cuda_golden():
    p = cmake.plan("cuda", S, B, gpu_targets="89", ccache=True)
    assert line(p) == (f"cmake -S /c/src -B /c/build -G Ninja {COMMON} -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=89 "
                       "-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache")


def test_vulkan_golden():
    assert line(cmake.plan("vulkan", S, B)) == f"cmake -S /c/src -B /c/build -G Ninja {COMMON} -DGGML_VULKAN=ON"


def test_cpu_golden():
    p = cmake.plan("cpu", S, B, extra_options=["-DGGML_OPENMP=OFF"])
    assert line(p) == f"cmake -S /c/src -B /c/build -G Ninja {COMMON} {' '.join(cmake.CPU_OPTIONS)} -DGGML_OPENMP=OFF"
    assert "-DCMAKE_BUILD_TYPE=Release" in p.configure and "-DLLAMA_USE_PREBUILT_UI=OFF" in p.configure


def test_unknown_backend():
    with pytest.raises(LlamactlError, match="unknown backend"):
        cmake.plan("metal", S, B)


@pytest.mark.parametrize("missing,needle", [
    (["hipconfig"], "hip build needs hipconfig: install ROCm"),
    (["rocwmma"], "rocwmma-dev"),
    (["nvcc"], "cuda-toolkit"),
    (["glslc"], "apt-get install glslc"),
    (["cmake", "ninja"], "install cmake"),
])
def test_missing_toolchain_is_one_clear_line(missing, needle):
    tc = Toolchain(backend="hip" if missing[0] in ("hipconfig", "rocwmma") else "x", missing=missing)
    with pytest.raises(ToolchainMissing) as exc:
        tc.require()
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_every_build_has_rpc_and_the_tools(tmp_path):
    p = cmake.plan("cpu", S, B, extra_targets=["llama-gguf-split", "ggml-rpc-server"], jobs=2)
    assert "-DGGML_RPC=ON" in p.configure
    assert p.build == ["cmake", "--build", "/c/build", "--target", "llama-server", "llama-gguf-split", "ggml-rpc-server", "-j", "2"]


def test_rpc_target_is_read_from_the_tree(tmp_path):
    assert cmake.rpc_target(tmp_path) is None
    (tmp_path / "tools/rpc").mkdir(parents=True)
    (tmp_path / "tools/rpc/CMakeLists.txt").write_text("set(TARGET ggml-rpc-server)\nadd_executable(${TARGET} rpc-server.cpp)\n")
    assert cmake.rpc_target(tmp_path) == "ggml-rpc-server"
    (tmp_path / "tools/rpc/CMakeLists.txt").write_text("set(TARGET rpc-server)\n")
    assert cmake.rpc_target(tmp_path) == "rpc-server"
