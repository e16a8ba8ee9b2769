"""Carry a patch series to a new base: ``llamactl patch rebase --onto SOURCE``.

Works in a scratch clone of the new base (vendor/llama.cpp is never touched) and applies the
series patch by patch, the way a maintainer would by hand:

1. ``git apply --reverse --check`` succeeds: the change is in the new base already -> **already upstream**;
2. ``git apply --check -v`` succeeds: **applies cleanly**, or **applies with offsets** when a hunk
   moved (git's ``Hunk #N succeeded at L (offset K lines)``); then ``git am``;
3. else ``git am -3``: a clean three-way merge -> **applies with offsets** (detail: 3-way merge);
   one that leaves nothing to commit -> **already upstream**; a merge conflict -> **conflicts**, with
   the files, their conflict regions and the hunks that did not apply, and the conflicted files (with
   git's markers) plus the patch written out for the user to resolve.

A three-way merge needs the blobs the patch's ``index`` lines name: the objects of the series' own
base (the pinned source whose ``series:`` it is) are lent to the scratch clone through git's
alternates, read-only. ``write`` regenerates the series (``git format-patch``, same file names)
only when every patch resolves, dropping those already upstream.

Backend sub-series (``patches/<series>/<backend>/``) are rebased on top of the rebased series, each
on its own, as builds apply them.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from llamactl.core import locks, paths
from llamactl.core.errors import BadInput, LlamactlError
from llamactl.core import proc
from llamactl.core.progress import ProgressFn, report as report_progress
from llamactl.source.git import Repo
from llamactl.source.patches import Patch, load_series, series_dir

log = logging.getLogger(__name__)

CLEAN, OFFSETS, UPSTREAM, CONFLICTS = "clean", "offsets", "upstream", "conflicts"
LABELS = {CLEAN: "applies cleanly", OFFSETS: "applies with offsets", UPSTREAM: "already upstream", CONFLICTS: "conflicts"}

_OFFSET = re.compile(r"Hunk #(\d+) succeeded at (\d+) \(offset (-?\d+) lines?\)")
_FAILED = re.compile(r"patch failed: (?P<file>[^:\n]+):(?P<line>\d+)")
_CHECKING = re.compile(r"^Checking patch (.+)\.\.\.$", re.M)


@dataclass
class PatchOutcome:
    """How one patch of the series lands on the new base."""

    name: str                   # file name; a backend patch is "<backend>/<name>"
    subject: str
    status: str                 # clean | offsets | upstream | conflicts
    detail: str = ""
    offsets: list[str] = field(default_factory=list)         # "server-context.cpp hunk #1 at 840 (offset -35 lines)"
    failed_hunks: list[str] = field(default_factory=list)    # hunks plain `git apply` could not place
    conflicts: dict[str, int] = field(default_factory=dict)  # file -> conflict regions after the 3-way merge
    conflict_dir: str | None = None                          # where the conflicted files were written

    @property
    def label(self) -> str:
        return LABELS[self.status]


@dataclass
class RebaseReport:
    """The series on the new base: one outcome per patch, and what ``write`` did."""

    onto: str                   # source name of the new base
    onto_commit: str | None     # the llama.cpp commit it is (when known)
    series: str
    patches: list[PatchOutcome] = field(default_factory=list)
    written: list[str] = field(default_factory=list)   # patch files written (write=True)
    dropped: list[str] = field(default_factory=list)   # patches left out: already upstream
    conflicts_dir: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every patch resolves (applies, or is upstream already)."""
        return not any(p.status == CONFLICTS for p in self.patches)

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for p in self.patches if p.status == s) for s in LABELS}

    def to_dict(self) -> dict:
        return {"onto": self.onto, "onto_commit": self.onto_commit, "series": self.series, "ok": self.ok,
                "counts": self.counts(), "patches": [dict(vars(p), label=p.label) for p in self.patches],
                "written": self.written, "dropped": self.dropped, "conflicts_dir": self.conflicts_dir, "notes": self.notes}


# --- the core: trees in, outcomes out ------------------------------------------------------------


def rebase_tree(groups: list[tuple[str, list[Patch]]], new_base: Path, scratch: Path, *,
                lend_objects: list[Path] | None = None, conflicts_dir: Path | None = None,
                write_to: Path | None = None, progress: ProgressFn | None = None,
                upstream_ids: dict[str, str] | None = None) -> tuple[list[PatchOutcome], list[str]]:
    """Rebase patch ``groups`` (("", series), ("vulkan", backend patches), ...) onto the git repo ``new_base``.

    ``scratch`` (must not exist) receives a ``--shared`` clone of ``new_base``; ``lend_objects`` are git
    object directories whose blobs three-way merges may use (the old base's). Conflicted files go to
    ``conflicts_dir/<patch stem>/``. With ``write_to`` and no conflict, the rebased patches are written
    there (``<group>/`` for a backend group), same names, upstream ones dropped; returns the written paths.
    ``progress`` hears one item per patch. ``upstream_ids`` (``git patch-id --stable`` -> commit, from
    the new base's history: :func:`history_patch_ids`) marks a patch with the same patch-id as upstream.
    Raises LlamactlError when ``new_base`` is not a git repository.
    """
    if not (new_base / ".git").exists():
        raise LlamactlError(f"{new_base} is not a git repository (a vendored tree)")
    proc.run(["git", "clone", "-q", "--shared", str(new_base), str(scratch)])
    repo = Repo(scratch)
    alternates = scratch / ".git" / "objects" / "info" / "alternates"
    extra = [str(p) for p in (lend_objects or []) if p.is_dir()]
    if extra:
        with open(alternates, "a") as f:
            f.write("".join(f"{p}\n" for p in extra))
    main_head = repo.head()
    outcomes: list[PatchOutcome] = []
    heads: dict[str, tuple[str, list[tuple[Patch, str]]]] = {}
    total = sum(len(ps) for _g, ps in groups)
    what = f"rebasing onto {new_base.parent.name}"
    for group, patches in groups:
        if group:
            repo.reset_hard(heads[""][0] if "" in heads else main_head)
        start = repo.head()
        applied: list[tuple[Patch, str]] = []
        broken: str | None = None
        for p in patches:
            name = f"{group}/{p.name}" if group else p.name
            report_progress(progress, what, len(outcomes), total)
            out = _one(repo, p, name, conflicts_dir, upstream_ids or {})
            log.debug("%s: %s%s", name, out.label, f" ({out.detail})" if out.detail else "")
            if broken and out.status != CONFLICTS:
                out.detail = (out.detail + "; " if out.detail else "") + f"after {broken} conflicted (applied without it)"
            if out.status == CONFLICTS:
                broken = broken or name
            elif out.status != UPSTREAM:
                applied.append((p, repo.head()))
            outcomes.append(out)
        heads[group] = (repo.head() if group == "" else start, applied)
    report_progress(progress, what, total, total, finished=True)
    written: list[str] = []
    if write_to is not None and not any(o.status == CONFLICTS for o in outcomes):
        for group, patches in groups:
            written += _write(repo, write_to / group if group else write_to, heads[group][1], patches)
    return outcomes, written


def _one(repo: Repo, p: Patch, name: str, conflicts_dir: Path | None, upstream_ids: dict[str, str]) -> PatchOutcome:
    out = PatchOutcome(name, p.subject, CLEAN)
    path = str(p.path)
    if upstream_ids:
        pid = repo.patch_id(p.path.read_text(errors="replace"))
        if pid in upstream_ids:
            out.status, out.detail = UPSTREAM, f"same patch-id as upstream commit {upstream_ids[pid][:12]}"
            return out
    if repo.git("apply", "--check", "--reverse", path, check=False).returncode == 0:
        out.status, out.detail = UPSTREAM, "its change is in the new base (the patch reverse-applies)"
        return out
    check = repo.git("apply", "--check", "-v", path, check=False)
    text = check.stderr + check.stdout
    if check.returncode == 0:
        out.offsets = _offsets(text)
        if out.offsets:
            out.status, out.detail = OFFSETS, f"{len(out.offsets)} hunk(s) moved"
        am = repo.git("am", "--quiet", "--keep-cr", path, check=False)
        if am.returncode != 0:   # cannot happen after a clean check; report it rather than guess
            repo.git("am", "--abort", check=False)
            out.status, out.detail = CONFLICTS, _last_error(am.stderr + am.stdout)
        return out
    out.failed_hunks = _failed_hunks(p, text)
    before = repo.head()
    am = repo.git("am", "-3", "--keep-cr", path, check=False)
    amtext = am.stderr + am.stdout
    if am.returncode == 0:
        if repo.head() == before:
            out.status, out.detail = UPSTREAM, "a 3-way merge leaves nothing to apply"
        else:
            out.status, out.detail = OFFSETS, "applies by 3-way merge (its context changed)"
            out.offsets = _offsets(text)
        return out
    conflicted = [f for f in repo.out("diff", "--name-only", "--diff-filter=U").splitlines() if f]
    if not conflicted and "No changes" in amtext:
        repo.git("am", "--skip", check=False)
        out.status, out.detail = UPSTREAM, "a 3-way merge leaves nothing to apply"
        return out
    out.status = CONFLICTS
    for f in conflicted:
        try:
            body = (repo.path / f).read_text(errors="replace")
        except OSError:
            body = ""
        out.conflicts[f] = body.count("\n<<<<<<< ") + body.startswith("<<<<<<< ")
    if conflicted:
        out.detail = f"{len(conflicted)} file(s) conflict: " + ", ".join(f"{f} ({n} region(s))" for f, n in out.conflicts.items())
    else:
        out.detail = _last_error(amtext)
    if conflicts_dir is not None:
        d = conflicts_dir / Path(p.name).stem
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for f in conflicted:
            dest = d / f
            dest.parent.mkdir(parents=True, exist_ok=True)
            if (repo.path / f).is_file():
                shutil.copy2(repo.path / f, dest)
        shutil.copy2(p.path, d / p.name)
        out.conflict_dir = str(d)
    repo.git("am", "--abort", check=False)
    return out


def _offsets(text: str) -> list[str]:
    out, current = [], ""
    for ln in text.splitlines():
        m = _CHECKING.match(ln)
        if m:
            current = m.group(1)
            continue
        o = _OFFSET.search(ln)
        if o:
            out.append(f"{current} hunk #{o.group(1)} at {o.group(2)} (offset {o.group(3)} lines)")
    return out


def _failed_hunks(p: Patch, text: str) -> list[str]:
    from llamactl.source.patches import _hunk_label

    body = p.path.read_text(errors="replace")
    return [f"{m.group('file')} {_hunk_label(body, m.group('file'), int(m.group('line')))}" for m in _FAILED.finditer(text)]


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith(("error:", "fatal:"))]
    return (errs or lines or ["git am failed"])[0]


def _write(repo: Repo, dest: Path, applied: list[tuple[Patch, str]], patches: list[Patch]) -> list[str]:
    """Replace the group's *.patch files in ``dest`` by the rebased commits (same names)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        staged = []
        for p, commit in applied:
            text = repo.git("format-patch", "--zero-commit", "--no-signature", "--no-numbered", "--stdout", "-1", commit).stdout
            f = Path(tmp) / p.name
            f.write_text(text)
            staged.append(f)
        for old in patches:
            (dest / old.name).unlink(missing_ok=True)
        out = []
        for f in staged:
            target = dest / f.name
            shutil.move(str(f), target)
            out.append(str(target))
    return out


def history_patch_ids(git_dir: Path, rev: str, since: str | None = None, limit: int = 2000) -> dict[str, str]:
    """``git patch-id --stable`` -> commit for the commits of ``rev``'s history (``since..rev`` when
    ``since`` is a commit of that repository, else the newest ``limit``); merges are left out.
    Empty when git cannot read them."""
    rng = [f"{since}..{rev}"] if since and proc.run(["git", f"--git-dir={git_dir}", "cat-file", "-e", f"{since}^{{commit}}"],
                                                     check=False).returncode == 0 else [rev]
    log_ = proc.run(["git", f"--git-dir={git_dir}", "log", "-p", "--no-merges", "--format=commit %H", "-n", str(limit), *rng],
                    check=False)
    if log_.returncode != 0:
        return {}
    ids = proc.run(["git", "patch-id", "--stable"], input=log_.stdout.encode(), check=False)
    out: dict[str, str] = {}
    for ln in (ids.stdout or "").splitlines():
        parts = ln.split()
        if len(parts) == 2:
            out.setdefault(parts[0], parts[1])
    return out


# --- from source names ---------------------------------------------------------------------------


def series_groups(series: str) -> list[tuple[str, list[Patch]]]:
    """The series and its backend sub-series, as (group, patches); group "" is the series itself."""
    groups: list[tuple[str, list[Patch]]] = [("", load_series(series, must_exist=True))]
    d = series_dir(series)
    for sub in sorted(x for x in d.iterdir() if x.is_dir()):
        sub_patches = load_series(f"{series}/{sub.name}")
        if sub_patches:
            groups.append((sub.name, sub_patches))
    return groups


def old_base_objects(series: str, notes: list[str]) -> list[Path]:
    """Git object dirs holding the blobs the series was made against: the tree of the pinned source
    whose ``series:`` it is (vendor/llama.cpp when that is the vendored source, else its cached tree).
    A base that cannot be had (no network for a git source) is a note: 3-way merges then fail."""
    from llamactl.source.sources import load_lock
    from llamactl.source.vendor import cached_tree_path, ensure_cached_tree, read_provenance

    lock = load_lock()
    owners = [n for n, s in lock.sources.items() if s.series == series]
    prov = read_provenance()
    found: list[Path] = []
    if prov is not None and prov.source in owners and (paths.vendor_tree() / ".git").is_dir():
        return [paths.vendor_tree() / ".git" / "objects"]
    for name in owners:
        try:
            tree = cached_tree_path(name)
            with locks.hold(tree, f"the cached tree of {name}"):
                tree, _ = ensure_cached_tree(name)
            found.append(tree / ".git" / "objects")
            break
        except LlamactlError as exc:
            notes.append(f"the series' own base {name} is not available ({exc.message}): 3-way merges cannot use its blobs")
    return found


def rebase(onto: str, series: str | None = None, *, write: bool = False, write_to: Path | None = None,
           conflicts_dir: Path | None = None, progress: ProgressFn | None = None) -> RebaseReport:
    """Rebase ``series`` (default: the one ``onto`` belongs to) onto the source ``onto`` in a scratch clone.

    ``onto`` is any source name (``upstream@0.3.35``, ``NAME@COMMIT``, ``path:/dir@REV``); its tree is
    fetched into its cached tree as a build would (vendor/llama.cpp untouched). ``write``: regenerate
    patches/<series>/ (or ``write_to``) when every patch resolves. Conflicted files are written to
    ``conflicts_dir`` (default ``<cache>/rebase/<series>-onto-<source>/``).
    Raises BadInput for an unknown source or series, LlamactlError when the source cannot be fetched.
    """
    from llamactl.source.sources import PathSource, canonical, resolve
    from llamactl.source.vendor import cached_tree_path, ensure_cached_tree

    name, spec = resolve(onto)
    name = canonical(name)
    series = series or spec.series
    if not series:
        raise BadInput(f"{onto} has no patch series of its own", hint="pass --series NAME")
    groups = series_groups(series)
    report = RebaseReport(name, getattr(spec, "commit", None), series)
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", f"{series}-onto-{name}")[:120]
    work = paths.cache_root() / "rebase"
    work.mkdir(parents=True, exist_ok=True)
    if conflicts_dir is None:   # ours: last run's conflicts go; a directory the caller names is only added to
        conflicts_dir = work / slug
        shutil.rmtree(conflicts_dir, ignore_errors=True)
    lend = old_base_objects(series, report.notes)
    tree = cached_tree_path(name)
    with locks.hold(tree, f"the cached tree of {name}"):
        tree, prov = ensure_cached_tree(name)
        report.onto_commit = prov.upstream_commit or report.onto_commit
        ids: dict[str, str] = {}
        if isinstance(spec, PathSource):   # a checkout with history: a patch upstream took as a commit has its patch-id
            git_dir = spec.git_dir()
            if git_dir is not None:
                ids = history_patch_ids(git_dir, spec.rev, since=_series_base_commit(series))
        with tempfile.TemporaryDirectory(dir=work, prefix=f".{slug}.") as tmp:
            target = (write_to or series_dir(series)) if write else None
            report.patches, report.written = rebase_tree(groups, tree, Path(tmp) / "llama.cpp", lend_objects=lend,
                                                         conflicts_dir=conflicts_dir, write_to=target, progress=progress,
                                                         upstream_ids=ids)
    if any(p.conflict_dir for p in report.patches):
        report.conflicts_dir = str(conflicts_dir)
    if write and report.ok:
        report.dropped = [p.name for p in report.patches if p.status == UPSTREAM]
    return report


def _series_base_commit(series: str) -> str | None:
    """The upstream commit the series was made on (its owning source's pinned commit), when known."""
    from llamactl.source.sources import load_lock, load_versions

    for spec in load_lock().sources.values():
        if spec.series == series:
            commit = getattr(spec, "commit", None)
            package = getattr(spec, "package", None)
            rec = load_versions().get(package, {}).get(getattr(spec, "version", "")) if package else None
            return (rec.commit if rec and rec.commit else None) or commit
    return None
