"""Time from `llamactl run PROFILE` to a healthy server, versus the same llama-server argv by hand.

    .venv/bin/python benchmarks/startup.py [PROFILE ...] [--runs N]

Also times `llamactl --help`. Prints medians, ratios and llamactl's overhead for each profile
(default: default and tiny-gemma4-mtp). Not a test: numbers only.
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


EXTRA: list[str] = []    # e.g. --set server_binary=PATH (--server-binary)


def via_llamactl(profile: str) -> float:
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "llamactl", "run", profile, "--json", "-q", *EXTRA],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env())
    buf = ""
    for line in p.stdout:
        buf += line
        if line.startswith("}"):
            break
    dt = time.monotonic() - t0
    CPU.append(_cpu_s(p.pid))
    EARLY.append(bool(json.loads(buf).get("early_start")))
    p.send_signal(signal.SIGINT)
    p.wait(timeout=30)
    return dt


CPU: list[float] = []      # llamactl's own CPU seconds up to "ready" (the server's not counted)
EARLY: list[bool] = []


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def help_time() -> tuple[float, float]:
    """(wall s, CPU s) of `llamactl --help`; CPU time is what a loaded machine does not inflate much."""
    import resource

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "llamactl", "--help"], capture_output=True, env=env(), check=True)
    wall = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def bare_python() -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.monotonic() - t0


def measure(profiles: list[str], runs: int) -> list[tuple[str, float, float | None, str]]:
    """(case, llamactl median s, raw median s or None, note) rows."""
    rows = []
    helps, cpus, bare = [], [], []
    for _ in range(runs):
        wall, cpu = help_time()
        helps.append(wall)
        cpus.append(cpu)
        bare.append(bare_python())
    rows.append(("llamactl --help", statistics.median(helps), None,
                 f"goal < 0.15 s; CPU {statistics.median(cpus):.3f} s; bare python start {statistics.median(bare):.3f} s"))
    for profile in profiles:
        cmd = json.loads(subprocess.run([sys.executable, "-m", "llamactl", "profile", "cmd", profile, "--json", *EXTRA],
                                        capture_output=True, text=True, env=env(), check=True).stdout)
        via_llamactl(profile)              # warm the page cache and the build/model caches
        ours, hand = [], []
        CPU.clear()
        EARLY.clear()
        for _ in range(runs):              # interleaved so drift hits both alike
            ours.append(via_llamactl(profile))
            hand.append(by_hand(cmd["argv"], cmd["url"]))
        m_ours, m_hand = statistics.median(ours), statistics.median(hand)
        rows.append((f"run {profile} -> healthy", m_ours, m_hand,
                     f"overhead {m_ours - m_hand:+.3f} s (goal <= +0.10 s); llamactl CPU {statistics.median(CPU):.3f} s; "
                     f"early start {sum(EARLY)}/{len(EARLY)}; "
                     f"ranges {min(ours):.3f}-{max(ours):.3f} / {min(hand):.3f}-{max(hand):.3f}"))
    return rows


def print_rows(title: str, rows: list[tuple[str, float, float | None, str]]) -> None:
    print(title)
    print(f"  {'case':<34} {'llamactl':>9} {'raw':>9} {'ratio':>7}  note")
    for case, ours, raw, note in rows:
        r = f"{raw:.3f} s" if raw is not None else "-"
        ratio = f"{ours / raw:.2f}x" if raw else "-"
        print(f"  {case:<34} {ours:>7.3f} s {r:>9} {ratio:>7}  {note}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("profiles", nargs="*", default=["default", "tiny-gemma4-mtp"])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--server-binary", help="run this llama-server instead of the cached build")
    a = ap.parse_args()
    if a.server_binary:
        EXTRA.extend(["--set", f"server_binary={a.server_binary}"])
    print_rows(f"llamactl start-up, {a.runs} runs each (median; raw = the same llama-server argv by hand):",
               measure(a.profiles, a.runs))


if __name__ == "__main__":
    main()
