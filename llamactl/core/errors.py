"""The error types llamactl raises, and the one table of exit codes every command uses.

The CLI turns a LlamactlError into a single red line and the error's ``exit_code``;
nothing else should reach the user as a traceback (``--debug`` shows the cause chain).

Exit codes (also in the README):

====  ================  =====================================================================
code  name              meaning
====  ================  =====================================================================
0     OK                success (validate: every cell that ran passed)
1     FAILED            the work ran and found a failure: a validation cell failed, or a step
                        failed for a reason outside the other rows (port taken, download, ...)
2     BAD_INPUT         malformed input: command line, profile, matrix, --set, --cell, port,
                        path, server_binary; nothing was started
3     BUILD_FAILED      vendor, patch, toolchain or compile step failed
4     UNSUPPORTED       the build cannot run this profile (a value it lacks); refused before launch
5     SERVER_FAILED     llama-server exited, crashed or never became healthy
6     REGRESSION        bench --baseline / --build A --build B: slower beyond --fail-below,
                        outside the noise
70    INTERNAL_ERROR    a bug in llamactl: an unexpected exception (traceback with --debug)
130   INTERRUPTED       Ctrl-C or SIGTERM
====  ================  =====================================================================
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit status of ``llamactl``; one table for every command."""

    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    BUILD_FAILED = 3
    UNSUPPORTED = 4
    SERVER_FAILED = 5
    REGRESSION = 6
    INTERNAL_ERROR = 70
    INTERRUPTED = 130


class LlamactlError(Exception):
    """A failure the user can act on. ``hint`` says what to do about it."""

    exit_code: int = ExitCode.FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class BadInput(LlamactlError):
    """Malformed input (profile, matrix, option, path, binary); raised before anything starts."""

    exit_code = ExitCode.BAD_INPUT


class BuildFailed(LlamactlError):
    """Vendoring, patching or compiling llama.cpp failed."""

    exit_code = ExitCode.BUILD_FAILED


class ServerFailed(LlamactlError):
    """llama-server exited, crashed or never answered /health."""

    exit_code = ExitCode.SERVER_FAILED


class ToolchainMissing(BuildFailed):
    """A build tool is not installed; the message names what to install."""

    exit_code = ExitCode.BUILD_FAILED
