"""Dataset download: resume, checksums, safe extraction, atomic install, against a local server."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import threading
import zipfile
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nfbench.datasets import archives, download, install
from nfbench.datasets.archives import safe_extract
from nfbench.datasets.download import Archive, download_file, effective_url
from nfbench.datasets.install import fetch
from nfbench.errors import DownloadError

FILES = {"cat/a.txt": b"alpha\n", "cat/sub/b.txt": b"bravo\n" * 50, "top.txt": b"top\n"}


# --------------------------------------------------------------------------------------------
# a local HTTP server with Range support, a one-shot connection cut and 404s


class FileServer:
    """Serves ``files`` (url path -> bytes) on 127.0.0.1 and records every request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}  # path -> bytes sent before dropping (first request)
        self.ranges = True  # False: ignore Range headers and always answer 200
        self.wrong_range_start = False  # True: a 206 that starts at byte 0, not where asked
        self.etags = True  # send an ETag (sha of the content) and honour If-Range
        self.honour_if_range = True  # False: resume whatever If-Range says (a broken server)
        self.no_length_cut: dict[str, int] = {}  # path -> bytes sent without Content-Length
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                server.requests.append({"path": self.path, "range": rng, "if_range": if_range})
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
                if rng and if_range and server.honour_if_range and if_range != etag:
                    rng = None  # RFC 9110: the file changed, send all of it with 200
                cut = server.no_length_cut.pop(self.path, None)
                if cut is not None:  # no Content-Length, close after part of the body
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data[:cut])
                    self.close_connection = True
                    return
                start = 0
                if rng and server.ranges:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if server.wrong_range_start:
                        start = 0
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                if server.etags:
                    self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes" if server.ranges else "none")
                self.end_headers()
                cut = server.cut_after.pop(self.path, None)
                if cut is not None:  # promise everything, send part, hang up
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def add(self, name: str, data: bytes) -> str:
        self.files["/" + name] = data
        return f"{self.base}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = FileServer()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def no_mirror(monkeypatch):
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)


def _validators(part: Path, **values) -> None:
    """What a first, interrupted transfer records beside its part file (here: nothing known)."""
    (part.with_name(part.name + ".validators.json")).write_text(json.dumps(
        {"etag": None, "last_modified": None, "total": None, **values}))


# --------------------------------------------------------------------------------------------
# archive builders


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_tar(files: dict[str, bytes], mode: str = "w:gz", prefix: str = "",
             extra: list[tarfile.TarInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        if prefix:
            info = tarfile.TarInfo(prefix.rstrip("/"))
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return buf.getvalue()


def make_zip(files: dict[str, bytes], prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(prefix + name, data)
    return buf.getvalue()


def assert_tree(root: Path, files: dict[str, bytes]) -> None:
    found = {p.relative_to(root).as_posix(): p.read_bytes()
             for p in root.rglob("*") if p.is_file() and p.name != install.MARKER_NAME}
    assert found == files


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".partial-" in p.name]


@pytest.fixture
def writes(monkeypatch) -> list[str]:
    """Paths of the files ``safe_extract`` writes, in order (it must validate before writing)."""
    written: list[str] = []
    real_write = archives._write_member

    def spy(handle, member, into):
        written.append(member.path)
        return real_write(handle, member, into)

    monkeypatch.setattr(archives, "_write_member", spy)
    return written


# --------------------------------------------------------------------------------------------
# full downloads


def test_fetch_tar_gz_verifies_extracts_and_keeps_archive(server, tmp_path, capsys):
    data = make_tar(FILES)
    archive = Archive(url=server.add("ds.tar.gz", data), sha256=sha(data), filename="ds.tar.gz")
    root = tmp_path / "datasets" / "ds"

    assert fetch([archive], root, notice="LICENCE: be nice", progress=False) is True

    assert_tree(root, FILES)
    marker = json.loads((root / install.MARKER_NAME).read_text())
    assert marker["archives"][0]["url"] == archive.url
    assert marker["archives"][0]["sha256"] == archive.sha256
    assert marker["archives"][0]["actual_sha256"] == sha(data)
    assert "date" in marker
    cached = tmp_path / "datasets" / ".downloads" / "ds" / "ds.tar.gz"
    assert cached.read_bytes() == data  # kept for resume / offline rebuild
    assert not cached.with_name("ds.tar.gz.part").exists()
    assert leftovers(root.parent) == []
    err = capsys.readouterr().err
    assert err.count("LICENCE: be nice") == 1
    # issue 21 item 12: where the archives are kept is said even without progress (--quiet)
    assert f"archives kept in {cached.parent}" in err


def test_fetch_zip_with_inner_root(server, tmp_path):
    data = make_zip({**{"BTech_Dataset_transformed/" + k: v for k, v in FILES.items()},
                     "README.txt": b"outside the inner root\n"})
    archive = Archive(url=server.add("btad.zip", data), sha256=sha(data), filename="btad.zip",
                      inner_root="BTech_Dataset_transformed")
    root = tmp_path / "btad"

    assert fetch([archive], root, progress=False)

    assert_tree(root, FILES)  # README.txt outside inner_root is not copied
    assert leftovers(tmp_path) == []


def test_fetch_tar_xz_with_github_style_top_folder(server, tmp_path):
    data = make_tar(FILES, mode="w:xz", prefix="repo-0123abc/")
    archive = Archive(url=server.add("mtd.tar.xz", data), sha256=None, filename="mtd.tar.xz",
                      inner_root="repo-0123abc")
    assert fetch([archive], tmp_path / "mtd", progress=False)
    assert_tree(tmp_path / "mtd", FILES)


def test_fetch_merges_several_archives(server, tmp_path):
    part1, part2 = make_tar({"cat/a.txt": b"a"}), make_zip({"cat/b.txt": b"b", "dog/c.txt": b"c"})
    both = [Archive(server.add("p1.tgz", part1), sha(part1), "p1.tgz"),
            Archive(server.add("p2.zip", part2), sha(part2), "p2.zip")]
    assert fetch(both, tmp_path / "ds", progress=False)
    assert_tree(tmp_path / "ds", {"cat/a.txt": b"a", "cat/b.txt": b"b", "dog/c.txt": b"c"})
    marker = json.loads((tmp_path / "ds" / install.MARKER_NAME).read_text())
    assert [a["filename"] for a in marker["archives"]] == ["p1.tgz", "p2.zip"]


def test_second_fetch_does_nothing(server, tmp_path, capsys):
    data = make_tar(FILES)
    archive = Archive(url=server.add("ds.tar.gz", data), sha256=sha(data), filename="ds.tar.gz")
    root = tmp_path / "ds"
    assert fetch([archive], root, notice="NOTICE", progress=False) is True
    capsys.readouterr()
    n_requests = len(server.requests)

    assert fetch([archive], root, notice="NOTICE", progress=False) is False

    assert len(server.requests) == n_requests == 1
    assert "NOTICE" not in capsys.readouterr().err


def test_fetch_refuses_foreign_non_empty_root(server, tmp_path):
    data = make_tar(FILES)
    archive = Archive(url=server.add("ds.tar.gz", data), sha256=sha(data), filename="ds.tar.gz")
    root = tmp_path / "ds"
    root.mkdir()
    (root / "mine.txt").write_text("user data")

    with pytest.raises(DownloadError, match="not downloaded by nfbench"):
        fetch([archive], root, progress=False)
    assert [p.name for p in root.iterdir()] == ["mine.txt"]
    assert server.requests == []


def test_mirror_override(server, tmp_path, monkeypatch):
    data = make_tar(FILES)
    server.add("ds.tar.gz", data)
    archive = Archive(url="https://unreachable.invalid/x/y/ds.tar.gz", sha256=sha(data),
                      filename="ds.tar.gz")
    assert effective_url(archive) == archive.url

    monkeypatch.setenv(download.MIRROR_ENV, server.base + "/")
    assert effective_url(archive) == server.base + "/ds.tar.gz"
    assert fetch([archive], tmp_path / "ds", progress=False)

    assert [r["path"] for r in server.requests] == ["/ds.tar.gz"]
    assert_tree(tmp_path / "ds", FILES)
    marker = json.loads((tmp_path / "ds" / install.MARKER_NAME).read_text())
    assert marker["archives"][0]["url"] == archive.url  # identity is the canonical URL


# --------------------------------------------------------------------------------------------
# resume and failures


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    data = bytes(range(256)) * 40
    url = server.add("big.bin", data)
    server.cut_after["/big.bin"] = 1000
    dest = tmp_path / "big.bin"
    part = tmp_path / "big.bin.part"

    with pytest.raises(DownloadError, match="interrupted"):
        download_file(url, dest, sha(data), progress=False, retries=0)
    assert not dest.exists()
    assert part.stat().st_size == 1000  # kept for the next run

    assert download_file(url, dest, sha(data), progress=False, retries=0) == dest

    assert server.requests[0]["range"] is None
    assert server.requests[1]["range"] == "bytes=1000-"
    assert dest.read_bytes() == data
    assert not part.exists()


def test_interrupted_transfer_resumes_automatically(server, tmp_path):
    data = b"0123456789" * 500
    url = server.add("f.bin", data)
    server.cut_after["/f.bin"] = 1234
    dest = tmp_path / "f.bin"

    download_file(url, dest, sha(data), progress=False)

    assert [r["range"] for r in server.requests] == [None, "bytes=1234-"]
    assert dest.read_bytes() == data


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    data = b"fresh content " * 100
    url = server.add("f.bin", data)
    server.ranges = False
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes that must not be kept")
    _validators(tmp_path / "f.bin.part")

    download_file(url, dest, sha(data), progress=False)

    assert server.requests[0]["range"] is not None  # asked to resume, got a 200
    assert dest.read_bytes() == data


def test_206_from_the_wrong_offset_restarts_from_zero(server, tmp_path):
    data = b"abcdefghij" * 100
    url = server.add("f.bin", data)
    server.wrong_range_start = True
    (tmp_path / "f.bin.part").write_bytes(data[:300])
    _validators(tmp_path / "f.bin.part")

    download_file(url, tmp_path / "f.bin", sha(data), progress=False)

    assert [r["range"] for r in server.requests] == ["bytes=300-", None]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_complete_part_file_is_finished_on_416(server, tmp_path):
    data = b"already here" * 10
    url = server.add("f.bin", data)
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(data)
    _validators(tmp_path / "f.bin.part")

    download_file(url, dest, sha(data), progress=False)

    assert server.requests == [{"path": "/f.bin", "range": f"bytes={len(data)}-", "if_range": None}]
    assert dest.read_bytes() == data


def test_existing_verified_file_is_not_downloaded_again(server, tmp_path):
    data = b"payload"
    url = server.add("f.bin", data)
    dest = tmp_path / "f.bin"
    dest.write_bytes(data)
    download_file(url, dest, sha(data), progress=False)
    assert server.requests == []

    dest.write_bytes(b"corrupted")  # a wrong hash: downloaded afresh
    download_file(url, dest, sha(data), progress=False)
    assert len(server.requests) == 1
    assert dest.read_bytes() == data


def test_checksum_mismatch_raises_and_deletes(server, tmp_path):
    data = b"the real bytes"
    url = server.add("f.bin", data)
    dest = tmp_path / "f.bin"
    wrong = "0" * 64

    with pytest.raises(DownloadError) as info:
        download_file(url, dest, wrong, progress=False)

    message = str(info.value)
    assert url in message and wrong in message and sha(data) in message
    assert not dest.exists()
    assert not (tmp_path / "f.bin.part").exists()
    assert not (tmp_path / "f.bin.part.validators.json").exists()  # issue 21 item 12


def test_http_404_raises(server, tmp_path):
    url = f"{server.base}/missing.tar.gz"
    with pytest.raises(DownloadError, match="404") as info:
        download_file(url, tmp_path / "missing.tar.gz", None, progress=False)
    assert url in str(info.value)
    assert not (tmp_path / "missing.tar.gz").exists()

    archive = Archive(url=url, sha256=None, filename="missing.tar.gz")
    with pytest.raises(DownloadError, match="404"):
        fetch([archive], tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()


def test_no_space_precheck(server, tmp_path, monkeypatch):
    data = b"x" * 5000
    url = server.add("f.bin", data)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: usage(10**6, 10**6, 100))

    with pytest.raises(DownloadError, match="no space left"):
        download_file(url, tmp_path / "f.bin", sha(data), expected_size=len(data),
                      progress=False)
    assert not (tmp_path / "f.bin").exists()


def test_no_space_while_writing_keeps_part(server, tmp_path, monkeypatch):
    import builtins
    import errno

    data = b"y" * 5000
    url = server.add("f.bin", data)
    (tmp_path / "f.bin.part").write_bytes(data[:100])
    _validators(tmp_path / "f.bin.part")
    real_open = builtins.open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, chunk):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FullDisk(f) if str(path).endswith(".part") and "b" in mode and "r" not in mode else f

    monkeypatch.setattr(download, "open", fake_open, raising=False)
    with pytest.raises(DownloadError, match="no space left"):
        download_file(url, tmp_path / "f.bin", sha(data), progress=False)
    assert (tmp_path / "f.bin.part").read_bytes() == data[:100]
    assert not (tmp_path / "f.bin").exists()


# --------------------------------------------------------------------------------------------
# safe extraction


def _info(name: str, kind: bytes, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, size
    return info


@pytest.mark.parametrize("evil, why", [
    (_info("../evil.txt", tarfile.REGTYPE, size=4), "outside"),
    (_info("cat/../../evil.txt", tarfile.REGTYPE, size=4), "outside"),
    (_info("/tmp/nfbench-evil.txt", tarfile.REGTYPE, size=4), "absolute"),
    (_info("cat/link", tarfile.SYMTYPE, linkname="/etc/passwd"), "symlink"),
    (_info("cat/up", tarfile.SYMTYPE, linkname="../../evil.txt"), "symlink pointing outside"),
    (_info("cat/near", tarfile.SYMTYPE, linkname="a.txt"), "is a symlink$"),
    (_info("cat/hard", tarfile.LNKTYPE, linkname="cat/a.txt"), "hard link"),
    (_info("cat/fifo", tarfile.FIFOTYPE), "fifo"),
    (_info("cat/dev", tarfile.CHRTYPE), "device"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink", "symlink-outside", "symlink-inside",
        "hardlink", "fifo", "device"])
def test_malicious_tar_is_refused_and_nothing_extracted(tmp_path, writes, evil, why):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(make_tar(FILES, extra=[evil]))  # safe members come first
    out = tmp_path / "out"
    target = out / "ds"

    with pytest.raises(DownloadError, match=why):
        safe_extract(archive, target)

    assert writes == []  # every member is checked before the first byte is written
    assert not target.exists()
    assert not out.exists() or list(out.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/nfbench-evil.txt").exists()


def test_tar_without_extraction_filters_is_refused(tmp_path, writes, monkeypatch):
    archive = tmp_path / "ds.tar.gz"
    archive.write_bytes(make_tar(FILES))
    monkeypatch.delattr(tarfile, "data_filter")  # a Python before PEP 706 (3.11.4, 3.10.12)
    with pytest.raises(DownloadError, match="lacks tarfile's extraction filters"):
        safe_extract(archive, tmp_path / "ds")
    assert writes == [] and not (tmp_path / "ds").exists()


@pytest.mark.parametrize("name, why", [("../evil.txt", "outside"), ("a/../../evil.txt", "outside"),
                                       ("/abs/evil.txt", "absolute"),
                                       ("..\\evil.txt", "outside")])
def test_malicious_zip_is_refused_and_nothing_extracted(tmp_path, writes, name, why):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cat/a.txt", b"fine")
        zf.writestr(zipfile.ZipInfo(name), b"evil")
    out = tmp_path / "out"

    with pytest.raises(DownloadError, match=why):
        safe_extract(archive, out / "ds")

    assert writes == []
    assert not (out / "ds").exists()
    assert not out.exists() or list(out.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_zip_symlink_member_is_refused(tmp_path, writes):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cat/a.txt", b"fine")
        link = zipfile.ZipInfo("cat/link")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")

    with pytest.raises(DownloadError, match="symlink"):
        safe_extract(archive, tmp_path / "ds")
    assert writes == []
    assert not (tmp_path / "ds").exists()


def test_missing_inner_root_is_a_clear_error(tmp_path):
    archive = tmp_path / "ds.zip"
    archive.write_bytes(make_zip(FILES, prefix="Other/"))
    with pytest.raises(DownloadError, match="no folder 'Expected'.*Other"):
        safe_extract(archive, tmp_path / "ds", inner_root="Expected")
    assert not (tmp_path / "ds").exists()


def test_extract_into_existing_target(tmp_path):
    archive = tmp_path / "ds.tar"
    archive.write_bytes(make_tar(FILES, mode="w"))
    target = tmp_path / "ds"
    target.mkdir()
    safe_extract(archive, target)  # empty: fine
    assert_tree(target, FILES)

    with pytest.raises(DownloadError, match="not empty"):
        safe_extract(archive, target)
    assert_tree(target, FILES)


def test_crash_during_extraction_leaves_no_target(tmp_path, monkeypatch):
    archive = tmp_path / "ds.tar.gz"
    archive.write_bytes(make_tar(FILES))
    real_write = archives._write_member
    calls = []

    def crash_on_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("simulated crash mid-extraction")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(archives, "_write_member", crash_on_second)
    with pytest.raises(RuntimeError, match="simulated crash"):
        safe_extract(archive, tmp_path / "ds")

    assert len(calls) == 2  # one file was already written when it crashed
    assert not (tmp_path / "ds").exists()
    assert leftovers(tmp_path) == []


def test_crash_during_fetch_then_rerun_uses_cache(server, tmp_path, monkeypatch):
    data = make_tar(FILES)
    archive = Archive(url=server.add("ds.tar.gz", data), sha256=sha(data), filename="ds.tar.gz")
    root = tmp_path / "ds"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(archives, "_write_member", crash)
        with pytest.raises(KeyboardInterrupt):
            fetch([archive], root, progress=False)
    assert not root.exists()
    assert leftovers(tmp_path) == []

    assert fetch([archive], root, progress=False) is True
    assert len(server.requests) == 1  # the cached archive was reused
    assert_tree(root, FILES)


# --------------------------------------------------------------------------------------------
# issue 13: resumes checked against validators, self-repairing cache, validation before install


def test_file_changed_between_interrupted_and_resumed_transfer_restarts(server, tmp_path):
    old, new = b"old version " * 500, b"new version!" * 400
    url = server.add("f.bin", old)
    server.cut_after["/f.bin"] = 1000
    with pytest.raises(DownloadError, match="interrupted"):
        download_file(url, tmp_path / "f.bin", None, progress=False, retries=0)
    server.files["/f.bin"] = new  # the server's file changed meanwhile
    download_file(url, tmp_path / "f.bin", None, progress=False)
    assert server.requests[-1]["if_range"] is not None  # resumed with If-Range: ETag
    assert (tmp_path / "f.bin").read_bytes() == new  # not old[:1000] + new[1000:]


def test_resumed_206_of_another_version_restarts(server, tmp_path):
    old, new = b"old version " * 500, b"new version!" * 500
    url = server.add("f.bin", old)
    server.honour_if_range = False  # a server that resumes whatever the validator says
    server.cut_after["/f.bin"] = 1000
    with pytest.raises(DownloadError, match="interrupted"):
        download_file(url, tmp_path / "f.bin", None, progress=False, retries=0)
    server.files["/f.bin"] = new
    download_file(url, tmp_path / "f.bin", None, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == new


def test_part_file_without_recorded_validators_restarts(server, tmp_path):
    data = b"0123456789" * 100
    url = server.add("f.bin", data)
    (tmp_path / "f.bin.part").write_bytes(b"X" * 300)  # from an unknown earlier transfer
    download_file(url, tmp_path / "f.bin", None, progress=False)
    assert server.requests[0]["range"] is None
    assert (tmp_path / "f.bin").read_bytes() == data


@pytest.mark.parametrize("damage", ["truncated tar.gz", "html page"])
def test_damaged_cached_archive_is_moved_aside_and_fetched_again(damage, server, tmp_path, capsys):
    data = make_tar(FILES)
    archive = Archive(url=server.add("ds.tar.gz", data), sha256=None, filename="ds.tar.gz")
    root = tmp_path / "ds"
    cached = tmp_path / ".downloads" / "ds" / "ds.tar.gz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data[: len(data) // 2] if damage == "truncated tar.gz"
                       else b"<html><body>Please log in</body></html>")
    assert fetch([archive], root, progress=False) is True
    assert_tree(root, FILES)
    assert cached.read_bytes() == data
    assert cached.with_name("ds.tar.gz.corrupt").exists()
    err = capsys.readouterr().err
    assert err.count("moved aside") == 1 and "downloading it again" in err


def test_body_cut_without_content_length_is_fetched_again(server, tmp_path, capsys):
    data = make_tar({f"f{i}.bin": os.urandom(2000) for i in range(20)})
    archive = Archive(url=server.add("ds.tar.gz", data), sha256=None, filename="ds.tar.gz")
    server.no_length_cut["/ds.tar.gz"] = len(data) // 2
    assert fetch([archive], tmp_path / "ds", progress=False) is True
    assert (tmp_path / ".downloads" / "ds" / "ds.tar.gz").read_bytes() == data
    assert "moved aside" in capsys.readouterr().err


def test_dataset_failing_its_checks_is_neither_installed_nor_marked(server, tmp_path):
    from nfbench.errors import DatasetLayoutError

    partial = make_tar({"MT_Free/Imgs/a.jpg": b"x"})
    archive = Archive(url=server.add("mtd.tar.gz", partial), sha256=None, filename="mtd.tar.gz")

    def counts(tree):
        if not (tree / "MT_Free/Imgs/b.jpg").exists():
            raise DatasetLayoutError("MTD image counts {'Free': 1} differ from the official")

    root = tmp_path / "mtd"
    with pytest.raises(DownloadError, match="fails its checks, nothing was installed: MTD image"):
        fetch([archive], root, progress=False, validate=counts)
    assert not root.exists() and leftovers(tmp_path) == []
    server.files["/mtd.tar.gz"] = make_tar({"MT_Free/Imgs/a.jpg": b"x", "MT_Free/Imgs/b.jpg": b"y"})
    assert fetch([archive], root, progress=False, validate=counts) is True  # fetched afresh
    assert (root / install.MARKER_NAME).exists() and (root / "MT_Free/Imgs/b.jpg").exists()


def test_obtain_validates_mtd_before_installing(server, tmp_path, monkeypatch):
    from nfbench.datasets import mtd, obtain

    data = make_tar({"MT_Free/Imgs/exp1_num_1.jpg": b"x"},
                    prefix=mtd.ARCHIVES[0].inner_root + "/")
    server.add(mtd.ARCHIVES[0].filename, data)
    monkeypatch.setenv(download.MIRROR_ENV, server.base)
    with pytest.raises(DownloadError, match="fails its checks"):
        obtain("mtd", tmp_path / "mtd", progress=False)
    assert not (tmp_path / "mtd").exists()


def test_stale_staging_folders_are_removed_at_the_next_start(server, tmp_path, capsys):
    data = make_tar(FILES)
    archive = Archive(url=server.add("ds.tar.gz", data), sha256=sha(data), filename="ds.tar.gz")
    dead = tmp_path / ".ds.partial-999999999-abcd"  # no such process
    legacy = tmp_path / ".ds.partial-0badf00d"  # the name of an older nfbench
    for stale in (dead, legacy):
        (stale / "root").mkdir(parents=True)
        (stale / "root" / "big.bin").write_bytes(b"x" * 1000)
    alive = tmp_path / f".ds.partial-{os.getppid()}-beef"  # a live (parallel) run's
    alive.mkdir()
    assert fetch([archive], tmp_path / "ds", progress=False)
    assert not dead.exists() and not legacy.exists() and alive.exists()
    assert "left by an interrupted run" in capsys.readouterr().err


def test_sigterm_during_extraction_removes_the_staging_folder(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    data = make_tar({f"f{i}.txt": b"x" for i in range(200)})
    cache = tmp_path / ".downloads" / "ds"
    cache.mkdir(parents=True)
    (cache / "ds.tar.gz").write_bytes(data)  # cached and pinned: no network
    script = f"""
import time
from pathlib import Path
from nfbench.datasets import archives, download, install
real = archives._write_member
def slow(*args):
    time.sleep(0.05)
    return real(*args)
archives._write_member = slow
archive = download.Archive(url="http://127.0.0.1:9/ds.tar.gz", sha256={sha(data)!r},
                           filename="ds.tar.gz")
install.fetch([archive], Path({str(tmp_path / 'ds')!r}), progress=False)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not leftovers(tmp_path) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert leftovers(tmp_path), "extraction never started"
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert leftovers(tmp_path) == [] and not (tmp_path / "ds").exists()


def test_root_dot_empty_folder_is_filled_in_place(server, tmp_path, monkeypatch):
    data = make_tar(FILES)
    archive = Archive(url=server.add("ds.tar.gz", data), sha256=sha(data), filename="ds.tar.gz")
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert fetch([archive], Path("."), progress=False) is True
    assert Path.cwd() == here and here.is_dir()
    assert_tree(here, FILES)
    assert (tmp_path / ".downloads" / "here" / "ds.tar.gz").exists()
    assert fetch([archive], Path("."), progress=False) is False


def test_root_dot_non_empty_folder_is_refused_before_downloading(server, tmp_path, monkeypatch):
    data = make_tar(FILES)
    archive = Archive(url=server.add("ds.tar.gz", data), sha256=sha(data), filename="ds.tar.gz")
    (tmp_path / "mine.txt").write_text("user data")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DownloadError, match="not downloaded by nfbench"):
        fetch([archive], Path("."), progress=False)
    assert server.requests == []


def test_mirror_that_is_not_a_url_is_one_line(tmp_path, monkeypatch, capsys):
    from nfbench.cli import main

    monkeypatch.setenv(download.MIRROR_ENV, "notaurl")
    assert main(["data", "download", "mtd", "--root", str(tmp_path / "mtd"), "--quiet"]) == 2
    err = capsys.readouterr().err
    lines = err.split("\r")[-1].strip().splitlines()
    assert lines[-1].startswith("error: NFBENCH_MIRROR='notaurl' is not a URL")
    assert "Traceback" not in err and not (tmp_path / "mtd").exists()
