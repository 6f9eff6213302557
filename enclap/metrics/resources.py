"""Where the metrics' files live and how they are placed there from the PyPI wheel pycocoevalcap==1.2."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import MetricUnavailableError

logger = logging.getLogger(__name__)

# --- resource layout of aac-metrics 0.5.4 (aac_metrics/utils/tokenization.py, functional/meteor.py, spice.py) ---
AAC_DIR = "aac-metrics"
PTB_JAR = Path(AAC_DIR, "stanford_nlp", "stanford-corenlp-3.4.1.jar")
METEOR_JAR = Path(AAC_DIR, "meteor", "meteor-1.5.jar")
METEOR_PARAPHRASE = Path(AAC_DIR, "meteor", "data", "paraphrase-en.gz")
SPICE_DIR = Path(AAC_DIR, "spice")
SPICE_JAR = SPICE_DIR / "spice-1.0.jar"
SPICE_LIB = SPICE_DIR / "lib"
SPICE_LOCAL_CACHE = SPICE_DIR / "cache"
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

SETUP_HOW_TO = "run `enclap-metrics setup` (places the jars shipped by the PyPI package pycocoevalcap==1.2)"


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
            from .corenlp import _install_corenlp  # the CoreNLP installer builds on this module

            placed = _install_corenlp(corenlp_jars, root / SPICE_LIB)
            logger.info("placed %s in %s", ", ".join(placed), root / SPICE_LIB)
    return root


def _missing(root: Path, relative: Sequence[Path]) -> list[str]:
    return [str(root / r) for r in relative if not (root / r).is_file()]
