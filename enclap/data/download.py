"""Downloading the public data sets: resumable HTTP downloads with checksum verification, and extraction.

A download goes to ``<name>.part`` and is resumed from where it stopped with an HTTP ``Range`` request (a
server that ignores ranges makes it start over). Only a file whose checksum matches is renamed to its final
name, so a file under its final name is complete; one that fails is moved to ``<name>.bad`` and reported.

Clotho v2.1 comes from Zenodo (record 4783391), which publishes an MD5 for every file. ESC-50 comes from the
GitHub archive of its repository, for which no checksum is published (the archive of a branch is rebuilt on
demand and is not byte-stable); it is checked instead by verifying that every file its metadata lists was
extracted. AudioCaps audio comes from YouTube and cannot be redistributed: see ``data/README.md``.

Run ``python -m enclap.data.download --help`` for the command line.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from ..errors import EnclapError

logger = logging.getLogger(__name__)


class DownloadError(EnclapError):
    """A file could not be downloaded or extracted; the message names the URL or file and the reason."""


class ChecksumError(DownloadError):
    """A downloaded file does not have the published checksum (or size)."""


@dataclass(frozen=True)
class RemoteFile:
    """A file to download and what it must hash to. A checksum left None is not published by the source."""

    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None

    def with_base_url(self, base_url: str) -> "RemoteFile":
        """The same file served from ``<base_url>/<filename>`` (a mirror, or a test server)."""
        return replace(self, url=f"{base_url.rstrip('/')}/{urllib.request.quote(self.filename)}")


_ZENODO_CLOTHO = "https://zenodo.org/records/4783391/files/{}?download=1"


def _clotho(name: str, md5: str) -> RemoteFile:
    return RemoteFile(url=_ZENODO_CLOTHO.format(name), filename=name, md5=md5)


# Clotho v2.1, Zenodo record 4783391. The MD5 values are those Zenodo lists for each file; they were taken
# from the aac-datasets package's table of that record (this machine cannot reach Zenodo to re-check them).
# Sizes are not pinned: the MD5 already proves the file is complete.
CLOTHO_V2_FILES: dict[str, list[RemoteFile]] = {
    "development": [
        _clotho("clotho_audio_development.7z", "c8b05bc7acdb13895bb3c6a29608667e"),
        _clotho("clotho_captions_development.csv", "d4090b39ce9f2491908eebf4d5b09bae"),
        _clotho("clotho_metadata_development.csv", "170d20935ecfdf161ce1bb154118cda5"),
    ],
    "validation": [
        _clotho("clotho_audio_validation.7z", "7dba730be08bada48bd15dc4e668df59"),
        _clotho("clotho_captions_validation.csv", "5879e023032b22a2c930aaa0528bead4"),
        _clotho("clotho_metadata_validation.csv", "2e010427c56b1ce6008b0f03f41048ce"),
    ],
    "evaluation": [
        _clotho("clotho_audio_evaluation.7z", "4569624ccadf96223f19cb59fe4f849f"),
        _clotho("clotho_captions_evaluation.csv", "1b16b9e57cf7bdb7f13a13802aeb57e2"),
        _clotho("clotho_metadata_evaluation.csv", "13946f054d4e1bf48079813aac61bf77"),
    ],
}

# Clotho's subsets under the split names EnCLAP's manifests use (train/Foo.npy, valid/..., test/...).
CLOTHO_SPLITS: dict[str, str] = {"development": "train", "validation": "valid", "evaluation": "test"}

# ESC-50: the GitHub archive of the master branch. No checksum exists upstream (see the module docstring),
# so none is pinned here; integrity is checked against meta/esc50.csv after extraction.
ESC50_FILES: dict[str, list[RemoteFile]] = {
    "all": [RemoteFile(url="https://github.com/karolpiczak/ESC-50/archive/master.zip", filename="ESC-50-master.zip")],
}

DATASETS: dict[str, dict[str, list[RemoteFile]]] = {"clotho": CLOTHO_V2_FILES, "esc50": ESC50_FILES}


# -------------------------------------------------------------------------------------------- checksums


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (archives are several GB)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: str | os.PathLike, remote: RemoteFile) -> list[str]:
    """Every way ``path`` differs from what ``remote`` promises (size, md5, sha256); empty when it matches."""
    path = Path(path)
    problems = []
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        problems.append(f"size is {size} bytes, expected {remote.size}")
        return problems  # hashing a file of the wrong size proves nothing more
    for algorithm in ("md5", "sha256"):
        expected = getattr(remote, algorithm)
        if expected:
            actual = file_digest(path, algorithm)
            if actual.lower() != expected.lower():
                problems.append(f"{algorithm} is {actual}, expected {expected}")
    return problems


def has_checksum(remote: RemoteFile) -> bool:
    return bool(remote.md5 or remote.sha256)


# --------------------------------------------------------------------------------------------- download

_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout)
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class _Incomplete(Exception):
    """The connection ended before the promised number of bytes arrived."""


def _fetch_into(part: Path, remote: RemoteFile, *, chunk_size: int, timeout: float, progress: bool) -> None:
    """One HTTP request that appends to (or restarts) ``part``; raises on HTTP/network errors or short reads."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "enclap-downloader/1", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(remote.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            # Nothing left to send from that offset: the part is already whole (the checksum will tell).
            logger.info("%s: server has nothing after byte %d; verifying the partial file as it is", remote.url, have)
            return
        raise
    with response:
        total: int | None = None
        if response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != have:
                raise DownloadError(
                    f"{remote.url}: server answered the range request from byte {have} with "
                    f"Content-Range '{response.headers.get('Content-Range')}'"
                )
            total = int(match.group(3)) if match.group(3) != "*" else None
            mode = "ab"
        else:
            if have:
                logger.info("%s: server ignored the range request; starting over", remote.url)
            have = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=remote.filename, disable=not progress, leave=False)
        received = have
        try:
            with open(part, mode) as fh:
                while chunk := response.read(chunk_size):
                    fh.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
        if total is not None and received < total:
            raise _Incomplete(f"connection closed after {received} of {total} bytes")


def download_file(
    remote: RemoteFile,
    dest_dir: str | os.PathLike,
    *,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    timeout: float = 60,
    retries: int = 3,
    retry_wait: float = 2.0,
) -> Path:
    """Download ``remote`` into ``dest_dir/<filename>`` and verify it; returns the path.

    * A file already there that verifies is not downloaded again (one without a published checksum counts
      as complete, since only complete downloads get their final name). One that fails is moved to
      ``<filename>.bad`` and downloaded afresh.
    * The download goes to ``<filename>.part`` and resumes from its size with an HTTP Range request, both
      across calls (an interrupted run continues) and within one call after a dropped connection
      (``retries`` times, ``retry_wait`` seconds apart, doubling).
    * A result whose checksum or size differs is moved to ``<filename>.bad`` and :class:`ChecksumError`
      names the URL, the expected and the actual values.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / remote.filename
    part = dest.with_name(dest.name + ".part")
    bad = dest.with_name(dest.name + ".bad")
    if dest.exists():
        problems = verify_file(dest, remote)
        if not problems:
            logger.info("%s: already downloaded and verified", dest)
            return dest
        logger.warning("%s: existing file does not verify (%s); moved to %s, downloading again", dest, "; ".join(problems), bad)
        os.replace(dest, bad)

    attempt = 0
    while True:
        try:
            _fetch_into(part, remote, chunk_size=chunk_size, timeout=timeout, progress=progress)
            break
        except urllib.error.HTTPError as err:
            if err.code < 500 or attempt >= retries:
                raise DownloadError(f"{remote.url}: HTTP {err.code} {err.reason}") from err
            reason = f"HTTP {err.code}"
        except (_Incomplete, *_TRANSIENT) as err:
            if attempt >= retries:
                kept = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"{remote.url}: download interrupted ({type(err).__name__}: {err}) after {retries + 1} attempt(s); "
                    f"{kept} bytes are kept in {part}: run again to resume"
                ) from err
            reason = f"{type(err).__name__}: {err}"
        attempt += 1
        wait = retry_wait * 2 ** (attempt - 1)
        logger.warning("%s: %s; resuming in %.1f s (attempt %d of %d)", remote.url, reason, wait, attempt + 1, retries + 1)
        time.sleep(wait)

    if not part.exists():
        raise DownloadError(f"{remote.url}: the server sent nothing")
    problems = verify_file(part, remote)
    if problems:
        os.replace(part, bad)
        raise ChecksumError(
            f"{remote.url}: downloaded file does not match the published checksum: {'; '.join(problems)}. "
            f"It was moved to {bad} (delete it once inspected); run again to download from scratch."
        )
    if not has_checksum(remote):
        logger.warning(
            "%s: no checksum is published for this file; sha256 of what was received: %s", remote.url, file_digest(part)
        )
    os.replace(part, dest)
    return dest


# -------------------------------------------------------------------------------------------- extraction


def _check_member_names(archive: Path, names: Iterable[str]) -> None:
    """Refuse archives whose members would land outside the destination ("zip slip")."""
    bad = [n for n in names if n.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", n) or ".." in PurePosixPath(n.replace("\\", "/")).parts]
    if bad:
        raise DownloadError(f"{archive}: refusing to extract members outside the destination: {', '.join(bad[:5])}")


# What a POSIX file type is called in an error; regular files (and a type of 0: no Unix mode stored) and
# directories are the only members a data set archive needs.
_SPECIAL_KINDS = {
    stat.S_IFLNK: "symbolic link",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
}


def _special_kind(mode: int) -> str | None:
    """None for a regular file or directory (or no Unix file type), else what the member is."""
    file_type = stat.S_IFMT(mode)
    if file_type in (0, stat.S_IFREG, stat.S_IFDIR):
        return None
    return _SPECIAL_KINDS.get(file_type, f"file type {file_type:#o}")


def _refuse_special_members(archive: Path, kinds: Iterable[tuple[str, str | None]]) -> None:
    """Refuse links, devices, fifos and sockets, given ``(member name, kind or None)`` for every member.

    A symbolic link can point outside the destination (and a later member can then be written through it),
    a hard link can alias a file outside it, and a device or fifo is never data: none is extracted.
    """
    bad = [f"{name} ({kind})" for name, kind in kinds if kind]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DownloadError(
            f"{archive}: refusing to extract links or special files, which can point or write outside the "
            f"destination: {', '.join(bad[:5])}{more}"
        )


def _zip_member_kind(info: zipfile.ZipInfo) -> str | None:
    # The high 16 bits of external_attr hold the Unix mode when the archiver stored one (0 otherwise).
    return _special_kind(info.external_attr >> 16)


def _tar_member_kind(member: tarfile.TarInfo) -> str | None:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.ischr():
        return "character device"
    if member.isblk():
        return "block device"
    if member.isfifo():
        return "fifo"
    if member.isfile() or member.isdir():
        return None
    return f"tar member type {member.type!r}"


def _py7zr_member_kind(member) -> str | None:
    """A py7zr ``ArchiveFile``: Unix links and Windows reparse points (symlinks, junctions) are links."""
    if member.is_symlink or member.is_junction:
        return "symbolic link"
    if member.is_socket:
        return "socket"
    return _special_kind(member.st_fmt or 0)


# A 7-Zip ``l -slt`` attribute string is "<Windows letters> <Unix mode>", e.g. "A -rw-r--r--",
# "AL lrwxrwxrwx", " prw-r--r--" or just "A"; 'L' among the letters is a reparse point (a Windows link).
_UNIX_TYPE_CHARS = {"l": "symbolic link", "p": "fifo", "c": "character device", "b": "block device", "s": "socket"}


def _7zip_listing_kinds(listing: str) -> list[tuple[str, str | None]]:
    """``(name, kind)`` of every member in the output of ``7z l -slt`` (the archive's own block is skipped)."""
    _, _, members = listing.partition("\n----------\n")
    result: list[tuple[str, str | None]] = []
    for block in members.split("\n\n"):
        fields = dict(line.split(" = ", 1) for line in block.splitlines() if " = " in line)
        name = fields.get("Path")
        if name is None:
            continue
        kind = None
        if fields.get("Symbolic Link", "").strip():
            kind = "symbolic link"
        elif fields.get("Hard Link", "").strip():
            kind = "hard link"
        else:
            letters, _, unix_mode = fields.get("Attributes", "").partition(" ")
            unix_mode = unix_mode.strip()
            if "L" in letters:
                kind = "symbolic link"
            elif unix_mode and unix_mode[0] not in "-d":
                kind = _UNIX_TYPE_CHARS.get(unix_mode[0], f"file type '{unix_mode[0]}'")
        result.append((name, kind))
    return result


def _extract_7z(archive: Path, dest_dir: Path) -> None:
    try:
        import py7zr  # optional: Clotho is the only 7z user
    except ImportError:
        py7zr = None
    if py7zr is not None:
        try:
            with py7zr.SevenZipFile(archive, mode="r") as z:
                _check_member_names(archive, z.getnames())
                _refuse_special_members(archive, ((m.filename, _py7zr_member_kind(m)) for m in z.files))
                z.extractall(path=dest_dir)
        except py7zr.exceptions.Bad7zFile as err:
            raise DownloadError(f"{archive}: not a readable 7z archive ({err})") from err
        return
    exe = next((shutil.which(n) for n in ("7z", "7zz", "7za", "7zr") if shutil.which(n)), None)
    if exe is None:
        raise DownloadError(
            f"{archive}: extracting .7z archives needs py7zr (`pip install py7zr`) or a 7-Zip command "
            "(`apt-get install p7zip-full`, then `7z x`); neither is installed"
        )
    listing = subprocess.run([exe, "l", "-slt", str(archive)], capture_output=True, text=True)
    if listing.returncode != 0:
        raise DownloadError(f"{archive}: not a readable 7z archive ({listing.stderr.strip() or listing.stdout[-500:]})")
    kinds = _7zip_listing_kinds(listing.stdout)
    _check_member_names(archive, [name for name, _ in kinds])
    _refuse_special_members(archive, kinds)
    result = subprocess.run([exe, "x", "-y", f"-o{dest_dir}", str(archive)], capture_output=True, text=True)
    if result.returncode != 0:
        raise DownloadError(f"{archive}: 7-Zip failed ({result.stderr.strip() or result.stdout[-500:]})")


def extract_archive(path: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Extract a .zip, .tar(.gz/.bz2/.xz) or .7z archive into ``dest_dir``; returns ``dest_dir``.

    A marker file ``.<archive name>.extracted`` (holding the archive's size) makes a second call a no-op.
    Members that would land outside ``dest_dir`` are refused, and so is any archive holding a symbolic or
    hard link, a device, a fifo or a socket (the error names the archive and the members); nothing is
    extracted from a refused archive. ``.7z`` needs py7zr or a 7-Zip command; when
    neither is present the error says how to get one.
    """
    archive = Path(path)
    dest = Path(dest_dir)
    if not archive.is_file():
        raise DownloadError(f"{archive}: no such archive")
    dest.mkdir(parents=True, exist_ok=True)
    marker = dest / f".{archive.name}.extracted"
    stamp = str(archive.stat().st_size)
    if marker.is_file() and marker.read_text().strip() == stamp:
        logger.info("%s: already extracted into %s", archive, dest)
        return dest
    name = archive.name.lower()
    if name.endswith(".zip"):
        try:
            with zipfile.ZipFile(archive) as z:
                _check_member_names(archive, z.namelist())
                _refuse_special_members(archive, ((i.filename, _zip_member_kind(i)) for i in z.infolist()))
                z.extractall(dest)
        except zipfile.BadZipFile as err:
            raise DownloadError(f"{archive}: not a readable zip archive ({err})") from err
    elif name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        try:
            with tarfile.open(archive) as t:
                _check_member_names(archive, t.getnames())
                _refuse_special_members(archive, ((m.name, _tar_member_kind(m)) for m in t.getmembers()))
                if hasattr(tarfile, "data_filter"):
                    t.extractall(dest, filter="data")
                else:  # pragma: no cover - Python < 3.11.4; names were checked above
                    t.extractall(dest)
        except tarfile.TarError as err:
            raise DownloadError(f"{archive}: not a readable tar archive ({err})") from err
    elif name.endswith(".7z"):
        _extract_7z(archive, dest)
    else:
        raise DownloadError(f"{archive}: unknown archive type (expected .zip, .tar[.gz|.bz2|.xz] or .7z)")
    marker.write_text(stamp + "\n")
    return dest


_ARCHIVE_SUFFIXES = (".zip", ".7z", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def _is_archive(filename: str) -> bool:
    return filename.lower().endswith(_ARCHIVE_SUFFIXES)


# ------------------------------------------------------------------------------------------- data sets


def _prepare_clotho(root: Path, subsets: Sequence[str], archives: Path) -> None:
    """Rename Clotho's audio folders to EnCLAP's split names and write EnCLAP manifests into ``root/csv``."""
    from .manifest import convert_clotho

    audio = root / "audio"
    for subset in subsets:
        split = CLOTHO_SPLITS.get(subset, subset)
        extracted, wanted = audio / subset, audio / split
        if extracted.is_dir() and not wanted.exists():
            os.replace(extracted, wanted)
        if not wanted.is_dir():
            raise DownloadError(f"{audio}: the {subset} archive did not produce a '{subset}' folder")
        captions = archives / f"clotho_captions_{subset}.csv"
        if captions.is_file():
            layout = "train" if split == "train" else "eval"
            n = convert_clotho(captions, root / "csv" / f"{split}.csv", split=split, layout=layout)
            logger.info("clotho %s: %d clips -> %s", subset, n, root / "csv" / f"{split}.csv")


def _check_esc50(root: Path) -> None:
    """Every clip listed in ESC-50's meta/esc50.csv must have been extracted (there is no checksum)."""
    import csv

    base = root / "ESC-50-master"
    meta = base / "meta" / "esc50.csv"
    if not meta.is_file():
        raise DownloadError(f"{root}: the ESC-50 archive did not contain ESC-50-master/meta/esc50.csv")
    with open(meta, encoding="utf-8", newline="") as fh:
        names = [row["filename"] for row in csv.DictReader(fh)]
    missing = [n for n in names if not (base / "audio" / n).is_file()]
    if not names or missing:
        raise DownloadError(
            f"{base}: {len(missing)} of {len(names)} clips listed in meta/esc50.csv are missing from audio/ "
            f"(e.g. {', '.join(missing[:3])}); delete {root / 'archives'} and download again"
        )


def download_dataset(
    name: str,
    dest_dir: str | os.PathLike,
    *,
    base_url: str | None = None,
    subsets: Sequence[str] | None = None,
    files: dict[str, list[RemoteFile]] | None = None,
    extract: bool = True,
    progress: bool = True,
    retries: int = 3,
    retry_wait: float = 2.0,
) -> Path:
    """Download (resumably), verify and extract a data set into ``dest_dir``; returns ``dest_dir``.

    ``name``: ``"clotho"`` (v2.1) or ``"esc50"``. ``subsets`` selects parts (Clotho: development,
    validation, evaluation; default all). ``base_url`` fetches every file from ``<base_url>/<filename>``
    instead (a mirror, or a local server in tests); ``files`` replaces the file table itself.

    Layout: downloads in ``dest_dir/archives``. Clotho: audio in ``dest_dir/audio/{train,valid,test}`` and
    EnCLAP manifests in ``dest_dir/csv/{train,valid,test}.csv`` (``train/<name>.npy`` paths, as EnCLAP's
    own CSVs). ESC-50: ``dest_dir/ESC-50-master/{audio,meta}``, checked against its metadata.
    """
    table = files if files is not None else DATASETS.get(name)
    if table is None:
        raise DownloadError(f"unknown data set '{name}'; available: {', '.join(sorted(DATASETS))}")
    chosen = list(table) if subsets is None else list(subsets)
    unknown = [s for s in chosen if s not in table]
    if unknown:
        raise DownloadError(f"{name}: unknown subset(s) {', '.join(unknown)}; available: {', '.join(table)}")
    root = Path(dest_dir)
    archives = root / "archives"
    downloaded: list[Path] = []
    for subset in chosen:
        for remote in table[subset]:
            if base_url:
                remote = remote.with_base_url(base_url)
            downloaded.append(
                download_file(remote, archives, progress=progress, retries=retries, retry_wait=retry_wait)
            )
    if not extract:
        return root
    for path in downloaded:
        if _is_archive(path.name):
            extract_archive(path, root / "audio" if name == "clotho" else root)
    if name == "clotho":
        _prepare_clotho(root, chosen, archives)
    elif name == "esc50":
        _check_esc50(root)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m enclap.data.download {clotho,esc50} DEST``: download, verify, extract."""
    parser = argparse.ArgumentParser(prog="python -m enclap.data.download", description=main.__doc__)
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("dest", help="directory to download into (resumes what is already there)")
    parser.add_argument("--subset", action="append", help="a subset to fetch (repeatable; default: all)")
    parser.add_argument("--base-url", help="fetch <base-url>/<filename> instead of the official host (a mirror)")
    parser.add_argument("--no-extract", action="store_true", help="only download and verify")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        root = download_dataset(
            args.dataset, args.dest, base_url=args.base_url, subsets=args.subset,
            extract=not args.no_extract, progress=not args.quiet,
        )
    except EnclapError as err:
        print(f"error: {err}")
        return 1
    print(root)
    return 0


__all__ = [
    "CLOTHO_SPLITS",
    "CLOTHO_V2_FILES",
    "ChecksumError",
    "DATASETS",
    "DownloadError",
    "ESC50_FILES",
    "RemoteFile",
    "download_dataset",
    "download_file",
    "extract_archive",
    "file_digest",
    "verify_file",
]

if __name__ == "__main__":
    raise SystemExit(main())
