"""`llamactl load` against a peer load tool from PyPI (llama-benchy), on the same running server and load.

    .venv/bin/python benchmarks/load_vs_peer.py --peer /path/to/venv/bin/llama-benchy [PROFILE] \
        [--parallel N] [--concurrency 1 2] [--pp 128] [--tg 64] [--runs 5]

Starts one llama-server (`llamactl run PROFILE --detach`), then for each concurrency C runs
`llamactl load --url` (closed loop, C clients, prompt PP and answer TG tokens, cache off) and
`llama-benchy --concurrency C --pp PP --tg TG --no-cache --exact-tg` against it, and prints the
figures both report: per-request decode tok/s (llama-benchy `t_s_req` of `tgTG`; load's p50 per-request
tok/s), all requests' tok/s (llama-benchy `tg_throughput`: decode tokens over the batch's decode span;
load's output tok/s: every token over the load's wall time, prompts included), time to first token
(llama-benchy `e2e_ttft`, load's TTFT p50) and the difference in percent. llama-benchy starts its C
requests together and waits for all (a batch per run); load's C clients each start their next request
when their last one ends (a closed loop): the loads are alike, not identical.
llama-benchy is not a dependency: install it in its own venv (`python -m venv /tmp/peer &&
/tmp/peer/bin/pip install llama-benchy`) and pass its script with --peer. Offline: its book is the
pinned text llamactl's `quality` uses, put where llama-benchy caches downloads, and its tokenizer a
word-level tokenizer.json made from that text (llama-benchy adapts the prompt to the server's own
token count after its warm-up). Numbers only, not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

BOOK_URL = "http://llamactl.invalid/alice.txt"   # never fetched: the text is put in llama-benchy's cache


def llamactl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamactl", *args], capture_output=True, text=True, env=env)


def prepare_peer_inputs(work: Path, peer: Path) -> Path:
    """The book in llama-benchy's cache and a word-level tokenizer.json made from it; returns the tokenizer."""
    from llamactl.models import texts

    text = texts.fetch().read_text(encoding="utf-8")
    cache = Path.home() / ".cache" / "llama-benchy"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"{hashlib.md5(BOOK_URL.encode()).hexdigest()}.txt").write_text(text, encoding="utf-8")
    tok = work / "tokenizer.json"
    script = ("import sys\nfrom tokenizers import Tokenizer, models, pre_tokenizers, trainers\n"
              "t = Tokenizer(models.WordLevel(unk_token='[UNK]'))\nt.pre_tokenizer = pre_tokenizers.Whitespace()\n"
              "t.train([sys.argv[1]], trainers.WordLevelTrainer(special_tokens=['[UNK]']))\nt.save(sys.argv[2])\n")
    book = work / "book.txt"
    book.write_text(text, encoding="utf-8")
    subprocess.run([str(peer.parent / "python"), "-c", script, str(book), str(tok)], check=True)
    return tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", nargs="?", default="default")
    ap.add_argument("--peer", type=Path, required=True, help="llama-benchy script (in its own venv)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--pp", type=int, default=128)
    ap.add_argument("--tg", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of llamactl load per concurrency")
    args = ap.parse_args()
    env = dict(os.environ, LLAMACTL_NO_PROGRESS="1", NO_COLOR="1")
    work = Path(tempfile.mkdtemp(prefix="load-vs-peer-"))
    tok = prepare_peer_inputs(work, args.peer)
    cp = llamactl("run", args.profile, "--parallel", str(args.parallel), "--port", "0", "--detach", "--json", env=env)
    if cp.returncode != 0:
        sys.exit(f"run failed: {cp.stderr.strip()}")
    server = json.loads(cp.stdout)
    rows = []
    try:
        for c in args.concurrency:
            out = work / f"load-{c}.json"
            cp = llamactl("load", args.profile, "--url", server["url"], "--clients", str(c), "--duration",
                          str(args.duration), "--prompt-len", str(args.pp), "--max-tokens", str(args.tg),
                          "--json-out", str(out), env=env)
            if cp.returncode != 0:
                sys.exit(f"load failed: {cp.stderr.strip()[-500:]}")
            lv = json.loads(out.read_text())["cells"][0]["levels"][0]
            peer_out = work / f"peer-{c}.json"
            cp = subprocess.run([str(args.peer), "--base-url", f"{server['url']}/v1", "--model", "model",
                                 "--tokenizer", str(tok), "--book-url", BOOK_URL, "--pp", str(args.pp), "--tg",
                                 str(args.tg), "--runs", str(args.runs), "--concurrency", str(c), "--no-cache",
                                 "--exact-tg", "--latency-mode", "none", "--skip-coherence", "--format", "json",
                                 "--save-result", str(peer_out)], capture_output=True, text=True)
            if cp.returncode != 0 or not peer_out.exists():
                sys.exit(f"llama-benchy failed: {(cp.stdout + cp.stderr)[-800:]}")
            rows.append((c, lv, json.loads(peer_out.read_text())))
    finally:
        os.kill(int(server["pid"]), signal.SIGTERM)
    print(f"{args.profile} --parallel {args.parallel}, prompt {args.pp} tokens, answer {args.tg} tokens (cache off)")
    print(f"{'clients':>7} {'metric':<28} {'llamactl load':>14} {'llama-benchy':>13} {'diff':>7}")
    for c, lv, peer in rows:
        b = next((x for x in peer.get("benchmarks") or [] if x.get("concurrency") == c
                  and x.get("prompt_size") == args.pp and not x.get("is_context_prefill_phase")), {})
        ttft_ms = _mean(b.get("e2e_ttft")) or _mean(b.get("ttfr"))
        pairs = [("per-request decode tok/s", lv["per_request_tok_per_s"]["p50"], _mean(b.get("tg_req_throughput"))),
                 ("all requests tok/s", lv["output_tok_per_s"], _mean(b.get("tg_throughput"))),
                 ("TTFT s", lv["ttft_s"]["p50"], None if ttft_ms is None else ttft_ms / 1000)]
        for name, ours, theirs in pairs:
            diff = "" if not ours or not theirs else f"{100 * (ours - theirs) / theirs:+.1f}%"
            print(f"{c:>7} {name:<28} {_fmt(ours):>14} {_fmt(theirs):>13} {diff:>7}")
    print(f"raw results: {work}")


def _mean(m: object) -> float | None:
    if isinstance(m, dict):
        v = m.get("mean")
        return float(v) if isinstance(v, (int, float)) else None
    return float(m) if isinstance(m, (int, float)) else None


def _fmt(x: float | None) -> str:
    return "-" if x is None else (f"{x:.1f}" if x >= 1 else f"{x:.4f}")


if __name__ == "__main__":
    main()
