"""A cache of demo runs for the benchmarks, keyed by what trains them (not a benchmark itself: no ``bench_`` prefix).

The demo skips a stage whose recorded settings match, but its settings do not include the code: a cached
run made by older code would be reused silently. :func:`prepare_cache` keys a run directory by a digest
of every ``enclap/**/*.py``, the demo's configs and the benchmark's own settings, and wipes it when any
of them changed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(__file__).resolve().parent / ".cache"  # git-ignored


def code_digest(paths: list[Path]) -> str:
    """A digest of the names and contents of the given files."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cache_key(settings: dict) -> dict:
    """What trains a cached demo run: the code of enclap/, the demo's configs and ``settings``."""
    configs = [ROOT / "cfg" / "demo.yaml", ROOT / "cfg" / "clap" / "tiny.yaml"]
    return {"enclap_code": code_digest(list((ROOT / "enclap").rglob("*.py"))), "configs": code_digest(configs),
            "settings": json.loads(json.dumps(settings, default=str))}


def prepare_cache(root: Path, key: dict) -> bool:
    """Wipe ``root`` unless it was made with ``key`` (then recorded in ``root/cache_key.json``); True when reused."""
    stamp = root / "cache_key.json"
    try:
        if json.loads(stamp.read_text()) == key:
            return True
    except (OSError, ValueError):
        pass
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    stamp.write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
    return False
