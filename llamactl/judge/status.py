"""The one set of result statuses, used by the checks, the cells, the reports and the CLI.

A ``str`` enum: ``Status.PASS == "pass"`` and JSON holds the plain lowercase word.
"""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """What a check or a cell came to.

    PASS/FAIL: judged, and the server did or did not do what the cell claims.
    WARN: a check's PASS with a caveat (answers that part at a near tie: numerics, not a bug); a cell
    whose checks pass or warn passes, with the caveat among its warnings.
    ERROR: the check could not judge (an unexpected exception, or the evidence it needs is missing).
    SKIP: not run on purpose (the build lacks a feature, the profile turns an endpoint off).
    XFAIL/XPASS: a cell with ``expect_failure`` that failed that way / passed anyway.
    INTERRUPTED: stopped by Ctrl-C or SIGTERM while running. NOT_RUN: never reached.
    """

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    ERROR = "error"
    SKIP = "skip"
    XFAIL = "xfail"
    XPASS = "xpass"
    INTERRUPTED = "interrupted"
    NOT_RUN = "not_run"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def label(self) -> str:
        """Upper-case name for tables and log lines (``NOT_RUN`` prints as ``NOT RUN``)."""
        return self.name.replace("_", " ")


# the run fails when any cell ends in one of these
BAD = frozenset({Status.FAIL, Status.ERROR, Status.XPASS, Status.INTERRUPTED, Status.NOT_RUN})

# the words of the closing line, in order; CI parses its start, "N passed, N failed"
SUMMARY_WORDS: list[tuple[Status, str]] = [
    (Status.PASS, "passed"), (Status.FAIL, "failed"), (Status.ERROR, "errors"), (Status.SKIP, "skipped"),
    (Status.XFAIL, "xfailed"), (Status.XPASS, "xpassed"), (Status.INTERRUPTED, "interrupted"),
    (Status.NOT_RUN, "not run"),
]
