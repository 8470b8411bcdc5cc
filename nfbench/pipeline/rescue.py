"""A finished result is never thrown away because its target cannot be written.

Training may take hours; a full disk (ENOSPC), a quota or a folder gone read-only is found
only when the result is written. Then the result's text goes to a rescue folder on another
file system if one takes it (``$TMPDIR/nfbench-rescued``, then ``~/.nfbench-rescued``), else to
standard output, and the error line says where it is.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from nfbench.errors import UserError


def rescue_text(text: str, path: Path | str) -> str:
    """Save ``text`` (the result meant for ``path``) where it can be written; returns where."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    name = f"{stamp}-{os.getpid()}-{Path(path).name}"
    for folder in (Path(tempfile.gettempdir()) / "nfbench-rescued",
                   Path.home() / ".nfbench-rescued"):
        target = folder / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            return str(target)
        except OSError:
            try:
                target.unlink()  # never half a rescued file
            except OSError:
                pass
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
    return "standard output (above)"


def unwritable(what: str, path: Path | str, exc: BaseException, text: str,
               rescue_as: Path | str | None = None) -> UserError:
    """The one-line error for a result that could not be written to ``path``, after its
    ``text`` (meant for ``rescue_as``, default ``path``) was rescued (:func:`rescue_text`)."""
    reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
    where = rescue_text(text, rescue_as or path)
    return UserError(f"cannot write {what} {path}: {reason}; the finished result was saved "
                     f"to {where}")
