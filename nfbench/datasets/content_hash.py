"""Content hashes of dataset files, computed once per version of a file.

Run identity must see any change of a file a run reads (an image or a mask redrawn with the
same byte size included), but hashing every image of every run on every ``bench`` would cost
minutes on MVTec AD. :func:`file_sha1` therefore keeps each file's sha1 in a small JSON cache
per folder (``<cache>/file-hashes/<sha1 of the folder>.json``), keyed by the file's name and
its ``stat``: size, ``mtime_ns``, ``ctime_ns`` and inode. Any write to a file changes its
ctime (which, unlike mtime, cannot be set back by a program: ``touch -d`` or ``rsync -t``
restoring mtime still changes it), so a changed file is hashed again and an unchanged one is
never read. A cache file is written atomically (:mod:`nfbench.atomic`); two processes
updating one at once lose at most some entries, which are then hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from nfbench.atomic import write_text_atomic
from nfbench.paths import cache_root

_LOCK = threading.Lock()
_TABLES: dict[Path, dict[str, list]] = {}  # cache file -> {name: [size, mtime, ctime, ino, sha1]}
_DIRTY: set[Path] = set()


def _hash_contents(path: str | Path) -> str:
    """sha1 of the bytes of ``path`` (read in 1 MiB chunks)."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _table_path(folder: str, root: Path) -> Path:
    return root / "file-hashes" / f"{hashlib.sha1(folder.encode()).hexdigest()[:20]}.json"


def _table(path: Path) -> dict[str, list]:
    if path not in _TABLES:
        try:
            table = json.loads(path.read_text())
            _TABLES[path] = table if isinstance(table, dict) else {}
        except (OSError, ValueError):
            _TABLES[path] = {}  # none yet, or damaged: hash again
    return _TABLES[path]


def file_sha1(path: str | Path) -> str:
    """sha1 (hex) of the contents of ``path``, read only when the file changed since it was
    last hashed (by any process sharing the cache folder). Call :func:`flush` to persist."""
    return _file_sha1(path, cache_root())


def _file_sha1(path: str | Path, root: Path) -> str:
    """:func:`file_sha1` with the cache folder given (resolved once per list of files)."""
    path = os.path.abspath(path)
    stat = os.stat(path)
    signature = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
    folder, name = os.path.split(path)
    table_path = _table_path(folder, root)
    with _LOCK:
        entry = _table(table_path).get(name)
        if isinstance(entry, list) and entry[:4] == signature and len(entry) == 5:
            return entry[4]
    value = _hash_contents(path)
    with _LOCK:
        _table(table_path)[name] = signature + [value]
        _DIRTY.add(table_path)
    return value


def flush() -> None:
    """Write the cache files with new entries (atomically; an unwritable cache is skipped:
    the hashes are then computed again next time)."""
    with _LOCK:
        for table_path in sorted(_DIRTY):
            try:
                table_path.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(table_path, json.dumps(_TABLES[table_path], sort_keys=True))
            except OSError:
                pass
        _DIRTY.clear()


def files_sha1(paths: list[str]) -> list[str]:
    """:func:`file_sha1` of each of ``paths``, then :func:`flush`."""
    root = cache_root()
    try:
        return [_file_sha1(p, root) for p in paths]
    finally:
        flush()
