"""Thin wrapper over the git CLI for the vendored tree.

Commits made by llamactl use a fixed identity and date so that the same tree
and the same patches give the same commit ids on every machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from llamactl.core import proc

FIXED_ENV = {
    "GIT_AUTHOR_NAME": "llamactl",
    "GIT_AUTHOR_EMAIL": "llamactl@localhost",
    "GIT_COMMITTER_NAME": "llamactl",
    "GIT_COMMITTER_EMAIL": "llamactl@localhost",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000",
    "GIT_CONFIG_NOSYSTEM": "1",
}
BASE_TAG = "llamactl-base"


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = path

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(FIXED_ENV)
        env["HOME"] = env.get("HOME", "/tmp")
        if extra:
            env.update(extra)
        return env

    def git(self, *args: str, check: bool = True, input: bytes | None = None, env: dict[str, str] | None = None):
        return proc.run(
            ["git", "-c", "core.autocrlf=false", "-c", "advice.detachedHead=false", "-c", "commit.gpgsign=false", *args],
            cwd=self.path,
            env=self.env(env),
            check=check,
            input=input,
        )

    def out(self, *args: str) -> str:
        return self.git(*args).stdout.strip()

    def exists(self) -> bool:
        return (self.path / ".git").exists()

    def init_with_base(self, message: str) -> str:
        self.git("init", "-q", "-b", "main")
        self.git("add", "-A", "-f", ".")
        self.git("commit", "-q", "--no-verify", "-m", message)
        self.git("tag", "-f", BASE_TAG)
        return self.head()

    def head(self) -> str:
        return self.out("rev-parse", "HEAD")

    def base(self) -> str:
        return self.out("rev-parse", f"{BASE_TAG}^{{commit}}")

    def commits_since_base(self) -> list[str]:
        text = self.out("rev-list", "--reverse", f"{BASE_TAG}..HEAD")
        return text.split() if text else []

    def is_dirty(self) -> bool:
        return bool(self.out("status", "--porcelain", "--untracked-files=no"))

    def dirty_paths(self) -> list[str]:
        lines = self.out("status", "--porcelain", "--untracked-files=no").splitlines()
        return [ln[3:] for ln in lines]

    def diff_head(self) -> str:
        return self.git("diff", "HEAD", "--binary").stdout

    def patch_id(self, patch_text: str) -> str | None:
        cp = self.git("patch-id", "--stable", input=patch_text.encode())
        parts = cp.stdout.split()
        return parts[0] if parts else None

    def commit_patch_id(self, commit: str) -> str | None:
        show = self.git("show", "--format=", "--binary", commit).stdout
        return self.patch_id(show) if show.strip() else None

    def subject(self, commit: str) -> str:
        return self.out("log", "-1", "--format=%s", commit)

    def reset_hard(self, commit: str) -> None:
        self.git("reset", "-q", "--hard", commit)
