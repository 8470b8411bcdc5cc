"""Obtain a public dataset (MVTec AD, BTAD, MTD, DTD): :func:`fetch` downloads, verifies,
unpacks, validates and installs its archives.

A dataset folder appears only once it is complete: every archive is unpacked into one staging
folder, the dataset's own loader checks the tree there, and the tree is renamed into place with
a completion marker (``.nfbench-complete.json``) naming the archives it came from.

Downloaded archives are kept in ``<root>/../.downloads/<root name>/``: an interrupted download
resumes from there, and a deleted dataset folder is rebuilt without downloading again. Delete
that folder to reclaim the space.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

from nfbench.datasets.archives import CorruptArchiveError, safe_extract
from nfbench.datasets.download import Archive, download_and_hash, effective_url
from nfbench.datasets.staging import (cleanup_on_terminate, move_into_place, new_staging_dir,
                                      remove_stale_staging)
from nfbench.errors import DownloadError, UserError

MARKER_NAME = ".nfbench-complete.json"


def _archive_ids(archives: list[Archive]) -> list[dict[str, str | None]]:
    return [{"url": a.url, "sha256": a.sha256.lower() if a.sha256 else None} for a in archives]


def _is_complete(root: Path, archives: list[Archive]) -> bool:
    marker = root / MARKER_NAME
    try:
        recorded = json.loads(marker.read_text())["archives"]
        ids = [{"url": a["url"], "sha256": a["sha256"]} for a in recorded]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return ids == _archive_ids(archives)


def _merge_tree(source: Path, dest: Path) -> None:
    """Move the contents of ``source`` into ``dest``; two archives may not provide the same file."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        target = dest / entry.name
        if entry.is_dir() and target.is_dir():
            _merge_tree(entry, target)
        elif target.exists():
            raise DownloadError(f"two archives both contain {target.name!r}")
        else:
            os.replace(entry, target)


def _move_aside(path: Path) -> Path:
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    return aside


def _unpack(archive: Archive, url: str, download, into: Path, tree: Path,
            progress: bool) -> tuple[Path, str]:
    """Download (or reuse the cached) ``archive``, unpack it into ``into`` and merge that into
    ``tree``; a cached archive that cannot be opened is moved aside and fetched again, once.
    Returns the archive's path and sha256."""
    path, digest = download(archive, url)
    try:
        unpacked = safe_extract(path, into, archive.inner_root, progress=progress)
    except CorruptArchiveError as exc:
        shutil.rmtree(into, ignore_errors=True)
        aside = _move_aside(path)
        print(f"cached archive {path.name} is damaged ({exc}); moved aside to "
              f"{aside.name}, downloading it again", file=sys.stderr)
        path, digest = download(archive, url)
        unpacked = safe_extract(path, into, archive.inner_root, progress=progress)
    _merge_tree(unpacked, tree)
    shutil.rmtree(unpacked)
    return path, digest


def _validate(validate, tree: Path, root: Path, archives: list[Archive],
              paths: list[Path]) -> None:
    """``validate(tree)`` (the dataset's loader); on failure nothing is installed and the
    unpinned archives (no sha256 to have caught a bad file) are moved aside."""
    try:
        validate(tree)
    except UserError as exc:
        unpinned = [p for p, a in zip(paths, archives) if a.sha256 is None]
        for path in unpinned:
            _move_aside(path)
        again = (" the unpinned archive(s) were moved aside (.corrupt); run again to "
                 "download them afresh") if unpinned else ""
        raise DownloadError(f"the downloaded {root.name} fails its checks, nothing "
                            f"was installed: {exc};{again}") from None


def _marker(archives: list[Archive], digests: list[str], paths: list[Path]) -> dict:
    """The completion marker's content: each archive's identity, file, actual sha256 and size."""
    return {
        "archives": [{**ident, "filename": a.filename, "actual_sha256": digest,
                      "actual_size": path.stat().st_size}
                     for ident, a, digest, path in
                     zip(_archive_ids(archives), archives, digests, paths)],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def fetch(archives: list[Archive], root: Path, *, notice: str | None = None,
          progress: bool = True, validate=None) -> bool:
    """Download, verify and unpack ``archives`` into ``root``; ``False`` if it was already done.

    ``root`` is complete when its ``.nfbench-complete.json`` lists the same archives (url and
    sha256); then nothing is downloaded. Archives are cached in ``root.parent/.downloads/
    <root.name>`` and kept there after success, so interrupted downloads resume and a deleted
    ``root`` is rebuilt offline. A cached archive that cannot be opened is moved aside
    (``<name>.corrupt``) and fetched again, once. ``validate(tree)`` (the dataset's loader:
    layout and counts) runs on the unpacked tree in the staging folder; ``root`` appears, with
    the marker, only when every archive is unpacked and the tree passes it. SIGTERM and SIGINT
    remove the staging folder; staging folders of earlier, killed runs are removed first.
    """
    root = Path(os.path.abspath(root))  # "--root ." has no name and no parent otherwise
    archives = list(archives)
    if not archives:
        raise DownloadError("no archives to download")
    if _is_complete(root, archives):
        return False
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DownloadError(f"{root} exists but was not downloaded by nfbench (no matching "
                            f"{MARKER_NAME}): use it with --root, or delete it and run again")
    urls = [effective_url(archive) for archive in archives]  # a bad mirror fails here
    for stale in remove_stale_staging(root):
        print(f"removed {stale}, left by an interrupted run", file=sys.stderr)

    if notice:
        print(notice, file=sys.stderr)
    cache = root.parent / ".downloads" / root.name

    def download(archive: Archive, url: str) -> tuple[Path, str]:
        if progress:
            print(f"downloading {url}", file=sys.stderr)
        dest = cache / archive.filename
        return dest, download_and_hash(url, dest, archive.sha256, expected_size=archive.size,
                                       progress=progress, timeout=60, retries=2)

    with cleanup_on_terminate():
        staging = new_staging_dir(root)
        try:
            tree = staging / "root"
            tree.mkdir()
            paths, digests = [], []
            for i, (archive, url) in enumerate(zip(archives, urls)):
                path, digest = _unpack(archive, url, download, staging / f"archive-{i}", tree,
                                       progress)
                paths.append(path)
                digests.append(digest)
            if validate is not None:
                _validate(validate, tree, root, archives, paths)
            (tree / MARKER_NAME).write_text(json.dumps(_marker(archives, digests, paths),
                                                       indent=2) + "\n")
            move_into_place(tree, root, last=MARKER_NAME)  # the marker last
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    # said even with --quiet: the archives take as much space as the dataset
    print(f"archives kept in {cache} (delete to free space)", file=sys.stderr)
    return True


__all__ = ["fetch", "MARKER_NAME"]
