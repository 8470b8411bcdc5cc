"""Unpack a downloaded archive (.tar, .tar.gz, .tgz, .tar.xz, .tar.bz2, .zip), refusing unsafe
members before anything is written.

Tar members are checked by the standard library's ``"data"`` extraction filter (PEP 706,
:func:`tarfile.data_filter`), once for every member before the first byte is written and again
by tarfile as it writes each one. Our own checks remain only where that filter is missing or
weaker, each saying why: zip archives (no filter), absolute tar member names (the filter strips
the leading ``/`` instead of refusing them) and links (the filter accepts links that stay inside
the archive). Extraction goes to a staging sibling renamed to the target at the end
(:mod:`nfbench.datasets.staging`).
"""

from __future__ import annotations

import errno
import gzip
import lzma
import os
import platform
import posixpath
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

from tqdm import tqdm

from nfbench.datasets.download import CHUNK_SIZE
from nfbench.datasets.staging import (check_target, move_into_place, new_staging_dir,
                                      remove_stale_staging)
from nfbench.errors import DownloadError

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
# what a damaged archive raises while being read (tarfile.FilterError is a TarError too: it is
# caught before this)
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, lzma.LZMAError, zlib.error,
            gzip.BadGzipFile)


class CorruptArchiveError(DownloadError):
    """An archive cannot be opened or read to its end (truncated, an HTML page, damaged)."""


@dataclass
class _Member:
    path: str  # normalised relative POSIX path
    is_dir: bool
    handle: object  # TarInfo or ZipInfo


def _refused(archive_path: Path, name: str, why: str) -> DownloadError:
    return DownloadError(f"refusing to extract {archive_path.name}: member {name!r} {why}")


def _archive_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(_TAR_SUFFIXES):
        return "tar"
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise CorruptArchiveError(f"{path.name}: unsupported archive format (expected .tar, "
                              ".tar.gz, .tgz, .tar.xz or .zip)")


# --------------------------------------------------------------------------------------------
# tar: the standard library's "data" filter


def _link_kind(info: tarfile.TarInfo) -> str:
    return "a symlink" if info.issym() else "a hard link"


def _filter_refusal(exc: tarfile.FilterError, archive_path: Path) -> DownloadError:
    """Our one-line message for a member the "data" filter refused."""
    info = exc.tarinfo
    if isinstance(exc, tarfile.AbsolutePathError):
        why = "has an absolute path"
    elif isinstance(exc, tarfile.OutsideDestinationError):
        why = "points outside the target folder"
    elif isinstance(exc, tarfile.SpecialFileError):
        why = ("is a fifo" if info.isfifo() else "is a character device" if info.ischr()
               else "is a block device" if info.isblk() else "is not a regular file")
    elif isinstance(exc, tarfile.AbsoluteLinkError):
        why = f"is {_link_kind(info)} to an absolute path"
    elif isinstance(exc, tarfile.LinkOutsideDestinationError):
        why = f"is {_link_kind(info)} pointing outside the target folder"
    else:
        why = f"is refused by tarfile's data filter ({exc})"
    return _refused(archive_path, info.name, why)


def _tar_members(tf: tarfile.TarFile, archive_path: Path, into: Path) -> list[_Member]:
    if not hasattr(tarfile, "data_filter"):
        raise DownloadError(f"cannot unpack {archive_path.name} safely: this Python "
                            f"({platform.python_version()}) lacks tarfile's extraction filters; "
                            "use Python 3.10.12, 3.11.4, 3.12 or later")
    members = []
    for info in tf.getmembers():
        try:
            checked = tarfile.data_filter(info, str(into))
        except tarfile.FilterError as exc:
            raise _filter_refusal(exc, archive_path) from None
        # Kept: the filter strips a leading "/" and would write the member inside the target;
        # an absolute name in a dataset archive means a tampered archive, so it is refused.
        if checked.name != info.name:
            raise _refused(archive_path, info.name, "has an absolute path")
        # Kept: the filter accepts links that stay inside the archive, but only inner_root of it
        # becomes the dataset and several archives are merged into one tree, so such a link may
        # still point outside the dataset folder or at another archive's files. The datasets
        # have no links.
        if info.issym() or info.islnk():
            raise _refused(archive_path, info.name, f"is {_link_kind(info)}")
        path = posixpath.normpath(info.name)
        if path != ".":
            members.append(_Member(path, info.isdir(), info))
    return members


# --------------------------------------------------------------------------------------------
# zip: our own checks


def _zip_path(name: str, archive_path: Path) -> str | None:
    """The normalised relative POSIX path of zip member ``name``, ``None`` for the root itself.

    Kept because zipfile has no extraction filter: ``ZipFile.extract`` silently rewrites
    absolute and ``..`` names instead of refusing them. Windows separators and drives count as
    such on every platform (zip tools write both).
    """
    unified = name.replace("\\", "/")
    if unified.startswith("/") or PureWindowsPath(name).drive:
        raise _refused(archive_path, name, "has an absolute path")
    normal = posixpath.normpath(unified)
    if normal == ".." or normal.startswith("../"):
        raise _refused(archive_path, name, "points outside the target folder")
    return None if normal == "." else normal


def _zip_members(zf: zipfile.ZipFile, archive_path: Path) -> list[_Member]:
    members = []
    for info in zf.infolist():
        path = _zip_path(info.filename, archive_path)
        # Kept: zipfile knows no links or devices; their Unix mode is in external_attr
        mode = info.external_attr >> 16
        kind = ("a symlink" if stat.S_ISLNK(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
                "a fifo" if stat.S_ISFIFO(mode) else
                "a socket" if stat.S_ISSOCK(mode) else None)
        if kind is not None:
            raise _refused(archive_path, info.filename, f"is {kind}")
        if path is not None:
            members.append(_Member(path, info.is_dir(), info))
    return members


# --------------------------------------------------------------------------------------------
# extraction


def _select_inner(members: list[_Member], inner_root: str | None,
                  archive_path: Path) -> tuple[list[_Member], str | None]:
    """Members inside ``inner_root`` (all when ``None``) and the normalised ``inner_root``.

    Kept (the official layout check): an archive without the expected folder is a changed
    upstream layout, named with the archive's top-level entries.
    """
    if inner_root is None:
        return members, None
    inner = posixpath.normpath(inner_root.replace("\\", "/").strip("/"))
    if inner in ("", ".") or inner == ".." or inner.startswith("../"):
        raise DownloadError(f"invalid inner_root {inner_root!r}")
    prefix = inner + "/"
    selected = [m for m in members if m.path == inner or m.path.startswith(prefix)]
    if not selected:
        tops = sorted({m.path.split("/")[0] for m in members})
        shown = ", ".join(tops[:10]) + (", ..." if len(tops) > 10 else "")
        raise DownloadError(f"{archive_path.name} has no folder {inner!r} (top-level entries: "
                            f"{shown or 'none'}); the archive layout changed")
    return selected, inner


def _write_member(handle: tarfile.TarFile | zipfile.ZipFile, member: _Member,
                  into: Path) -> None:
    """Write the file ``member`` of the open archive ``handle`` under ``into``."""
    if isinstance(handle, tarfile.TarFile):
        # tarfile writes it (bytes, mtime, a mode without setuid or group/other write), and the
        # "data" filter checks it once more as it does
        handle.extract(member.handle, into, filter="data")
        return
    dest = into / member.path
    # Kept for zip, where no filter runs at write time: defence in depth, the path was checked
    # and the tree holds no links
    if not dest.resolve().is_relative_to(into.resolve()):
        raise DownloadError(f"refusing to extract {member.path!r}: outside {into}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with handle.open(member.handle) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK_SIZE)


def safe_extract(archive_path: Path, target: Path, inner_root: str | None = None, *,
                 progress: bool = False) -> Path:
    """Unpack a .tar/.tar.gz/.tgz/.tar.xz/.zip archive into ``target``, refusing unsafe members.

    Every member is validated before anything is written: absolute paths, paths escaping the
    target, links, devices and fifos raise :class:`DownloadError`. With ``inner_root`` only
    that folder's contents become ``target``. Extraction goes to a hidden sibling folder that
    is renamed to ``target`` at the end, so ``target`` is never left half-filled; ``target``
    must not exist or be empty.
    """
    archive_path, target = Path(archive_path), Path(os.path.abspath(target))
    check_target(target)
    remove_stale_staging(target)
    kind = _archive_kind(archive_path)
    try:
        handle = (tarfile.open(archive_path, "r:*") if kind == "tar"
                  else zipfile.ZipFile(archive_path))
    except (*_CORRUPT, OSError) as exc:
        raise CorruptArchiveError(f"cannot read archive {archive_path}: {exc}") from exc

    with handle:
        staging = new_staging_dir(target)
        try:
            members = (_tar_members(handle, archive_path, staging) if kind == "tar"
                       else _zip_members(handle, archive_path))
            members, inner = _select_inner(members, inner_root, archive_path)
            for member in tqdm(members, desc=f"extract {archive_path.name}", unit="file",
                               leave=False, disable=None if progress else True):
                if member.is_dir:
                    (staging / member.path).mkdir(parents=True, exist_ok=True)
                else:
                    _write_member(handle, member, staging)
            move_into_place(staging / inner if inner is not None else staging, target)
        except tarfile.FilterError as exc:  # raised by tarfile as it writes a member
            raise _filter_refusal(exc, archive_path) from None
        except _CORRUPT as exc:
            raise CorruptArchiveError(f"corrupt archive {archive_path}: {exc}") from exc
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DownloadError(f"no space left on device while extracting {archive_path} "
                                    f"into {target.parent}") from exc
            raise DownloadError(f"cannot extract {archive_path} into {target}: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


__all__ = ["CorruptArchiveError", "safe_extract"]
