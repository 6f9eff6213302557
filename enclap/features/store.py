"""Feature stores: where EnCodec codes and CLAP embeddings live between extraction and training.

Two readers share one interface (:class:`FeatureReader`: ``key in store``, ``store[key]`` ->
:class:`~enclap.features.extractor.ClipFeatures`, ``keys()``, ``len()``):

* :class:`ShardedFeatureStore`, the project's format, written by :class:`ShardWriter`. It serves a
  handful of clips as well as WavCaps-scale corpora (~400k clips) without one file per clip, reads
  clips at random from several DataLoader workers through memory maps, and never loads the corpus
  into memory.
* :class:`NpyFeatureStore`, EnCLAP's own layout (one ``.npy`` per clip under an EnCodec root and a
  CLAP root, mirroring the manifest paths), so its released preprocessed features can be used as they
  are.

Keys are plain strings: the clip path relative to its data root, without extension
(``"test/Santa Motor"``). This module knows nothing about manifests; callers compute keys.

On-disk layout of a sharded store (format version 1)::

    <root>/store.json                      format, version, provenance metadata (written once)
    <root>/shards/<writer>-<seq>.codes.npy int16 (total_frames, num_codebooks): the codes of every
                                           clip of the shard, concatenated along time
    <root>/shards/<writer>-<seq>.clap.npy  float32 (clips, d_clap)
    <root>/shards/<writer>-<seq>.index.json keys and frame counts, in row order; written last

Crash safety: the two arrays are written under temporary names, flushed to disk and renamed into
place, and only then is the index written (temp + atomic rename). A shard exists for readers exactly
when its index does, so a process killed at any moment leaves either a whole shard or nothing visible;
its leftovers are removed the next time a writer with the same id starts.

Several writers (one per process of a distributed job, each with its own ``writer_id``) can write into
one root at the same time. Duplicate keys: a writer refuses (``ValueError``) a key that is already
committed in the store or already added by itself. Two writers running concurrently cannot see each
other's pending keys; should both commit the same key, readers resolve it deterministically: the shard
that sorts last by name wins, and a warning says so.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Protocol, runtime_checkable

import numpy as np

from ..errors import EnclapError
from ..fileio import fsync_dir

if TYPE_CHECKING:  # the extractor module pulls in torch; the store itself does not need it
    from .extractor import ClipFeatures

logger = logging.getLogger(__name__)

FORMAT_NAME = "enclap-sharded-features"
FORMAT_VERSION = 1
STORE_FILE = "store.json"
SHARD_DIR = "shards"
CODES_DTYPE = np.dtype(np.int16)
CLAP_DTYPE = np.dtype(np.float32)

_WRITER_ID = re.compile(r"^[A-Za-z0-9_]+$")
_INDEX_NAME = re.compile(r"^(?P<writer>[A-Za-z0-9_]+)-(?P<seq>\d+)\.index\.json$")
_TMP_PREFIX = ".tmp-"


class FeatureStoreError(EnclapError):
    """A feature store is missing, malformed, or used in a way its format does not allow."""


class FeatureNotFoundError(KeyError, FeatureStoreError):
    """A key is not in a store. The message names the key and the store."""

    def __str__(self) -> str:  # KeyError would print the message inside quotes
        return str(self.args[0]) if self.args else ""


def _clip_features_type() -> type:
    from .extractor import ClipFeatures

    return ClipFeatures


@runtime_checkable
class FeatureReader(Protocol):
    """Read access to per-clip features by key."""

    def __contains__(self, key: str) -> bool: ...

    def __getitem__(self, key: str) -> "ClipFeatures": ...

    def keys(self) -> list[str]: ...

    def __len__(self) -> int: ...


# --------------------------------------------------------------------------------------------- helpers


def _versions() -> dict[str, str]:
    """Versions of the libraries that shaped the stored numbers (for provenance, never compared)."""
    from .. import __version__

    found = {"enclap": __version__, "numpy": np.__version__, "python": sys.version.split()[0]}
    for name in ("torch", "transformers"):
        module = sys.modules.get(name)  # record only what the writing process actually used
        if module is not None and hasattr(module, "__version__"):
            found[name] = str(module.__version__)
    return found


def _jsonable(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise FeatureStoreError(f"{what} must be JSON-serialisable: {err}") from err


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.parent / f"{_TMP_PREFIX}{path.name}.{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.parent / f"{_TMP_PREFIX}{path.name}.{os.getpid()}"
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_store_file(root: Path) -> dict:
    path = root / STORE_FILE
    if not path.is_file():
        if not root.exists():
            reason = "no such directory"
        elif not root.is_dir():
            reason = "not a directory"
        else:
            reason = f"not a sharded feature store (no {STORE_FILE})"
        raise FeatureStoreError(
            f"{root}: {reason}. Write one with the extraction job (data/extract_features.py), or read "
            "EnCLAP's per-file .npy layout with open_feature_store(encodec_path=..., clap_path=...)."
        )
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FeatureStoreError(f"{path}: unreadable store description ({err})") from err
    if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
        raise FeatureStoreError(f"{path}: not a {FORMAT_NAME} description")
    if info.get("format_version") != FORMAT_VERSION:
        raise FeatureStoreError(
            f"{path}: format version {info.get('format_version')} is not supported (this library reads version {FORMAT_VERSION})"
        )
    return info


def _committed_shards(root: Path) -> list[str]:
    """Names (``<writer>-<seq>``) of the committed shards, in a fixed order (sorted by name)."""
    shard_dir = root / SHARD_DIR
    if not shard_dir.is_dir():
        return []
    names = []
    for entry in os.listdir(shard_dir):
        match = _INDEX_NAME.match(entry)
        if match:
            names.append(entry[: -len(".index.json")])
    return sorted(names, key=_shard_sort_key)


def _shard_sort_key(name: str) -> tuple[str, int]:
    writer, _, seq = name.rpartition("-")
    return writer, int(seq)


def _read_shard_index(root: Path, name: str) -> dict:
    path = root / SHARD_DIR / f"{name}.index.json"
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FeatureStoreError(f"{path}: unreadable shard index ({err})") from err
    keys, frames = index.get("keys"), index.get("frames")
    if not isinstance(keys, list) or not isinstance(frames, list) or len(keys) != len(frames):
        raise FeatureStoreError(f"{path}: malformed shard index (keys and frames must be lists of equal length)")
    return index


# --------------------------------------------------------------------------------------------- reader


class ShardedFeatureStore(FeatureReader):
    """Read-only view of a sharded store: the shards committed when it was opened.

    Opening reads only ``store.json`` and lists the shard directory; the shard indexes are merged on
    first use, and shard arrays are memory-mapped on first read of one of their clips, in whichever
    process reads them. Pickling sends the root and the list of shards (not the index, not the maps),
    so the store can be handed to DataLoader workers started by fork or spawn and every worker sees
    exactly the same clips.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        info = _read_store_file(self.root)
        self.metadata: dict = info.get("metadata") or {}
        self.created_by: dict = info.get("created_by") or {}
        self._shards: list[str] = _committed_shards(self.root)
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._rows: dict[str, int] | None = None
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # Pickle the snapshot, not the caches: memory maps do not pickle, and a 400k-key dict would be
    # copied into every spawned worker.
    def __getstate__(self) -> dict:
        return {"root": str(self.root), "metadata": self.metadata, "created_by": self.created_by, "shards": self._shards}

    def __setstate__(self, state: dict) -> None:
        self.root = Path(state["root"])
        self.metadata = state["metadata"]
        self.created_by = state["created_by"]
        self._shards = list(state["shards"])
        self._reset_caches()

    def __repr__(self) -> str:
        return f"ShardedFeatureStore({str(self.root)!r}, shards={len(self._shards)})"

    @property
    def shards(self) -> list[str]:
        """Names of the committed shards this view reads."""
        return list(self._shards)

    def _load_index(self) -> dict[str, int]:
        if self._rows is not None:
            return self._rows
        rows: dict[str, int] = {}
        shard_of: list[np.ndarray] = []
        row_of: list[np.ndarray] = []
        start_of: list[np.ndarray] = []
        count_of: list[np.ndarray] = []
        shapes: dict[str, tuple[int, int]] = {}
        shard_sizes: list[tuple[int, int]] = []  # (clips, frames) per shard, to check its arrays
        duplicates = 0
        position = 0
        for shard_number, name in enumerate(self._shards):
            index = _read_shard_index(self.root, name)
            frames = np.asarray(index["frames"], dtype=np.int64)
            if frames.size and frames.min() < 0:
                raise FeatureStoreError(f"{self.root / SHARD_DIR / name}.index.json: negative frame count")
            shape = (int(index.get("num_codebooks", -1)), int(index.get("d_clap", -1)))
            shapes.setdefault(name, shape)
            n = len(index["keys"])
            starts = np.zeros(n, dtype=np.int64)
            if n:
                np.cumsum(frames[:-1], out=starts[1:])
            shard_of.append(np.full(n, shard_number, dtype=np.int32))
            row_of.append(np.arange(n, dtype=np.int64))
            start_of.append(starts)
            count_of.append(frames)
            shard_sizes.append((n, int(frames.sum())))
            for offset, key in enumerate(index["keys"]):
                if key in rows:
                    duplicates += 1
                rows[key] = position + offset  # a later shard wins, see the module docstring
            position += n
        distinct_shapes = set(shapes.values())
        if len(distinct_shapes) > 1:
            raise FeatureStoreError(
                f"{self.root}: shards disagree on (num_codebooks, d_clap): "
                + ", ".join(f"{name}={shape}" for name, shape in sorted(shapes.items()))
            )
        if duplicates:
            logger.warning(
                "%s: %d key(s) are stored in more than one shard; the copy in the shard sorting last is used",
                self.root, duplicates,
            )
        def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

        self._shard_of = cat(shard_of, np.int32)
        self._row_of = cat(row_of, np.int64)
        self._start_of = cat(start_of, np.int64)
        self._count_of = cat(count_of, np.int64)
        self._shape = next(iter(distinct_shapes)) if distinct_shapes else None
        self._shard_sizes = shard_sizes
        self._rows = rows
        return rows

    def _arrays(self, shard_number: int) -> tuple[np.ndarray, np.ndarray]:
        arrays = self._maps.get(shard_number)
        if arrays is not None:
            return arrays
        name = self._shards[shard_number]
        base = self.root / SHARD_DIR / name
        try:
            codes = np.load(f"{base}.codes.npy", mmap_mode="r", allow_pickle=False)
            clap = np.load(f"{base}.clap.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise FeatureStoreError(f"{base}: shard arrays cannot be read ({err})") from err
        expected_clips, expected_frames = self._shard_sizes[shard_number]
        num_codebooks, d_clap = self._shape
        if codes.dtype != CODES_DTYPE or codes.shape != (expected_frames, num_codebooks):
            raise FeatureStoreError(
                f"{base}.codes.npy: expected {CODES_DTYPE} {(expected_frames, num_codebooks)} from its index, "
                f"found {codes.dtype} {codes.shape}"
            )
        if clap.dtype != CLAP_DTYPE or clap.shape != (expected_clips, d_clap):
            raise FeatureStoreError(
                f"{base}.clap.npy: expected {CLAP_DTYPE} {(expected_clips, d_clap)} from its index, found {clap.dtype} {clap.shape}"
            )
        self._maps[shard_number] = (codes, clap)
        return codes, clap

    def _position(self, key: str) -> int:
        rows = self._load_index()
        position = rows.get(key)
        if position is None:
            raise FeatureNotFoundError(
                f"{key!r} is not in the feature store at {self.root} ({len(rows)} clips in {len(self._shards)} shard(s))"
            )
        return position

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._load_index()

    def __getitem__(self, key: str) -> "ClipFeatures":
        position = self._position(key)
        shard_number = int(self._shard_of[position])
        codes, clap = self._arrays(shard_number)
        start = int(self._start_of[position])
        stop = start + int(self._count_of[position])
        # np.array copies out of the map: callers get ordinary arrays that outlive the store.
        return _clip_features_type()(
            codes=np.array(codes[start:stop]), clap=np.array(clap[int(self._row_of[position])])
        )

    def num_frames(self, key: str) -> int:
        """Length in codec frames of ``key``'s codes, without reading them (for length bucketing)."""
        return int(self._count_of[self._position(key)])

    def keys(self) -> list[str]:
        return list(self._load_index())

    def __len__(self) -> int:
        return len(self._load_index())

    @property
    def num_codebooks(self) -> int | None:
        """Codebooks per frame, or None for a store without clips."""
        self._load_index()
        return None if self._shape is None else self._shape[0]

    @property
    def d_clap(self) -> int | None:
        """CLAP embedding size, or None for a store without clips."""
        self._load_index()
        return None if self._shape is None else self._shape[1]


# --------------------------------------------------------------------------------------------- writer


class ShardWriter:
    """Appends clips to a sharded store, one shard every ``shard_size`` clips.

    ``writer_id`` names this writer's shards; concurrent writers in one root must use different ids
    (one per process, e.g. ``"rank0"``), and a second writer with an id already in use fails at once.
    ``metadata`` (JSON-serialisable provenance, e.g. the extractor's configuration) is written to
    ``store.json`` by the first writer; a later writer whose ``metadata`` differs is refused, so a
    store never mixes features made with different settings. ``metadata=None`` appends without
    checking. Clips added but not yet committed are committed by :meth:`flush` and :meth:`close`,
    also when a ``with`` block is left with an exception (every clip was complete when added); a
    process killed outright loses only its uncommitted clips.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        writer_id: str = "0",
        shard_size: int = 1024,
        metadata: dict | None = None,
    ) -> None:
        if not _WRITER_ID.match(str(writer_id)):
            raise ValueError(f"writer_id must be letters, digits or '_', got {writer_id!r}")
        if int(shard_size) < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self.root = Path(root)
        self.writer_id = str(writer_id)
        self.shard_size = int(shard_size)
        self._shard_dir = self.root / SHARD_DIR
        self._shard_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fh = self._acquire_lock()
        try:
            self._ensure_store_file(None if metadata is None else _jsonable(metadata, "metadata"))
            self._remove_own_leftovers()
            existing = ShardedFeatureStore(self.root)
            self._committed: set[str] = set(existing.keys())
            self._shape: tuple[int, int] | None = (
                None if existing.num_codebooks is None else (existing.num_codebooks, existing.d_clap)
            )
            self.metadata = existing.metadata
            own = [_shard_sort_key(n)[1] for n in existing.shards if _shard_sort_key(n)[0] == self.writer_id]
            self._next_seq = max(own) + 1 if own else 0
        except BaseException:
            self._release_lock()
            raise
        # One entry per queued clip, appended in one step, so that a signal arriving mid-add()
        # (SIGTERM -> close() -> flush()) can never commit a key with another clip's arrays.
        self._pending: list[tuple[str, np.ndarray, np.ndarray]] = []
        self._pending_set: set[str] = set()
        self.shards_written: list[str] = []
        self.clips_written = 0
        self._closed = False

    # -- set-up

    def _acquire_lock(self):
        path = self._shard_dir / f".lock-{self.writer_id}"
        fh = open(path, "a+")
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock; ids must then be kept distinct by the caller
            return fh
        try:
            # flock is released by the kernel when the process dies, so a killed run never leaves a
            # stale lock behind for its restart.
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise FeatureStoreError(
                f"{self.root}: another process is already writing with writer_id {self.writer_id!r}; "
                "give each concurrent writer its own id"
            ) from None
        return fh

    def _release_lock(self) -> None:
        fh, self._lock_fh = getattr(self, "_lock_fh", None), None
        if fh is not None:
            fh.close()  # closing the descriptor drops the flock

    def _ensure_store_file(self, metadata: dict | None) -> None:
        path = self.root / STORE_FILE
        if not path.exists():
            info = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "metadata": metadata or {},
                "created_by": _versions(),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            tmp = self.root / f"{_TMP_PREFIX}{STORE_FILE}.{self.writer_id}.{os.getpid()}"
            tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            try:
                # link() fails when the name exists, so of several writers starting together exactly
                # one creates the description and the others compare against it.
                os.link(tmp, path)
            except FileExistsError:
                pass
            except OSError:  # file systems without hard links
                if not path.exists():
                    os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            fsync_dir(self.root)
        existing = _read_store_file(self.root).get("metadata") or {}
        if metadata is not None and existing != metadata:
            differing = sorted(k for k in set(existing) | set(metadata) if existing.get(k) != metadata.get(k))
            raise FeatureStoreError(
                f"{self.root}: this store was written with different settings (differing metadata: {', '.join(differing)}). "
                "Features made with different settings must not be mixed: write to a new directory, or restore the settings. "
                f"Stored: {json.dumps({k: existing.get(k) for k in differing}, sort_keys=True)[:600]}; "
                f"new: {json.dumps({k: metadata.get(k) for k in differing}, sort_keys=True)[:600]}"
            )

    def _remove_own_leftovers(self) -> None:
        """Delete temp files and uncommitted shard arrays left by a killed writer with this id."""
        committed = set(_committed_shards(self.root))
        for entry in os.listdir(self._shard_dir):
            if entry.startswith(f"{_TMP_PREFIX}{self.writer_id}-"):
                (self._shard_dir / entry).unlink(missing_ok=True)
                continue
            for suffix in (".codes.npy", ".clap.npy"):
                if entry.endswith(suffix):
                    name = entry[: -len(suffix)]
                    match = _INDEX_NAME.match(f"{name}.index.json")
                    if match and match["writer"] == self.writer_id and name not in committed:
                        (self._shard_dir / entry).unlink(missing_ok=True)

    # -- writing

    @property
    def committed_keys(self) -> set[str]:
        """Keys committed in the store (by any writer, as of this writer's start, plus its own)."""
        return set(self._committed)

    def __contains__(self, key: str) -> bool:
        return key in self._committed or key in self._pending_set

    def add(self, key: str, features: "ClipFeatures") -> None:
        """Queue one clip; a shard is committed every ``shard_size`` clips."""
        if self._closed:
            raise FeatureStoreError(f"{self.root}: writer {self.writer_id!r} is closed")
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string, got {key!r}")
        if key in self._committed or key in self._pending_set:
            raise ValueError(f"{key!r} is already in the feature store at {self.root}; keys must be unique")
        codes = np.asarray(features.codes)
        clap = np.asarray(features.clap)
        if clap.ndim == 2 and clap.shape[0] == 1:
            clap = clap[0]
        if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"{key!r}: codes must be a 2-d integer array (frames, codebooks), got {codes.dtype} {codes.shape}")
        if codes.size and (int(codes.min()) < 0 or int(codes.max()) > np.iinfo(CODES_DTYPE).max):
            raise ValueError(f"{key!r}: codes outside 0..{np.iinfo(CODES_DTYPE).max} cannot be stored as {CODES_DTYPE}")
        if clap.ndim != 1 or not np.issubdtype(clap.dtype, np.floating):
            raise ValueError(f"{key!r}: clap must be a 1-d float array (d_clap,), got {clap.dtype} {clap.shape}")
        if not np.isfinite(clap).all():
            raise ValueError(f"{key!r}: clap embedding holds NaN or infinite values")
        shape = (int(codes.shape[1]), int(clap.shape[0]))
        if self._shape is None:
            self._shape = shape
        elif shape != self._shape:
            raise ValueError(
                f"{key!r}: (num_codebooks, d_clap) = {shape} differs from the store's {self._shape}"
            )
        self._pending.append((key, codes.astype(CODES_DTYPE, copy=False), clap.astype(CLAP_DTYPE, copy=False)))
        self._pending_set.add(key)
        if len(self._pending) >= self.shard_size:
            self.flush()

    def add_many(self, items: Iterable[tuple[str, "ClipFeatures"]]) -> None:
        for key, features in items:
            self.add(key, features)

    def flush(self) -> str | None:
        """Commit the queued clips as one shard; returns its name (None when nothing was queued)."""
        if not self._pending:
            return None
        keys = [key for key, _, _ in self._pending]
        pending_codes = [codes for _, codes, _ in self._pending]
        name = f"{self.writer_id}-{self._next_seq:06d}"
        base = self._shard_dir / name
        num_codebooks, d_clap = self._shape
        codes = (
            np.concatenate(pending_codes, axis=0)
            if pending_codes
            else np.zeros((0, num_codebooks), dtype=CODES_DTYPE)
        )
        clap = np.stack([clap for _, _, clap in self._pending], axis=0)
        # Arrays first, index last: the index is the commit record.
        _save_npy_atomic(Path(f"{base}.codes.npy"), codes)
        _save_npy_atomic(Path(f"{base}.clap.npy"), clap)
        index = {
            "format_version": FORMAT_VERSION,
            "writer_id": self.writer_id,
            "keys": keys,
            "frames": [int(c.shape[0]) for c in pending_codes],
            "num_codebooks": num_codebooks,
            "d_clap": d_clap,
            "written_by": _versions(),
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write_atomic(Path(f"{base}.index.json"), json.dumps(index, separators=(",", ":")).encode())
        fsync_dir(self._shard_dir)
        self._committed.update(keys)
        self.clips_written += len(keys)
        self.shards_written.append(name)
        self._next_seq += 1
        self._pending = []
        self._pending_set = set()
        return name

    @property
    def pending(self) -> int:
        """Clips queued but not yet committed."""
        return len(self._pending)

    def close(self) -> None:
        """Commit what is queued and release the writer id."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._release_lock()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Never commit from a finaliser (the interpreter may be half torn down); just drop the lock.
        self._release_lock()


# --------------------------------------------------------------------------------------------- EnCLAP layout


class NpyFeatureStore(FeatureReader):
    """EnCLAP's layout: ``<encodec_root>/<key>.npy`` codes (frames, 16) and ``<clap_root>/<key>.npy``.

    The CLAP arrays may be ``(d,)`` or ``(1, d)`` (both occur in released data); codes are returned as
    int16 and embeddings as float32 (1-d), as from the sharded store. ``keys()`` walks both trees once
    and lists the clips that have both files; membership and reads touch only the two files of a clip.
    """

    def __init__(self, encodec_root: str | os.PathLike, clap_root: str | os.PathLike) -> None:
        self.encodec_root = Path(encodec_root)
        self.clap_root = Path(clap_root)
        for what, root in (("EnCodec", self.encodec_root), ("CLAP", self.clap_root)):
            if not root.is_dir():
                raise FeatureStoreError(f"{root}: {what} feature directory not found")
        self._keys: list[str] | None = None
        self.metadata: dict = {"layout": "enclap-npy", "encodec_root": str(self.encodec_root), "clap_root": str(self.clap_root)}

    def __repr__(self) -> str:
        return f"NpyFeatureStore({str(self.encodec_root)!r}, {str(self.clap_root)!r})"

    def __getstate__(self) -> dict:
        return {"encodec_root": str(self.encodec_root), "clap_root": str(self.clap_root), "metadata": self.metadata}

    def __setstate__(self, state: dict) -> None:
        self.encodec_root = Path(state["encodec_root"])
        self.clap_root = Path(state["clap_root"])
        self.metadata = state["metadata"]
        self._keys = None

    @staticmethod
    def _file(root: Path, key: str) -> Path:
        # Append rather than with_suffix: keys may contain dots ("dog.barking.01").
        return root / f"{key}.npy"

    @staticmethod
    def _valid_key(key: object) -> bool:
        return isinstance(key, str) and bool(key) and not os.path.isabs(key) and ".." not in Path(key).parts

    def __contains__(self, key: object) -> bool:
        return (
            self._valid_key(key)
            and self._file(self.encodec_root, key).is_file()
            and self._file(self.clap_root, key).is_file()
        )

    def __getitem__(self, key: str) -> "ClipFeatures":
        if not self._valid_key(key):
            raise FeatureNotFoundError(f"{key!r} is not a valid key (a relative path without '..') for {self!r}")
        codes_path = self._file(self.encodec_root, key)
        clap_path = self._file(self.clap_root, key)
        missing = [str(p) for p in (codes_path, clap_path) if not p.is_file()]
        if missing:
            raise FeatureNotFoundError(f"{key!r} is not in the EnCLAP feature layout: missing {' and '.join(missing)}")
        codes = self._load(codes_path)
        clap = self._load(clap_path)
        if codes.ndim == 3 and codes.shape[0] == 1:  # a saved batch of one
            codes = codes[0]
        if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
            raise FeatureStoreError(f"{codes_path}: expected integer codes (frames, codebooks), found {codes.dtype} {codes.shape}")
        if codes.size and (int(codes.min()) < 0 or int(codes.max()) > np.iinfo(CODES_DTYPE).max):
            raise FeatureStoreError(f"{codes_path}: codes outside 0..{np.iinfo(CODES_DTYPE).max}")
        if clap.ndim == 2 and clap.shape[0] == 1:
            clap = clap[0]
        if clap.ndim != 1 or not np.issubdtype(clap.dtype, np.floating):
            raise FeatureStoreError(f"{clap_path}: expected a CLAP embedding (d,) or (1, d), found {clap.dtype} {clap.shape}")
        return _clip_features_type()(
            codes=codes.astype(CODES_DTYPE, copy=False), clap=clap.astype(CLAP_DTYPE, copy=False)
        )

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise FeatureStoreError(f"{path}: not a readable .npy array ({err})") from err

    def _walk(self, root: Path) -> set[str]:
        found = set()
        for directory, _, files in os.walk(root):
            rel = os.path.relpath(directory, root)
            for name in files:
                if name.endswith(".npy"):
                    path = name[:-4] if rel == "." else f"{rel}/{name[:-4]}"
                    found.add(path.replace(os.sep, "/"))
        return found

    def keys(self) -> list[str]:
        if self._keys is None:
            codes, claps = self._walk(self.encodec_root), self._walk(self.clap_root)
            only = len(codes ^ claps)
            if only:
                logger.warning(
                    "%s / %s: %d clip(s) have only one of the two feature files and are left out",
                    self.encodec_root, self.clap_root, only,
                )
            self._keys = sorted(codes & claps)
        return list(self._keys)

    def __len__(self) -> int:
        return len(self.keys())


# --------------------------------------------------------------------------------------------- opening


def open_feature_store(
    path: str | os.PathLike | None = None,
    *,
    encodec_path: str | os.PathLike | None = None,
    clap_path: str | os.PathLike | None = None,
) -> FeatureReader:
    """Open features for reading: a sharded store at ``path``, or EnCLAP's layout at ``encodec_path`` + ``clap_path``."""
    if path is not None and (encodec_path is not None or clap_path is not None):
        raise FeatureStoreError(
            "give either a sharded store path or encodec_path + clap_path (EnCLAP's layout), not both"
        )
    if path is not None:
        return ShardedFeatureStore(path)
    if encodec_path is None and clap_path is None:
        raise FeatureStoreError("no features given: pass a sharded store path, or encodec_path and clap_path")
    if encodec_path is None or clap_path is None:
        missing = "encodec_path" if encodec_path is None else "clap_path"
        raise FeatureStoreError(f"EnCLAP's layout needs both encodec_path and clap_path; {missing} is missing")
    return NpyFeatureStore(encodec_path, clap_path)


__all__ = [
    "FeatureNotFoundError",
    "FeatureReader",
    "FeatureStoreError",
    "NpyFeatureStore",
    "ShardWriter",
    "ShardedFeatureStore",
    "open_feature_store",
]
