"""llamactl quality without llama.cpp: the pinned text, the reference-logits cache key, runs of a fake
llama-perplexity, candidates, and the gate."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from llamactl.core.errors import BadInput, LlamactlError
from llamactl.core.hashing import sha256_bytes
from llamactl.core.pipdl import Pin
from llamactl.judge import perplexity as P, quality as Q
from llamactl.judge.perplexity_output import PerplexityOutputError
from llamactl.models import texts
from llamactl.report import quality_gate as G

FIX = Path(__file__).parents[1] / "fixtures" / "perplexity"
PG = ("\ufeffProject Gutenberg's Tiny Book\r\n\r\n*** START OF THIS PROJECT GUTENBERG EBOOK TINY ***\r\n\r\n\r\n"
      "CHAPTER I.\r\n\r\nOnce upon a time.\r\n\r\nEnd of Project Gutenberg's Tiny Book\r\n\r\n"
      "*** END OF THIS PROJECT GUTENBERG EBOOK TINY ***\r\nlicence text\r\n")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- the text ---------------------------------------------------------------------------------


def test_gutenberg_body_keeps_only_the_book():
    assert texts.gutenberg_body(PG.encode()) == "CHAPTER I.\n\nOnce upon a time.\n"


@pytest.mark.parametrize("raw, why", [(b"no marks at all", "start line"), (b"*** START OF X ***\nbody", "end line"),
                                      (b"\xff\xfe bad", "not UTF-8")])
def test_gutenberg_body_refuses_other_files(raw, why):
    with pytest.raises(LlamactlError, match=why):
        texts.gutenberg_body(raw)


def sdist(tmp_path: Path, member: str, data: bytes) -> Path:
    path = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def spec(sha: str, member: str = "pkg-1.0/examples/tiny.txt") -> texts.PinnedText:
    return texts.PinnedText("tiny", "Tiny", Pin("pkg", "1.0", "0" * 64), member, sha, "public domain", 30)


def test_extract_checks_the_pinned_sha256(tmp_path):
    body = texts.gutenberg_body(PG.encode()).encode()
    f = sdist(tmp_path, "pkg-1.0/examples/tiny.txt", PG.encode())
    assert texts.extract(f, spec(sha256_bytes(body))) == body
    with pytest.raises(LlamactlError, match="sha256 mismatch"):
        texts.extract(f, spec("1" * 64))
    with pytest.raises(LlamactlError, match="has no pkg-1.0/other.txt"):
        texts.extract(f, spec(sha256_bytes(body), "pkg-1.0/other.txt"))


def test_fetch_downloads_once_then_reads_the_cache(tmp_path, cache, monkeypatch):
    body = texts.gutenberg_body(PG.encode()).encode()
    s = spec(sha256_bytes(body))
    monkeypatch.setitem(texts.TEXTS, "tiny", s)
    calls = []

    def download(pins, dest, kind, what, progress=None):
        calls.append(pins)
        return {pins[0]: sdist(Path(dest), s.member, PG.encode())}
    monkeypatch.setattr(texts.pipdl, "download", download)
    p1 = texts.fetch("tiny")
    p2 = texts.fetch("tiny")
    assert p1 == p2 and p1.read_bytes() == body and len(calls) == 1
    assert texts.identity(p1) == s.sha256
    with pytest.raises(BadInput, match="unknown text 'nope'"):
        texts.fetch("nope")


def test_a_wrong_text_is_not_cached(tmp_path, cache, monkeypatch):
    monkeypatch.setitem(texts.TEXTS, "tiny", spec("2" * 64))
    monkeypatch.setattr(texts.pipdl, "download", lambda pins, dest, *a, **k: {pins[0]: sdist(Path(dest), spec("").member, PG.encode())})
    with pytest.raises(LlamactlError, match="sha256 mismatch"):
        texts.fetch("tiny")
    assert not (texts.text_dir(spec("2" * 64)) / "tiny.txt").exists()


def test_the_shipped_pin():
    a = texts.TEXTS[texts.DEFAULT_TEXT]
    assert a.source.requirement == "wordcloud==1.9.6" and len(a.source.sha256) == len(a.sha256) == 64
    assert a.member.endswith("examples/alice.txt") and "public domain" in a.license


# --- the reference-logits cache key -------------------------------------------------------------

BIN = P.PerplexityBinary(Path("/x/llama-perplexity"), "k1")
S = P.Settings(ctx=128, chunks=4)
F16 = P.KvPair("f16", "f16")


def rkey(binary=BIN, model="sha256:aa", text="t1", s=S, kv=F16):
    return P.reference_key(binary, model, text, s, kv)


@pytest.mark.parametrize("variant", [
    dict(binary=P.PerplexityBinary(Path("/x/llama-perplexity"), "k2")), dict(model="sha256:bb"), dict(text="t2"),
    dict(s=P.Settings(ctx=256, chunks=4)), dict(s=P.Settings(ctx=128, chunks=8)), dict(s=P.Settings(128, 4, batch=512)),
    dict(s=P.Settings(128, 4, flash_attn="off")), dict(kv=P.KvPair("bf16", "bf16")),
])
def test_reference_key_changes_with_each_input(variant):
    assert rkey(**variant) != rkey()


def test_reference_key_ignores_what_does_not_change_logits():
    assert rkey(binary=P.PerplexityBinary(Path("/elsewhere"), "k1")) == rkey()      # the build key names the binary
    assert rkey(s=P.Settings(128, 4, threads=8, env={"A": "1"})) == rkey()


# --- runs of a fake llama-perplexity --------------------------------------------------------------

FAKE = """#!{python}
import sys, pathlib, os
args = sys.argv[1:]
log = pathlib.Path(os.environ["FAKE_CALLS"]); log.write_text(log.read_text() + " ".join(args) + "\\n" if log.exists() else " ".join(args) + "\\n")
if os.environ.get("FAKE_FAIL"):
    print("0.00.1 E main: error: unable to load model", flush=True); sys.exit(1)
base = args[args.index("--kl-divergence-base") + 1]
if "--kl-divergence" in args:
    sys.stdout.write(open("{fix}/kld-q8_0-ctx128.txt").read())
else:
    pathlib.Path(base).write_bytes(b"_logits_" + b"x" * 100)
    sys.stdout.write(open("{fix}/base-f16-ctx128.txt").read())
"""


@pytest.fixture()
def fake(tmp_path, cache, monkeypatch):
    exe = tmp_path / "llama-perplexity"
    exe.write_text(FAKE.format(python=sys.executable, fix=FIX))
    exe.chmod(0o755)
    monkeypatch.setenv("FAKE_CALLS", str(tmp_path / "calls.txt"))
    return P.binary_at(exe)


def inputs(tmp_path: Path) -> tuple[Path, Path]:
    model, text = tmp_path / "m.gguf", tmp_path / "t.txt"
    model.write_bytes(b"GGUF")
    text.write_text("text\n")
    return model, text


def test_reference_is_computed_once_then_cached(tmp_path, fake, cache):
    model, text = inputs(tmp_path)
    events = []
    r1 = P.reference(fake, model, "m", text, "t", S, F16, tmp_path, events.append)
    r2 = P.reference(fake, model, "m", text, "t", S, F16, tmp_path)
    assert not r1.cached and r2.cached and r1.path == r2.path and r1.size_bytes == r2.size_bytes == 108
    assert r2.base.ppl == 15.8769 and (r1.path.parent / "meta.json").is_file()
    assert (tmp_path / "calls.txt").read_text().count("\n") == 1
    assert events[-1].finished and any(e.done == 4 and e.total == 4 for e in events)
    assert r1.path.parent.parent == cache / "kld"


def test_a_failed_reference_leaves_nothing_cached(tmp_path, fake, cache, monkeypatch):
    model, text = inputs(tmp_path)
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(LlamactlError, match=r"llama-perplexity failed \(exit 1\): main: error: unable to load model"):
        P.reference(fake, model, "m", text, "t", S, F16, tmp_path)
    assert not list((cache / "kld").rglob("base.kld*"))


def test_kl_divergence_run(tmp_path, fake):
    model, text = inputs(tmp_path)
    ref = P.reference(fake, model, "m", text, "t", S, F16, tmp_path)
    run = P.kl_divergence(fake, model, text, S, P.KvPair.parse("q8_0"), ref, tmp_path, "q8_0/q8_0")
    assert run.out.kld_mean == pytest.approx(0.006969) and Path(run.log).is_file()
    call = (tmp_path / "calls.txt").read_text().splitlines()[-1]
    assert "--kl-divergence --kl-divergence-base" in call and "-ctk q8_0 -ctv q8_0 -fa on" in call and "-c 128 --chunks 4" in call


def test_measure_rows_and_errors(tmp_path, fake, monkeypatch):
    model, text = inputs(tmp_path)
    arm = Q.Arm("default", None, fake)   # type: ignore[arg-type]
    inp = Q.Inputs("m", model, "t", text, "t1", S, F16)
    real = P.kl_divergence

    def flaky(binary, model, text, s, kv, ref, run_dir, label, progress=None):
        if kv.k == "q4_0":
            raise PerplexityOutputError("q4_0/q4_0: llama-perplexity's output lacks the line 'Mean    KLD:'")
        return real(binary, model, text, s, kv, ref, run_dir, label, progress)
    monkeypatch.setattr(P, "kl_divergence", flaky)
    lines: list[str] = []
    ref, rows, dec = Q.measure(inp, [arm], [P.KvPair.parse(k) for k in Q.DEFAULT_KVS], tmp_path, on_line=lines.append)
    assert [r.status for r in rows] == ["ok", "error"] and dec is None
    assert "lacks the line 'Mean    KLD:'" in rows[1].error
    data = Q.to_json("default", inp, ref, rows, {"wall_s": 1.0})
    assert data["kind"] == "quality" and data["cells"][0]["kld"]["kld_mean"] == pytest.approx(0.006969)
    assert data["reference"]["ppl"] == 15.8769 and data["meta"]["scored_tokens"] == 4 * 63
    json.dumps(data)


# --- candidates, KV pairs, settings ---------------------------------------------------------------


def test_kv_pairs():
    assert P.KvPair.parse("q8_0/q4_0") == P.KvPair("q8_0", "q4_0") and P.KvPair.parse("Q8_0").label == "q8_0/q8_0"
    assert P.KvPair.parse("q4_0").quantized_v and not F16.quantized_v
    for bad in ("", "/", "a/b/c", "q8_0;rm"):
        with pytest.raises(BadInput, match="expected K/V cache types"):
            P.KvPair.parse(bad)


def test_candidates():
    a, b = Q.Arm("A", None, BIN), Q.Arm("B", None, BIN)   # type: ignore[arg-type]
    q8 = P.KvPair.parse("q8_0")
    assert [c.label for c in Q.candidates([a], [F16, q8, q8], F16)] == ["q8_0/q8_0"]
    assert [c.label for c in Q.candidates([a, b], [F16], F16)] == ["B f16/f16"]
    assert [c.label for c in Q.candidates([a, b], [F16, q8], F16)] == ["A q8_0/q8_0", "B f16/f16", "B q8_0/q8_0"]
    with pytest.raises(BadInput, match="nothing to compare"):
        Q.candidates([a], [F16], F16)


def test_settings_refuse_what_llama_perplexity_cannot_use():
    assert P.Settings(512, 16).scored_tokens == 16 * 255
    for s, why in ((P.Settings(64, 2), "score 62 tokens"), (P.Settings(8, 100), "at least 16"),
                   (P.Settings(512, 0), "at least 1"), (P.Settings(512, 4, batch=768), "multiple of --ctx")):
        with pytest.raises(BadInput, match=why):
            s.check()
    with pytest.raises(BadInput, match="needs flash attention"):
        P.check_kv(P.KvPair.parse("q8_0"), P.Settings(flash_attn="off"))
    P.check_kv(P.KvPair("q8_0", "f16"), P.Settings(flash_attn="off"))


def test_binary_at(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        P.binary_at(tmp_path)
    exe = tmp_path / "llama-perplexity"
    exe.write_text("")
    with pytest.raises(BadInput, match="not executable"):
        P.binary_at(exe)
    exe.chmod(0o755)
    assert P.binary_at(tmp_path).path == exe.resolve() and P.binary_at(exe).key.startswith("file:")


# --- the gate -----------------------------------------------------------------------------------

CELLS = [{"cell": "q8_0/q8_0", "status": "ok", "kld": {"kld_mean": 0.007, "same_top": 94.5},
          "decode": {"mean_kl": 0.004, "top1_agreement": 0.97}},
         {"cell": "q4_0/q4_0", "status": "ok", "kld": {"kld_mean": 0.11, "same_top": 79.0}, "decode": None}]


def test_no_limits_no_gate():
    assert G.judge(CELLS, G.Limits()) == []


def test_kl_gate_trips_on_the_worse_candidate_only():
    v = G.judge(CELLS, G.Limits(fail_above_kl=0.05))
    assert [(x.cell, x.metric, x.verdict) for x in v] == [
        ("q8_0/q8_0", G.KL, G.OK), ("q8_0/q8_0", G.DECODE_KL, G.OK), ("q4_0/q4_0", G.KL, G.REGRESSION)]
    assert G.worst(v) == G.REGRESSION and "REGRESSION 0.110000 (fail above 0.05)" in v[2].line()


def test_top1_gate_in_percent_reads_decode_top1_too():
    v = G.judge(CELLS[:1], G.Limits(fail_below_top1=96))
    assert [(x.metric, x.verdict, x.value) for x in v] == [(G.SAME_TOP, G.REGRESSION, 94.5), (G.DECODE_TOP1, G.OK, 97.0)]
    assert G.summary(v, G.Limits(fail_below_top1=96))["worst"] == G.REGRESSION


def test_decode_bug_trips_the_kl_gate_while_batched_kl_is_fine():
    cells = [dict(CELLS[0], decode={"mean_kl": 0.43, "top1_agreement": 0.83})]
    v = G.judge(cells, G.Limits(fail_above_kl=0.05, fail_below_top1=90))
    assert {(x.metric, x.verdict) for x in v if x.verdict == G.REGRESSION} == {(G.DECODE_KL, G.REGRESSION), (G.DECODE_TOP1, G.REGRESSION)}


def test_a_failed_candidate_fails_an_active_gate():
    v = G.judge([{"cell": "turbo4/turbo4", "status": "error", "error": "unknown cache type"}], G.Limits(fail_above_kl=1))
    assert v[0].verdict == G.REGRESSION and "unknown cache type" in v[0].line()


@pytest.mark.parametrize("limits, why", [(dict(fail_above_kl=-1), "0 or more"), (dict(fail_below_top1=0), "percentage"),
                                         (dict(fail_below_top1=101), "percentage")])
def test_limits_are_checked(limits, why):
    with pytest.raises(BadInput, match=why):
        G.Limits(**limits)


# --- the command line: bad input is one line and exit 2, before anything runs ----------------------


@pytest.mark.parametrize("args, why", [
    (["--kv", "q8_0/q8_0/x"], "expected K/V cache types"),
    (["--fail-below-top1", "0"], "a percentage"),
    (["--ctx", "64", "--chunks", "2"], "score 62 tokens"),
    (["--kv", "f16/f16"], "nothing to compare"),
    (["--build", "series"], "give two or more"),
    (["--decode-prompts", "9"], "1 to 8"),
])
def test_cli_bad_input(args, why, cache):
    cp = subprocess.run([sys.executable, "-m", "llamactl", "quality", "default", *args, "--no-env"],
                        capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
                        stdin=subprocess.DEVNULL)
    assert cp.returncode == 2, cp.stderr
    assert why in cp.stderr and "Traceback" not in cp.stderr and cp.stderr.count("\n") == 1


# --- reports --------------------------------------------------------------------------------------


def quality_run() -> dict:
    kld = {"kld_mean": 0.007175, "kld_median": 0.005858, "kld_p99": 0.030816, "kld_max": 0.085269, "same_top": 94.461,
           "dp_rms": 1.975, "ppl": 19.808362, "ppl_err": 0.84962, "delta_ppl_pct": -0.1278,
           "kld_percentiles": {"0": 1e-6, "1.0": 5.6e-5, "50": 0.005858, "99.0": 0.030816, "100": 0.085269}}
    return {"kind": "quality", "profile": "default",
            "meta": {"text": "alice", "ctx": 512, "chunks": 16, "scored_tokens": 4080, "reference_kv": "f16/f16", "wall_s": 95.0},
            "reference": {"cell": "f16/f16", "kv": "f16/f16", "ppl": 19.8337, "ppl_err": 0.8518, "logits": "/c/kld/k/base.kld",
                          "logits_bytes": 2139160468, "cached": True},
            "cells": [{"cell": "q8_0/q8_0", "kv": "q8_0/q8_0", "build": "default", "status": "ok", "kld": kld,
                       "decode": {"top1_agreement": 0.974, "mean_kl": 0.0045}},
                      {"cell": "turbo4/turbo4", "kv": "turbo4/turbo4", "build": "default", "status": "error",
                       "error": "llama-perplexity failed (exit 1): unsupported cache type: turbo4"}],
            "gate": G.summary(G.judge([], G.Limits(fail_above_kl=0.05)), G.Limits(fail_above_kl=0.05))}


def test_quality_run_in_the_reports(tmp_path):
    from llamactl.report import html, markdown, runs, view

    run = quality_run()
    assert runs.kind_of(run) == "quality" and runs.split_runs(run)[0]["kind"] == "quality"
    v = view.report_view([run])
    md = markdown.render(v)
    assert "| q8_0/q8_0 |  | 19.8084 ± 0.8496 | -0.13% | 0.007175 | 0.005858 | 0.030816 | 0.085269 | 94.46% | 1.975% | 97.4% | 0.0045 |" in md
    assert "| f16/f16 (reference) |" in md and "unsupported cache type: turbo4" in md and "2040 MiB, cached" in md
    page = html.render(v)
    assert "<svg" in page and "KL divergence per token" in page and "turbo4/turbo4" in page


def test_quality_run_in_the_history_and_trend(tmp_path):
    from llamactl.report import view
    from llamactl.report.history import History

    h = History(tmp_path / "h.sqlite")
    rid = h.record(quality_run(), {"id": "m1"}, {"key": "b1", "commit": "0c1e57098"})
    row = h.runs()[0]
    assert row.id == rid and row.kind == "quality" and row.ok is False and "1 error(s)" in row.summary
    assert [(c.cell, c.status) for c in h.cells()] == [("q8_0/q8_0", "ok"), ("turbo4/turbo4", "error")]
    points = h.quality_points("default", "m1")
    assert [(p["cell"], p["kld_mean"]) for p in points] == [("q8_0/q8_0", 0.007175), ("turbo4/turbo4", None)]
    t = view.quality_trend_view(points, "default")
    assert t is not None and t["runs"] == 1 and "<svg" in t["decode_svg"] and t["rows"][0]["decode"] == "0.007175"


def test_kl_png(tmp_path):
    pytest.importorskip("matplotlib")
    from llamactl.report.png import kl_png

    kl_png(quality_run(), tmp_path / "kl.png")
    assert (tmp_path / "kl.png").read_bytes()[:4] == b"\x89PNG"
