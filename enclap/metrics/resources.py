"""Where the metrics' files live and how they are placed there from the PyPI wheel pycocoevalcap==1.2."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from ..errors import MetricUnavailableError
from .integrity import verify_sha256

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

# SHA-256 of each file taken from the pycocoevalcap 1.2 wheel (pycocoevalcap-1.2-py3-none-any.whl, the file
# PyPI serves: its BLAKE2b-256 08f9466f...dc532b1c93 is PyPI's storage path of it), checked before a file is
# placed for Java to run, so an altered or corrupt install is refused instead of executed.
PYCOCOEVALCAP_SHA256: dict[str, str] = {
    "tokenizer/stanford-corenlp-3.4.1.jar": "2fcb91bb7a111f93d71e264f4ee0e3afd19ba0dde6d21b38605088df9e940399",
    "meteor/meteor-1.5.jar": "1e57b4c72c0830ebe68558f1c799a624e96cbc1b6045c9f6330e26dcff6eafc2",
    "meteor/data/paraphrase-en.gz": "c147ac7d2c91f2fbb3ad31e4b352235061eb83145e0434daf217ee9ca5975f48",
    "spice/spice-1.0.jar": "6c6a73ae6dd108667047c1818707590413934dcb9f1a62cef6469059b41b3d59",
    "spice/lib/ejml-0.23.jar": "12d44e81fdd661ad2aac6384511facf3d8fa003c3ce8d9cec5f22827d1819a26",
    "spice/lib/fst-2.47.jar": "8c871febc859cf72dbed1c6c1eebc5600c3d93c3e986feccf4623cc5086098cc",
    "spice/lib/guava-19.0.jar": "58d4cc2e05ebb012bbac568b032f75623be1cb6fb096f3c60c72a86f7f057de4",
    "spice/lib/hamcrest-core-1.3.jar": "66fdef91e9739348df7a096aa384a5685f4e875584cce89386a7a47251c4d8e9",
    "spice/lib/jackson-core-2.5.3.jar": "c9a900c30c702d371be2d3714938dfa6de616599c8eb39f8e3cf7aedd62dfd32",
    "spice/lib/javassist-3.19.0-GA.jar": "d19c1ef43ccd9cb1b39466bb2f1c8e45c2b6752f1e13a3dfb60096543d1791fa",
    "spice/lib/json-simple-1.1.1.jar": "4e69696892b88b41c55d49ab2fdcc21eead92bf54acc588c0050596c3b75199c",
    "spice/lib/junit-4.12.jar": "59721f0805e223d84b90677887d9ff567dc534d7c502ca903c0c2b17f05c116a",
    "spice/lib/lmdbjni-0.4.6.jar": "f4e8c51eb4ef05abe57d2187e76f5c335e4ef16d8503329eb7dbc5ae7a90529c",
    "spice/lib/lmdbjni-linux64-0.4.6.jar": "0b7773db873aaeec399a50113c0a4e121df0eff5e724607f7bc8171452107d94",
    "spice/lib/lmdbjni-osx64-0.4.6.jar": "7d66778037b5689e7c6daf22a7140722f2085da4ae479bceda4a4be487d55460",
    "spice/lib/lmdbjni-win64-0.4.6.jar": "969c6aa59893b82856a6832da640672b0f23f1d72f70d7b04296c71970d75b79",
    "spice/lib/Meteor-1.5.jar": "014a3627d277a6f4ba5b44a20733f8dff28bbb428204c36abfda56565658ba09",
    "spice/lib/objenesis-2.4.jar": "090416e160a7e398f79e0149a7b05ef328b1843898a34e08c1cc170128d326d0",
    "spice/lib/SceneGraphParser-1.0.jar": "83a1b7c3f896dd135f9539ba41d65b155827dfc312893bfd5bb835c9f9ae310a",
    "spice/lib/slf4j-api-1.7.12.jar": "0aee9a77a4940d72932b0d0d9557793f872e66a03f598e473f45e7efecdccf99",
    "spice/lib/slf4j-simple-1.7.21.jar": "a20179cc3ded2d7e2f5def4ccb34b2d0836e2f8c9e79352a6babd6a6559cc8e0",
}
_REINSTALL = "reinstall it: pip install --force-reinstall --no-deps pycocoevalcap==1.2"

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
    corenlp_sha256: Mapping[str, str] | None = None,
    copy: bool = False,
) -> Path:
    """Place the metrics' jars where aac-metrics looks for them and return the cache dir to give it.

    Everything pycocoevalcap ships is linked (``copy=True``: copied) under ``<cache>/aac-metrics/``;
    ``corenlp_jars`` adds SPICE's CoreNLP 3.6.0 jars from ``stanford-corenlp-full-2015-12-09.zip``, the two
    jars themselves, their folder, or an https URL of the zip (downloaded). Every file is checked against its
    pinned SHA-256 before it is placed (:data:`PYCOCOEVALCAP_SHA256`; the CoreNLP files against
    :data:`~enclap.metrics.corenlp.CORENLP_SHA256` updated with ``corenlp_sha256``, ``{file name: SHA-256}``).
    Idempotent and cheap once done (a few ``stat`` calls), safe with several processes at once (a file lock
    plus atomic renames), and nothing is written into site-packages. Raises :class:`MetricUnavailableError`
    (:class:`~enclap.metrics.integrity.ChecksumMismatchError` for a digest) when pycocoevalcap is not
    installed or a file is not what it should be.
    """
    root = resolve_cache_dir(cache_dir)
    corenlp_pins = None
    if corenlp_jars or corenlp_sha256:
        from .corenlp import corenlp_pins as _corenlp_pins  # the CoreNLP installer builds on this module

        corenlp_pins = _corenlp_pins(corenlp_sha256)  # a malformed pin fails before any work
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
                verify_sha256(src, src.relative_to(source).as_posix(), PYCOCOEVALCAP_SHA256, _REINSTALL)
                _place(src, dst, copy=cp)
        (root / SPICE_LOCAL_CACHE).mkdir(parents=True, exist_ok=True)
        if corenlp_jars:
            from .corenlp import _install_corenlp

            placed = _install_corenlp(corenlp_jars, root / SPICE_LIB, corenlp_pins)
            logger.info("placed %s in %s", ", ".join(placed), root / SPICE_LIB)
    return root


def _missing(root: Path, relative: Sequence[Path]) -> list[str]:
    return [str(root / r) for r in relative if not (root / r).is_file()]
