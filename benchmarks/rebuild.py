"""The patch developer's inner loop: `llamactl build` after a change, versus raw ninja for the same change.

    .venv/bin/python benchmarks/rebuild.py [--skip-cold] [--jobs N] [--file src/llama-adapter.cpp]

Works on a private copy of the project (its own vendor/llama.cpp, patches/ and a scratch patch),
so the checkout is never touched. Measures, in one run:

- cold build: `llamactl build` with an empty build cache (skipped by --skip-cold; then the
  shared cache's work directory must be warm, or it is warmed first and that time is shown);
- no-op build: `llamactl build` again (a cache hit) vs raw `cmake --build` with nothing to do;
- one-patch change: a new patch in the series that edits one file, vs raw ninja for that file;
- one-file edit: an uncommitted edit in vendor/llama.cpp, vs raw ninja for that file.

"Raw ninja" runs the manifest's own `cmake --build` command in the work directory after touching
exactly the files llamactl rewrote (their mtimes are restored afterwards, so the work directory
stays in step). Changes carry a nonce, so every run builds new keys. Not a test: numbers only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "commit.gpgsign=false"]


@dataclass
class Row:
    case: str
    ours: float
    raw: float | None
    steps: int | None
    note: str = ""

    @property
    def ratio(self) -> str:
        return f"{self.ours / self.raw:.2f}x" if self.raw else "-"


def env_for(home: Path, cache: Path | None) -> dict[str, str]:
    from llamactl.serve.profiles import ENV_VARS

    e = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    e.update(LLAMACTL_HOME=str(home), LLAMACTL_NO_PROGRESS="1", NO_COLOR="1")
    if cache is not None:
        e["LLAMACTL_CACHE"] = str(cache)
    return e


def llamactl_build(env: dict[str, str], jobs: int) -> tuple[float, dict]:
    t0 = time.monotonic()
    cp = subprocess.run([sys.executable, "-m", "llamactl", "build", "--json", "--jobs", str(jobs)],
                        capture_output=True, text=True, env=env)
    dt = time.monotonic() - t0
    if cp.returncode != 0:
        raise SystemExit(f"llamactl build failed:\n{cp.stderr[-2000:]}")
    return dt, json.loads(cp.stdout)


def raw_ninja(manifest: dict, touched: list[str]) -> float:
    """Time the manifest's `cmake --build` after touching ``touched`` and every file llamactl's sync wrote.

    The work dir is shared by builds of one backend and options, so the sync may also restore files
    another build changed there; raw ninja gets the same set, so the two compile the same steps.
    """
    src = Path(manifest["work_dir"]) / "src"
    written = (manifest.get("incremental") or {}).get("written") or []
    touched = sorted({*touched, *(p for p in written if (src / p).is_file())})
    saved = {p: (src / p).stat().st_mtime_ns for p in touched}
    try:
        for p in touched:
            os.utime(src / p)
        t0 = time.monotonic()
        subprocess.run(manifest["cmake"]["build"], check=True, capture_output=True)
        return time.monotonic() - t0
    finally:
        for p, ns in saved.items():   # back in step with the sync index; the objects stay newer
            os.utime(src / p, ns=(ns, ns))


def make_home(tmp: Path) -> Path:
    home = tmp / "home"
    (home / "vendor").mkdir(parents=True)
    shutil.copy2(ROOT / "vendor" / "sources.yaml", home / "vendor" / "sources.yaml")
    shutil.copytree(ROOT / "patches", home / "patches")
    shutil.copytree(ROOT / "profiles", home / "profiles")
    return home


def log(row: Row) -> Row:
    print(f"[rebuild] {row.case}: {row.ours:.2f} s, raw {row.raw if row.raw is None else round(row.raw, 2)}, "
          f"steps {row.steps}, {row.note}", file=sys.stderr, flush=True)
    return row


def steps(m: dict) -> int | None:
    return (m.get("incremental") or {}).get("ninja_steps")


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--skip-cold", action="store_true", help="use the shared cache (its work dir warm) instead of a cold one")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--file", default="src/llama-adapter.cpp", help="the file the patch and the edit change")
    ap.add_argument("--cache", type=Path, help="keep the cold cache here (default: a temp dir, removed)")


def measure(a: argparse.Namespace) -> tuple[str, list[Row], str]:
    """(title, rows, footer) for the four build cases."""
    rows: list[Row] = []
    nonce = time.strftime("%Y%m%d%H%M%S")
    with tempfile.TemporaryDirectory(prefix="llamactl-rebuild-") as t:
        tmp = Path(t)
        home = make_home(tmp)
        cache = None
        if not a.skip_cold:
            from llamactl.core import paths

            cache = a.cache or tmp / "cache"
            cache.mkdir(parents=True, exist_ok=True)
            if not (cache / "downloads").exists():
                (cache / "downloads").symlink_to(paths.downloads_dir())   # the sdist, not a build
        env = env_for(home, cache)
        subprocess.run([sys.executable, "-m", "llamactl", "vendor"], check=True, capture_output=True, env=env)
        tree = home / "vendor" / "llama.cpp"

        dt, m = llamactl_build(env, a.jobs)
        if a.skip_cold and (m["cached"] or not m.get("work_dir")):
            # a cache hit says nothing about the work dir: build a variant that compiles nothing new
            readme = tree / "README.md"
            readme.write_text(readme.read_text() + f"\n<!-- warm {nonce} -->\n")
            dt, m = llamactl_build(env, a.jobs)
            subprocess.run(["git", "checkout", "-q", "--", "README.md"], cwd=tree, check=True)
            rows.append(log(Row("work dir warm-up", dt, None, steps(m), "shared cache" if m["incremental"]["configured"] is False
                            else "shared cache, work dir was cold")))
        elif not a.skip_cold:
            rows.append(log(Row("cold build", dt, None, steps(m), "cache hit: --cache was warm" if m["cached"] else "empty cache")))

        dt, m0 = llamactl_build(env, a.jobs)
        raw = None
        if m0.get("work_dir"):
            t0 = time.monotonic()
            subprocess.run(m0["cmake"]["build"], check=True, capture_output=True)
            raw = time.monotonic() - t0
        rows.append(log(Row("no-op build", dt, raw, 0 if m0["cached"] else steps(m0), "cache hit" if m0["cached"] else "REBUILT")))

        # one patch added to the series, editing one file
        target = tree / a.file
        series = home / "patches" / "upstream"
        text = target.read_text()
        target.write_text(text + f"\n// llamactl rebuild benchmark {nonce} (patch)\n")
        subprocess.run([*GIT, "commit", "-qam", f"bench: touch {a.file}"], cwd=tree, check=True)
        subprocess.run([*GIT, "format-patch", "-q", "--zero-commit", "--no-signature", "-1", "-o", str(tmp / "p")],
                       cwd=tree, check=True)
        subprocess.run([*GIT, "reset", "-q", "--hard", "HEAD~1"], cwd=tree, check=True)
        n = len(list(series.glob("*.patch")))
        for p in (tmp / "p").glob("*.patch"):
            shutil.move(p, series / f"{n + 1:04d}-bench-touch.patch")
        dt, m1 = llamactl_build(env, a.jobs)
        rows.append(log(Row("one-patch change", dt, raw_ninja(m1, [a.file]), steps(m1),
                        f"{m1['incremental']['files_written']} file(s) synced")))

        # an uncommitted edit in vendor/llama.cpp on top of the applied series
        target.write_text(target.read_text() + f"// llamactl rebuild benchmark {nonce} (edit)\n")
        dt, m2 = llamactl_build(env, a.jobs)
        rows.append(log(Row("one-file edit", dt, raw_ninja(m2, [a.file]), steps(m2),
                        f"{m2['incremental']['files_written']} file(s) synced")))
        keys = {m0["key"], m1["key"], m2["key"]}

    title = f"llamactl build, {a.jobs} jobs, change in {a.file} ({'shared cache' if a.skip_cold else 'cold cache'}):"
    return title, rows, f"{len(keys)} distinct build keys for 3 distinct inputs"


def print_rows(title: str, rows: list[Row], footer: str = "") -> None:
    print(title)
    print(f"  {'case':<34} {'llamactl':>9} {'raw ninja':>9} {'ratio':>7} {'steps':>6}  note")
    for r in rows:
        raw = f"{r.raw:.2f} s" if r.raw is not None else "-"
        print(f"  {r.case:<34} {r.ours:>7.2f} s {raw:>9} {r.ratio:>7} {r.steps if r.steps is not None else '-':>6}  {r.note}")
    if footer:
        print(f"  {footer}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_args(ap)
    print_rows(*measure(ap.parse_args()))


if __name__ == "__main__":
    main()
