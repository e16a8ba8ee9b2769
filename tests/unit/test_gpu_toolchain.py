"""GPU toolchain detection: Vulkan (glslc, headers and their version, SPIRV-Headers), CUDA (nvcc, cuBLAS)."""

import pytest

from llamactl.build import toolchain
from llamactl.core import proc
from llamactl.core.errors import ToolchainMissing


def test_header_version_is_read_from_vulkan_core_h(tmp_path):
    (tmp_path / "include" / "vulkan").mkdir(parents=True)
    (tmp_path / "include" / "vulkan" / "vulkan_core.h").write_text("#define VK_HEADER_VERSION 239\n")
    assert toolchain.vulkan_header_version([tmp_path]) == 239
    assert toolchain.vulkan_header_version([tmp_path / "none"]) is None


def test_missing_vulkan_tools_are_named(monkeypatch, tmp_path):
    monkeypatch.setattr(toolchain, "_prefixes", lambda: [tmp_path])
    real = proc.first_line
    monkeypatch.setattr(toolchain.proc, "first_line", lambda argv: None if argv[0] == "glslc" else real(argv))
    tc = toolchain.detect("vulkan")
    assert tc.missing[-3:] == ["glslc", "vulkan-headers", "spirv-headers"]
    with pytest.raises(ToolchainMissing) as exc:
        tc.require()
    msg = str(exc.value)
    assert "\n" not in msg
    if tc.missing[0] == "glslc":
        assert msg.startswith("vulkan build needs glslc: install glslc, the Vulkan shader compiler (apt-get install glslc")
        assert "also missing: vulkan-headers, spirv-headers" in msg


def test_found_when_installed(monkeypatch, tmp_path):
    (tmp_path / "include" / "vulkan").mkdir(parents=True)
    (tmp_path / "include" / "vulkan" / "vulkan_core.h").write_text("#define VK_HEADER_VERSION 290\n")
    cfg = tmp_path / "share" / "cmake" / "SPIRV-Headers" / "SPIRV-HeadersConfig.cmake"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("")
    monkeypatch.setattr(toolchain, "_prefixes", lambda: [tmp_path])
    real = proc.first_line
    monkeypatch.setattr(toolchain.proc, "first_line", lambda argv: "shaderc 2023.2" if argv[0] == "glslc" else real(argv))
    tc = toolchain.detect("vulkan")
    assert tc.tools["vulkan-headers"] == "VK_HEADER_VERSION 290" and tc.tools["spirv-headers"] == str(cfg)
    assert not {"glslc", "vulkan-headers", "spirv-headers"} & set(tc.missing)


def test_cuda_without_cublas_is_named(monkeypatch, tmp_path):
    # nvcc alone (pip's nvidia-cuda-nvcc) is not a CUDA toolkit ggml-cuda can link
    monkeypatch.setattr(toolchain, "_nvcc_version", lambda: "release 13.0, V13.0.88")
    monkeypatch.setattr(toolchain, "cuda_header", lambda name, roots=None: None)
    tc = toolchain.detect("cuda", gpu_targets="89")
    assert "cublas" in tc.missing and tc.gpu_targets == "89"
    with pytest.raises(ToolchainMissing, match="cuda build needs cublas: install cuBLAS") as exc:
        toolchain.Toolchain(backend="cuda", missing=["cublas"]).require()
    assert "\n" not in str(exc.value)


def test_cuda_header_search(tmp_path):
    (tmp_path / "targets" / "x86_64-linux" / "include").mkdir(parents=True)
    h = tmp_path / "targets" / "x86_64-linux" / "include" / "cublas_v2.h"
    h.write_text("")
    assert toolchain.cuda_header("cublas_v2.h", [tmp_path / "none", tmp_path]) == str(h)
    assert toolchain.cuda_header("cublas_v2.h", [tmp_path / "none"]) is None


def test_cmake_error_message_on_the_next_line(tmp_path):
    from llamactl.build.builder import first_error
    log = tmp_path / "build.log"
    log.write_text("-- Configuring done\nCMake Error in ggml/src/ggml-cuda/CMakeLists.txt:\n"
                   "  CUDA_ARCHITECTURES is set to \"native\", but no GPU was detected.\n\n")
    assert first_error(log) == ('CMake Error in ggml/src/ggml-cuda/CMakeLists.txt: '
                                'CUDA_ARCHITECTURES is set to "native", but no GPU was detected.')
