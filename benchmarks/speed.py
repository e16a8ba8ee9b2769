"""Every speed figure of issue 10 in one run, as ratios: start-up (startup.py) and rebuilds (rebuild.py).

    .venv/bin/python benchmarks/speed.py [--skip-cold] [--runs N] [--jobs N]

The cold build takes minutes (about 9 on 2 cores); --skip-cold uses the shared cache's warm work dir.
Not a test: numbers only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rebuild  # noqa: E402
import startup  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--profiles", nargs="*", default=["default", "tiny-gemma4-mtp"])
    rebuild.add_args(ap)
    a = ap.parse_args()
    start_rows = startup.measure(a.profiles, a.runs)
    build = rebuild.measure(a)
    startup.print_rows(f"llamactl start-up, {a.runs} runs each (median; raw = the same llama-server argv by hand):",
                       start_rows)
    rebuild.print_rows(*build)


if __name__ == "__main__":
    main()
