"""Patch series (patches/<series>/NNNN-name.patch, git format-patch form) on the vendored tree.

Applied patches are commits on top of the base commit, matched to the series by
``git patch-id`` so a series applied once is recognised and skipped. ``apply`` is
atomic: on any failure the tree is reset to exactly where it was.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from llamactl.core import paths
from llamactl.core.errors import LlamactlError
from llamactl.source.git import Repo
from llamactl.core.hashing import sha256_file

APPLIED, NOT_APPLIED, CONFLICTS = "applied", "not applied", "conflicts"


@dataclass
class Patch:
    name: str
    path: Path
    sha256: str
    subject: str


@dataclass
class PatchState:
    patch: Patch
    state: str
    detail: str = ""


@dataclass
class ApplyResult:
    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    head: str = ""


def series_dir(series: str, root: Path | None = None) -> Path:
    return (root or paths.patches_dir()) / series


def load_series(series: str | None, root: Path | None = None, must_exist: bool = False) -> list[Patch]:
    if not series:
        return []
    d = series_dir(series, root)
    if not d.is_dir():
        if must_exist:
            known = ", ".join(sorted(p.name for p in d.parent.iterdir() if p.is_dir())) if d.parent.is_dir() else "none"
            raise LlamactlError(f"no patch series {series!r} ({d} does not exist)", hint=f"series: {known}")
        return []
    out = []
    for p in sorted(d.glob("*.patch")):
        text = p.read_text(errors="replace")
        m = re.search(r"^Subject: (?:\[PATCH[^\]]*\] )?(.*)$", text, re.M)
        out.append(Patch(p.name, p, sha256_file(p), m.group(1).strip() if m else p.stem))
    return out


def series_hashes(patches: list[Patch]) -> list[dict[str, str]]:
    return [{"name": p.name, "sha256": p.sha256} for p in patches]


# --- failure details ------------------------------------------------------------------------

_FAILED = re.compile(r"patch failed: (?P<file>[^:\n]+):(?P<line>\d+)")
_NOFILE = re.compile(r"error: (?P<file>[^:\n]+): (?P<why>does not exist in index|No such file or directory|already exists in index)")


def describe_failure(patch: Patch, git_output: str) -> str:
    """Name the patch, the file and the hunk that did not apply."""
    m = _FAILED.search(git_output)
    if m:
        file, line = m.group("file"), int(m.group("line"))
        return f"{patch.name}: {file} {_hunk_label(patch.path.read_text(errors='replace'), file, line)} does not apply"
    m = _NOFILE.search(git_output)
    if m:
        return f"{patch.name}: {m.group('file')}: {m.group('why')}"
    lines = [ln for ln in git_output.splitlines() if ln.startswith("error:")]
    return f"{patch.name}: {lines[0][7:] if lines else git_output.strip().splitlines()[-1:]}"


def _hunk_label(text: str, file: str, line: int) -> str:
    current = None
    n = 0
    for ln in text.splitlines():
        if ln.startswith("diff --git "):
            current = ln.split(" b/", 1)[-1]
            n = 0
        elif ln.startswith("@@") and current == file:
            n += 1
            m = re.match(r"@@ -(\d+)", ln)
            if m and int(m.group(1)) == line:
                return f"hunk #{n} ({ln.split('@@')[1].strip()})"
    return f"hunk at line {line}"


# --- state ----------------------------------------------------------------------------------


def _applied_prefix(repo: Repo, patches: list[Patch]) -> tuple[int, list[str]]:
    """How many leading patches are already commits on top of base; plus the extra commits."""
    commits = repo.commits_since_base()
    ids = [repo.commit_patch_id(c) for c in commits]
    n = 0
    for c_id, p in zip(ids, patches, strict=False):   # lengths differ (patches vs commits): only the common prefix counts
        if c_id is not None and c_id == repo.patch_id(p.path.read_text(errors="replace")):
            n += 1
        else:
            break
    return n, commits[n:]


def _virtual_apply(repo: Repo, patches: list[Patch]) -> list[tuple[Patch, str | None]]:
    """Apply patches in sequence to a throw-away index built from HEAD; worktree untouched."""
    results: list[tuple[Patch, str | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
        repo.git("read-tree", "HEAD", env=env)
        broken = False
        for p in patches:
            if broken:
                results.append((p, "not checked: an earlier patch does not apply"))
                continue
            cp = repo.git("apply", "--cached", str(p.path), env=env, check=False)
            if cp.returncode == 0:
                results.append((p, None))
            else:
                results.append((p, describe_failure(p, cp.stderr + cp.stdout)))
                broken = True
    return results


def status(tree: Path, series: str | None) -> list[PatchState]:
    repo = _repo(tree)
    patches = load_series(series)
    n, _extra = _applied_prefix(repo, patches)
    states = [PatchState(p, APPLIED) for p in patches[:n]]
    for p, err in _virtual_apply(repo, patches[n:]):
        states.append(PatchState(p, NOT_APPLIED if err is None else CONFLICTS, err or ""))
    return states


def check(tree: Path, series: str | None) -> list[PatchState]:
    """Dry run: raise if any pending patch would not apply."""
    states = status(tree, series)
    bad = [s for s in states if s.state == CONFLICTS]
    if bad:
        raise LlamactlError(f"patch {bad[0].detail}")
    return states


def apply(tree: Path, series: str | None) -> ApplyResult:
    repo = _repo(tree)
    patches = load_series(series)
    result = ApplyResult()
    if not patches:
        result.head = repo.head()
        return result
    n, extra = _applied_prefix(repo, patches)
    # uncommitted edits on top of a fully applied series are the patch developer's work in progress:
    # nothing to apply, so they stay (and the build key covers them); refused only when patches would land
    if (n < len(patches) or extra) and repo.is_dirty():
        raise LlamactlError(
            f"{tree} has uncommitted changes ({', '.join(repo.dirty_paths()[:3])})",
            hint="commit them (then `llamactl patch export`) or discard them before applying",
        )
    if extra:
        raise LlamactlError(
            f"{tree} has {len(extra)} commit(s) on top of the series that are not in patches/{series}/",
            hint="run `llamactl patch export` to save them, or `llamactl patch revert --force`",
        )
    result.skipped = [p.name for p in patches[:n]]
    orig = repo.head()
    try:
        for p in patches[n:]:
            cp = repo.git("am", "--quiet", "--keep-cr", str(p.path), check=False)
            if cp.returncode != 0:
                repo.git("am", "--abort", check=False)
                raise LlamactlError(f"patch {describe_failure(p, cp.stderr + cp.stdout)}",
                                    hint=f"tree left unchanged at {orig[:12]}")
            result.applied.append(p.name)
    except BaseException:
        repo.git("am", "--abort", check=False)
        repo.reset_hard(orig)
        raise
    result.head = repo.head()
    return result


def revert(tree: Path, force: bool = False, series: str | None = None) -> list[str]:
    """Back to the base commit. Refuses to drop work that is not in the series unless ``force``."""
    repo = _repo(tree)
    if repo.is_dirty() and not force:
        raise LlamactlError(f"{tree} has uncommitted changes", hint="use --force to discard them")
    patches = load_series(series)
    n, extra = _applied_prefix(repo, patches)
    if extra and not force:
        raise LlamactlError(
            f"{len(extra)} commit(s) on top of base are not in the series",
            hint="`llamactl patch export` saves them; --force drops them",
        )
    dropped = [repo.subject(c) for c in repo.commits_since_base()]
    repo.reset_hard(repo.base())
    return dropped


def export(tree: Path, series: str, root: Path | None = None) -> list[Path]:
    """Regenerate patches/<series>/ from the commits on top of base (ollama's format-patches)."""
    repo = _repo(tree)
    if not repo.commits_since_base():
        raise LlamactlError("no commits on top of the base commit to export")
    dest = series_dir(series, root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        repo.git("format-patch", "--quiet", "--zero-commit", "--no-signature", "--no-numbered",
                 "-o", tmp, f"{repo.base()}..HEAD")
        new = sorted(Path(tmp).glob("*.patch"))
        if dest.exists():
            for old in dest.glob("*.patch"):
                old.unlink()
        dest.mkdir(exist_ok=True)
        written = []
        for f in new:
            target = dest / f.name
            shutil.move(str(f), target)
            written.append(target)
    return written


def _repo(tree: Path) -> Repo:
    repo = Repo(tree)
    if not repo.exists():
        raise LlamactlError(f"{tree} is not a vendored tree", hint="run `llamactl vendor` first")
    return repo
