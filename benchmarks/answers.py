"""What the right-answers checks cost: a validation matrix with them and without them, interleaved.

    .venv/bin/python benchmarks/answers.py [PROFILE ...] [--runs N] [--cold-references]

For each profile (default: `default` and `tiny-gemma4-mtp`), runs `llamactl validate PROFILE` N times
with the checks (`harness.answers: true`, the default) and N times without (`--set
harness.answers=false`, what validate did before them), alternating, and prints per profile the
median matrix wall time (`wall_s`) of each arm, the added seconds and percent, and the time each
answer check took per cell (medians). `--cold-references` empties the twins' answer cache
(`LLAMACTL_NO_ANSWER_CACHE=1`) so every run starts its twins, as a first run does. Not a test:
numbers only (the issue's goal: within 30% of the matrix without them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ANSWER_CHECKS = ("answers", "lossless_drafting", "slot_isolation", "repeatable", "kv_quality")


def env(cold: bool) -> dict[str, str]:
    from llamactl.serve.profiles import ENV_VARS

    e = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    e.update(LLAMACTL_NO_PROGRESS="1", NO_COLOR="1")
    if cold:
        e["LLAMACTL_NO_ANSWER_CACHE"] = "1"
    return e


def once(profile: str, out: Path, answers: bool, cold: bool) -> dict:
    extra = [] if answers else ["--set", "harness.answers=false"]
    cp = subprocess.run([sys.executable, "-m", "llamactl", "validate", profile, "--no-env", "--json-out", str(out),
                         *extra], capture_output=True, text=True, env=env(cold))
    if cp.returncode not in (0, 1):
        raise SystemExit(f"validate exited {cp.returncode}: {cp.stderr.strip()[-500:]}")
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("profiles", nargs="*", default=["default", "tiny-gemma4-mtp"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cold-references", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for profile in a.profiles:
            once(profile, Path(tmp) / "warm.json", True, False)      # build stamp, models, twins' answers
            walls: dict[bool, list[float]] = {True: [], False: []}
            per_check: dict[str, list[float]] = defaultdict(list)
            statuses: dict[str, int] = defaultdict(int)
            for i in range(a.runs):
                for on in (False, True):
                    d = once(profile, Path(tmp) / f"{profile}-{i}-{on}.json", on, a.cold_references)
                    walls[on].append(d["wall_s"])
                    if on:
                        for c in d["cells"]:
                            for chk in c["checks"]:
                                if chk["name"] in ANSWER_CHECKS:
                                    per_check[chk["name"]].append(chk["seconds"])
                                    statuses[f"{chk['name']}:{chk['status']}"] += 1
            off, on_ = statistics.median(walls[False]), statistics.median(walls[True])
            print(f"validate {profile}: {a.runs} runs per arm{' (twins started every run)' if a.cold_references else ''}")
            print(f"  without the answer checks  {off:7.2f} s   (runs: {', '.join(f'{w:.2f}' for w in walls[False])})")
            print(f"  with the answer checks     {on_:7.2f} s   (runs: {', '.join(f'{w:.2f}' for w in walls[True])})")
            print(f"  added                      {on_ - off:+7.2f} s   {100 * (on_ - off) / off:+.0f}%")
            for name in ANSWER_CHECKS:
                xs = per_check.get(name) or [0.0]
                print(f"    {name:<18} median {statistics.median(xs):6.3f} s per cell, max {max(xs):6.3f} s")
            print("    statuses: " + ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items())))


if __name__ == "__main__":
    main()
