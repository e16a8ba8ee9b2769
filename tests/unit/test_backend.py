"""Backend truth from llama-server logs: devices, buffers, offloaded layers, and the expect_* verdict."""

from pathlib import Path

import pytest

from llamactl.core.errors import LlamactlError
from llamactl.judge import backend
from llamactl.judge.status import Status
from llamactl.serve.profiles import Profile, resolve

LOGS = Path(__file__).parent.parent / "fixtures" / "logs"


def parse(name: str) -> backend.BackendInfo:
    return backend.parse_log((LOGS / name).read_text())


@pytest.mark.parametrize("name,expected", [
    ("CPU_Mapped", "cpu"), ("CPU", "cpu"), ("CPU_REPACK", "cpu"), ("CUDA0", "cuda"), ("CUDA_Host", "cuda"),
    ("ROCm0", "hip"), ("ROCm_Host", "hip"), ("Vulkan0", "vulkan"), ("Vulkan_Host", "vulkan"),
    ("RPC0[127.0.0.1:50052]", "rpc"), ("RPC[10.0.0.2:50052]", "rpc"), ("MTL0", "metal"), ("SYCL0", "sycl"),
])
def test_backend_of_ggml_names(name, expected):
    assert backend.backend_of(name) == expected


def test_captured_cpu_log_main_and_drafter():
    info = parse("upstream-cpu-mtp-lv4.log")   # real: upstream CPU build, -lv 4, tiny Gemma 4 + echo drafter
    assert [d.name for d in info.devices] == ["CPU"]
    assert info.devices[0].total_mib == 24105
    assert [m.role for m in info.models] == ["main", "draft"]
    assert info.main.weights_mib == {"CPU_Mapped": 1.87}
    assert info.draft.weights_mib == {"CPU_Mapped": 0.6}
    assert info.main.offloaded is None and info.main.backend == "cpu"
    kinds = {(b.name, b.kind) for b in info.main.buffers}
    assert ("CPU", "KV") in kinds and ("CPU", "compute") in kinds
    assert info.summary() == "cpu, draft cpu"
    assert backend.verdict(info, "cpu", None) is None


def test_cpu_log_expected_hip_fails_with_what_was_used():
    info = parse("upstream-cpu-mtp-lv4.log")
    why = backend.verdict(info, "hip", "all")
    assert "main model on cpu, expected hip" in why and "CPU_Mapped 1.87 MiB" in why
    assert "no 'offloaded N/M layers' line" in why


def test_cuda_full_offload():
    info = parse("cuda-gemma4-mtp-lv4.log")
    assert [d.name for d in info.devices] == ["CUDA0", "CPU"]
    assert info.devices[0].description == "NVIDIA RTX PRO 6000 Blackwell Workstation Edition"
    assert info.main.devices == ["CUDA0"] and info.draft.devices == ["CUDA0"]
    assert (info.main.offloaded, info.main.layers) == (31, 31)
    assert (info.draft.offloaded, info.draft.layers) == (5, 5)
    assert info.main.backend == "cuda"        # token embeddings stay in CPU_Mapped; the weights are on CUDA0
    assert info.summary() == "cuda 31/31, draft cuda 5/5"
    assert backend.verdict(info, "cuda", "all") is None
    assert backend.verdict(info, "cuda", 31) is None
    assert backend.verdict(info, "hip", None) == (
        "main model on cuda, expected hip (weights: CPU_Mapped 738.00 MiB, CUDA0 15240.17 MiB, offloaded 31/31 layers); "
        "draft model on cuda, expected hip (weights: CPU_Mapped 738.00 MiB, CUDA0 402.51 MiB, offloaded 5/5 layers)")


def test_hip_silent_cpu_fallback_fails():
    info = parse("hip-cpu-fallback.log")
    assert info.main.backend == "cpu"
    assert backend.verdict(info, "hip", None) == "main model on cpu, expected hip (weights: CPU_Mapped 15978.17 MiB)"


def test_hip_partial_offload_names_both_numbers():
    info = parse("hip-partial-offload.log")
    assert info.main.backend == "hip" and info.devices[0].name == "ROCm0"
    assert backend.verdict(info, "hip", None) is None
    assert backend.verdict(info, "hip", "all") == "main model offloaded 20/31 layers, expected all 31"
    assert backend.verdict(info, "hip", 20) is None
    assert backend.verdict(info, "hip", 25) == "main model offloaded 20/31 layers, expected at least 25"


def test_legacy_format_and_rpc():
    info = parse("legacy-rpc.log")
    assert len(info.models) == 1
    m = info.main
    assert m.devices == ["RPC[192.168.1.20:50052]", "CUDA0"]
    assert m.weights_mib == {"RPC[192.168.1.20:50052]": 3000.0, "CUDA0": 1200.0, "CPU_Mapped": 281.81}
    assert m.backend == "rpc" and (m.offloaded, m.layers) == (33, 33)
    assert backend.verdict(info, "rpc", "all") is None
    assert "main model on rpc, expected cuda" in backend.verdict(info, "cuda", None)


def test_default_verbosity_log_has_no_evidence():
    text = ("0.00.006.753 I srv    load_model: loading model 'x.gguf'\n"
            "0.01.567.482 I srv  llama_server: model loaded\n")
    info = backend.parse_log(text)
    assert info.models == [] and info.summary() == "-"
    assert "no backend evidence" in backend.verdict(info, "cpu", None)
    assert backend.verdict(info, None, None) is None     # nothing expected: record only


def test_list_devices_output():
    out = ("Available devices:\n"
           "  Vulkan0: llvmpipe (LLVM 15.0.6, 256 bits) (2048 MiB, 2048 MiB free)\n"
           "  CUDA0: NVIDIA GeForce RTX 4090 (24080 MiB, 23609 MiB free)\n")
    devs = backend.parse_list_devices(out)
    assert [(d.name, d.backend, d.description, d.total_mib) for d in devs] == [
        ("Vulkan0", "vulkan", "llvmpipe (LLVM 15.0.6, 256 bits)", 2048), ("CUDA0", "cuda", "NVIDIA GeForce RTX 4090", 24080)]
    assert backend.parse_list_devices("Available devices:\n  (none)\n") == []


def test_check_records_data_on_pass_and_fail(tmp_path):
    log = tmp_path / "cell.log"
    log.write_text((LOGS / "hip-partial-offload.log").read_text())
    ok = backend.check(log, "hip", None)
    assert ok.status == Status.PASS and ok.detail == "hip 20/31, draft hip 5/5"
    bad = backend.check(log, "hip", "all")
    assert bad.status == Status.FAIL and "20/31" in bad.detail
    assert bad.data["models"][0]["offloaded"] == 20 and bad.data["backend"] == "hip"
    died = backend.check(log, "hip", "all", alive=False)
    assert died.status == Status.SKIP and died.detail == "server died" and died.data["backend"] == "hip"
    assert backend.check(tmp_path / "missing.log", "cpu", None).status == Status.SKIP
    assert backend.check(None, "cpu", None).status == Status.SKIP
    quiet = tmp_path / "quiet.log"
    quiet.write_text("0.01.567.482 I srv  llama_server: model loaded\n")
    assert backend.check(quiet, "cpu", None).status == Status.ERROR          # cannot judge without the lines
    assert backend.check(quiet, None, None).status == Status.PASS            # nothing expected: recorded only


def test_profile_expectations_schema():
    p = Profile(model="m", expect_backend="vulkan", expect_offload="all")
    assert p.log_verbosity == 4                       # the evidence lines need -lv 4 upstream
    assert Profile(model="m", expect_offload=3, log_verbosity=5).log_verbosity == 5
    assert Profile(model="m").log_verbosity is None
    with pytest.raises(ValueError, match="expect_backend"):
        Profile(model="m", expect_backend="metal")
    with pytest.raises(ValueError, match="expect_offload"):
        Profile(model="m", expect_offload=-1)
    with pytest.raises(ValueError, match="expect_offload"):
        Profile(model="m", expect_offload="most")


def test_bad_expectation_in_a_profile_file_is_one_line(tmp_path):
    (tmp_path / "p.yaml").write_text("model: m\nexpect_backend: metal\n")
    with pytest.raises(LlamactlError) as exc:
        resolve("p", environ={}, root=tmp_path)
    assert "expect_backend" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("name,backend_,offload", [
    ("default", "cpu", None), ("tiny-gemma4-mtp", "cpu", None),
    ("gemma4-26b-a4b-mtp", "hip", "all"), ("tiny-gemma4-mtp-vulkan", "vulkan", "all"),
])
def test_shipped_profiles_expect_their_backend(name, backend_, offload):
    p = resolve(name, environ={}).profile
    assert (p.harness.expect_backend, p.harness.expect_offload, p.log_verbosity) == (backend_, offload, 4)
