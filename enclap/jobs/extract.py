"""Feature extraction job: a manifest or an audio folder in, EnCodec codes + CLAP embeddings out.

The output is a :class:`~enclap.features.store.ShardedFeatureStore`. The job is

* **batched**: decoded clips are grouped ``batch_size`` at a time for the extractor; audio is decoded in
  a DataLoader with ``decode_workers`` processes while the models run;
* **distributed**: under ``accelerate launch`` or ``torchrun`` every process takes a fixed, disjoint part
  of the pending clips and writes its own shards (writer id ``rank<N>``); a single process needs no
  launcher. On CPU, launch two processes with
  ``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 data/extract_features.py ...``
  or ``torchrun --nproc_per_node 2 data/extract_features.py ...`` (``accelerate launch --cpu
  --num_processes 2`` silently runs one process);
* **resumable**: clips already committed to the store are skipped, so a killed run restarted with the
  same command does only what is missing. At most the last ``shard_size`` clips of each process (its
  uncommitted shard) are redone; SIGTERM and Ctrl-C commit them before exiting;
* **reproducible**: features do not depend on how clips are batched or split across processes. On CPU
  they can depend on the number of torch threads: a different summation order can flip a near-tie in
  EnCodec's nearest-codeword search (a handful of codes per thousand clips with the tiny test models).
  Runs meant to agree bit for bit should use the same ``threads`` per process (launchers set 1);
* **tolerant of bad files**: a file that cannot be decoded or embedded is recorded as (file, reason) and
  skipped; the good files of the same batch are kept. The run ends with a summary, writes
  ``<output>/failures.csv`` (empty apart from its header when nothing failed) and exits 1 if anything
  failed.

Exit codes of :func:`main`: 0 all done, 1 some files failed, 2 usage or configuration error (bad option,
missing input, unreadable manifest, model not found, store written with other settings), 130
interrupted.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import AudioError, ConfigError, ManifestError, PretrainedNotFoundError
from . import quiet_model_loading

logger = logging.getLogger(__name__)

FAILURES_FILE = "failures.csv"
CONFIG_FILE = "extract_config.yaml"
RUN_DIR = ".extract-run"  # per-process reports of the current run, merged and removed at its end

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps|xpu(:\d+)?)$")


@dataclass
class ExtractConfig:
    """Settings of one extraction run (``cfg/extract/default.yaml`` documents each)."""

    input: str = ""  # a manifest CSV (EnCLAP format) or a folder searched recursively for audio
    audio_root: str = ""  # where manifest file_paths point (required for a manifest)
    output: str = ""  # feature store directory (created; an existing store is resumed)
    encodec: str = "facebook/encodec_24khz"  # hub id or local directory
    clap: str = "laion/clap-htsat-fused"  # hub id or local directory
    bandwidth: float = 12.0  # EnCodec target bandwidth in kbps: 12.0 -> 16 codebooks
    batch_size: int = 16  # clips per extractor call
    device: str = "auto"  # auto = this process's CUDA device when available, else cpu
    max_seconds: float | None = None  # read at most this much of each file (None: whole file)
    shard_size: int = 256  # clips per committed shard: also the most a killed process redoes
    decode_workers: int = 2  # DataLoader processes decoding audio per extraction process (0: decode inline)
    threads: int = 0  # torch CPU threads per extraction process; 0 keeps the process's own (launchers set 1)
    progress: bool = True  # tqdm progress bar on the main process

    def validate(self) -> None:
        problems = []
        if not self.input:
            problems.append("input is required (a manifest CSV or an audio folder)")
        if not self.output:
            problems.append("output is required (the feature store directory)")
        if self.batch_size < 1:
            problems.append(f"batch_size must be at least 1, got {self.batch_size}")
        if self.shard_size < 1:
            problems.append(f"shard_size must be at least 1, got {self.shard_size}")
        if self.threads < 0:
            problems.append(f"threads must be 0 (keep) or more, got {self.threads}")
        if self.decode_workers < 0:
            problems.append(f"decode_workers must be 0 or more, got {self.decode_workers}")
        if self.bandwidth <= 0:
            problems.append(f"bandwidth must be positive, got {self.bandwidth}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            problems.append(f"max_seconds must be positive or null, got {self.max_seconds}")
        if not _DEVICE.match(self.device):
            problems.append(f"device must be auto, cpu, cuda, cuda:N, mps or xpu, got {self.device!r}")
        if not self.encodec:
            problems.append("encodec must name a model (hub id or local directory)")
        if not self.clap:
            problems.append("clap must name a model (hub id or local directory)")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class ExtractionSummary:
    """What a run did, over all its processes."""

    done: int  # clips extracted and committed by this run
    skipped_existing: int  # clips already in the store when the run started
    failed: list[tuple[str, str]]  # (file, reason), sorted by file
    seconds: float
    total: int = 0  # clips named by the input
    output: str = ""
    processes: int = 1
    process_index: int = 0  # which process returned this summary (all hold the same figures)

    @property
    def ok(self) -> bool:
        return not self.failed

    def format(self) -> str:
        lines = [
            f"Feature extraction into {self.output}: {self.total} clip(s) in the input; "
            f"{self.done} extracted, {self.skipped_existing} already stored, {len(self.failed)} failed "
            f"({self.seconds:.1f} s, {self.processes} process(es))."
        ]
        if self.failed:
            lines.append(f"Failed files (also in {Path(self.output) / FAILURES_FILE}):")
            shown = self.failed[:50]
            lines += [f"  {file}: {reason}" for file, reason in shown]
            if len(self.failed) > len(shown):
                lines.append(f"  ... and {len(self.failed) - len(shown)} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Item:
    key: str
    path: str


# --------------------------------------------------------------------------------------------- inputs


def list_inputs(config: ExtractConfig) -> tuple[list[_Item], list[tuple[str, str]]]:
    """The clips named by ``config.input`` as (key, audio path), and the entries that cannot be used.

    A manifest yields its clips in file order with keys from :func:`~enclap.data.manifest.clip_key`;
    entries whose audio is missing are failures. A folder yields its audio files in sorted order, keyed
    by their path relative to the folder without extension; a second file with the same key (``a.wav``
    next to ``a.flac``) is a failure. Every process computes the same lists.
    """
    from ..audio import find_audio_files
    from ..data.manifest import clip_key, read_manifest, resolve_audio_path

    source = Path(config.input).expanduser()
    items: list[_Item] = []
    failures: list[tuple[str, str]] = []
    if source.is_dir():
        seen: dict[str, str] = {}
        for path in find_audio_files(source):
            key = clip_key(path.relative_to(source).as_posix())
            if key in seen:
                failures.append((str(path), f"same clip key {key!r} as {seen[key]}; rename one of them"))
                continue
            seen[key] = str(path)
            items.append(_Item(key, str(path)))
        return items, failures
    if not source.is_file():
        raise ConfigError(f"input {str(source)!r} does not exist (expected a manifest CSV or an audio folder)")
    if not config.audio_root:
        raise ConfigError(
            f"input {str(source)!r} is a manifest: audio_root is required (the folder its file_paths are relative to)"
        )
    audio_root = Path(config.audio_root).expanduser()
    if not audio_root.is_dir():
        raise ConfigError(f"audio_root {str(audio_root)!r} is not a directory")
    for clip in read_manifest(source):
        try:
            path = resolve_audio_path(clip.file_path, audio_root)
        except AudioError as err:
            failures.append((err.path, err.reason))
            continue
        items.append(_Item(clip_key(clip.file_path), str(path)))
    return items, failures


class _DecodeDataset:
    """Audio decoding for a DataLoader: each item is decoded alone, so a bad file fails alone."""

    def __init__(self, items: Sequence[_Item], max_seconds: float | None) -> None:
        self.items = list(items)
        self.max_seconds = max_seconds

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from ..audio import load_audio

        item = self.items[index]
        try:
            samples, rate = load_audio(item.path, max_seconds=self.max_seconds)
        except AudioError as err:
            return {"item": item, "error": err.reason}
        except Exception as err:  # anything else a decoder may throw is still this file's problem
            return {"item": item, "error": f"cannot be decoded ({type(err).__name__}: {err})"}
        return {"item": item, "samples": samples, "rate": rate, "error": None}


def _keep_list(batch: list) -> list:
    return batch


# --------------------------------------------------------------------------------------------- running


def _make_state(device: str):
    """Accelerate's process state, CPU-only when the run is on CPU (else gloo is never set up on CPU)."""
    import torch
    from accelerate import PartialState

    env_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in {"1", "true", "yes"}
    if device == "auto":
        cpu = env_cpu or not torch.cuda.is_available()
    else:
        cpu = device == "cpu"
    state = PartialState(cpu=cpu)
    if cpu:
        return state, torch.device("cpu")
    if device in ("auto", "cuda"):
        return state, state.device  # this process's own GPU under a launcher
    return state, torch.device(device)


def _store_metadata(extractor) -> dict:
    return {"extractor": extractor.config_dict(), "num_codebooks": int(extractor.num_codebooks), "d_clap": int(extractor.d_clap)}


def _setting_differences(stored: Any, new: Any, prefix: str = "") -> tuple[list[str], list[str]]:
    """(settings whose values differ, settings present on one side only), as dotted names."""
    if isinstance(stored, dict) and isinstance(new, dict):
        changed, one_sided = [], []
        for key in sorted(set(stored) | set(new)):
            name = f"{prefix}{key}"
            if key not in stored or key not in new:
                one_sided.append(name)
                continue
            c, o = _setting_differences(stored[key], new[key], f"{name}.")
            changed += c
            one_sided += o
        return changed, one_sided
    if stored != new:
        return [f"{prefix.rstrip('.')}: stored {stored!r}, now {new!r}"], []
    return [], []


def _check_compatible(output: Path, metadata: dict) -> bool:
    """Refuse to resume a store made with other extractor settings; True when a store exists.

    A setting whose value differs is an error: features made both ways must not be mixed. A setting
    recorded on one side only (provenance added or dropped by a library update) is only logged.
    """
    from ..features.store import STORE_FILE, FeatureStoreError, ShardedFeatureStore

    if not (output / STORE_FILE).exists():
        return False
    stored = ShardedFeatureStore(output).metadata
    changed, one_sided = _setting_differences(stored, json.loads(json.dumps(metadata)))
    if changed:
        raise FeatureStoreError(
            f"{output}: the store was written with other extractor settings ({'; '.join(changed)}). "
            "Write to a new output directory, or use the settings it was made with."
        )
    if one_sided:
        logger.warning(
            "%s: settings recorded only in the store or only now (not compared): %s", output, ", ".join(one_sided)
        )
    return True


def _extract_batch(extractor, decoded: list[dict]) -> list[tuple[_Item, Any, str | None]]:
    """Extract a batch; if the batch fails, retry clip by clip so one bad clip loses only itself."""
    try:
        features = extractor.extract([(d["samples"], d["rate"]) for d in decoded])
        if len(features) != len(decoded):
            raise RuntimeError(f"extractor returned {len(features)} results for {len(decoded)} clips")
        return [(d["item"], f, None) for d, f in zip(decoded, features)]
    except Exception as err:
        if len(decoded) == 1:
            return [(decoded[0]["item"], None, f"feature extraction failed ({type(err).__name__}: {err})")]
        logger.warning("a batch of %d clips failed (%s: %s); retrying clip by clip", len(decoded), type(err).__name__, err)
    results = []
    for d in decoded:
        results += _extract_batch(extractor, [d])
    return results


def _write_rank_report(run_dir: Path, rank: int, report: dict) -> None:
    path = run_dir / f"rank{rank}.json"
    tmp = run_dir / f".rank{rank}.json.tmp"
    tmp.write_text(json.dumps(report))
    os.replace(tmp, path)


def _write_failures(path: Path, failures: list[tuple[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "reason"])
    writer.writerows(failures)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(tmp, path)


def read_failures(output: str | os.PathLike) -> list[tuple[str, str]]:
    """The (file, reason) rows of ``<output>/failures.csv`` written by the last run."""
    with open(Path(output) / FAILURES_FILE, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return [(row[0], row[1]) for row in rows[1:]]


def run_extraction(config: ExtractConfig, *, extractor=None) -> ExtractionSummary:
    """Extract features for every clip of ``config.input`` not yet in ``config.output``.

    Runs in every process of a launcher (or alone); returns the same summary, over all processes, in
    each. ``extractor`` replaces the one ``config`` would load (for callers that already hold one); it
    must expose ``extract``, ``config_dict``, ``num_codebooks`` and ``d_clap``.
    Raises :class:`ConfigError`, :class:`ManifestError`, :class:`PretrainedNotFoundError` or
    :class:`~enclap.features.store.FeatureStoreError` before any work when the run cannot start.
    """
    import torch

    started = time.monotonic()
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _run(config, extractor, started)
    finally:
        torch.set_num_threads(previous_threads)  # a library call must not change its caller's setting


def _run(config: ExtractConfig, extractor, started: float) -> ExtractionSummary:
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from ..config import save_config
    from ..features.store import ShardWriter, ShardedFeatureStore, STORE_FILE

    state, device = _make_state(config.device)
    rank, world = state.process_index, state.num_processes
    output = Path(config.output).expanduser()

    items, input_failures = list_inputs(config)
    if extractor is None:
        from ..features.extractor import FeatureExtractor

        extractor = FeatureExtractor.from_pretrained(
            config.encodec, config.clap, bandwidth=config.bandwidth, device=device, batch_size=config.batch_size
        )
    metadata = _store_metadata(extractor)
    store_exists = _check_compatible(output, metadata)

    # Every process reads the store before any process writes to it, so all compute the same pending
    # list and hence the same split.
    stored = set(ShardedFeatureStore(output).keys()) if (output / STORE_FILE).exists() else set()
    pending = [item for item in items if item.key not in stored]
    skipped_existing = len(items) - len(pending)
    mine = pending[rank::world]  # round robin: every process gets a similar mix of the input order
    run_dir = output / RUN_DIR
    if state.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        run_dir.mkdir(exist_ok=True)
        for stale in run_dir.glob("*"):  # reports of a killed earlier run
            stale.unlink()
        save_config(config, output / CONFIG_FILE)
    state.wait_for_everyone()

    failures: list[tuple[str, str]] = []
    # An existing store's settings were compared above (leniently); a new one records this run's.
    writer = ShardWriter(
        output, writer_id=f"rank{rank}", shard_size=config.shard_size, metadata=None if store_exists else metadata
    )
    logged_shards = 0

    def log_commits() -> None:
        nonlocal logged_shards
        for name in writer.shards_written[logged_shards:]:
            logger.info("process %d committed shard %s", rank, name)
        logged_shards = len(writer.shards_written)

    progress = tqdm(
        total=len(mine),
        desc=f"extracting (process 1 of {world})" if world > 1 else "extracting",
        unit="clip",
        disable=not (config.progress and state.is_main_process),
        file=sys.stderr,
        dynamic_ncols=True,
    )
    loader = DataLoader(
        _DecodeDataset(mine, config.max_seconds),
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=config.decode_workers if mine else 0,
        collate_fn=_keep_list,
        # Each worker decodes whole files; a few batches in flight keep the extractor busy.
        prefetch_factor=2 if config.decode_workers > 0 and mine else None,
    )
    try:
        with torch.inference_mode():
            for batch in loader:
                decoded = []
                for entry in batch:
                    if entry["error"] is not None:
                        failures.append((entry["item"].path, entry["error"]))
                    else:
                        decoded.append(entry)
                if decoded:
                    for item, features, error in _extract_batch(extractor, decoded):
                        if error is None:
                            try:
                                writer.add(item.key, features)
                            except ValueError as err:  # features the store refuses (NaN embedding, ...)
                                error = f"unusable features ({err})"
                            log_commits()
                        if error is not None:
                            failures.append((item.path, error))
                progress.update(len(batch))
    finally:
        progress.close()
        writer.close()  # commits the last partial shard, also when interrupted
        log_commits()

    _write_rank_report(run_dir, rank, {"done": writer.clips_written, "failed": failures})
    state.wait_for_everyone()
    done = 0
    all_failures = list(input_failures)
    for r in range(world):
        report = json.loads((run_dir / f"rank{r}.json").read_text())
        done += int(report["done"])
        all_failures += [tuple(f) for f in report["failed"]]
    all_failures.sort()
    # Everyone has read the reports before the main process removes them.
    state.wait_for_everyone()
    if state.is_main_process:
        _write_failures(output / FAILURES_FILE, all_failures)
        for report_file in run_dir.glob("*"):
            report_file.unlink()
        run_dir.rmdir()
    # No process leaves before failures.csv exists: a launcher stops the others as soon as one exits.
    state.wait_for_everyone()
    return ExtractionSummary(
        done=done,
        skipped_existing=skipped_existing,
        failed=all_failures,
        seconds=time.monotonic() - started,
        total=len(items) + len(input_failures),
        output=str(output),
        processes=world,
        process_index=rank,
    )


# --------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="extract_features",
        description=(
            "Extract EnCodec codes and CLAP embeddings for a manifest or an audio folder into a sharded feature "
            "store. Resumable: rerun the same command to finish an interrupted run. Bad files are listed in "
            "<output>/failures.csv and the exit code is 1 when any file failed. Multi-process: "
            "`accelerate launch [--multi_gpu] --num_processes N data/extract_features.py ...` or "
            "`torchrun --nproc_per_node N data/extract_features.py ...` (on CPU set ACCELERATE_USE_CPU=true "
            "with accelerate's --multi_gpu)."
        ),
        epilog="Settings are applied in order: defaults < --config YAML < key=value overrides < the options above.",
    )
    parser.add_argument("--config", help="YAML settings file (e.g. cfg/extract/default.yaml)")
    parser.add_argument("--input", help="manifest CSV (EnCLAP format) or audio folder")
    parser.add_argument("--audio-root", dest="audio_root", help="folder the manifest file_paths are relative to")
    parser.add_argument("--output", help="feature store directory")
    parser.add_argument("--encodec", help="EnCodec model: hub id or local directory")
    parser.add_argument("--clap", help="CLAP model: hub id or local directory")
    parser.add_argument("--bandwidth", type=float, help="EnCodec bandwidth in kbps (12.0 -> 16 codebooks)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, help="clips per extractor call")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--max-seconds", dest="max_seconds", type=float, help="read at most this much of each file")
    parser.add_argument("--shard-size", dest="shard_size", type=int, help="clips per committed shard")
    parser.add_argument("--decode-workers", dest="decode_workers", type=int, help="audio decoding processes")
    parser.add_argument("--threads", type=int, help="torch CPU threads per process (0: keep)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings overrides, e.g. batch_size=32")
    return parser


@dataclass
class _UncheckedExtractConfig(ExtractConfig):
    """The same schema without :meth:`validate`, so that options can still fill required keys."""

    def validate(self) -> None:
        pass


# Errors about unknown keys name the schema class; users know it as ExtractConfig.
_UncheckedExtractConfig.__name__ = _UncheckedExtractConfig.__qualname__ = "ExtractConfig"


def config_from_args(args: argparse.Namespace) -> ExtractConfig:
    """Defaults < ``--config`` YAML < ``key=value`` overrides < explicit options, validated once at the end."""
    from ..config import load_config

    loaded = load_config(_UncheckedExtractConfig, args.config, list(args.overrides))
    values = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(ExtractConfig)}
    values.update(
        {name: getattr(args, name) for name in values if getattr(args, name, None) is not None}
    )
    config = ExtractConfig(**values)
    try:
        config.validate()
    except ValueError as err:
        where = args.config or "defaults"
        raise ConfigError(f"{where} + command line: {err}") from err
    return config


class _Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception so that ``finally`` blocks commit finished work."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the process exit code (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, message already printed)
        return int(exit_.code or 0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quiet_model_loading()
    try:
        config = config_from_args(args)
    except ConfigError as err:
        print(f"extract_features: configuration error: {err}", file=sys.stderr)
        return 2
    from ..features.store import FeatureStoreError

    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        summary = run_extraction(config)
    except (ConfigError, ManifestError, PretrainedNotFoundError, FeatureStoreError) as err:
        print(f"extract_features: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("extract_features: interrupted; finished clips are committed, rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    from ..training.distributed import end_process_group

    end_process_group()
    if summary.process_index != 0:
        # The main process reports and carries the exit code; a non-zero exit here would make the
        # launcher stop the main process before it has printed the summary.
        return 0
    print(summary.format(), flush=True)
    return 0 if summary.ok else 1


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


__all__ = ["ExtractConfig", "ExtractionSummary", "list_inputs", "main", "read_failures", "run_extraction"]


if __name__ == "__main__":
    raise SystemExit(main())
