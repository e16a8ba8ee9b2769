"""The one error type llamactl raises for bad input or a failed step.

The CLI turns it into a single red line and a non-zero exit; nothing else
should reach the user as a traceback.
"""

from __future__ import annotations


class LlamactlError(Exception):
    """A failure the user can act on. ``hint`` says what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ToolchainMissing(LlamactlError):
    """A build tool is not installed; the message names what to install."""

    exit_code = 3
