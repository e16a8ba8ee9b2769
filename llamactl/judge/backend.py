"""Which backend really did the work: devices, buffers and offloaded layers from llama-server's log.

A HIP or CUDA build that cannot see its GPU still answers every request, 5-10x slower, on the
CPU. The server's startup log says what happened: the devices it found (``device_info``, or
``--list-devices``), the device each model was loaded on (``using device``), how many layers went
to the GPU (``load_tensors: offloaded N/M layers to GPU``) and the buffers it allocated, each
named after its backend (``CPU_Mapped``, ``CUDA0``, ``ROCm0``, ``Vulkan0``, ``RPC0[host:port]``,
``CUDA_Host`` ...). Upstream llama.cpp logs these at verbosity 4 (``-lv 4``); older trees at the
default verbosity.

Everything here is pure (text in, data out) apart from :func:`check`, which reads a log file.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from llamactl.judge.checks import CheckResult
from llamactl.judge.status import Status

BACKENDS = ("hip", "cuda", "vulkan", "cpu", "rpc")
ExpectBackend = Literal["hip", "cuda", "vulkan", "cpu", "rpc"]

# buffer / device name prefix -> backend (ggml's names: GGML_CUDA_NAME is "ROCm" in HIP builds)
_PREFIXES = (
    ("rocm", "hip"), ("cuda", "cuda"), ("musa", "musa"), ("vulkan", "vulkan"), ("rpc", "rpc"),
    ("mtl", "metal"), ("metal", "metal"), ("sycl", "sycl"), ("cann", "cann"), ("opencl", "opencl"),
    ("cpu", "cpu"), ("amx", "cpu"),
)

_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
# "load_tensors:   CPU_Mapped model buffer size =     1.87 MiB"; trees before 2025 omit the kind
# ("llm_load_tensors:      ROCm0 buffer size = ...": weights)
_BUFFER = re.compile(r"(\w+):\s+(\S+)\s+(?:(model|KV|RS|compute|output|LoRA)\s+)?buffer size\s*=\s*([\d.]+) MiB")
_USING = re.compile(r"using device (\S+) (.*) - (\d+) MiB free")
_DEVICE_INFO = re.compile(r"(?:^|\s)-\s+(\S+)\s*:\s+(.*)\s+\((\d+) MiB, (\d+) MiB free\)\s*$")
_LIST_DEVICE = re.compile(r"^\s+(\S+):\s+(.*)\s+\((\d+) MiB, (\d+) MiB free\)\s*$")
_MODEL_START = re.compile(r"llama_model_loader: loaded meta data|load_tensors: loading model tensors")


def backend_of(name: str) -> str:
    """The backend a ggml buffer or device name belongs to: ``Vulkan0`` -> vulkan, ``ROCm0`` -> hip."""
    low = name.lower()
    for prefix, backend in _PREFIXES:
        if low.startswith(prefix):
            return backend
    return re.sub(r"[\d_\[].*$", "", low) or low


def is_host(name: str) -> bool:
    """Host (system RAM) buffers of a GPU backend, e.g. ``CUDA_Host``, ``Vulkan_Host``."""
    return name.lower().endswith("_host")


@dataclass
class Device:
    name: str                 # ggml's device name: CPU, CUDA0, ROCm0, Vulkan0, RPC0[host:port]
    description: str
    backend: str
    total_mib: int | None = None
    free_mib: int | None = None


@dataclass
class Buffer:
    name: str                 # CPU_Mapped, CUDA0, Vulkan_Host, ...
    kind: str                 # model | KV | RS | compute | output | LoRA
    mib: float
    backend: str
    host: bool                # lives in system RAM (CPU buffers, *_Host)


@dataclass
class ModelLoad:
    """One model's load, in log order: the main model first, then the MTP drafter."""

    role: str                                    # main | draft | model<N>
    devices: list[str] = field(default_factory=list)   # `using device` lines
    offloaded: int | None = None                 # layers on the GPU (None: no GPU-capable backend in the build)
    layers: int | None = None                    # offloadable layers (n_layer + 1 for the output layer)
    buffers: list[Buffer] = field(default_factory=list)

    @property
    def weights_mib(self) -> dict[str, float]:
        """MiB of model weights per buffer name."""
        out: dict[str, float] = {}
        for b in self.buffers:
            if b.kind == "model":
                out[b.name] = round(out.get(b.name, 0.0) + b.mib, 2)
        return out

    @property
    def backend(self) -> str | None:
        """The backend holding most of this model's weights in device memory; cpu when all are in RAM."""
        dev: dict[str, float] = {}
        host = False
        for b in self.buffers:
            if b.kind != "model":
                continue
            if b.host or b.backend == "cpu":
                host = True
            else:
                dev[b.backend] = dev.get(b.backend, 0.0) + b.mib
        if dev:
            return max(dev, key=lambda k: dev[k])
        return "cpu" if host else None

    @property
    def offload(self) -> str:
        return "-" if self.offloaded is None else f"{self.offloaded}/{self.layers}"


@dataclass
class BackendInfo:
    devices: list[Device] = field(default_factory=list)     # what the server saw
    models: list[ModelLoad] = field(default_factory=list)

    @property
    def main(self) -> ModelLoad | None:
        return self.models[0] if self.models else None

    @property
    def draft(self) -> ModelLoad | None:
        return self.models[1] if len(self.models) > 1 else None

    @property
    def backend(self) -> str | None:
        return self.main.backend if self.main else None

    def summary(self) -> str:
        """``vulkan 5/5, draft 5/5`` -- for tables."""
        if not self.main:
            return "-"
        parts = [f"{self.main.backend or '?'}" + (f" {self.main.offload}" if self.main.offloaded is not None else "")]
        if self.draft:
            d = self.draft
            parts.append(f"draft {d.backend or '?'}" + (f" {d.offload}" if d.offloaded is not None else ""))
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "summary": self.summary(),
            "devices": [asdict(d) for d in self.devices],
            "models": [{"role": m.role, "backend": m.backend, "devices": m.devices, "offloaded": m.offloaded,
                        "layers": m.layers, "weights_mib": m.weights_mib,
                        "buffers": [asdict(b) for b in m.buffers]} for m in self.models],
        }


def _device(name: str, desc: str, total: str | None = None, free: str | None = None) -> Device:
    return Device(name, desc.strip(), backend_of(name), int(total) if total else None, int(free) if free else None)


def _unwrap(rest: str) -> str:
    """``(llvmpipe (LLVM 15)) (unknown id)`` or ``(NVIDIA RTX 4090)`` -> the description."""
    m = re.fullmatch(r"\((.*)\) \(([^()]*)\)", rest.strip())
    if m:
        return m.group(1)
    m = re.fullmatch(r"\((.*)\)", rest.strip())
    return m.group(1) if m else rest.strip()


def parse_list_devices(text: str) -> list[Device]:
    """``llama-server --list-devices`` output (CPU devices are not listed there)."""
    out = []
    for line in text.splitlines():
        m = _LIST_DEVICE.match(line)
        if m:
            out.append(_device(*m.groups()))
    return out


def parse_log(text: str) -> BackendInfo:
    """Devices, per-model buffers and offload counts from a llama-server log."""
    info = BackendInfo()
    seen_devices: set[str] = set()
    current: ModelLoad | None = None

    def new_model() -> ModelLoad:
        roles = ("main", "draft")
        m = ModelLoad(roles[len(info.models)] if len(info.models) < 2 else f"model{len(info.models)}")
        info.models.append(m)
        return m

    def loaded(m: ModelLoad | None) -> bool:
        return m is not None and (m.offloaded is not None or any(b.kind == "model" for b in m.buffers))

    for line in text.splitlines():
        if "MiB free)" in line and "using device" not in line:
            m = _DEVICE_INFO.search(line)
            if m and m.group(1) not in seen_devices:
                seen_devices.add(m.group(1))
                info.devices.append(_device(*m.groups()))
                continue
        if "using device" in line:
            m = _USING.search(line)
            if m:
                if current is None or loaded(current):
                    current = new_model()
                current.devices.append(m.group(1))
                if m.group(1) not in seen_devices:
                    seen_devices.add(m.group(1))
                    info.devices.append(_device(m.group(1), _unwrap(m.group(2)), None, m.group(3)))
            continue
        if _MODEL_START.search(line):
            if current is None or loaded(current):
                current = new_model()
            continue
        m = _OFFLOADED.search(line)
        if m:
            if current is None:
                current = new_model()
            current.offloaded, current.layers = int(m.group(1)), int(m.group(2))
            continue
        m = _BUFFER.search(line)
        if m:
            func, name, kind, mib = m.groups()
            if kind is None:
                if not func.endswith("load_tensors"):
                    continue
                kind = "model"
            if current is None:
                current = new_model()
            current.buffers.append(Buffer(name, kind, float(mib), backend_of(name), is_host(name) or backend_of(name) == "cpu"))
    return info


NO_EVIDENCE = ("no backend evidence in the server log (no 'model buffer size' lines; upstream llama.cpp "
               "logs them at --log-verbosity 4)")


def verdict(info: BackendInfo, expect_backend: str | None, expect_offload: int | str | None) -> str | None:
    """Why the cell must FAIL given the expectations, or None. Both numbers are in the reason."""
    problems: list[str] = []
    main = info.main
    if (expect_backend or expect_offload is not None) and (main is None or main.backend is None):
        return NO_EVIDENCE
    if main is None:
        return None
    if expect_backend:
        for m in info.models:
            got = m.backend
            if got is None or got == expect_backend:
                continue
            if m.role != "main" and got == "cpu" and m.offloaded is None:
                continue   # a drafter the build loads without a device of its own
            weights = ", ".join(f"{k} {v:.2f} MiB" for k, v in m.weights_mib.items())
            layers = f", offloaded {m.offload} layers" if m.offloaded is not None else ""
            problems.append(f"{m.role} model on {got}, expected {expect_backend} (weights: {weights}{layers})")
    if expect_offload is not None:
        for m in info.models:
            if m.role != "main" and m.offloaded is None:
                continue
            if m.offloaded is None or m.layers is None:
                problems.append(f"{m.role} model: no 'offloaded N/M layers' line (this build offloads nothing), "
                                f"expected {expect_offload} layer(s) offloaded")
                continue
            # N: at least N layers, or all of a model that has fewer (a 5-layer drafter next to a 31-layer target)
            want = m.layers if expect_offload == "all" else min(int(expect_offload), m.layers)
            if m.offloaded < want:
                what = f"all {m.layers}" if expect_offload == "all" else f"at least {want}"
                problems.append(f"{m.role} model offloaded {m.offloaded}/{m.layers} layers, expected {what}")
    return "; ".join(problems) or None


def check(log: Path | None, expect_backend: str | None, expect_offload: int | str | None,
          alive: bool = True) -> CheckResult:
    """The ``backend`` check of a validation cell: records what the server used, FAILs on a mismatch.

    ``data`` always carries the parsed :class:`BackendInfo` (``to_dict``), pass or fail. Without
    expectations the check records and passes; without a log, or when the server died (``alive``
    False: the crash is the cell's verdict), it is SKIP, still with the data. Expectations and no
    evidence in the log is ERROR (cannot judge).
    """
    if log is None or not log.is_file():
        return CheckResult("backend", Status.SKIP, detail=f"no server log ({log})")
    info = parse_log(log.read_text(errors="replace"))
    data = info.to_dict()
    if not alive:
        return CheckResult("backend", Status.SKIP, detail="server died", data=data)
    problem = verdict(info, expect_backend, expect_offload)
    if problem == NO_EVIDENCE:
        return CheckResult("backend", Status.ERROR, detail=problem, data=data)
    if problem:
        return CheckResult("backend", Status.FAIL, detail=problem, data=data)
    return CheckResult("backend", Status.PASS, detail=info.summary(), data=data)
