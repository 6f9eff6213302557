"""Downloads against a local HTTP server (127.0.0.1 only) that serves archives the tests build."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import stat
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from enclap.data import download as dl
from enclap.data.download import (
    CLOTHO_V2_FILES,
    ESC50_FILES,
    ChecksumError,
    DownloadError,
    RemoteFile,
    download_dataset,
    download_file,
    extract_archive,
)
from enclap.data.manifest import read_manifest, validate_manifest


class FileServer:
    """Serves ``files`` (name -> bytes) with Range support; can ignore ranges or drop connections."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (name, Range header)
        self.bytes_sent = 0
        self.ignore_range = False
        self.drop_after: int | None = None  # close the next response after this many body bytes
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                name = unquote(self.path.lstrip("/"))
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                if name not in server.files:
                    self.send_error(404, "Not Found")
                    return
                data = server.files[name]
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if match and not server.ignore_range:
                    start = int(match.group(1))
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
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drop_after is not None:
                    body = body[: server.drop_after]
                    server.drop_after = None
                    self.close_connection = True
                # Counted before writing: the client can finish reading (and the test assert) before
                # this thread runs another line.
                server.bytes_sent += len(body)
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def remote(self, name: str, data: bytes, **checksums) -> RemoteFile:
        self.files[name] = data
        return RemoteFile(url=f"{self.base_url}/{name}", filename=name, **checksums)


@pytest.fixture
def server():
    srv = FileServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def payload(n: int = 50_000, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def fetch(remote, dest, **kwargs):
    return download_file(remote, dest, progress=False, retry_wait=0, timeout=10, **kwargs)


# ----------------------------------------------------------------------------------------- download_file


def test_download_verifies_both_checksums(server, tmp_path):
    data = payload()
    path = fetch(server.remote("a.bin", data, sha256=sha256(data), md5=md5(data), size=len(data)), tmp_path, chunk_size=4096)
    assert path == tmp_path / "a.bin" and path.read_bytes() == data
    assert not (tmp_path / "a.bin.part").exists()


def test_checksum_mismatch_moves_the_file_aside(server, tmp_path):
    data = payload()
    wrong = "0" * 32
    with pytest.raises(ChecksumError) as info:
        fetch(server.remote("a.bin", data, md5=wrong), tmp_path)
    message = str(info.value)
    assert f"{server.base_url}/a.bin" in message and wrong in message and md5(data) in message
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "a.bin.part").exists()
    assert (tmp_path / "a.bin.bad").read_bytes() == data


def test_size_mismatch_is_reported(server, tmp_path):
    data = payload(1000)
    with pytest.raises(ChecksumError, match="size is 1000 bytes, expected 999"):
        fetch(server.remote("a.bin", data, size=999), tmp_path)


def test_resume_from_a_partial_file(server, tmp_path):
    data = payload()
    (tmp_path / "a.bin.part").write_bytes(data[:12_345])
    path = fetch(server.remote("a.bin", data, sha256=sha256(data)), tmp_path)
    assert path.read_bytes() == data
    assert server.requests == [("a.bin", "bytes=12345-")]
    assert server.bytes_sent == len(data) - 12_345


def test_resume_when_the_server_ignores_ranges_starts_over(server, tmp_path):
    data = payload()
    (tmp_path / "a.bin.part").write_bytes(b"garbage that must not survive")
    server.ignore_range = True
    path = fetch(server.remote("a.bin", data, sha256=sha256(data)), tmp_path)
    assert path.read_bytes() == data and server.bytes_sent == len(data)


def test_partial_file_that_is_already_whole(server, tmp_path):
    data = payload(2000)
    (tmp_path / "a.bin.part").write_bytes(data)
    path = fetch(server.remote("a.bin", data, md5=md5(data)), tmp_path)
    assert path.read_bytes() == data and server.bytes_sent == 0  # 416: nothing left to send


def test_complete_file_is_not_downloaded_again(server, tmp_path):
    data = payload()
    remote = server.remote("a.bin", data, sha256=sha256(data))
    fetch(remote, tmp_path)
    assert len(server.requests) == 1
    assert fetch(remote, tmp_path).read_bytes() == data
    assert len(server.requests) == 1
    # Without a checksum, a file under its final name is complete (only verified downloads get it).
    unverified = RemoteFile(url=remote.url, filename="a.bin")
    fetch(unverified, tmp_path)
    assert len(server.requests) == 1


def test_corrupt_existing_file_is_replaced(server, tmp_path):
    data = payload()
    (tmp_path / "a.bin").write_bytes(b"old version")
    path = fetch(server.remote("a.bin", data, sha256=sha256(data)), tmp_path)
    assert path.read_bytes() == data
    assert (tmp_path / "a.bin.bad").read_bytes() == b"old version"


def test_dropped_connection_resumes_within_the_call(server, tmp_path):
    data = payload()
    server.drop_after = 20_000
    path = fetch(server.remote("a.bin", data, sha256=sha256(data)), tmp_path, chunk_size=4096)
    assert path.read_bytes() == data
    assert [r for _, r in server.requests] == [None, "bytes=20000-"]


def test_interrupted_download_resumes_on_the_next_call(server, tmp_path):
    data = payload()
    remote = server.remote("a.bin", data, sha256=sha256(data))
    server.drop_after = 30_000
    with pytest.raises(DownloadError) as info:
        fetch(remote, tmp_path, retries=0)
    assert "run again to resume" in str(info.value) and "30000 bytes are kept" in str(info.value)
    assert (tmp_path / "a.bin.part").read_bytes() == data[:30_000]
    assert fetch(remote, tmp_path).read_bytes() == data
    assert server.requests[-1] == ("a.bin", "bytes=30000-")


def test_http_errors_name_the_url(server, tmp_path):
    remote = RemoteFile(url=f"{server.base_url}/missing.bin", filename="missing.bin")
    with pytest.raises(DownloadError, match=r"missing\.bin: HTTP 404"):
        fetch(remote, tmp_path)
    assert len(server.requests) == 1  # a 4xx is not retried


def test_unreachable_host(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    remote = RemoteFile(url=f"http://127.0.0.1:{port}/x.bin", filename="x.bin")
    with pytest.raises(DownloadError, match="after 2 attempt"):
        fetch(remote, tmp_path, retries=1)


# -------------------------------------------------------------------------------------------- extraction


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def make_7z(members: dict[str, bytes]) -> bytes:
    """A real 7z archive, the format Clotho's audio ships in."""
    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(data, name)
    return buf.getvalue()


def test_extract_zip_once(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"top/x.txt": b"x", "top/sub/y.txt": b"y"}))
    out = extract_archive(archive, tmp_path / "out")
    assert (out / "top" / "x.txt").read_bytes() == b"x" and (out / "top" / "sub" / "y.txt").read_bytes() == b"y"
    (out / "top" / "x.txt").write_bytes(b"changed")
    extract_archive(archive, tmp_path / "out")  # marker present: not extracted again
    assert (out / "top" / "x.txt").read_bytes() == b"changed"


def test_extract_tar_gz(tmp_path):
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        info = tarfile.TarInfo("d/f.txt")
        info.size = 3
        t.addfile(info, io.BytesIO(b"abc"))
    assert (extract_archive(archive, tmp_path / "o") / "d" / "f.txt").read_bytes() == b"abc"


def test_extract_refuses_members_outside_destination(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(make_zip({"ok.txt": b"1", "../escape.txt": b"2"}))
    with pytest.raises(DownloadError, match=r"outside the destination: \.\./escape\.txt"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_extract_corrupt_and_unknown_archives(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(DownloadError, match="bad.zip: not a readable zip"):
        extract_archive(bad, tmp_path / "out")
    odd = tmp_path / "file.rar"
    odd.write_bytes(b"x")
    with pytest.raises(DownloadError, match="unknown archive type"):
        extract_archive(odd, tmp_path / "out")
    with pytest.raises(DownloadError, match="no such archive"):
        extract_archive(tmp_path / "none.zip", tmp_path / "out")


def test_7z_without_py7zr_or_7zip_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "py7zr", None)  # makes `import py7zr` fail
    monkeypatch.setattr(dl.shutil, "which", lambda name: None)
    archive = tmp_path / "clotho_audio_evaluation.7z"
    archive.write_bytes(b"7z\xbc\xaf\x27\x1c")
    with pytest.raises(DownloadError) as info:
        extract_archive(archive, tmp_path / "out")
    assert "pip install py7zr" in str(info.value) and "clotho_audio_evaluation.7z" in str(info.value)


# ------------------------------------------------------------------- links and special files in archives

_FILE_ATTRIBUTE_UNIX_EXTENSION = 0x8000  # 7z: the high 16 bits of the attributes hold a Unix mode
_FILE_ATTRIBUTE_REPARSE_POINT = 0x400  # 7z / Windows: a symbolic link or junction


def make_7z_with(tmp_path: Path, special: str) -> Path:
    """A real 7z archive (py7zr) with a regular file and one member of the kind ``special``."""
    import py7zr

    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.wav").write_bytes(b"RIFF")
    archive = tmp_path / "evil.7z"
    with py7zr.SevenZipFile(archive, "w") as z:
        z.write(src / "ok.wav", "audio/ok.wav")
        if special == "symlink":
            # A link that points out of the destination and a member written through it, as an attacker
            # would write them (py7zr archives a link only when its target exists).
            (tmp_path / "outside").mkdir()
            (src / "link").symlink_to(tmp_path / "outside")
            z.write(src / "link", "audio/link")
            z.writestr(b"pwned", "audio/link/pwned.txt")
        else:
            # py7zr cannot archive a fifo or a reparse point itself: write an empty member, then give it
            # the attributes 7-Zip stores for one (the header is written on close).
            z.writestr(b"", "audio/special")
            attributes = {
                "fifo": _FILE_ATTRIBUTE_UNIX_EXTENSION | ((stat.S_IFIFO | 0o644) << 16),
                "chardev": _FILE_ATTRIBUTE_UNIX_EXTENSION | ((stat.S_IFCHR | 0o644) << 16),
                "reparse": 0x20 | _FILE_ATTRIBUTE_REPARSE_POINT,
            }[special]
            z.header.files_info.files[-1]["attributes"] = attributes
    return archive


@pytest.mark.parametrize(
    "special, member, kind",
    [
        ("symlink", "audio/link", "symbolic link"),
        ("fifo", "audio/special", "fifo"),
        ("chardev", "audio/special", "character device"),
        ("reparse", "audio/special", "symbolic link"),
    ],
)
def test_7z_with_links_or_special_files_is_refused(tmp_path, special, member, kind):
    archive = make_7z_with(tmp_path, special)
    out = tmp_path / "out"
    with pytest.raises(DownloadError) as info:
        extract_archive(archive, out)
    message = str(info.value)
    assert str(archive) in message and f"{member} ({kind})" in message
    assert "audio/ok.wav" not in message  # the regular member is not blamed
    # Nothing was extracted, and no marker claims the archive was.
    assert [p.name for p in out.rglob("*")] == []
    if special == "symlink":
        assert list((tmp_path / "outside").iterdir()) == []


def test_7z_of_regular_files_and_folders_still_extracts(tmp_path):
    import py7zr

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "x.wav").write_bytes(b"x")
    archive = tmp_path / "good.7z"
    with py7zr.SevenZipFile(archive, "w") as z:
        z.write(src / "d", "d")
        z.write(src / "d" / "x.wav", "d/x.wav")
        z.writestr(b"windows", "w.txt")
        z.header.files_info.files[-1]["attributes"] = 0x20  # Windows attributes only, no Unix mode
    out = extract_archive(archive, tmp_path / "out")
    assert (out / "d" / "x.wav").read_bytes() == b"x" and (out / "w.txt").read_bytes() == b"windows"


def _zip_member(name: str, mode: int, data: bytes) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix
    info.external_attr = mode << 16
    return info, data


@pytest.mark.parametrize(
    "mode, kind",
    [(stat.S_IFLNK | 0o777, "symbolic link"), (stat.S_IFIFO | 0o644, "fifo"), (stat.S_IFBLK | 0o600, "block device")],
)
def test_zip_with_links_or_special_files_is_refused(tmp_path, mode, kind):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(*_zip_member("top/ok.txt", stat.S_IFREG | 0o644, b"1"))
        z.writestr(*_zip_member("top/odd", mode, b"../../etc/passwd"))
    with pytest.raises(DownloadError, match=re.escape(f"{archive}: refusing to extract links") + ".*" + re.escape(f"top/odd ({kind})")):
        extract_archive(archive, tmp_path / "out")
    assert list((tmp_path / "out").rglob("*")) == []


def test_zip_with_unix_modes_of_regular_files_extracts(tmp_path):
    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(*_zip_member("top/", stat.S_IFDIR | 0o755, b""))
        z.writestr(*_zip_member("top/a.txt", stat.S_IFREG | 0o644, b"a"))
    assert (extract_archive(archive, tmp_path / "out") / "top" / "a.txt").read_bytes() == b"a"


@pytest.mark.parametrize(
    "member_type, kind",
    [(tarfile.SYMTYPE, "symbolic link"), (tarfile.LNKTYPE, "hard link"), (tarfile.CHRTYPE, "character device"),
     (tarfile.FIFOTYPE, "fifo")],
)
def test_tar_with_links_or_special_files_is_refused(tmp_path, member_type, kind):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        regular = tarfile.TarInfo("d/f.txt")
        regular.size = 3
        t.addfile(regular, io.BytesIO(b"abc"))
        odd = tarfile.TarInfo("d/odd")
        odd.type = member_type
        odd.linkname = "d/f.txt" if member_type == tarfile.LNKTYPE else "/etc"  # a link inside, or one out
        t.addfile(odd)
    with pytest.raises(DownloadError, match=re.escape(f"d/odd ({kind})")) as info:
        extract_archive(archive, tmp_path / "out")
    assert str(archive) in str(info.value)
    assert list((tmp_path / "out").rglob("*")) == []


# `7zz l -slt` output in the format 7-Zip 26.02 (Debian's 7zip package) prints it, for an archive holding a
# file, a link to /etc/passwd, a fifo, a folder and a file with Windows attributes only. The attribute
# strings are the ones 7-Zip printed for such members; the CLI path must read the member kinds from them.
SEVEN_ZIP_HEADER = """
7-Zip (z) 26.02 (x64) : Copyright (c) 1999-2026 Igor Pavlov : 2026-02-12

Scanning the drive for archives:
1 file, 189 bytes (1 KiB)

Listing archive: a.7z

--
Path = a.7z
Type = 7z
Physical Size = 189
Headers Size = 171
Method = LZMA2:24 BCJ
Solid = +
Blocks = 1

----------
"""
SEVEN_ZIP_MEMBERS = [
    ("audio/f.wav", 3, "A -rw-r--r--"),
    ("audio/link", 11, "AL lrwxrwxrwx"),
    ("audio/fifo", 0, " prw-r--r--"),
    ("audio/dir", 0, "D drwxr-xr-x"),
    ("audio/windows.wav", 3, "A"),
]


def seven_zip_listing(members: list[tuple[str, int, str]]) -> str:
    blocks = [
        f"Path = {path}\nSize = {size}\nPacked Size = \nModified = 2026-12-01 23:25:28.7704048\n"
        f"Attributes = {attributes}\nCRC = 00000000\nEncrypted = -\nMethod = BCJ LZMA2:24\nBlock = 0\n"
        for path, size, attributes in members
    ]
    return SEVEN_ZIP_HEADER + "\n".join(blocks)


def _fake_7zip(tmp_path: Path, listing: str) -> Path:
    """A `7z` command that prints ``listing`` for `l` and records every `x` it is asked to run."""
    (tmp_path / "listing.txt").write_text(listing)
    exe = tmp_path / "bin" / "7z"
    exe.parent.mkdir()
    exe.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = l ]; then cat "{tmp_path / "listing.txt"}"; exit 0; fi\n'
        f'echo "$@" >> "{tmp_path / "extract_calls.txt"}"\n'
    )
    exe.chmod(0o755)
    return exe


def test_7zip_command_path_refuses_links_and_fifos(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "py7zr", None)  # use the 7-Zip command, not py7zr
    exe = _fake_7zip(tmp_path, seven_zip_listing(SEVEN_ZIP_MEMBERS))
    monkeypatch.setattr(dl.shutil, "which", lambda name: str(exe) if name == "7z" else None)
    archive = tmp_path / "a.7z"
    archive.write_bytes(b"7z\xbc\xaf\x27\x1c")
    with pytest.raises(DownloadError) as info:
        extract_archive(archive, tmp_path / "out")
    message = str(info.value)
    assert "audio/link (symbolic link)" in message and "audio/fifo (fifo)" in message
    for regular in ("audio/f.wav", "audio/dir", "audio/windows.wav"):
        assert regular not in message
    assert not (tmp_path / "extract_calls.txt").exists()  # 7-Zip was never asked to extract

    # Without the two special members the same listing is extracted.
    benign = [m for m in SEVEN_ZIP_MEMBERS if m[0] not in ("audio/link", "audio/fifo")]
    (tmp_path / "listing.txt").write_text(seven_zip_listing(benign))
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "extract_calls.txt").read_text().split() == ["x", "-y", f"-o{tmp_path / 'out'}", str(archive)]


# --------------------------------------------------------------------------------------------- data sets


def test_official_tables():
    """Clotho files are pinned to Zenodo record 4783391 with the MD5s Zenodo publishes; ESC-50 has none."""
    names = [f.filename for files in CLOTHO_V2_FILES.values() for f in files]
    assert len(names) == len(set(names)) == 9
    for subset, files in CLOTHO_V2_FILES.items():
        assert {f.filename for f in files} == {
            f"clotho_audio_{subset}.7z", f"clotho_captions_{subset}.csv", f"clotho_metadata_{subset}.csv"
        }
        for f in files:
            assert f.url.startswith("https://zenodo.org/records/4783391/files/" + f.filename)
            assert re.fullmatch(r"[0-9a-f]{32}", f.md5 or "")
    (esc50,) = ESC50_FILES["all"]
    assert esc50.url == "https://github.com/karolpiczak/ESC-50/archive/master.zip"
    assert esc50.md5 is None and esc50.sha256 is None


def esc50_zip(listed: list[str], present: list[str]) -> bytes:
    meta = io.StringIO()
    writer = csv.writer(meta, lineterminator="\n")
    writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
    for i, name in enumerate(listed):
        writer.writerow([name, 1, i, f"class{i}", False, name[:-4], "A"])
    members = {"ESC-50-master/meta/esc50.csv": meta.getvalue().encode()}
    members.update({f"ESC-50-master/audio/{name}": b"RIFF" + name.encode() for name in present})
    return make_zip(members)


def test_download_esc50_from_a_mirror(server, tmp_path):
    names = ["1-100032-A-0.wav", "1-100038-A-14.wav", "2-1000-B-3.wav"]
    server.files["ESC-50-master.zip"] = esc50_zip(names, names)
    root = download_dataset("esc50", tmp_path / "esc50", base_url=server.base_url, progress=False, retry_wait=0)
    assert sorted(p.name for p in (root / "ESC-50-master" / "audio").iterdir()) == sorted(names)
    assert (root / "archives" / "ESC-50-master.zip").is_file()
    # A second run downloads nothing and extracts nothing.
    before = len(server.requests)
    download_dataset("esc50", tmp_path / "esc50", base_url=server.base_url, progress=False)
    assert len(server.requests) == before


def test_esc50_with_missing_clips_is_rejected(server, tmp_path):
    server.files["ESC-50-master.zip"] = esc50_zip(["a.wav", "b.wav", "c.wav"], ["a.wav"])
    with pytest.raises(DownloadError, match="2 of 3 clips listed in meta/esc50.csv are missing"):
        download_dataset("esc50", tmp_path / "esc50", base_url=server.base_url, progress=False, retry_wait=0)


def test_clotho_from_a_mirror_with_wrong_content_fails_the_checksum(server, tmp_path):
    for remote in CLOTHO_V2_FILES["evaluation"]:
        server.files[remote.filename] = b"not the real " + remote.filename.encode()
    with pytest.raises(ChecksumError) as info:
        download_dataset("clotho", tmp_path / "clotho", subsets=["evaluation"], base_url=server.base_url,
                         progress=False, retry_wait=0)
    assert "clotho_audio_evaluation.7z" in str(info.value)
    assert "4569624ccadf96223f19cb59fe4f849f" in str(info.value)  # the published MD5
    assert (tmp_path / "clotho" / "archives" / "clotho_audio_evaluation.7z.bad").is_file()


def test_unknown_dataset_and_subset(tmp_path):
    with pytest.raises(DownloadError, match="unknown data set 'audiocaps'"):
        download_dataset("audiocaps", tmp_path)
    with pytest.raises(DownloadError, match="unknown subset"):
        download_dataset("clotho", tmp_path, subsets=["train"])


def test_clotho_layout_and_manifests(server, tmp_path):
    """The whole Clotho flow on tiny 7z archives: EnCLAP split names and manifests."""
    table = {}
    for subset, names in {"development": ["a b.wav", "c.wav"], "evaluation": ["e.f.wav"]}.items():
        captions = io.StringIO()
        writer = csv.writer(captions, lineterminator="\n")
        writer.writerow(["file_name"] + [f"caption_{i}" for i in range(1, 6)])
        for name in names:
            writer.writerow([name] + [f"{name} caption {i}" for i in range(1, 6)])
        archive = make_7z({f"{subset}/{name}": b"RIFF" for name in names})
        table[subset] = [
            server.remote(f"clotho_audio_{subset}.7z", archive, md5=md5(archive)),
            server.remote(f"clotho_captions_{subset}.csv", captions.getvalue().encode(), md5=md5(captions.getvalue().encode())),
        ]
    root = download_dataset("clotho", tmp_path / "clotho", files=table, progress=False)
    train = validate_manifest(root / "csv" / "train.csv", audio_root=root / "audio")
    assert [c.file_path for c in train] == ["train/a b.npy", "train/c.npy"]
    assert train[0].captions == tuple(f"a b.wav caption {i}" for i in range(1, 6))
    test = validate_manifest(root / "csv" / "test.csv", audio_root=root / "audio")
    assert [c.key for c in test] == ["test/e.f"]
    assert (root / "audio" / "test" / "e.f.wav").is_file()
    # Running again is a no-op that keeps the layout.
    download_dataset("clotho", tmp_path / "clotho", files=table, progress=False)
    assert read_manifest(root / "csv" / "train.csv") == train
