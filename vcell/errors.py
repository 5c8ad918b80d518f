"""The one exception type users see: a message that names the file, key or value and a fix."""

from __future__ import annotations


class VCellError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits with status 2.

    Build the message so that it names *what* is wrong (file, key, value) and *how to fix it*;
    never let a raw traceback be the only explanation a user gets.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message, self.hint = message, hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")
