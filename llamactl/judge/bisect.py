"""Find the first version, commit or patch that broke (or fixed) one validation cell.

The search runs git's own bisect (``git bisect`` in a scratch bare repository, where
``--no-checkout`` is implied), so its semantics are git's, ``skip`` included:

- **commits** of a ``path:`` source (a git checkout or bare git dir): the scratch repository
  shares the source's objects and bisects its real history;
- **patch prefixes** (``patches=True``): step K builds the source with the first K patches of the
  series; the prefixes become a chain of empty commits in the scratch repository;
- **versions** (an ordered list of source names, e.g. sdist versions): a chain as well.

The oracle is the cell's verdict from :func:`llamactl.judge.validate.run_cell`, or narrower:
``signature`` (the failure must show that text in its reason, assert line, frames or server log)
or ``metric``/``below`` (a performance regression). A step that cannot be built, cannot start,
cannot be judged, or fails another way than the signature is skipped (``git bisect skip``), not
blamed. ``fixed`` swaps the roles (git's old/new terms): the search finds the first step where the
cell passes.

Every step compiles in the work directory of the profile's source (``BuildRequest.work_source``),
so it recompiles only what changed since the step before. Each finished step is written to a state
file; ``resume=True`` replays those verdicts into a fresh bisect and goes on from there. Progress
goes to a callback; nothing here draws on the terminal.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from llamactl.build import srcsync
from llamactl.build.builder import BuildRequest, BuildResult, build, is_warm, source_family, work_dir_of
from llamactl.core import paths
from llamactl.core.errors import BadInput, LlamactlError
from llamactl.core.hashing import stable_key
from llamactl.core.progress import ProgressFn
from llamactl.judge.matrix import Cell
from llamactl.judge.status import Status
from llamactl.judge.validate import CellResult, run_cell, slug
from llamactl.serve import launcher, profiles
from llamactl.serve.dialect import parse_help

log = logging.getLogger(__name__)

GOOD, BAD, SKIP = "good", "bad", "skip"
METRICS = {"decode_tok_s": "tokens_per_s"}   # --metric name -> CellResult field
_FIXED_GIT_ENV = {"GIT_AUTHOR_NAME": "llamactl", "GIT_AUTHOR_EMAIL": "llamactl@localhost",
                  "GIT_COMMITTER_NAME": "llamactl", "GIT_COMMITTER_EMAIL": "llamactl@localhost",
                  "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000", "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000",
                  "GIT_CONFIG_NOSYSTEM": "1"}


# --- what is searched -------------------------------------------------------------------------


@dataclass
class Candidate:
    """One point of the search space and how to build it."""

    ref: str                 # what the user calls it: a commit id, a version, a patch count
    label: str               # one line: the commit's subject, the version, the patch file
    source: str              # the build's source (path:/dir@COMMIT, upstream@0.3.35, ...)
    series: str | None       # the build's series (None: the source's own; a directory for a prefix)
    no_patches: bool = False


@dataclass
class Space:
    """An ordered search space: ``kind`` is commits, patches or versions."""

    kind: str
    old: Candidate           # the older end (good; with fixed=True: still broken)
    new: Candidate           # the newer end (bad; with fixed=True: fixed)
    between: list[Candidate] = field(default_factory=list)   # linear spaces only, in order
    git_dir: Path | None = None                               # commits: the repository
    make: Callable[[str], Candidate] | None = None            # commits: a commit id -> its candidate

    def linear(self) -> list[Candidate]:
        return [self.old, *self.between, self.new]


def commit_space(source: str, good: str, bad: str, fixed: bool, series: str | None, no_patches: bool) -> Space:
    """Commits of a ``path:`` source (a git checkout or bare git dir) between two revisions.

    Raises BadInput when the source is not a git repository, a revision does not resolve, or the
    two are in the wrong order for the mode (``fixed``: ``good`` is the newer one).
    """
    from llamactl.source.sources import PathSource, resolve

    name, spec = resolve(source)
    if not isinstance(spec, PathSource) or spec.git_dir() is None:
        raise BadInput(f"source {source!r} has no commits to bisect",
                       hint="give a git checkout or bare git dir: --source path:/dir (versions and --patches need no git)")
    git_dir = spec.git_dir()
    assert git_dir is not None
    base = f"path:{spec.path}"

    def rev(r: str) -> str:
        cp = _git(git_dir, "rev-parse", "--verify", "--quiet", f"{r}^{{commit}}", check=False)
        if cp.returncode != 0 or not cp.stdout.strip():
            raise BadInput(f"{r!r} is not a commit of {spec.path}")
        return cp.stdout.strip()

    def make(sha: str) -> Candidate:
        subject = _git(git_dir, "log", "-1", "--format=%s", sha).stdout.strip()
        return Candidate(sha, subject, f"{base}@{sha}", series, no_patches)

    g, b = rev(good), rev(bad)
    old, new = (b, g) if fixed else (g, b)
    if old == new:
        raise BadInput(f"--good and --bad are the same commit {old[:12]}")
    if _git(git_dir, "merge-base", "--is-ancestor", old, new, check=False).returncode != 0:
        want = "--bad (still broken) must be an ancestor of --good (fixed)" if fixed else \
            "--good must be an ancestor of --bad"
        raise BadInput(f"{want}: {old[:12]} is not an ancestor of {new[:12]}",
                       hint="swap them" + ("" if fixed else ", or pass --fixed to find the commit that fixed it"))
    return Space("commits", make(old), make(new), git_dir=git_dir, make=make)


def patch_space(source: str, series: str, work: Path, good: str | None, bad: str | None, fixed: bool,
                series_root: Path | None = None) -> Space:
    """Prefixes of a patch series: candidate K applies patches 1..K (K = 0: none).

    The prefixes are written as series directories under ``work`` (each with the series'
    backend-only subdirectories, which every build of the series gets). ``good``/``bad`` take a
    count (``0``..``N``) or a patch file name; default: 0 and N (N and 0 with ``fixed``).
    Raises BadInput for an empty series or an endpoint that is not in it.
    """
    from llamactl.source.patches import load_series, series_dir

    patches = load_series(series, root=series_root, must_exist=True)
    if not patches:
        raise BadInput(f"patch series {series!r} is empty: nothing to bisect")
    src_dir = series_dir(series, series_root)
    cands: list[Candidate] = []
    for k in range(len(patches) + 1):
        d = work / "series" / f"prefix-{k:04d}"
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        for p in patches[:k]:
            shutil.copy2(p.path, d / p.name)
        for sub in src_dir.iterdir():
            if sub.is_dir():    # backend-only patches (patches/<series>/<backend>/)
                shutil.copytree(sub, d / sub.name)
        label = "no patches" if k == 0 else f"{patches[k - 1].name}: {patches[k - 1].subject}"
        cands.append(Candidate(str(k), label, source, str(d)))

    def index(ref: str | None, default: int, flag: str) -> int:
        if ref is None:
            return default
        if ref.isdigit() and int(ref) <= len(patches):
            return int(ref)
        for i, p in enumerate(patches, 1):
            if ref in (p.name, p.path.stem):
                return i
        raise BadInput(f"{flag} {ref!r} is not a patch count 0..{len(patches)} or a patch of {series!r}",
                       hint="patches: " + ", ".join(p.name for p in patches))

    g = index(good, len(patches) if fixed else 0, "--good")
    b = index(bad, 0 if fixed else len(patches), "--bad")
    old, new = (b, g) if fixed else (g, b)
    if old >= new:
        raise BadInput(f"with{'' if fixed else 'out'} --fixed the {'--bad' if fixed else '--good'} prefix must be "
                       f"shorter than the {'--good' if fixed else '--bad'} one (got {old} and {new})")
    return Space("patches", cands[old], cands[new], between=cands[old + 1:new])


def version_space(versions: list[str], source_of: Callable[[str], str], good: str, bad: str, fixed: bool,
                  series: str | None, no_patches: bool, label_of: Callable[[str], str] | None = None) -> Space:
    """An ordered list of versions (oldest first); ``source_of(v)`` names the source that builds ``v``.

    Raises BadInput when an endpoint is not in the list or they are in the wrong order.
    """
    for v, flag in ((good, "--good"), (bad, "--bad")):
        if v not in versions:
            raise BadInput(f"{flag} {v!r} is not a known version", hint="versions: " + ", ".join(versions[-12:]))
    g, b = versions.index(good), versions.index(bad)
    old, new = (b, g) if fixed else (g, b)
    if old >= new:
        raise BadInput(f"{'--bad' if fixed else '--good'} {versions[old]} must be older than "
                       f"{'--good' if fixed else '--bad'} {versions[new]}",
                       hint="swap them" + ("" if fixed else ", or pass --fixed to find the version that fixed it"))
    cands = [Candidate(v, label_of(v) if label_of else "", source_of(v), series, no_patches)
             for v in versions[old:new + 1]]
    return Space("versions", cands[0], cands[-1], between=cands[1:-1])


# --- git's bisect, driven ---------------------------------------------------------------------


@dataclass
class Outcome:
    """Where git's bisect stands: the next commit to test, or the answer."""

    next: str | None = None
    first: str | None = None                              # the first new (bad, or fixed) commit
    could_be: list[str] = field(default_factory=list)     # only skipped commits left: any of these


class GitBisect:
    """``git bisect`` in a scratch bare repository; ``new`` is bad (or fixed), ``old`` good (or broken)."""

    def __init__(self, scratch: Path) -> None:
        self.git_dir = scratch

    @classmethod
    def over_commits(cls, scratch: Path, source_git_dir: Path) -> "GitBisect":
        """A scratch bare clone sharing ``source_git_dir``'s objects (nothing is copied)."""
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.parent.mkdir(parents=True, exist_ok=True)
        cp = subprocess.run(["git", "clone", "-q", "--bare", "--shared", "--no-tags", str(source_git_dir), str(scratch)],
                            capture_output=True, text=True, env=_git_env())
        if cp.returncode != 0:
            raise LlamactlError(f"cannot make a scratch repository of {source_git_dir}: {cp.stderr.strip()}")
        return cls(scratch)

    @classmethod
    def over_chain(cls, scratch: Path, labels: list[str]) -> tuple["GitBisect", list[str]]:
        """A scratch bare repository holding a chain of empty commits, one per label; returns their ids."""
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        _git(scratch, "init", "-q", "--bare")
        empty = _git(scratch, "mktree", input="").stdout.strip()
        shas: list[str] = []
        for label in labels:
            parent = ["-p", shas[-1]] if shas else []
            shas.append(_git(scratch, "commit-tree", empty, *parent, "-m", label or "-").stdout.strip())
        _git(scratch, "update-ref", "refs/heads/main", shas[-1])
        _git(scratch, "symbolic-ref", "HEAD", "refs/heads/main")
        return cls(scratch), shas

    def start(self, new: str, old: str) -> Outcome:
        return self._run("start", "--no-checkout", new, old)

    def mark(self, commit: str, term: str) -> Outcome:
        """``term``: new, old or skip."""
        return self._run({"new": "bad", "old": "good", "skip": "skip"}[term], commit)

    def _run(self, *args: str) -> Outcome:
        cp = _git(self.git_dir, "bisect", *args, check=False)
        text = cp.stdout + cp.stderr
        m = re.search(r"^([0-9a-f]{40}) is the first bad commit", text, re.M)
        if m:
            return Outcome(first=m.group(1))
        if "could be any of:" in text:
            tail = text.split("could be any of:", 1)[1]
            return Outcome(could_be=re.findall(r"^([0-9a-f]{40})$", tail, re.M))
        if cp.returncode != 0:
            lines = [ln for ln in text.strip().splitlines() if ln.strip()]
            raise LlamactlError(f"git bisect {args[0]}: {' '.join(lines[:2]) or f'exit code {cp.returncode}'}")
        head = _git(self.git_dir, "rev-parse", "--verify", "--quiet", "BISECT_HEAD", check=False).stdout.strip()
        if not head:
            raise LlamactlError(f"git bisect {args[0]} gave no commit to test: {text.strip()[:200]}")
        return Outcome(next=head)

    def left(self) -> int:
        """Roughly how many steps are left, this one included (git's estimate, skips aside)."""
        cp = _git(self.git_dir, "rev-list", "--bisect-vars", "refs/bisect/bad", "--not", *self._refs("good"),
                  check=False)
        m = re.search(r"bisect_steps='?(\d+)", cp.stdout)
        return int(m.group(1)) + 1 if m else 0

    def _refs(self, kind: str) -> list[str]:
        cp = _git(self.git_dir, "for-each-ref", "--format=%(objectname)", f"refs/bisect/{kind}*", check=False)
        return cp.stdout.split()


def _git_env() -> dict[str, str]:
    return {**os.environ, **_FIXED_GIT_ENV, "GIT_TERMINAL_PROMPT": "0"}


def _git(git_dir: Path, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    cp = subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, text=True, input=input,
                        env=_git_env())
    if check and cp.returncode != 0:
        raise LlamactlError(f"git {args[0]} failed in {git_dir}: {(cp.stderr or cp.stdout).strip()[:300]}")
    return cp


# --- the oracle -------------------------------------------------------------------------------


@dataclass
class Oracle:
    """What makes a step bad: the cell failing (default), with ``signature`` in its evidence, or
    with ``metric`` (``decode_tok_s``: all slots' tokens/s of the concurrency check) below ``below``."""

    signature: str | None = None
    metric: str | None = None
    below: float | None = None

    def __post_init__(self) -> None:
        if self.metric is not None and self.metric not in METRICS:
            raise BadInput(f"--metric {self.metric!r} is not known", hint="metrics: " + ", ".join(METRICS))
        if (self.metric is None) != (self.below is None):
            raise BadInput("--metric and --below go together", hint="e.g. --metric decode_tok_s --below 40")

    def judge(self, res: CellResult) -> tuple[str, str]:
        """(good | bad | skip, why) for one cell result."""
        st = Status(res.status)
        if st in (Status.SKIP, Status.NOT_RUN):
            return SKIP, f"cannot run the cell: {res.reason}"
        if st == Status.ERROR:
            return SKIP, f"cannot judge: {res.reason}"
        failed = st in (Status.FAIL, Status.XFAIL)
        started = res.start_s is not None
        if self.metric is not None:
            if failed:
                return SKIP, f"no {self.metric}: the cell failed: {res.reason}"
            value = getattr(res, METRICS[self.metric], None)
            if value is None:
                return SKIP, f"the cell gave no {self.metric}"
            assert self.below is not None
            return (BAD if value < self.below else GOOD), f"{self.metric} {value:g} ({'<' if value < self.below else '>='} {self.below:g})"
        if not failed:
            return GOOD, "the cell passed"
        if self.signature is not None:
            if self.signature in evidence(res):
                return BAD, res.reason
            return SKIP, f"fails, but without {self.signature!r}: {res.reason}"
        if not started:
            return SKIP, f"cannot start (unrelated to the cell? pass --signature to blame it): {res.reason}"
        return BAD, res.reason


def evidence(res: CellResult) -> str:
    """Everything a failure shows: reason, assert line, frames, failed checks' details, the server log."""
    parts = [res.reason, *(str(c.detail) for c in res.checks if c.status != Status.PASS)]
    if res.crash:
        parts += [str(res.crash.get("assert_line") or ""), str(res.crash.get("error_line") or ""),
                  *res.crash.get("frames", []), *res.crash.get("last_lines", [])]
    if res.log:
        try:
            parts.append(Path(res.log).read_text(errors="replace"))
        except OSError:
            pass
    return "\n".join(parts)


def signature_of(res: CellResult) -> str | None:
    """The line that names a failure: the assert/abort line, else the root-cause line, else the reason."""
    if res.crash and (res.crash.get("assert_line") or res.crash.get("error_line")):
        return str(res.crash.get("assert_line") or res.crash.get("error_line"))
    return res.reason or None


# --- steps, state, result ---------------------------------------------------------------------


@dataclass
class Step:
    """One tested candidate."""

    ref: str
    label: str
    verdict: str                       # good | bad | skip (the cell's state, whatever the mode)
    why: str = ""
    status: str | None = None          # the cell's status (None: not built)
    signature: str | None = None
    log: str | None = None             # the server log of the cell
    build_log: str | None = None
    build_s: float | None = None
    build_cached: bool = False
    ninja_steps: int | None = None     # what the build compiled (0 when cached)
    files_written: int | None = None   # source files the sync rewrote (what changed since the step before)
    configured: bool = False           # the build ran CMake's configure (not only ninja)
    cell_s: float | None = None
    seconds: float = 0.0
    tokens_per_s: float | None = None


@dataclass
class Result:
    """What ``bisect`` found; ``first`` is None when it could not decide (see ``could_be``)."""

    profile: str
    cell: str
    space: str
    fixed: bool
    good: str
    bad: str
    first: str | None = None
    first_label: str | None = None
    could_be: list[str] = field(default_factory=list)
    signature: str | None = None       # the answer's failure line (with fixed: the failure it fixed)
    log: str | None = None
    build_log: str | None = None
    steps: list[Step] = field(default_factory=list)
    note: str | None = None            # why there is no answer although the search ended
    state_file: str = ""
    run_dir: str = ""
    interrupted: bool = False
    wall_s: float = 0.0

    @property
    def builds(self) -> int:
        """Steps that compiled something (not a cached build, not a failed one)."""
        return sum(1 for s in self.steps if s.build_s is not None and not s.build_cached)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["builds"] = self.builds
        d["found"] = self.first is not None
        return d


@dataclass
class Event:
    """Progress: ``kind`` is step (starting one), built, verdict, or done."""

    kind: str
    candidate: Candidate | None = None
    step: Step | None = None
    left: int | None = None            # git's estimate of the steps left after this one
    build: BuildResult | None = None
    result: Result | None = None


EventFn = Callable[[Event], None]


def state_dir() -> Path:
    p = paths.cache_root() / "bisect"
    p.mkdir(parents=True, exist_ok=True)
    return p


def _save(path: Path, request: dict, result: Result, done: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"request": request, "done": done, "result": result.to_dict()}, indent=2) + "\n")
    tmp.replace(path)


def load_state(path: Path) -> tuple[dict, bool, list[Step]]:
    """(request, done, steps) of a state file; raises BadInput when it is unreadable."""
    try:
        data = json.loads(path.read_text())
        steps = [Step(**{k: v for k, v in s.items() if k in Step.__dataclass_fields__})
                 for s in data["result"]["steps"]]
        return data["request"], bool(data.get("done")), steps
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"bisect state {path} is unreadable: {exc}", hint="start again without --resume") from exc


# --- the search -------------------------------------------------------------------------------


@dataclass
class Request:
    """A bisect as the user asked for it (also the key of its state file)."""

    profile: str
    cell: str
    good: str
    bad: str
    source: str
    space: str
    fixed: bool = False
    signature: str | None = None
    metric: str | None = None
    below: float | None = None
    series: str | None = None
    no_patches: bool = False

    def key(self) -> str:
        return stable_key(asdict(self))


Evaluate = Callable[[Candidate, int], Step]


def search(space: Space, evaluate: Evaluate, *, fixed: bool = False, scratch: Path, done_steps: list[Step] | None = None,
           on_step: Callable[[Step, Result], None] | None = None, progress: EventFn | None = None,
           result: Result) -> Result:
    """Drive git's bisect over ``space``, calling ``evaluate`` for each candidate it picks.

    ``done_steps`` (from a state file) are replayed first without evaluating them again.
    ``on_step`` runs after each new step (the state file is written there). A KeyboardInterrupt
    from ``evaluate`` marks the result interrupted and is raised again.
    """
    if space.kind == "commits":
        assert space.git_dir is not None and space.make is not None
        engine = GitBisect.over_commits(scratch, space.git_dir)
        make = space.make
        by_sha: dict[str, Candidate] = {space.old.ref: space.old, space.new.ref: space.new}

        def cand(sha: str) -> Candidate:
            if sha not in by_sha:
                by_sha[sha] = make(sha)
            return by_sha[sha]

        def sha_of(ref: str) -> str:
            return ref
        new_sha, old_sha = space.new.ref, space.old.ref
    else:
        chain = space.linear()
        engine, shas = GitBisect.over_chain(scratch, [c.ref for c in chain])
        lookup = dict(zip(shas, chain, strict=True))
        ref_to_sha = {c.ref: s for s, c in lookup.items()}

        def cand(sha: str) -> Candidate:
            return lookup[sha]

        def sha_of(ref: str) -> str:
            return ref_to_sha[ref]
        new_sha, old_sha = shas[-1], shas[0]

    def term(verdict: str) -> str:
        if verdict == SKIP:
            return "skip"
        return "new" if (verdict == BAD) != fixed else "old"

    outcome = engine.start(new_sha, old_sha)
    known = {s.ref for s in done_steps or []}
    for s in done_steps or []:   # replay: only the steps this search can use
        result.steps.append(s)
        try:
            sha = sha_of(s.ref)
        except KeyError:
            continue
        if outcome.next is not None:
            outcome = engine.mark(sha, term(s.verdict))
    n = len(result.steps)
    while outcome.next is not None:
        sha = outcome.next
        c = cand(sha)
        if c.ref in known:    # a replayed step git asks for again (it was skipped): do not loop
            outcome = engine.mark(sha, "skip")
            continue
        if progress:
            progress(Event("step", candidate=c, left=engine.left()))
        n += 1
        step = evaluate(c, n)
        result.steps.append(step)
        known.add(c.ref)
        if on_step:
            on_step(step, result)
        outcome = engine.mark(sha, term(step.verdict))
    if outcome.first is not None:
        first = cand(outcome.first)
        result.first, result.first_label = first.ref, first.label
    result.could_be = [cand(s).ref for s in outcome.could_be]
    return result


def bisect(req: Request, *, base: profiles.Resolved, cell: Cell, space: Space, resume: bool = False,
           progress: EventFn | None = None, jobs: int | None = None, build_progress: ProgressFn | None = None) -> Result:
    """Bisect ``space`` for the first candidate where ``cell`` of ``base`` turns bad (or, ``fixed``, good).

    Each step builds its candidate (incrementally, in the work directory of the profile's source) and
    runs the one cell. The state file (``state_dir()/<key>.json``) is written after every step;
    ``resume`` replays it. When the answer was never tested itself (the ``bad`` end, say), it is
    run once more for its signature and log. Ctrl-C (KeyboardInterrupt) stops the running build or
    server, saves the state with ``interrupted`` and raises again.

    Raises:
        BadInput: ``resume`` without a state file for this request.
        LlamactlError: git cannot bisect (e.g. the revisions are unrelated).
    """
    oracle = Oracle(req.signature, req.metric, req.below)
    key = req.key()
    sdir = state_dir()
    state = sdir / f"{key}.json"
    work = sdir / key
    done: list[Step] = []
    if resume:
        if not state.exists():
            raise BadInput("no interrupted bisect with these arguments to resume", hint=f"looked for {state}")
        _request, _finished, done = load_state(state)
    result = Result(base.name, cell.id, space.kind, req.fixed, req.good, req.bad, state_file=str(state))
    run_dir = launcher.new_run_dir(f"bisect-{slug(base.name)}")
    result.run_dir = str(run_dir)
    t0 = time.monotonic()
    work_source = pick_work_dir(base, space)
    log.info("bisect steps compile in the work directory of %s", work_source or "each step's source")

    def evaluate(c: Candidate, n: int) -> Step:
        return run_step(c, n, base=base, cell=cell, oracle=oracle, run_dir=run_dir, work_source=work_source,
                        jobs=jobs, progress=progress, build_progress=build_progress)

    def saved(_step: Step, res: Result) -> None:
        res.wall_s = round(time.monotonic() - t0, 3)
        _save(state, asdict(req), res, done=False)
        if progress:
            progress(Event("verdict", step=_step))

    try:
        search(space, evaluate, fixed=req.fixed, scratch=work / "scratch.git", done_steps=done, on_step=saved,
               progress=progress, result=result)
        tested = {s.ref: s for s in result.steps}
        if result.first is not None and result.first not in tested:   # the --bad end: never run so far
            first = _candidate(space, result.first)
            if progress:
                progress(Event("step", candidate=first, left=1))
            step = evaluate(first, len(result.steps) + 1)
            result.steps.append(step)
            saved(step, result)
            tested[first.ref] = step
            if step.verdict != (GOOD if req.fixed else BAD):
                result.note = (f"{'--good' if req.fixed else '--bad'} {first.ref} is not "
                               f"{'fixed' if req.fixed else 'bad'} here ({step.verdict}: {step.why}); check the endpoints")
                result.first = result.first_label = None
        answer = tested.get(result.first or "")
        if answer is not None:
            result.signature, result.log, result.build_log = answer.signature, answer.log, answer.build_log
            if req.fixed:   # the answer passes: the signature is that of the failure it fixed
                broken = [s for s in result.steps if s.verdict == BAD and s.signature]
                result.signature = broken[-1].signature if broken else None
    except KeyboardInterrupt:
        result.interrupted = True
        result.wall_s = round(time.monotonic() - t0, 3)
        _save(state, asdict(req), result, done=False)
        raise
    finally:
        shutil.rmtree(work / "scratch.git", ignore_errors=True)
    result.wall_s = round(time.monotonic() - t0, 3)
    _save(state, asdict(req), result, done=True)
    if progress:
        progress(Event("done", result=result))
    return result


def pick_work_dir(base: profiles.Resolved, space: Space) -> str | None:
    """The source whose work directory the steps compile in (None: each step's own family).

    Patch prefixes build the profile's source itself. Versions share the source's ``NAME@`` work
    directory; when that was never built, the pinned source's is used if it was. Commits of a
    ``path:`` checkout use whichever of the profile source's two work directories (``NAME@`` and
    ``NAME``) holds the sources closest to the older end (fewest differing files), so the first step
    is incremental too; a cold build only when neither was ever built.
    """
    b = base.profile.build
    if space.kind == "patches":
        return None
    options = [source_family(f"{b.source}@x") or b.source, b.source]
    warm = []
    for name in options:
        req = BuildRequest(source=space.old.source, backend=b.backend, gpu_targets=b.gpu_targets,
                           cmake_options=list(b.cmake_options), no_patches=space.old.no_patches, work_source=name)
        work = work_dir_of(req, space.old.series if space.old.series is not None else b.series)
        if is_warm(work):
            warm.append((name, work))
    if not warm:
        return options[0] if space.kind == "commits" else None
    if space.kind != "commits" or space.git_dir is None or len(warm) == 1:
        return warm[0][0]
    want = srcsync.tree_entries(space.git_dir, space.old.ref)

    def distance(work: Path) -> int:
        have = srcsync.load_index(work / "src.index.json")
        return sum(1 for p, (mode, oid) in want.items() if have.get(p, [None, None])[:2] != [mode, oid]) + \
            sum(1 for p in have if p not in want)
    return min(warm, key=lambda nw: distance(nw[1]))[0]


def _candidate(space: Space, ref: str) -> Candidate:
    if space.kind == "commits" and space.make is not None:
        return space.make(ref)
    return next(c for c in space.linear() if c.ref == ref)


def default_series(base: profiles.Resolved) -> str | None:
    """The series the profile builds with: its own ``build.series``, else its source's (the lock's)."""
    b = base.profile.build
    if b.series is not None or b.no_patches:
        return b.series
    from llamactl.source.sources import resolve

    try:
        return resolve(b.source)[1].series
    except LlamactlError:
        return None


def run_step(c: Candidate, n: int, *, base: profiles.Resolved, cell: Cell, oracle: Oracle, run_dir: Path,
             work_source: str | None, jobs: int | None = None, progress: EventFn | None = None,
             build_progress: ProgressFn | None = None) -> Step:
    """Build one candidate and run the cell; a build that fails is a skip. KeyboardInterrupt passes.

    ``progress`` hears the step's events (built), ``build_progress`` the compile's ninja steps.
    """
    t0 = time.monotonic()
    step = Step(c.ref, c.label, SKIP)
    b = base.profile.build
    req = BuildRequest(source=c.source, backend=b.backend, gpu_targets=b.gpu_targets,
                       series=c.series if c.series is not None else b.series,
                       no_patches=c.no_patches or (b.no_patches and c.series is None),
                       cmake_options=list(b.cmake_options), jobs=jobs or os.cpu_count() or 2,
                       aside=True, work_source=work_source)
    tree: Path | None = None
    try:
        tree = _fresh_tree(c.source)
        res = build(req, build_progress)
    except LlamactlError as exc:
        step.why = f"cannot be built: {exc.message}"
        step.seconds = round(time.monotonic() - t0, 3)
        log.info("step %s: %s", c.ref, step.why)
        return step
    finally:
        if tree is not None:
            shutil.rmtree(tree, ignore_errors=True)   # a per-commit export: the build has what it needs
    inc = res.manifest.get("incremental", {})
    step.build_s, step.build_cached = round(res.seconds, 3), res.cached
    step.ninja_steps = 0 if res.cached else inc.get("ninja_steps")
    step.files_written = 0 if res.cached else inc.get("files_written")
    step.configured = bool(not res.cached and inc.get("configured"))
    step.build_log = res.manifest.get("log")
    if progress:
        progress(Event("built", candidate=c, step=step, build=res))
    binary = launcher.Binary(res.binary, parse_help(res.help_text), res.manifest)
    step_dir = run_dir / f"{n:02d}-{slug(c.ref)[:16]}"
    step_dir.mkdir(parents=True, exist_ok=True)
    t1 = time.monotonic()
    cell_res = run_cell(base, cell, binary, step_dir)
    step.cell_s = round(time.monotonic() - t1, 3)
    step.status = Status(cell_res.status).value
    step.verdict, step.why = oracle.judge(cell_res)
    step.signature = signature_of(cell_res) if step.verdict != GOOD else None
    step.log = cell_res.log
    step.tokens_per_s = cell_res.tokens_per_s
    step.seconds = round(time.monotonic() - t0, 3)
    return step


def _fresh_tree(source: str) -> Path | None:
    """The cached-tree directory a source at one commit or version is about to get, if it has none
    yet (removed after the step: one full tree per step would fill the cache)."""
    if "@" not in source:
        return None
    from llamactl.source.vendor import cached_tree_path

    tree = cached_tree_path(source)
    return None if tree.exists() else tree.parent


# --- from the command line's words ------------------------------------------------------------


def one_cell(base: profiles.Resolved, filters: list[str]) -> Cell:
    """The one matrix cell ``--cell`` picks (key=value filters or a cell's name/id).

    Raises BadInput when none or several match (naming them).
    """
    from llamactl.judge.matrix import expand, select

    cells = select(expand(base.profile.matrix, f"{base.path} matrix"), filters)
    if len(cells) != 1:
        raise BadInput(f"--cell {' '.join(filters)} selects {len(cells)} cells of {base.name}; bisect runs one",
                       hint="cells: " + "; ".join(c.id for c in cells))
    return cells[0]


def make_space(req: Request, base: profiles.Resolved) -> Space:
    """The search space ``req`` names: patch prefixes, commits of a path: source, or versions.

    Raises BadInput for a source without history to search, or endpoints outside it.
    """
    work = state_dir() / req.key()
    series = req.series if req.series is not None else default_series(base)
    if req.space == "patches":
        if not series:
            raise BadInput(f"{base.name} builds without a patch series: --patches has nothing to bisect",
                           hint="name one with --series NAME (patches/NAME/) or a directory")
        return patch_space(req.source, series, work, req.good or None, req.bad or None, req.fixed)
    if not req.good or not req.bad:
        raise BadInput("--good and --bad are required (except with --patches)")
    if req.source.startswith("path:"):
        return commit_space(req.source, req.good, req.bad, req.fixed, None if req.no_patches else series,
                            req.no_patches)
    from llamactl.source.sources import PypiSdistSource, load_lock, locked_version, versions_between

    name = req.source.partition("@")[0]
    spec = load_lock().sources.get(name)
    if isinstance(spec, PypiSdistSource):
        versions = versions_between(name, req.good, req.bad)
        def label(v: str) -> str:   # the llama.cpp commit an sdist carries, once recorded
            entry = locked_version(spec.package, v)
            return f"llama.cpp {entry.commit[:9]}" if entry and entry.commit else ""

        return version_space(versions, lambda v: f"{name}@{v}", req.good, req.bad, req.fixed,
                             None if req.no_patches else series, req.no_patches, label)
    raise BadInput(f"source {req.source!r} has no history here to bisect",
                   hint="bisect versions (--source upstream --good 0.3.30 --bad 0.3.36), the commits of a "
                        "checkout (--source path:/dir) or the series (--patches)")
