"""RPC workers: profile block, rendering, bind policy, build pairing, placement evidence (no server started)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from llamactl import cli
from llamactl.core.errors import BadInput, ExitCode, LlamactlError
from llamactl.judge.checks import CellContext, CheckFailed, CheckSkipped, rpc_placement, rpc_placement_from_log
from llamactl.serve import rpc
from llamactl.serve.dialect import parse_help
from llamactl.serve.profiles import Profile
from llamactl.serve.render import Unsupported, render_argv

BASE = dict(model="m.gguf", port=8080)


def test_rpc_block_forms() -> None:
    assert Profile(**BASE, rpc={"workers": ["10.0.0.2:50052", "gpu-box:50053"]}).rpc.workers == ["10.0.0.2:50052", "gpu-box:50053"]
    assert Profile(**BASE, rpc={"workers": "a:1,b:2"}).rpc.workers == ["a:1", "b:2"]
    assert Profile(**BASE, rpc={"local_workers": 2}).rpc.local_workers == 2
    for bad in ({}, {"workers": ["a:1"], "local_workers": 1}, {"workers": ["nohost"]}, {"workers": ["h:99999"]},
                {"local_workers": -1}, {"hosts": ["a:1"]}):
        with pytest.raises(ValidationError):
            Profile(**BASE, rpc=bad)


def test_tensor_split_parsing() -> None:
    assert Profile(**BASE, tensor_split="3,1").tensor_split == [3.0, 1.0]
    assert Profile(**BASE, tensor_split=[1, 1]).tensor_split == [1.0, 1.0]
    for bad in ("a,b", [0, 0], [-1, 2], [True]):
        with pytest.raises(ValidationError):
            Profile(**BASE, tensor_split=bad)


def test_render_rpc_and_tensor_split(upstream_help_text: str) -> None:
    h = parse_help(upstream_help_text)
    p = Profile(**BASE, rpc={"local_workers": 2}, tensor_split=[1, 1, 0])
    argv = render_argv(p, h, Path("/b/llama-server"), port=8080, rpc_endpoints=["127.0.0.1:4001", "127.0.0.1:4002"])
    assert argv[argv.index("--rpc") + 1] == "127.0.0.1:4001,127.0.0.1:4002"
    assert argv[argv.index("--tensor-split") + 1] == "1,1,0"
    p2 = Profile(**BASE, rpc={"workers": ["gpu:50052"]})
    argv2 = render_argv(p2, h, Path("/b/llama-server"), port=8080)
    assert argv2[argv2.index("--rpc") + 1] == "gpu:50052"


def test_render_rpc_unsupported_without_flag(upstream_help_text: str) -> None:
    text = "\n".join(ln for ln in upstream_help_text.splitlines() if not ln.startswith("--rpc"))
    with pytest.raises(Unsupported, match="rpc=workers is not supported"):
        render_argv(Profile(**BASE, rpc={"workers": ["a:1"]}), parse_help(text), Path("llama-server"), port=1)


def test_bind_policy() -> None:
    assert rpc.check_bind("127.0.0.1", False) is None
    assert rpc.check_bind("::1", False) is None
    with pytest.raises(BadInput, match="no authentication"):
        rpc.check_bind("0.0.0.0", False)
    assert "no authentication" in (rpc.check_bind("0.0.0.0", True) or "")


def test_cli_refuses_remote_bind(capsys) -> None:
    rc = cli.run(["rpc-worker", "--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert rc == ExitCode.BAD_INPUT
    assert "no authentication" in err and "--allow-remote" in err and "Traceback" not in err


def test_cli_bad_port(capsys) -> None:
    assert cli.run(["rpc-worker", "--port", "http"]) == ExitCode.BAD_INPUT
    assert "--port must be a number" in capsys.readouterr().err


def test_pairing_refuses_other_build(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path))
    rec = tmp_path / "rpc-workers"
    rec.mkdir()
    (rec / "127.0.0.1_50099.json").write_text(json.dumps({"pid": os.getpid(), "build_key": "cpu-aaaa"}))
    with pytest.raises(LlamactlError, match="runs build cpu-aaaa, the server build cpu-bbbb"):
        rpc.check_pairing(["127.0.0.1:50099"], "cpu-bbbb")
    assert rpc.check_pairing(["127.0.0.1:50099"], "cpu-aaaa") == []
    notes = rpc.check_pairing(["10.1.1.1:50052"], "cpu-aaaa")
    assert notes and "cannot be checked" in notes[0]


def test_stale_record_is_ignored(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path))
    rec = tmp_path / "rpc-workers"
    rec.mkdir()
    (rec / "127.0.0.1_50098.json").write_text(json.dumps({"pid": 2**22 + 7, "build_key": "cpu-aaaa"}))
    assert rpc.read_record("127.0.0.1", 50098) is None
    assert not (rec / "127.0.0.1_50098.json").exists()


def test_worker_binary_from_manifest(tmp_path: Path) -> None:
    w = tmp_path / "ggml-rpc-server"
    w.write_text("")
    assert rpc.worker_binary(tmp_path / "llama-server", {"binaries": {"ggml-rpc-server": str(w)}}) == w
    with pytest.raises(LlamactlError, match="no RPC worker"):
        rpc.worker_binary(tmp_path / "x" / "llama-server", None)


LOG = [
    "llama_model_load_from_file_impl: using device RPC0 (127.0.0.1:4001) (unknown id) - 1000 MiB free",
    "llama_model_load_from_file_impl: using device RPC1 (127.0.0.1:4002) (unknown id) - 1000 MiB free",
    "load_tensors: offloaded 5/5 layers to GPU",
    "load_tensors: RPC0[127.0.0.1:4001] model buffer size =     0.88 MiB",
    "load_tensors: RPC1[127.0.0.1:4002] model buffer size =     1.02 MiB",
    "load_tensors:   CPU_Mapped model buffer size =     0.34 MiB",
]


def _ctx(lines: list[str], profile: Profile, eps: list[str]) -> CellContext:
    return CellContext("http://x", profile, None, log_lines=lambda: lines, rpc_endpoints=eps)   # type: ignore[arg-type]


def test_placement_from_log() -> None:
    f = rpc_placement_from_log(LOG)
    assert f["devices"] == {"127.0.0.1:4001": "RPC0", "127.0.0.1:4002": "RPC1"}
    assert f["model_mib"] == {"127.0.0.1:4001": 0.88, "127.0.0.1:4002": 1.02}
    assert f["offloaded"] == "5/5 layers to GPU"


def test_placement_check_verdicts() -> None:
    p = Profile(**BASE, rpc={"local_workers": 2})
    eps = ["127.0.0.1:4001", "127.0.0.1:4002"]
    assert rpc_placement(_ctx(LOG, p, eps))["model_mib"]["127.0.0.1:4002"] == 1.02
    with pytest.raises(CheckFailed, match="the model ran locally"):
        rpc_placement(_ctx(LOG[-1:], p, eps))
    with pytest.raises(CheckFailed, match="no layers placed on RPC device"):
        rpc_placement(_ctx(LOG[:3] + LOG[-1:], p, eps))
    with pytest.raises(CheckFailed, match="127.0.0.1:4003"):
        rpc_placement(_ctx(LOG, p, [*eps, "127.0.0.1:4003"]))
    with pytest.raises(CheckSkipped):
        rpc_placement(_ctx(LOG, Profile(**BASE), []))


def test_worker_gone_abort_is_the_crash_line(tmp_path: Path) -> None:
    """GGML_ABORT prints FILE:LINE: message, without the word GGML_ABORT; it is the crash's line."""
    from llamactl.serve.server import describe_exit

    lines = ["0.00.259.459 I srv   prompt_save:  - saving prompt with length 25",
             "/src/ggml/src/ggml-rpc/ggml-rpc.cpp:566: Remote RPC server crashed or returned malformed response",
             "0.00.259.714 E send failed (bytes_sent=0, size_to_send=8)",
             "#2  0x00005646f2a93a14 in rpc_dispatcher::send(rpc_cmd, ...) ()"]
    crash = describe_exit(-6, lines, tmp_path / "x.log")
    assert crash.assert_line is not None and "ggml-rpc.cpp:566: " + rpc.WORKER_GONE in crash.assert_line
    assert rpc.WORKER_GONE in crash.summary()
