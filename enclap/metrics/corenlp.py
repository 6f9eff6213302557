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
from typing import Sequence

from ..errors import MetricUnavailableError
from .resources import _place

logger = logging.getLogger(__name__)

CORENLP_JARS: tuple[str, ...] = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
CORENLP_ZIP = "stanford-corenlp-full-2015-12-09.zip"
CORENLP_URL = f"https://nlp.stanford.edu/software/{CORENLP_ZIP}"
# One entry each jar must contain: tells a real jar from a truncated download or another file of that name.
_CORENLP_MARKERS = {
    "stanford-corenlp-3.6.0.jar": "edu/stanford/nlp/pipeline/StanfordCoreNLP.class",
    "stanford-corenlp-3.6.0-models.jar": "edu/stanford/nlp/models/",
}
CORENLP_HOW_TO = (
    f"place the Stanford CoreNLP 3.6.0 jars ({', '.join(CORENLP_JARS)}, inside {CORENLP_ZIP}): "
    f"`enclap-metrics setup --corenlp PATH/{CORENLP_ZIP}` (or the two jars, the unzipped folder, or the URL "
    f"{CORENLP_URL} where the network allows)"
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
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
        os.replace(partial, target)
    except OSError as err:
        raise MetricUnavailableError(
            f"could not download {url}: {err}. Download it where the network allows and pass the local file"
        ) from err
    finally:
        if partial.exists():
            partial.unlink()
    return target


def _install_corenlp(sources: Sequence[str | os.PathLike], lib_dir: Path) -> list[str]:
    """Place the CoreNLP 3.6.0 jars found in ``sources`` (zip, jars, folder or URL) into SPICE's lib folder."""
    placed: list[str] = []
    downloads: list[Path] = []
    try:
        for item in sources:
            text = str(item)
            if re.match(r"^https?://", text):
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
                    _check_jar(jar, name)
                    _place(jar, lib_dir / name, copy=True)
                    placed.append(name)
            elif zipfile.is_zipfile(path) and path.name in CORENLP_JARS:
                _check_jar(path, path.name)
                _place(path, lib_dir / path.name, copy=True)
                placed.append(path.name)
            elif zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as archive:
                    members = {Path(m).name: m for m in archive.namelist() if Path(m).name in CORENLP_JARS}
                    if not members:
                        raise MetricUnavailableError(
                            f"{path}: holds neither of {', '.join(CORENLP_JARS)} (expected {CORENLP_ZIP})"
                        )
                    for name, member in members.items():
                        tmp = lib_dir / f".{name}.{os.getpid()}.tmp"
                        try:
                            with archive.open(member) as src, open(tmp, "wb") as out:
                                shutil.copyfileobj(src, out, length=1 << 20)
                            _check_jar(tmp, name)
                            os.replace(tmp, lib_dir / name)
                        finally:
                            if tmp.exists():
                                tmp.unlink()
                        placed.append(name)
            else:
                raise MetricUnavailableError(
                    f"{path}: expected {CORENLP_ZIP}, its folder, or a jar named {' or '.join(CORENLP_JARS)}"
                )
    finally:
        for path in downloads:
            path.unlink(missing_ok=True)
    return placed
