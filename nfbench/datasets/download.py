"""Download, verify and unpack the public datasets (MVTec AD, BTAD, MTD).

Why this module is careful: the archives are large (MVTec AD is ~5 GB), come from servers that
drop connections, and are unpacked from the network. So a transfer resumes where it stopped
(HTTP ``Range``), every archive with a pinned sha256 is checked before it is used, no archive
member may write outside the dataset folder, and a dataset folder appears only once it is
complete (extraction goes to a hidden sibling that is renamed at the end).

Downloaded archives are kept in ``<root>/../.downloads/<root name>/``: an interrupted download
resumes from there, and a deleted dataset folder is rebuilt without downloading again. Delete
that folder to reclaim the space.

``NFBENCH_MIRROR=<base url>`` fetches every archive as ``<base url>/<archive filename>``
(a local mirror, or the test server).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import gzip
import json
import lzma
import os
import posixpath
import secrets
import shutil
import stat
import sys
import tarfile
import signal
import threading
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PureWindowsPath
from tqdm import tqdm

from nfbench.errors import DownloadError, UserError

MIRROR_ENV = "NFBENCH_MIRROR"
MARKER_NAME = ".nfbench-complete.json"
CHUNK_SIZE = 1 << 20
USER_AGENT = "nfbench-dataset-download/1.0 (+urllib)"

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
# what a damaged archive raises while being read
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, lzma.LZMAError, zlib.error,
            gzip.BadGzipFile)


@dataclass(frozen=True)
class Archive:
    """One downloadable archive of a dataset.

    ``inner_root``: folder inside the archive whose contents become the dataset root (``None``:
    members are already relative to the root). ``size``: expected bytes, used for the progress
    bar and a free-space check only (it may be approximate).
    """

    url: str
    sha256: str | None
    filename: str
    inner_root: str | None = None
    size: int | None = None


def effective_url(archive: Archive) -> str:
    """The URL to fetch: ``$NFBENCH_MIRROR/<filename>`` when the variable is set, else ``url``."""
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        parts = urllib.parse.urlsplit(mirror)
        if parts.scheme not in ("http", "https", "file") or \
                (parts.scheme != "file" and not parts.netloc):
            raise DownloadError(f"{MIRROR_ENV}={mirror!r} is not a URL; expected e.g. "
                                "http://host/path or file:///folder")
        return mirror.rstrip("/") + "/" + archive.filename
    return archive.url


# --------------------------------------------------------------------------------------------
# hashing


def sha256_of(path: Path) -> str:
    """The sha256 hex digest of ``path``, read in chunks (archives do not fit in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_SIZE), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# download


class CorruptArchiveError(DownloadError):
    """An archive cannot be opened or read to its end (truncated, an HTML page, damaged)."""


class _Interrupted(Exception):
    """The body stopped early (connection dropped, timeout); ``received`` bytes were kept."""

    def __init__(self, received: int, reason: str) -> None:
        super().__init__(reason)
        self.received = received
        self.reason = reason


def _bar(total: int | None, initial: int, desc: str, progress: bool) -> tqdm:
    # disable=None lets tqdm switch itself off when stderr is not a terminal
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True,
                unit_divisor=1024, disable=None if progress else True, leave=False)


def _check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DownloadError(f"no space left on {folder}: the download needs {needed / 1e9:.2f} GB "
                            f"more, {free / 1e9:.2f} GB free")


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(start, total)`` of a ``Content-Range`` header such as ``bytes 10-99/100`` or ``*/100``."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[len("bytes "):].partition("/")
    start = span.split("-")[0] if span != "*" else None
    try:
        return (int(start) if start is not None else None,
                int(total) if total.strip() not in ("", "*") else None)
    except ValueError:
        return None, None


def _validators_path(part: Path) -> Path:
    return part.with_name(part.name + ".validators.json")


def _read_validators(part: Path) -> dict | None:
    try:
        data = json.loads(_validators_path(part).read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _restart(part: Path) -> None:
    part.unlink(missing_ok=True)
    _validators_path(part).unlink(missing_ok=True)


def _transfer_once(url: str, part: Path, *, expected_size: int | None, progress: bool,
                   timeout: float) -> None:
    """One HTTP request appending to (or restarting) ``part``; returns when the body is complete.

    A resumed request carries ``If-Range`` with the validator (strong ETag, else Last-Modified)
    the server sent when the part file was started, kept in ``<part>.validators.json``: a
    server whose file changed answers 200 with the whole new file, and we restart from zero;
    a 206 whose ETag or total length differs from the recorded ones restarts too. A part file
    without recorded validators (nothing to check it against) is restarted.
    """
    offset = part.stat().st_size if part.exists() else 0
    validators = _read_validators(part) if offset else None
    if offset and validators is None:
        _restart(part)
        offset = 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        etag, modified = validators.get("etag"), validators.get("last_modified")
        if etag and not etag.startswith("W/"):  # If-Range needs a strong validator
            headers["If-Range"] = etag
        elif modified:
            headers["If-Range"] = modified
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            # Nothing left to send: the part file is complete, unless the server's size disagrees.
            _, total = _content_range(exc.headers.get("Content-Range"))
            if (total is not None and total != offset) or \
                    validators.get("total") not in (None, offset):
                _restart(part)
                return _transfer_once(url, part, expected_size=expected_size, progress=progress,
                                      timeout=timeout)
            return
        raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(f"cannot download {url}: {exc.reason}") from exc
    except TimeoutError as exc:
        raise DownloadError(f"timed out after {timeout:g} s waiting for {url}") from exc
    except (http.client.HTTPException, OSError, ValueError) as exc:
        raise DownloadError(f"cannot download {url}: {exc}") from exc

    kept = offset  # bytes already on disk, reused or overwritten
    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        etag = response.headers.get("ETag")
        if offset and response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            changed = ((validators.get("etag") and etag and etag != validators["etag"]) or
                       (validators.get("total") is not None and total is not None and
                        total != validators["total"]))
            if start != offset or changed:  # resumed elsewhere, or another file: start over
                response.close()
                _restart(part)
                return _transfer_once(url, part, expected_size=expected_size, progress=progress,
                                      timeout=timeout)
            end = total if total is not None else (offset + length if length is not None else None)
        else:  # 200: the server ignored the Range header, the file changed, or none was sent
            offset = 0
            end = length
            part.parent.mkdir(parents=True, exist_ok=True)
            _validators_path(part).write_text(json.dumps(
                {"etag": etag, "last_modified": response.headers.get("Last-Modified"),
                 "total": length}))
        total_size = end if end is not None else expected_size
        if total_size is not None:
            _check_free_space(part.parent, total_size - kept)

        received = 0
        try:
            with open(part, "ab" if offset else "wb") as out, \
                    _bar(total_size, offset, part.name.removesuffix(".part"), progress) as bar:
                while True:
                    try:
                        chunk = response.read(CHUNK_SIZE)
                    except TimeoutError:
                        raise _Interrupted(received, f"timed out after {timeout:g} s") from None
                    except (http.client.HTTPException, OSError) as exc:
                        raise _Interrupted(received, f"connection lost ({exc!r})") from None
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DownloadError(f"no space left on device while writing {part}; free some "
                                    "space and run again: the download resumes from there") from exc
            raise DownloadError(f"cannot write {part}: {exc}") from exc
        if end is not None and offset + received < end:
            raise _Interrupted(received, f"connection closed after {offset + received} of "
                                         f"{end} bytes")


def _download(url: str, dest: Path, sha256: str | None, *, expected_size: int | None,
              progress: bool, timeout: float, retries: int) -> str:
    """:func:`download_file`, returning the sha256 of ``dest``."""
    dest = Path(dest)
    if sha256 is not None:
        sha256 = sha256.lower()
    if dest.exists():
        actual = sha256_of(dest)
        if sha256 is None or actual == sha256:
            return actual
        dest.unlink()  # a stale or corrupt copy: fetch it again

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")

    attempts_left = retries
    while True:
        try:
            _transfer_once(url, part, expected_size=expected_size, progress=progress,
                           timeout=timeout)
            break
        except _Interrupted as exc:
            # Resume at once when the failed attempt made progress; give up otherwise.
            if exc.received > 0 and attempts_left > 0:
                attempts_left -= 1
                continue
            have = part.stat().st_size if part.exists() else 0
            raise DownloadError(f"download of {url} interrupted: {exc.reason}; {have} bytes kept "
                                f"in {part}, run again to resume") from None

    actual = sha256_of(part)
    if sha256 is not None and actual != sha256:
        part.unlink()
        raise DownloadError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}; "
                            "the corrupt file was deleted, run again to download it afresh")
    os.replace(part, dest)
    _validators_path(part).unlink(missing_ok=True)
    return actual


def download_file(url: str, dest: Path, sha256: str | None, *, expected_size: int | None = None,
                  progress: bool = True, timeout: float = 60, retries: int = 2) -> Path:
    """Download ``url`` to ``dest``, resuming a previous ``.part`` file, and verify its sha256.

    ``dest`` appears only once the download is complete and verified; an existing ``dest``
    with the right hash is kept as is. A transfer that drops after making progress is resumed
    up to ``retries`` times; any other failure raises :class:`DownloadError` and keeps the
    ``.part`` file for the next run (except on a checksum mismatch, which deletes it).
    """
    _download(url, Path(dest), sha256, expected_size=expected_size, progress=progress,
              timeout=timeout, retries=retries)
    return Path(dest)


# --------------------------------------------------------------------------------------------
# extraction


def _member_path(name: str, archive_path: Path) -> str | None:
    """The normalised relative POSIX path of member ``name``, ``None`` for the root itself.

    Raises :class:`DownloadError` for absolute paths and paths escaping the target (Windows
    separators and drives are treated as such too, so the check holds on every platform).
    """
    unified = name.replace("\\", "/")
    if unified.startswith("/") or PureWindowsPath(name).drive:
        raise DownloadError(f"refusing to extract {archive_path.name}: member {name!r} has an "
                            "absolute path")
    normal = posixpath.normpath(unified)
    if normal == ".." or normal.startswith("../"):
        raise DownloadError(f"refusing to extract {archive_path.name}: member {name!r} points "
                            "outside the target folder")
    return None if normal == "." else normal


@dataclass
class _Member:
    path: str  # normalised relative path
    is_dir: bool
    mtime: float | None
    handle: object  # TarInfo or ZipInfo


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


def _tar_members(tf: tarfile.TarFile, archive_path: Path) -> list[_Member]:
    # Our own checks, not tarfile's filter="data" (PEP 706): we write members ourselves
    # (extractfile) so that every member is validated before anything is written and only
    # inner_root is unpacked; the filter acts inside extract()/extractall() only, and is
    # missing on Pythons before 3.11.4. The checks refuse at least what "data" refuses.
    members = []
    for info in tf.getmembers():
        path = _member_path(info.name, archive_path)
        kind = ("a symlink" if info.issym() else "a hard link" if info.islnk()
                else "a device" if info.ischr() or info.isblk() else "a fifo" if info.isfifo()
                else None if info.isreg() or info.isdir() else "not a regular file")
        if kind is not None:
            raise DownloadError(f"refusing to extract {archive_path.name}: member {info.name!r} "
                                f"is {kind}")
        if path is not None:
            members.append(_Member(path, info.isdir(), info.mtime, info))
    return members


def _zip_members(zf: zipfile.ZipFile, archive_path: Path) -> list[_Member]:
    members = []
    for info in zf.infolist():
        path = _member_path(info.filename, archive_path)
        mode = info.external_attr >> 16
        kind = ("a symlink" if stat.S_ISLNK(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
                "a fifo" if stat.S_ISFIFO(mode) else
                "a socket" if stat.S_ISSOCK(mode) else None)
        if kind is not None:
            raise DownloadError(f"refusing to extract {archive_path.name}: member "
                                f"{info.filename!r} is {kind}")
        if path is not None:
            members.append(_Member(path, info.is_dir(), None, info))
    return members


def _select_inner(members: list[_Member], inner_root: str | None,
                  archive_path: Path) -> tuple[list[_Member], str | None]:
    """Members inside ``inner_root`` (all when ``None``) and the normalised ``inner_root``."""
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


def _write_member(opener, member: _Member, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with opener(member.handle) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK_SIZE)
    if member.mtime is not None:
        os.utime(dest, (member.mtime, member.mtime))


def _extract_members(opener, members: list[_Member], into: Path, progress: bool,
                     desc: str) -> None:
    base = into.resolve()
    for member in tqdm(members, desc=desc, unit="file", leave=False,
                       disable=None if progress else True):
        dest = into / member.path
        # Defence in depth: the path was validated, and the tree holds no links.
        if not dest.resolve().is_relative_to(base):
            raise DownloadError(f"refusing to extract {member.path!r}: outside {into}")
        if member.is_dir:
            dest.mkdir(parents=True, exist_ok=True)
        else:
            _write_member(opener, member, dest)


def _check_target(target: Path) -> None:
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
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        if pid.isdigit() and int(pid) == os.getpid():
            continue
        shutil.rmtree(staging, ignore_errors=True)
        removed.append(staging)
    return removed


@contextmanager
def _cleanup_on_terminate():
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


def _partial_dir(target: Path) -> Path:
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


def _move_into_place(source: Path, target: Path) -> None:
    _check_target(target)
    if target.is_dir():
        target.rmdir()  # empty: replace it
    os.replace(source, target)


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
    _check_target(target)
    remove_stale_staging(target)
    kind = _archive_kind(archive_path)
    try:
        handle = (tarfile.open(archive_path, "r:*") if kind == "tar"
                  else zipfile.ZipFile(archive_path))
    except (*_CORRUPT, OSError) as exc:
        raise CorruptArchiveError(f"cannot read archive {archive_path}: {exc}") from exc

    with handle:
        try:
            if kind == "tar":
                members = _tar_members(handle, archive_path)
                opener = handle.extractfile
            else:
                members = _zip_members(handle, archive_path)
                opener = handle.open
        except _CORRUPT as exc:
            raise CorruptArchiveError(f"corrupt archive {archive_path}: {exc}") from exc
        members, inner = _select_inner(members, inner_root, archive_path)

        staging = _partial_dir(target)
        try:
            _extract_members(opener, members, staging, progress, f"extract {archive_path.name}")
            _move_into_place(staging / inner if inner is not None else staging, target)
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


# --------------------------------------------------------------------------------------------
# the entry point


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


def _install(tree: Path, root: Path) -> None:
    """Move the finished ``tree`` to ``root`` (one rename), or, when ``root`` is an existing
    empty folder (e.g. ``--root .``, which must not be removed), move its entries in with the
    completion marker last."""
    _check_target(root)
    if not root.is_dir():
        os.replace(tree, root)
        return
    for entry in tree.iterdir():
        if entry.name != MARKER_NAME:
            os.replace(entry, root / entry.name)
    os.replace(tree / MARKER_NAME, root / MARKER_NAME)


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
        return dest, _download(url, dest, archive.sha256, expected_size=archive.size,
                               progress=progress, timeout=60, retries=2)

    with _cleanup_on_terminate():
        staging = _partial_dir(root)
        try:
            tree = staging / "root"
            tree.mkdir()
            paths, digests = [], []
            for i, (archive, url) in enumerate(zip(archives, urls)):
                path, digest = download(archive, url)
                try:
                    unpacked = safe_extract(path, staging / f"archive-{i}", archive.inner_root,
                                            progress=progress)
                except CorruptArchiveError as exc:
                    shutil.rmtree(staging / f"archive-{i}", ignore_errors=True)
                    aside = _move_aside(path)
                    print(f"cached archive {path.name} is damaged ({exc}); moved aside to "
                          f"{aside.name}, downloading it again", file=sys.stderr)
                    path, digest = download(archive, url)
                    unpacked = safe_extract(path, staging / f"archive-{i}", archive.inner_root,
                                            progress=progress)
                _merge_tree(unpacked, tree)
                shutil.rmtree(unpacked)
                paths.append(path)
                digests.append(digest)
            if validate is not None:
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
            record = {
                "archives": [{**ident, "filename": a.filename, "actual_sha256": digest,
                              "actual_size": path.stat().st_size}
                             for ident, a, digest, path in
                             zip(_archive_ids(archives), archives, digests, paths)],
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            (tree / MARKER_NAME).write_text(json.dumps(record, indent=2) + "\n")
            _install(tree, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if progress:
        print(f"archives kept in {cache} (delete to free space)", file=sys.stderr)
    return True


__all__ = ["Archive", "CorruptArchiveError", "remove_stale_staging", "effective_url", "download_file", "safe_extract", "fetch", "sha256_of",
           "MARKER_NAME", "MIRROR_ENV"]
