"""Errors a restart cannot fix, and the exit code that tells a launcher so.

A task that exits with EXIT_UNRECOVERABLE has printed `error: <why>` as its last line;
the local launcher fails the job with that reason instead of spending restarts on it.
Pure Python: launchers import it without TensorFlow.
"""

from __future__ import annotations

import re

EXIT_UNRECOVERABLE = 4

# The assertion message of the input pipeline's `data.on_bad_file: fail` check.
BAD_FILE_MESSAGE = "bad image file (data.on_bad_file: fail):"
_BAD_FILE = re.compile(re.escape(BAD_FILE_MESSAGE) + r"\]?\s*\[?\[?([^\]\n]+)")


class Unrecoverable(RuntimeError):
    """The same inputs would fail the same way after a restart."""


def unrecoverable_cause(exc: BaseException) -> Unrecoverable | None:
    """The Unrecoverable that `exc` is, or carries inside a TensorFlow error; else None."""
    if isinstance(exc, Unrecoverable):
        return exc
    found = _BAD_FILE.search(str(exc))
    if found:
        files = found.group(1).strip().strip("'\"")
        return Unrecoverable(
            f"data.on_bad_file is fail and this file is not a decodable image: {files}"
        )
    return None
