"""Webdataset shards of captioned audio, as LAION-CLAP trains on: write, check, stream.

**Layout.** A shard is a plain tar (``DIR/PREFIX-000000.tar``, ...) written with ``webdataset``'s
``ShardWriter``. Each sample is two members sharing a ``__key__``: the audio file's bytes, untouched,
under its own extension (``000000042.flac`` / ``.wav`` / ``.mp3`` / ``.ogg``), and ``000000042.json``
holding ``{"text": [captions...], "original_filename": "clip.flac", "clip_key": "train/clip"}``
(LAION's ``text`` field; a LAION shard whose ``text`` is one string reads too). Keys are running
numbers: a webdataset key stops at the first dot of a member's name, and clip names (Clotho's
``FR.CTC.08.CoyuyoS.001``) have dots. ``DIR/sizes.json`` maps every shard's file name to its sample
count, as LAION's ``sizes.json`` does, so a trainer knows the data's size without reading it.

**Write** (:func:`write_shards`): every clip's audio is found and its header read *before* anything
is written; a missing or unreadable file stops the job with every such file and its reason listed
(:class:`~enclap.errors.ManifestError`), or, with ``skip_bad=True``, is reported, left out and
listed under ``"skipped"`` in ``sizes.json``. Shards are written into a temporary directory and moved
into place only once all of them are complete; ``sizes.json`` comes last.

**Check** (:func:`check_shards`): reads every sample of every shard, as LAION's ``test_tars.py``
does, and reports each unreadable one (shard, sample key, reason: a corrupt or truncated tar, a
missing or invalid json, no captions under ``text``, a missing or undecodable audio member) without
stopping at the first.

**Stream** (:class:`ShardStream`): a ``torch`` ``IterableDataset`` built from ``webdataset`` stages.
For epoch ``e`` and seed ``s`` it is a pure function of ``(s, e, process, DataLoader worker)``:

* not resampled: the shard list is shuffled from ``(s, e)`` (the same order on every process), split
  by process (``islice(rank, None, world)``) and then by DataLoader worker (``webdataset.split_by_worker``):
  every shard is read by exactly one worker of one process, so one pass over the shards yields every
  sample exactly once. With a declared epoch length the pass repeats until the worker's quota is met.
* resampled (``resampled=True``, LAION's ``--dataset-resampled``): each worker draws shards with
  replacement (``webdataset.ResampledShards``, deterministic, seeded from ``(s, e, process, worker)``).
* samples pass a shuffle buffer (``webdataset.shuffle``, seeded likewise), then ``transform``
  (``webdataset.map``) turns them into training examples.
* an epoch of ``batches_per_epoch`` batches of ``batch_size`` on a process: worker ``w`` of ``W``
  yields ``batch_size * len(range(w, batches_per_epoch, W))`` examples (``with_epoch``), exactly what a
  ``DataLoader`` taking batches round-robin from its workers turns into ``batches_per_epoch`` batches.
* **bad samples** (a broken tar, bad json, undecodable audio) are skipped by a counting
  ``webdataset`` handler (:class:`SkipCounter`): each is logged (shard, key, reason) and counted, and
  every example carries, under :data:`SKIPPED_KEY`, the number skipped since the previous one, so that
  the training loop sums them exactly, whatever process or worker met them.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tarfile
import zlib
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from torch.utils.data import IterableDataset  # (webdataset itself imports torch)

from ..errors import AudioError, ConfigError, EnclapError, ManifestError

logger = logging.getLogger(__name__)

SIZES_FILE = "sizes.json"
SHARD_PATTERN = "{prefix}-%06d.tar"
# The audio members a sample may hold (LAION's shards: flac; others: wav, mp3, ogg).
AUDIO_SUFFIXES = ("flac", "wav", "mp3", "ogg", "opus", "oga")
# The key under which every streamed example carries the number of bad samples skipped before it.
SKIPPED_KEY = "__skipped__"
SHARD_STREAM = 0x5A4D
_TMP_PREFIX = ".tmp-"


class ShardError(EnclapError):
    """Shards that cannot be read or written (names the shard and the reason)."""


# ------------------------------------------------------------------------------------------ shard lists
def expand_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard paths of a brace range (``data-{000000..000009}.tar``), a ``::``-separated string or a list."""
    from webdataset.shardlists import expand_urls

    if isinstance(spec, (str, os.PathLike)):
        urls = expand_urls(str(spec))
    else:
        urls = [u for item in spec for u in expand_urls(str(item))]
    urls = [u for u in urls if u]
    if not urls:
        raise ConfigError(f"no shards given ({spec!r})")
    return urls


def read_shard_sizes(urls: Sequence[str]) -> dict[str, int]:
    """Sample counts of ``urls`` from the ``sizes.json`` next to them (LAION's layout).

    Raises :class:`ShardError` naming the file when a shard's directory has no ``sizes.json`` or the
    file does not list the shard.
    """
    cache: dict[Path, dict[str, int]] = {}
    out: dict[str, int] = {}
    missing: list[str] = []
    for url in urls:
        directory = Path(url).parent
        if directory not in cache:
            path = directory / SIZES_FILE
            try:
                data = json.loads(path.read_text())
            except FileNotFoundError:
                raise ShardError(f"{path}: no {SIZES_FILE} next to the shards (enclap-shards write makes one; or declare "
                                 "the epoch length, data.shard_epoch_samples)") from None
            except (OSError, ValueError) as err:
                raise ShardError(f"{path}: unreadable ({err})") from err
            cache[directory] = {str(k): int(v) for k, v in (data.get("shards", data) or {}).items() if not isinstance(v, (dict, list))}
        sizes = cache[directory]
        name = Path(url).name
        if name not in sizes:
            missing.append(url)
        else:
            out[url] = sizes[name]
    if missing:
        raise ShardError(f"{len(missing)} shard(s) not listed in their {SIZES_FILE}: {', '.join(missing[:5])}")
    return out


# ------------------------------------------------------------------------------------------ write
@dataclass
class ShardWriteResult:
    """What :func:`write_shards` wrote: the shards (in order), their sample counts, the files left out."""

    shards: list[Path]
    sizes: dict[str, int]
    sizes_file: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (audio file, reason)

    @property
    def samples(self) -> int:
        return sum(self.sizes.values())


def _audio_suffix(path: Path) -> str | None:
    suffix = path.suffix.lower().lstrip(".")
    return suffix if suffix in AUDIO_SUFFIXES else None


def write_shards(
    manifest: str | os.PathLike,
    audio_root: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    prefix: str = "data",
    max_samples_per_shard: int = 1000,
    max_shard_size: float = 1e9,
    skip_bad: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> ShardWriteResult:
    """Write the clips of a caption manifest (all their captions) and their audio into tar shards.

    See the module docstring for the layout and for what happens to missing or unreadable audio.
    ``max_samples_per_shard`` / ``max_shard_size`` (bytes) start a new shard when reached. An output
    directory that already holds ``PREFIX-*.tar`` shards is refused unless ``overwrite``.
    """
    import webdataset as wds
    from tqdm import tqdm

    from ..audio import audio_info
    from .manifest import read_manifest, resolve_audio_path

    if max_samples_per_shard < 1 or max_shard_size <= 0:
        raise ConfigError(f"max_samples_per_shard must be >= 1 and max_shard_size > 0, got {max_samples_per_shard}, {max_shard_size}")
    if not prefix or any(c in prefix for c in "/\\%{}"):
        raise ConfigError(f"prefix {prefix!r}: a plain file-name prefix is needed")
    output_dir = Path(output_dir)
    existing = sorted(output_dir.glob(f"{prefix}-*.tar")) if output_dir.is_dir() else []
    if existing and not overwrite:
        raise ConfigError(f"{output_dir} already holds {len(existing)} {prefix}-*.tar shard(s); pass overwrite "
                          "(--overwrite) to replace them, or another directory / prefix")
    clips = read_manifest(manifest)
    entries: list[tuple[Any, Path, str]] = []
    problems: list[str] = []
    skipped: list[tuple[str, str]] = []
    for clip in tqdm(clips, desc="checking audio", unit="clip", disable=not progress, dynamic_ncols=True):
        try:
            path = resolve_audio_path(clip.file_path, audio_root)
            suffix = _audio_suffix(path)
            if suffix is None:
                raise AudioError(path, f"extension {path.suffix!r} is not one a shard stores ({', '.join(AUDIO_SUFFIXES)})")
            info = audio_info(path)
            if info.frames == 0:
                raise AudioError(path, "audio has zero samples")
        except AudioError as err:
            problems.append(str(err))
            skipped.append((err.path, err.reason))
            continue
        entries.append((clip, path, suffix))
    if problems and not skip_bad:
        raise ManifestError(manifest, [f"{p} (nothing was written; fix or remove these clips, or pass --skip-bad)" if i == 0 else p
                                       for i, p in enumerate(problems)])
    for path, reason in skipped:
        logger.warning("left out %s: %s", path, reason)
    if not entries:
        raise ManifestError(manifest, ["no clip has readable audio: nothing to write"])

    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / f"{_TMP_PREFIX}{prefix}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    sizes: dict[str, int] = {}
    try:
        with wds.ShardWriter(str(tmp / SHARD_PATTERN.format(prefix=prefix)), maxcount=int(max_samples_per_shard),
                             maxsize=float(max_shard_size), verbose=0) as writer:
            for number, (clip, path, suffix) in enumerate(
                tqdm(entries, desc="writing shards", unit="clip", disable=not progress, dynamic_ncols=True)
            ):
                meta = {"text": list(clip.captions), "original_filename": path.name, "clip_key": clip.key}
                writer.write({"__key__": f"{number:09d}", suffix: path.read_bytes(),
                              "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")})
                name = Path(writer.fname).name
                sizes[name] = sizes.get(name, 0) + 1
        # Everything is written: replace the old shards, move the new ones in, and sizes.json last.
        for old in existing:
            old.unlink()
        (output_dir / SIZES_FILE).unlink(missing_ok=True)
        shards = []
        for name in sizes:
            os.replace(tmp / name, output_dir / name)
            shards.append(output_dir / name)
        index = {"shards": sizes, "samples": sum(sizes.values()), "manifest": str(manifest),
                 "skipped": [{"file": f, "reason": r} for f, r in skipped]}
        sizes_tmp = output_dir / f"{_TMP_PREFIX}{SIZES_FILE}"
        sizes_tmp.write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n")
        os.replace(sizes_tmp, output_dir / SIZES_FILE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ShardWriteResult(shards, sizes, output_dir / SIZES_FILE, skipped)


# ------------------------------------------------------------------------------------------ samples
class BadSample(EnclapError):
    """One sample of a shard that cannot be used: ``shard``, ``key`` and ``reason``."""

    def __init__(self, shard: str, key: str | None, reason: str) -> None:
        self.shard, self.key, self.reason = str(shard), key, reason
        super().__init__(f"{self.shard}: sample {key!r}: {reason}" if key else f"{self.shard}: {reason}")


def sample_captions(sample: dict[str, Any]) -> list[str]:
    """The captions of a raw shard sample (``json`` -> ``text``: a list, or LAION's single string)."""
    where, key = sample.get("__url__", "?"), sample.get("__key__")
    if "json" not in sample:
        raise BadSample(where, key, "missing json member")
    try:
        meta = json.loads(sample["json"])
    except (ValueError, UnicodeDecodeError) as err:
        raise BadSample(where, key, f"bad json ({err})") from None
    text = meta.get("text") if isinstance(meta, dict) else None
    if isinstance(text, str):
        text = [text]
    if not isinstance(text, list) or not text:
        raise BadSample(where, key, "missing text: json has no caption under 'text'")
    captions = [t.strip() for t in text if isinstance(t, str) and t.strip()]
    if len(captions) != len(text):
        raise BadSample(where, key, "bad text: 'text' holds an empty or non-string caption")
    return captions


def sample_audio(sample: dict[str, Any]) -> tuple[str, bytes]:
    """``(extension, encoded bytes)`` of the audio member of a raw shard sample."""
    for suffix in AUDIO_SUFFIXES:
        if suffix in sample:
            return suffix, sample[suffix]
    members = sorted(k for k in sample if not k.startswith("__"))
    raise BadSample(sample.get("__url__", "?"), sample.get("__key__"),
                    f"missing audio: no {'/'.join(AUDIO_SUFFIXES)} member (members: {', '.join(members) or 'none'})")


def decode_sample_audio(sample: dict[str, Any], sample_rate: int | None = None):
    """The audio of a raw shard sample as mono float32 at ``sample_rate`` (:func:`enclap.audio.load_audio_bytes`)."""
    from ..audio import load_audio_bytes

    suffix, data = sample_audio(sample)
    where, key = sample.get("__url__", "?"), sample.get("__key__")
    try:
        return load_audio_bytes(data, sample_rate, name=f"{where}:{key}.{suffix}")[0]
    except AudioError as err:
        raise BadSample(where, key, f"undecodable audio ({err.reason})") from None


def _describe(exn: BaseException) -> tuple[str, str | None, str]:
    """(shard, key, reason) of an exception met while reading shards (webdataset appends the url to args)."""
    if isinstance(exn, BadSample):
        return exn.shard, exn.key, exn.reason
    import re

    shard = next((a for a in reversed(getattr(exn, "args", ())) if isinstance(a, str) and a.endswith(".tar")), "?")
    first = str(exn.args[0]) if getattr(exn, "args", None) else type(exn).__name__
    if shard == "?":  # webdataset's tar iterator appends " @ <file object name='...'>" instead of the url
        found = re.search(r" @ <.*name='([^']+)'", first)
        shard = found.group(1) if found else shard
    first = first.split(" @ ")[0]
    if isinstance(exn, tarfile.ReadError) or isinstance(exn, EOFError):
        low = first.lower()
        kind = "truncated tar" if ("end of" in low or "eof" in low or "truncated" in low) else "corrupt tar"
        return shard, None, f"{kind} ({first})"
    if isinstance(exn, (OSError, tarfile.TarError)):
        return shard, None, f"unreadable shard ({type(exn).__name__}: {first})"
    return shard, None, f"{type(exn).__name__}: {first}"


def shard_captions(shards: str | Sequence[str]) -> list[list[str]]:
    """Every sample's captions, in shard order, reading the json members only (e.g. to train a tokenizer).

    A sample without usable captions, or a broken shard, is skipped with a warning (counted, as in training).
    """
    import webdataset as wds

    counter = SkipCounter()
    out: list[list[str]] = []
    for sample in wds.tarfile_samples([{"url": u} for u in expand_shards(shards)], handler=counter,
                                      select_files=lambda name: name.lower().endswith(".json")):
        try:
            out.append(sample_captions(sample))
        except BadSample as err:
            counter(err)
    if counter.total:
        logger.warning("%d sample(s) without usable captions left out of the shards' captions", counter.total)
    return out


# ------------------------------------------------------------------------------------------ check
def _member_key(name: str) -> str:
    from webdataset.tariterators import base_plus_ext

    return base_plus_ext(name)[0] or name


def tar_structure_problem(path: str | os.PathLike) -> tuple[str | None, str] | None:
    """``(sample key or None, reason)`` when a tar shard is truncated or has a corrupt member header; else None.

    Python's tarfile (which webdataset reads with) ends an archive *silently* at a header it cannot
    read or at a file cut short; this looks at where it stopped (stdlib ``tarfile``, random access):
    a member running past the end of the file, no end-of-archive blocks, or bytes that are not the
    end-of-archive zeros where the next header should be.
    """
    path = Path(path)
    size = path.stat().st_size
    last: tarfile.TarInfo | None = None
    try:
        with tarfile.open(path, "r:") as archive:
            try:
                while (member := archive.next()) is not None:
                    last = member
            except (tarfile.ReadError, EOFError):
                if last is None or last.offset_data + last.size <= size:
                    return None, f"corrupt tar: unreadable member header at byte {archive.offset}"
            end = archive.offset
    except (tarfile.TarError, OSError, EOFError) as err:
        return None, f"corrupt tar ({err})"
    if last is not None and last.offset_data + last.size > size:
        return _member_key(last.name), (f"truncated tar: the file ends inside member {last.name} "
                                        f"({size - last.offset_data} of its {last.size} bytes)")
    with open(path, "rb") as fh:
        fh.seek(end)
        tail = fh.read(1024)
    after = f" after member {last.name}" if last is not None else ""
    if len(tail) < 1024 and not tail.strip(b"\0"):
        return None, f"truncated tar: the file ends at byte {size}{after} without the end-of-archive blocks"
    if tail.strip(b"\0"):
        return None, (f"corrupt tar: unreadable member header at byte {end}{after}; "
                      f"the {size - end} bytes from there cannot be read")
    return None


@dataclass
class ShardProblem:
    shard: str
    key: str | None
    reason: str

    def __str__(self) -> str:
        return f"{self.shard}: {'sample ' + repr(self.key) + ': ' if self.key else ''}{self.reason}"


@dataclass
class ShardCheckReport:
    shards: list[str]
    samples: dict[str, int]  # good samples per shard
    problems: list[ShardProblem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"shards": len(self.shards), "good_samples": sum(self.samples.values()), "bad": len(self.problems),
                "per_shard": self.samples, "problems": [p.__dict__ for p in self.problems]}


def check_shards(
    shards: str | Sequence[str], *, decode_audio: bool = True, sizes: bool = True, progress: bool = True
) -> ShardCheckReport:
    """Read every sample of every shard and report each unusable one (see the module docstring).

    ``decode_audio=False`` checks the tar structure, the json and the presence of audio only. With
    ``sizes``, a shard whose good samples differ from its count in ``sizes.json`` (when there is one)
    is reported too.
    """
    import webdataset as wds
    from tqdm import tqdm

    urls = expand_shards(shards)
    problems: list[ShardProblem] = []
    good: dict[str, int] = {}
    declared: dict[str, int] = {}
    if sizes:
        try:
            declared = read_shard_sizes(urls)
        except ShardError:
            declared = {}
    bar = tqdm(urls, desc="checking shards", unit="shard", disable=not progress, dynamic_ncols=True)
    for url in bar:
        good[url] = 0
        if not Path(url).is_file():
            problems.append(ShardProblem(url, None, "no such file"))
            continue
        last_key: list[str | None] = [None]
        tar_errors: list[ShardProblem] = []

        def record(exn: BaseException, url: str = url, tar_errors: list = tar_errors) -> bool:
            shard, key, reason = _describe(exn)
            if key is None:  # the tar itself: told more precisely by tar_structure_problem below, if it can
                if last_key[0] is not None:
                    reason += f" after sample {last_key[0]!r}"
                if not any(p.reason == reason for p in tar_errors):
                    tar_errors.append(ShardProblem(url, None, reason))
            else:
                problems.append(ShardProblem(shard if shard != "?" else url, key, reason))
            return True  # keep going: report every bad sample, not the first

        for sample in wds.tarfile_samples([{"url": url}], handler=record):
            key = sample.get("__key__")
            last_key[0] = key
            try:
                sample_captions(sample)
                if decode_audio:
                    decode_sample_audio(sample)
                else:
                    sample_audio(sample)
            except BadSample as err:
                record(err)
                continue
            good[url] += 1
        structure = tar_structure_problem(url)
        problems.extend([ShardProblem(url, *structure)] if structure is not None else tar_errors)
        bar.set_postfix(bad=len(problems))
        if url in declared and declared[url] != good[url] and not any(p.shard == url for p in problems):
            problems.append(ShardProblem(url, None, f"{SIZES_FILE} declares {declared[url]} samples, {good[url]} read"))
    return ShardCheckReport(urls, good, problems)


# ------------------------------------------------------------------------------------------ stream
class SkipCounter:
    """A webdataset handler that skips a bad sample, logs it (shard, key, reason) and counts it.

    ``take()`` returns the count since the last ``take`` (what the next example carries). The first
    ``log_first`` bad samples of a worker are logged one by one, then every ``log_every``-th with the total.
    """

    def __init__(self, log_first: int = 20, log_every: int = 100, sizes: dict[str, int] | None = None) -> None:
        self.sizes = sizes or {}
        self.total = 0
        self.pending = 0
        self.log_first, self.log_every = int(log_first), int(log_every)

    def __call__(self, exn: BaseException) -> bool:
        if not isinstance(exn, Exception):  # KeyboardInterrupt and the like are not bad data
            return False
        shard, key, reason = _describe(exn)
        if key is None and shard in self.sizes:
            # A broken tar: the samples it loses are counted when the shard ends (sizes.json says how many).
            logger.warning("%s: %s", shard, reason)
            return True
        self.total += 1
        self.pending += 1
        if self.total <= self.log_first or self.total % self.log_every == 0:
            logger.warning("skipped a bad sample (%d so far in this reader): %s%s: %s", self.total, shard,
                           f" sample {key!r}" if key else "", reason)
        return True

    def missing(self, shard: str, read: int, declared: int) -> None:
        lost = declared - read
        self.total += lost
        self.pending += lost
        logger.warning("skipped %d sample(s) of %s: it ended after %d of the %d samples its %s lists "
                       "(a truncated or corrupt tar; enclap-shards check names it)", lost, shard, read, declared, SIZES_FILE)

    def take(self) -> int:
        count, self.pending = self.pending, 0
        return count


def _seed(*parts: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0])


def key_number(key: str) -> int:
    """A stable number of a sample key (crc32), to seed a sample's own randomness."""
    return zlib.crc32(str(key).encode("utf-8"))


class _SplitByProcess:
    """``webdataset.split_by_node`` with the process given explicitly (the loop knows it; no env lookup)."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = int(rank), int(world)

    def __call__(self, src: Iterable[Any]) -> Iterator[Any]:
        return islice(src, self.rank, None, self.world)


class _CompleteShards:
    """Counts, as bad, the samples a shard lists in ``sizes.json`` but does not deliver.

    Python's tarfile ends a truncated or corrupt archive silently (see :func:`tar_structure_problem`):
    without this, the rest of such a shard would vanish from training unnoticed.
    """

    def __init__(self, sizes: dict[str, int], counter: "SkipCounter") -> None:
        self.sizes, self.counter = sizes, counter

    def _close(self, url: str | None, read: int) -> None:
        declared = self.sizes.get(url) if url is not None else None
        if declared is not None and read < declared:
            self.counter.missing(url, read, declared)

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        url, read = None, 0
        for sample in src:
            if sample.get("__url__") != url:
                self._close(url, read)
                url, read = sample.get("__url__"), 0
            read += 1
            yield sample
        self._close(url, read)


class _Transform:
    """``transform(sample, epoch)``, any failure turned into a :class:`BadSample` naming the shard and key."""

    def __init__(self, transform: Callable[[dict[str, Any], int], dict[str, Any]], epoch: int) -> None:
        self.transform, self.epoch = transform, int(epoch)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.transform(sample, self.epoch)
        except BadSample:
            raise
        except Exception as err:
            raise BadSample(sample.get("__url__", "?"), sample.get("__key__"), f"{type(err).__name__}: {err}") from err


class _AttachSkips:
    """Each example gets the bad samples skipped since the previous one.

    An example is passed on once the next one has been made (or the stream has ended), so that the
    bad samples read after the last example of a pass are carried by it rather than lost.
    """

    def __init__(self, counter: SkipCounter) -> None:
        self.counter = counter

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        held: dict[str, Any] | None = None
        skipped = self.counter.take()  # bad samples before the first example
        for example in src:
            if held is not None:
                held[SKIPPED_KEY] = skipped
                yield held
                skipped = 0
            skipped += self.counter.take()
            held = example
        if held is not None:
            held[SKIPPED_KEY] = skipped + self.counter.take()
            yield held


class ShardStream(IterableDataset):
    """A streaming training set over webdataset shards; a ``torch.utils.data.IterableDataset``.

    ``transform(sample, epoch)`` turns a raw sample (``__key__``, ``__url__``, ``json``, the audio
    member) into an example dict; raising (e.g. :class:`BadSample`) skips the sample, counted. The
    loop calls :meth:`set_stream` once (process, batch size, batches per epoch) and :meth:`set_epoch`
    before each pass; see the module docstring for how the stream depends on them.
    ``epoch_examples`` is the declared global epoch length (default: the samples ``sizes.json`` lists).
    """

    def __init__(
        self,
        shards: str | Sequence[str],
        transform: Callable[[dict[str, Any], int], dict[str, Any]],
        *,
        seed: int = 0,
        resampled: bool = False,
        shuffle_buffer: int = 1000,
        shuffle_initial: int | None = None,
        epoch_examples: int | None = None,
    ) -> None:
        super().__init__()
        self.urls = expand_shards(shards)
        self.transform = transform
        self.seed = int(seed)
        self.resampled = bool(resampled)
        self.shuffle_buffer = int(shuffle_buffer)
        self.shuffle_initial = int(shuffle_initial if shuffle_initial is not None else max(1, self.shuffle_buffer // 2))
        if self.shuffle_buffer < 0:
            raise ConfigError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        missing = [u for u in self.urls if "://" not in u and not Path(u).is_file()]
        if missing:
            raise ShardError(f"{len(missing)} shard(s) not found: {', '.join(missing[:5])}")
        if epoch_examples is None:
            epoch_examples = sum(read_shard_sizes(self.urls).values())  # (the error says what is missing)
        if int(epoch_examples) < 1:
            raise ConfigError(f"the declared epoch length must be >= 1 example, got {epoch_examples}")
        self.epoch_examples = int(epoch_examples)
        try:
            self.sizes = read_shard_sizes(self.urls)
        except ShardError as err:
            logger.info("%s: a shard that ends early (truncated, corrupt) cannot be told from a short one", err)
            self.sizes = {}
        self.epoch = 0
        self.rank, self.world = 0, 1
        self.batch_size: int | None = None
        self.batches_per_epoch: int | None = None  # None: one pass over the shards (no quota)

    # The loop's side -------------------------------------------------------------------------------
    def set_stream(self, *, process_index: int, num_processes: int, batch_size: int | None = None,
                   batches_per_epoch: int | None = None, num_workers: int = 0) -> None:
        """This process's place and what an epoch must yield; checks that every worker gets a shard."""
        self.rank, self.world = int(process_index), int(num_processes)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.batches_per_epoch = None if batches_per_epoch is None else int(batches_per_epoch)
        readers = self.world * max(1, int(num_workers))
        if not self.resampled and len(self.urls) < readers:
            raise ConfigError(
                f"{len(self.urls)} shard(s) for {self.world} process(es) x {max(1, int(num_workers))} DataLoader worker(s): "
                "without resampling every reader needs a shard of its own; write more, smaller shards "
                "(--max-samples-per-shard), use fewer workers, or resample (data.resampled=true)"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # The worker's side -----------------------------------------------------------------------------
    def worker_quota(self, worker: int, workers: int) -> int | None:
        """Examples worker ``worker`` of ``workers`` yields in an epoch (None: one pass, no quota)."""
        if self.batches_per_epoch is None or self.batch_size is None:
            return None
        return self.batch_size * len(range(worker, self.batches_per_epoch, workers))

    def pipeline(self, worker: int = 0, workers: int = 1):
        """The webdataset pipeline of this process's worker ``worker`` of ``workers`` for the current epoch."""
        import webdataset as wds

        counter = SkipCounter(sizes=self.sizes)
        if self.resampled:
            source = [wds.ResampledShards(self.urls, seed=_seed(self.seed, SHARD_STREAM, self.epoch), deterministic=True,
                                          worker_seed=lambda: self.rank * 65_536 + worker)]
        else:
            source = [wds.SimpleShardList(self.urls, seed=_seed(self.seed, SHARD_STREAM, self.epoch)),
                      _SplitByProcess(self.rank, self.world), wds.split_by_worker]
        stages = [*source, wds.tarfile_to_samples(handler=counter), _CompleteShards(self.sizes, counter)]
        if self.shuffle_buffer > 1:
            rng = random.Random(_seed(self.seed, SHARD_STREAM, self.epoch, self.rank, worker, 1))
            stages.append(wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_initial, self.shuffle_buffer), rng=rng))
        stages += [wds.map(_Transform(self.transform, self.epoch), handler=counter), _AttachSkips(counter)]
        pipeline = wds.DataPipeline(*stages)
        quota = self.worker_quota(worker, workers)
        if quota is not None:
            pipeline = pipeline.with_epoch(quota)
        return pipeline

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return iter(self.pipeline(worker, workers))


# ------------------------------------------------------------------------------------------ command line
def build_parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="enclap-shards",
        description="Webdataset shards of captioned audio (LAION-CLAP's layout): write them from a manifest, check them.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="a caption manifest + its audio -> DIR/PREFIX-000000.tar ... and DIR/sizes.json")
    w.add_argument("manifest", help="caption manifest (file_path,caption or file_path,caption_1..N)")
    w.add_argument("audio_root", help="where the manifest's audio files are")
    w.add_argument("output_dir", help="directory of the shards")
    w.add_argument("--prefix", default="data", help="shard file names: PREFIX-%%06d.tar (default: data)")
    w.add_argument("--max-samples-per-shard", type=int, default=1000, help="default: 1000")
    w.add_argument("--max-shard-size", type=float, default=1e9, help="bytes per shard at most, roughly (default: 1e9)")
    w.add_argument("--skip-bad", action="store_true",
                   help="leave out clips whose audio is missing or unreadable (listed in sizes.json) instead of failing")
    w.add_argument("--overwrite", action="store_true", help="replace PREFIX-*.tar shards already in the directory")
    w.add_argument("--no-progress", action="store_true")
    c = sub.add_parser("check", help="read every sample of the shards; report every unreadable one; exit 1 if any")
    c.add_argument("shards", nargs="+", help="shard files or brace ranges, e.g. 'shards/data-{000000..000009}.tar'")
    c.add_argument("--no-decode", action="store_true", help="check tar, json and the audio member's presence only")
    c.add_argument("--report", help="also write the report as JSON to this file")
    c.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``enclap-shards write|check``; exit codes: 0 fine, 1 bad samples found (check), 2 bad input."""
    import sys

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.command == "write":
            result = write_shards(args.manifest, args.audio_root, args.output_dir, prefix=args.prefix,
                                  max_samples_per_shard=args.max_samples_per_shard, max_shard_size=args.max_shard_size,
                                  skip_bad=args.skip_bad, overwrite=args.overwrite, progress=not args.no_progress)
            first, last = result.shards[0].name, result.shards[-1].name
            pattern = f"{args.prefix}-{{{first[len(args.prefix) + 1:-4]}..{last[len(args.prefix) + 1:-4]}}}.tar"
            print(f"shards: wrote {result.samples} sample(s) into {len(result.shards)} shard(s): "
                  f"{Path(args.output_dir) / pattern}; sizes in {result.sizes_file}"
                  + (f"; left out {len(result.skipped)} clip(s) with bad audio (listed there)" if result.skipped else ""))
            return 0
        report = check_shards(args.shards, decode_audio=not args.no_decode, progress=not args.no_progress)
    except (EnclapError, OSError) as err:
        print(f"shards: error: {err}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(f"BAD {problem}")
    if args.report:
        Path(args.report).write_text(json.dumps(report.as_dict(), indent=1) + "\n")
    print(f"shards: {len(report.shards)} shard(s), {sum(report.samples.values())} good sample(s), "
          f"{len(report.problems)} problem(s)" + (f"; report: {args.report}" if args.report else ""))
    return 0 if report.ok else 1


__all__ = [
    "AUDIO_SUFFIXES",
    "BadSample",
    "SIZES_FILE",
    "SKIPPED_KEY",
    "ShardCheckReport",
    "ShardError",
    "ShardProblem",
    "ShardStream",
    "ShardWriteResult",
    "SkipCounter",
    "check_shards",
    "decode_sample_audio",
    "expand_shards",
    "read_shard_sizes",
    "sample_audio",
    "key_number",
    "sample_captions",
    "shard_captions",
    "tar_structure_problem",
    "main",
    "write_shards",
]


if __name__ == "__main__":
    raise SystemExit(main())
