"""Time from `llamactl run PROFILE` to a healthy server, versus the same llama-server argv by hand.

    .venv/bin/python benchmarks/startup.py [PROFILE] [--runs N]

Prints the median and spread of both, and llamactl's overhead. Not a test: numbers only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import httpx

from llamactl.serve.profiles import ENV_VARS


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    e.update(LLAMACTL_NO_PROGRESS="1", NO_COLOR="1")
    return e


def via_llamactl(profile: str) -> float:
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "llamactl", "run", profile, "--json", "-q"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env())
    buf = ""
    for line in p.stdout:
        buf += line
        if line.startswith("}"):
            break
    dt = time.monotonic() - t0
    json.loads(buf)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=30)
    return dt


def by_hand(argv: list[str], url: str) -> float:
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with httpx.Client(timeout=2) as c:
            while True:
                try:
                    if c.get(f"{url}/health").status_code == 200:
                        return time.monotonic() - t0
                except httpx.TransportError:
                    pass
                if p.poll() is not None:
                    raise SystemExit(f"llama-server exited with {p.returncode}")
                time.sleep(0.01)
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("profile", nargs="?", default="default")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    cmd = json.loads(subprocess.run([sys.executable, "-m", "llamactl", "profile", "cmd", a.profile, "--json"],
                                    capture_output=True, text=True, env=env(), check=True).stdout)
    via_llamactl(a.profile)              # warm the page cache and the build/model caches
    ours, hand = [], []
    for _ in range(a.runs):              # interleaved so drift hits both alike
        ours.append(via_llamactl(a.profile))
        hand.append(by_hand(cmd["argv"], cmd["url"]))
    m_ours, m_hand = statistics.median(ours), statistics.median(hand)
    print(f"profile {a.profile}, {a.runs} runs each (median, min-max):")
    print(f"  llamactl run -> healthy : {m_ours:.3f} s  ({min(ours):.3f}-{max(ours):.3f})")
    print(f"  llama-server by hand    : {m_hand:.3f} s  ({min(hand):.3f}-{max(hand):.3f})")
    print(f"  llamactl overhead       : {m_ours - m_hand:+.3f} s")


if __name__ == "__main__":
    main()
