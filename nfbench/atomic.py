"""Atomic file writes that honour the user's umask.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, so a record, baseline
or cache entry renamed from it would be unreadable to the other users of a shared results or
cache folder. Every writer here creates the temporary file beside its target (same file
system: the final ``os.replace`` is atomic), gives it the mode a plain ``open`` would have
(0666 minus the umask), and renames it into place; an interrupted write leaves no target and
no temporary file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0666 minus the umask."""
    return 0o666 & ~current_umask()


@contextmanager
def atomic_path(path: Path | str, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (mode per umask); it replaces ``path`` when the
    block ends without an exception, and is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        os.fchmod(handle, file_mode())
        os.close(handle)
        yield Path(tmp_name)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)


@contextmanager
def atomic_folder(path: Path | str) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path`` to fill; when the block ends without an
    exception it gets the mode ``mkdir`` would give (0777 minus the umask) and replaces
    ``path`` (an existing folder there is removed first); otherwise it is removed. A saved
    model (:mod:`nfbench.artifacts`) and ``nfbench predict``'s output folder are written so:
    whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_output_file(path: Path | str, what: str = "--out") -> None:
    """Refuse, before any work, an output path that cannot be written: a directory, a path
    under a file, or a folder where no file can be created (read-only, no permission).
    Creates nothing: missing parent folders are made by the write itself, so a later error
    leaves no empty folders behind (the probe is made in the nearest existing one)."""
    from nfbench.errors import UserError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; give a file name")
    existing = next((p for p in path.absolute().parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"{what} {path} cannot be created: {existing} is a file")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=f".{path.name}.", suffix=".probe")
        os.close(handle)
        os.remove(probe)
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be written: {exc.strerror or exc}") from None
