"""Download the public datasets' archives over HTTP: resumed transfers and verified checksums.

Why this module is careful: the archives are large (MVTec AD is ~5 GB) and come from servers
that drop connections. So a transfer resumes where it stopped (HTTP ``Range``, checked against
the validators the server sent when it started) and every archive with a pinned sha256 is
checked before it is used. Unpacking is :mod:`nfbench.datasets.archives`; the whole
download-unpack-validate-install sequence is :func:`nfbench.datasets.install.fetch`.

``NFBENCH_MIRROR=<base url>`` fetches every archive as ``<base url>/<archive filename>``
(a local mirror, or the test server).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from nfbench.errors import DownloadError

MIRROR_ENV = "NFBENCH_MIRROR"
CHUNK_SIZE = 1 << 20
USER_AGENT = "nfbench-dataset-download/1.0 (+urllib)"


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
    request = urllib.request.Request(url, headers=_request_headers(offset, validators))
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

        received = _copy_body(response, part, offset, total_size, progress, timeout)
        if end is not None and offset + received < end:
            raise _Interrupted(received, f"connection closed after {offset + received} of "
                                         f"{end} bytes")


def _request_headers(offset: int, validators: dict | None) -> dict[str, str]:
    """The request's headers; a resumed one asks for the rest (``Range``) only if the file is
    unchanged (``If-Range`` with the strong ETag, else Last-Modified, recorded at its start)."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        etag, modified = validators.get("etag"), validators.get("last_modified")
        if etag and not etag.startswith("W/"):  # If-Range needs a strong validator
            headers["If-Range"] = etag
        elif modified:
            headers["If-Range"] = modified
    return headers


def _copy_body(response, part: Path, offset: int, total_size: int | None, progress: bool,
               timeout: float) -> int:
    """Append (from ``offset``; 0: overwrite) the response body to ``part``; the bytes received.
    A broken connection is :class:`_Interrupted` (resumable), a full disk a clear error."""
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
    return received


def download_and_hash(url: str, dest: Path, sha256: str | None, *, expected_size: int | None,
                      progress: bool, timeout: float, retries: int) -> str:
    """:func:`download_file`, returning the sha256 of ``dest`` (so that it is read once)."""
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
        _validators_path(part).unlink(missing_ok=True)  # nothing of the bad transfer stays
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
    download_and_hash(url, Path(dest), sha256, expected_size=expected_size, progress=progress,
                      timeout=timeout, retries=retries)
    return Path(dest)


__all__ = ["Archive", "effective_url", "download_file", "download_and_hash", "sha256_of",
           "MIRROR_ENV"]
