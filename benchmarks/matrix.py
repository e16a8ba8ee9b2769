"""A validation matrix's wall time versus the sum of its cells' server work.

    .venv/bin/python benchmarks/matrix.py [PROFILE] [--runs N]

Runs `llamactl validate PROFILE` N times (warm caches: the build and models are cached) and prints,
per run and as medians: the process's wall time from exec to exit, the matrix's own `wall_s`, the
sum of its cells' `seconds` (each cell: server start, checks, server stop), and llamactl's overhead
over that sum, absolute and in percent (goal: within 3%). Not a test: numbers only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def env() -> dict[str, str]:
    from llamactl.serve.profiles import ENV_VARS

    e = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    e.update(LLAMACTL_NO_PROGRESS="1", NO_COLOR="1")
    return e


def once(profile: str, out: Path) -> tuple[float, dict]:
    t0 = time.monotonic()
    cp = subprocess.run([sys.executable, "-m", "llamactl", "validate", profile, "--no-env", "--json-out", str(out)],
                        capture_output=True, text=True, env=env())
    wall = time.monotonic() - t0
    if cp.returncode not in (0, 1):
        raise SystemExit(f"validate exited {cp.returncode}: {cp.stderr.strip()[-500:]}")
    return wall, json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("profile", nargs="?", default="tiny-gemma4-mtp")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        once(a.profile, Path(tmp) / "warm.json")          # warm the build stamp, models and page cache
        for i in range(a.runs):
            proc_wall, d = once(a.profile, Path(tmp) / f"{i}.json")
            cells = sum(c["seconds"] or 0 for c in d["cells"])
            rows.append((proc_wall, d["wall_s"], cells, len(d["cells"])))
    print(f"validate {a.profile}: {rows[0][3]} cells, {a.runs} runs (warm caches)")
    print(f"  {'process wall':>13} {'matrix wall_s':>14} {'sum of cells':>13} {'overhead':>10} {'%':>7}")
    for proc_wall, wall, cells, _ in rows:
        print(f"  {proc_wall:>11.2f} s {wall:>12.2f} s {cells:>11.2f} s {proc_wall - cells:>+8.2f} s "
              f"{100 * (proc_wall - cells) / cells:>6.1f}%")
    pw, cw = statistics.median(r[0] for r in rows), statistics.median(r[2] for r in rows)
    mw = statistics.median(r[1] for r in rows)
    print(f"  median: process {pw:.2f} s, matrix {mw:.2f} s, cells {cw:.2f} s; overhead of the process "
          f"{100 * (pw - cw) / cw:.1f}%, of the matrix {100 * (mw - cw) / cw:.1f}% (goal: within 3%)")


if __name__ == "__main__":
    main()
