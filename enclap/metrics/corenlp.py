"""Stanford CoreNLP 3.6.0 for SPICE: the two jars, from the zip, its folder, the jars themselves, or an https URL."""

from __future__ import annotations

import logging
import os
import re
import shutil
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import MetricUnavailableError
from .integrity import normalise_pins, verify_sha256
from .resources import _place

logger = logging.getLogger(__name__)

CORENLP_JARS: tuple[str, ...] = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
CORENLP_ZIP = "stanford-corenlp-full-2015-12-09.zip"
CORENLP_URL = f"https://nlp.stanford.edu/software/{CORENLP_ZIP}"
# The SHA-256 every CoreNLP file must have before its jars are placed for Java to run. None: no SHA-256 of it
# is published by Stanford nor found in public material we could check, and a digest is never guessed or
# taken from the file itself; until one is pinned here, `enclap-metrics setup --corenlp` needs the user to
# pin the digests they have checked (--sha256 NAME=DIGEST), and refuses the files otherwise.
CORENLP_SHA256: dict[str, str | None] = {
    CORENLP_ZIP: None,
    "stanford-corenlp-3.6.0.jar": None,
    "stanford-corenlp-3.6.0-models.jar": None,
}
# One entry each jar must contain: tells a real jar from a truncated download or another file of that name.
_CORENLP_MARKERS = {
    "stanford-corenlp-3.6.0.jar": "edu/stanford/nlp/pipeline/StanfordCoreNLP.class",
    "stanford-corenlp-3.6.0-models.jar": "edu/stanford/nlp/models/",
}
CORENLP_HOW_TO = (
    f"place the Stanford CoreNLP 3.6.0 jars ({', '.join(CORENLP_JARS)}, inside {CORENLP_ZIP}): "
    f"`enclap-metrics setup --corenlp PATH/{CORENLP_ZIP} --sha256 NAME=SHA256 ...` (or the two jars, the "
    f"unzipped folder, or the https URL {CORENLP_URL} where the network allows; each jar must match a pinned SHA-256)"
)


def _check_jar(path: Path, name: str) -> None:
    marker = _CORENLP_MARKERS[name]
    try:
        with zipfile.ZipFile(path) as jar:
            if not any(entry.startswith(marker) for entry in jar.namelist()):
                raise MetricUnavailableError(f"{path}: not a Stanford CoreNLP 3.6.0 jar (no '{marker}' inside)")
    except zipfile.BadZipFile as err:
        raise MetricUnavailableError(f"{path}: not a valid jar ({err}); a truncated download?") from err


def _download(url: str, directory: Path) -> Path:
    name = Path(urllib.parse.urlparse(url).path).name or CORENLP_ZIP
    target = directory / name
    partial = directory / f".{name}.{os.getpid()}.part"
    logger.info("downloading %s to %s", url, target)
    from tqdm.auto import tqdm

    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) if getattr(response, "headers", None) else 0
            with tqdm(total=total or None, unit="B", unit_scale=True, desc=name, disable=None) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
        os.replace(partial, target)
    except OSError as err:
        raise MetricUnavailableError(
            f"could not download {url}: {err}. Download it where the network allows and pass the local file"
        ) from err
    finally:
        if partial.exists():
            partial.unlink()
    return target


def _pin_fix(name: str) -> str:
    return (
        f"take {name} from {CORENLP_ZIP} as published by Stanford; if you have checked its SHA-256 against a "
        f"source you trust, pin it: `enclap-metrics setup --corenlp ... --sha256 {name}=SHA256` "
        f"(provision_resources(corenlp_sha256={{{name!r}: ...}}))"
    )


def corenlp_pins(extra: Mapping[str, str | None] | None = None) -> dict[str, str | None]:
    """The SHA-256 pins the CoreNLP files are checked against: :data:`CORENLP_SHA256` updated with ``extra``
    (names must be the zip's or the jars'; ``ValueError`` otherwise or on a malformed digest)."""
    pins = dict(CORENLP_SHA256)
    if extra:
        unknown = [name for name in extra if name not in pins]
        if unknown:
            raise ValueError(f"no CoreNLP file is named {', '.join(unknown)} (known: {', '.join(pins)})")
        pins.update(normalise_pins(extra))
    return pins


def _verified_jar(path: Path, name: str, pins: Mapping[str, str | None], shown: str | None = None) -> None:
    """Refuse ``path`` (shown as ``shown``) unless its SHA-256 is the pinned one of ``name``, then check it is
    a CoreNLP jar at all (a clearer message for a wrong file whose digest the user pinned by mistake)."""
    verify_sha256(path, name, pins, _pin_fix(name), shown=shown)
    _check_jar(path, name)


def _install_corenlp(
    sources: Sequence[str | os.PathLike], lib_dir: Path, pins: Mapping[str, str | None] | None = None
) -> list[str]:
    """Place the CoreNLP 3.6.0 jars found in ``sources`` (zip, jars, folder or https URL) into SPICE's lib folder.

    Every jar must have its pinned SHA-256 (``pins``, default :data:`CORENLP_SHA256`), whatever the source;
    a zip is also checked against the zip's pin when there is one, before anything is extracted. Nothing is
    placed from a source that fails.
    """
    pins = corenlp_pins() if pins is None else pins
    placed: list[str] = []
    downloads: list[Path] = []
    try:
        for item in sources:
            text = str(item)
            if re.match(r"^http://", text, re.IGNORECASE):
                raise MetricUnavailableError(
                    f"{text}: refusing a plain http URL (what arrives could have been altered on the way); "
                    f"use https ({CORENLP_URL}) or a local file"
                )
            if re.match(r"^https://", text, re.IGNORECASE):
                path = _download(text, lib_dir.parent)
                downloads.append(path)
            else:
                path = Path(os.path.expanduser(text))
            if not path.exists():
                raise MetricUnavailableError(f"{path}: no such file or folder (expected {CORENLP_ZIP} or the CoreNLP jars)")
            if path.is_dir():
                found = {p.name: p for p in path.rglob("stanford-corenlp-3.6.0*.jar") if p.name in CORENLP_JARS}
                if not found:
                    raise MetricUnavailableError(f"{path}: holds neither of {', '.join(CORENLP_JARS)}")
                for name, jar in found.items():
                    _verified_jar(jar, name, pins)
                for name, jar in found.items():
                    _place(jar, lib_dir / name, copy=True)
                    placed.append(name)
            elif path.name in CORENLP_JARS:
                _verified_jar(path, path.name, pins)
                _place(path, lib_dir / path.name, copy=True)
                placed.append(path.name)
            elif zipfile.is_zipfile(path):
                if pins.get(CORENLP_ZIP) is not None:
                    verify_sha256(path, CORENLP_ZIP, pins, _pin_fix(CORENLP_ZIP))
                placed += _install_from_zip(path, lib_dir, pins)
            else:
                raise MetricUnavailableError(
                    f"{path}: expected {CORENLP_ZIP}, its folder, or a jar named {' or '.join(CORENLP_JARS)}"
                )
    finally:
        for path in downloads:
            path.unlink(missing_ok=True)
    return placed


def _install_from_zip(path: Path, lib_dir: Path, pins: Mapping[str, str | None]) -> list[str]:
    """Extract and verify both jars to temporary files first; only when both pass are they put in place."""
    with zipfile.ZipFile(path) as archive:
        members = {Path(m).name: m for m in archive.namelist() if Path(m).name in CORENLP_JARS}
        if not members:
            raise MetricUnavailableError(f"{path}: holds neither of {', '.join(CORENLP_JARS)} (expected {CORENLP_ZIP})")
        lib_dir.mkdir(parents=True, exist_ok=True)
        extracted: dict[str, Path] = {}
        try:
            for name, member in members.items():
                tmp = lib_dir / f".{name}.{os.getpid()}.tmp"
                extracted[name] = tmp
                with archive.open(member) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, length=1 << 20)
                _verified_jar(tmp, name, pins, shown=f"{path} (member {member})")
            for name, tmp in extracted.items():
                os.replace(tmp, lib_dir / name)
        finally:
            for tmp in extracted.values():
                tmp.unlink(missing_ok=True)
    return list(extracted)
