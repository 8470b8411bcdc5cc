"""Staging folders: a dataset folder appears only once it is complete. The one implementation
used by every writer of a dataset tree: archive extraction (:mod:`.archives`), downloads
(:mod:`.install`) and the demo generator (:mod:`.demo.generator`).

Work (extraction, merging archives, validation) happens in a hidden sibling of the target,
``.<name>.partial-<pid>-<random>``, on the same file system, renamed to the target at the end.
The pid in the name lets a later run remove the folders of runs that were killed (their process
is gone) and keep those of a live parallel run; SIGTERM, like SIGINT, unwinds through the
``finally`` clauses that remove them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from nfbench.errors import DownloadError


def check_target(target: Path) -> None:
    """Refuse a ``target`` that exists and is not an empty folder (a link counts as not empty)."""
    if target.is_symlink() or target.exists():
        if not target.is_dir() or target.is_symlink() or any(target.iterdir()):
            raise DownloadError(f"{target} already exists and is not empty; delete it or choose "
                                "another folder")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_staging(target: Path) -> list[Path]:
    """Remove the staging folders of ``target`` left by earlier runs that were killed (their
    process is gone); returns them. Folders of a live process (a parallel run) are kept."""
    removed = []
    for staging in target.parent.glob(f".{target.name}.partial-*"):
        pid = staging.name.rsplit(".partial-", 1)[1].split("-")[0]
        if pid.isdigit() and (int(pid) == os.getpid() or _pid_alive(int(pid))):
            continue  # ours, or a live parallel run's
        shutil.rmtree(staging, ignore_errors=True)
        removed.append(staging)
    return removed


@contextmanager
def cleanup_on_terminate():
    """While the block runs, SIGTERM raises :class:`KeyboardInterrupt` (as SIGINT does), so the
    ``finally`` clauses remove the staging folders instead of the process dying with them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def new_staging_dir(target: Path) -> Path:
    """A new hidden sibling of ``target`` (same file system, so the final rename is atomic),
    named after this process so a later run knows whether it is stale."""
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        staging = target.parent / f".{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            staging.mkdir()  # not mkdtemp: its 0700 mode would become the dataset folder's
            return staging
        except FileExistsError:
            continue


def move_into_place(source: Path, target: Path, last: str | None = None) -> None:
    """Rename the finished ``source`` to ``target``, which must not exist or be empty. An
    existing empty ``target`` (e.g. ``--root .``, which must not be removed) gets ``source``'s
    entries moved in, the entry named ``last`` (a completion marker) last."""
    check_target(target)
    if not target.is_dir():
        os.replace(source, target)
        return
    entries = sorted(source.iterdir(), key=lambda entry: entry.name == last)
    for entry in entries:
        os.replace(entry, target / entry.name)
    source.rmdir()


def replace_tree(source: Path, target: Path) -> None:
    """Put the finished ``source`` in place of ``target``, an outdated tree of ours (or an
    empty folder): ``target`` is renamed aside first and removed after the swap."""
    if not target.exists():
        os.replace(source, target)
        return
    trash = new_staging_dir(target)
    os.replace(target, trash / "old")
    os.replace(source, target)
    shutil.rmtree(trash, ignore_errors=True)


__all__ = ["check_target", "remove_stale_staging", "cleanup_on_terminate", "new_staging_dir",
           "move_into_place", "replace_tree"]
