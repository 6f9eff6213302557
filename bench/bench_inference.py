"""Benchmark: captioning from audio files end to end, and long recordings in bounded memory.

1. **Captions per second from files** (decode + resample + EnCodec + CLAP + generation): 64 ten-second
   clips (44.1 kHz FLAC) through ``CaptioningPipeline.caption_files`` at batch 1 and batch 32, with a
   bart-base-shaped captioner (6+6 layers, d_model 768, vocab 50265; random weights, as in
   bench_model.py) and the demo-scale random feature models (``enclap.features.random_models``, the
   ones ``make demo`` builds). A random captioner would end its captions at random lengths, so its
   end-of-caption token is disabled and every caption costs ``CAPTION_TOKENS`` tokens (beam 4): the
   figure is generation of captions of that length, not of what a trained model happens to say.
2. **Long recordings**: peak RSS (``VmHWM`` of the child process) and wall time of the CLI (``enclap-caption``) on a
   30 s, a 10-minute and a 60-minute 48 kHz recording in each mode (truncate, windows, timestamped) at the
   CLI's default ``--batch_size``, and in timestamped mode at other batch sizes, each in a fresh process, with a demo-scale captioner (cfg/demo.yaml's shape: 2+2 layers, d_model 128,
   encoder window 1021 frames = 13.6 s). The 60-minute file has 265 windows (530 with the windows mode's
   half-window hop); a bart-base captioner would take hours of CPU there, and memory is set by the
   audio path, not by the captioner's size (its weights are loaded once either way).

Audio is generated here (tones and noise, written block by block), under bench/.cache (git-ignored).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache" / "inference"
CAPTION_TOKENS = 20
MODES = ("truncate", "windows", "timestamped")
TRIM_REPEATS = 3  # runs with and without release_freed_memory: the untrimmed peak varies from run to run

_CHILD = """
import json, os, sys, time
import torch
torch.set_num_threads(1)
if os.environ.get("ENCLAP_BENCH_NO_TRIM") == "1":  # the comparison run: freed memory stays resident
    import enclap.allocator, enclap.pipeline
    enclap.allocator.release_freed_memory = enclap.pipeline.release_freed_memory = lambda: False
from enclap.jobs.caption import main
started = time.perf_counter()
code = main(sys.argv[1:])
# VmHWM is this process's own peak; ru_maxrss would include the benchmark process's (Linux carries the
# high-water mark over fork + exec).
peak = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print("BENCH", json.dumps({"code": code, "seconds": time.perf_counter() - started, "maxrss_kb": peak}))
"""


def _tokenizer():
    from enclap.text import train_caption_tokenizer

    words = "a dog barks while a car passes by and birds chirp in the distance as rain falls on a metal roof".split()
    rng = np.random.default_rng(0)
    return train_caption_tokenizer([" ".join(rng.choice(words, size=9)) for _ in range(300)], vocab_size=400)


def _captioner(shape: dict, tokenizer, *, never_end: bool):
    import torch

    from enclap.model import EnClapBartConfig, EnClapBartForConditionalGeneration

    config = EnClapBartConfig(
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0,
        forced_eos_token_id=2, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, **shape,
    )
    torch.manual_seed(0)
    model = EnClapBartForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Ids the small benchmark tokenizer cannot decode are never generated; the output layer keeps
        # bart-base's size (its cost is part of every generation step).
        model.final_logits_bias[0, len(tokenizer):] = -1e4
        if never_end:
            model.final_logits_bias[0, 2] = -1e4
    return model


BART_BASE = dict(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                 decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024)
DEMO = dict(d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=256, decoder_ffn_dim=256, max_position_embeddings=1024)


def _write_recording(path: Path, seconds: float, rate: int, seed: int) -> Path:
    """Tones changing every 10 s plus noise, written block by block (never held whole)."""
    import soundfile as sf

    if path.is_file() and sf.info(str(path)).duration == seconds:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    block = int(10 * rate)
    partial = path.with_name(path.name + ".partial.flac")
    with sf.SoundFile(str(partial), "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as f:
        for i in range(int(np.ceil(seconds * rate / block))):
            n = min(block, int(seconds * rate) - i * block)
            t = np.arange(n) / rate
            x = 0.3 * np.sin(2 * np.pi * (150.0 + 40.0 * rng.integers(0, 30)) * t) + 0.05 * rng.standard_normal(n)
            f.write(x.astype(np.float32))
    os.replace(partial, path)
    return path


def _throughput(models, clips: list[Path], batch_sizes: tuple[int, ...]) -> dict[int, float]:
    import torch

    from enclap.features.extractor import FeatureExtractor
    from enclap.pipeline import CaptioningPipeline, PipelineSettings

    tokenizer = _tokenizer()
    model = _captioner({**BART_BASE}, tokenizer, never_end=True)
    settings = PipelineSettings(encodec=str(models.encodec), clap=str(models.clap))
    settings.generation.max_length = CAPTION_TOKENS + 2  # BOS ... EOS around the caption's tokens
    seconds = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for batch in batch_sizes:
            features = FeatureExtractor.from_pretrained(str(models.encodec), str(models.clap), batch_size=batch, device="cpu")
            pipeline = CaptioningPipeline(model, tokenizer, features, settings=settings, device="cpu", batch_size=batch)
            pipeline.caption_files(clips[:1])  # warm-up (first-call allocations, batch-invariance checks)
            started = time.perf_counter()
            results = pipeline.caption_files(clips)
            seconds[batch] = time.perf_counter() - started
            assert all(r.caption for r in results)
    finally:
        torch.set_num_threads(previous)
    return seconds


def _demo_checkpoint(models, directory: Path) -> Path:
    from enclap.pipeline import CaptioningPipeline, PipelineSettings

    saved = directory / "pipeline.json"
    if (directory / "config.json").is_file() and saved.is_file():
        paths = json.loads(saved.read_text())
        # the settings name the audio models by absolute path: a cache made in another checkout is rebuilt
        if paths.get("encodec") == str(models.encodec) and paths.get("clap") == str(models.clap):
            return directory
    tokenizer = _tokenizer()
    model = _captioner({**DEMO, "vocab_size": len(tokenizer)}, tokenizer, never_end=False)
    settings = PipelineSettings(encodec=str(models.encodec), clap=str(models.clap))
    settings.generation.max_length = CAPTION_TOKENS + 2
    CaptioningPipeline(model, tokenizer, None, settings=settings, device="cpu").save_pretrained(directory)
    return directory


def cli_default_batch_size() -> int:
    """``enclap-caption``'s default ``--batch_size``: the long-recording table measures what a user runs."""
    from enclap.jobs.caption import build_parser

    return int(build_parser().get_default("batch_size"))


def _run_cli(checkpoint: Path, audio: Path, mode: str, out: Path, batch_size: int, *, trim: bool = True) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ENCLAP_BENCH_NO_TRIM": "0" if trim else "1"}
    args = [str(audio), "--ckpt", str(checkpoint), "--long_audio", mode, "--batch_size", str(batch_size), "--output", str(out)]
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0 or "BENCH" not in proc.stdout:
        raise RuntimeError(f"{mode} on {audio.name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.rsplit("BENCH", 1)[1])
    record = json.loads(out.read_text().splitlines()[0])
    result["windows"] = len(record.get("windows", [])) or None
    return result


def main(quick: bool = False) -> str:
    from enclap.features.random_models import save_random_feature_models
    from enclap.pipeline import TRIM_EVERY_WINDOWS

    CACHE.mkdir(parents=True, exist_ok=True)
    models = save_random_feature_models(CACHE / "models", seed=0, projection_dim=512)
    n_clips = 4 if quick else 64
    clips = [_write_recording(CACHE / "clips" / f"clip{i:02d}.flac", 10.0, 44100, seed=i) for i in range(n_clips)]
    batch_sizes = (1, 4) if quick else (1, 32)
    seconds = _throughput(models, clips, batch_sizes)

    lengths = {"30 s": 30.0, "10 min": 600.0, "60 min": 3600.0} if not quick else {"30 s": 30.0, "2 min": 120.0}
    recordings = {name: _write_recording(CACHE / f"recording_{int(s)}s_48k.flac", s, 48000, seed=99) for name, s in lengths.items()}
    checkpoint = _demo_checkpoint(models, CACHE / "demo_captioner")
    default_batch = cli_default_batch_size()
    runs: dict[tuple[str, str], dict] = {}
    for mode in MODES:
        for name, path in recordings.items():
            runs[mode, name] = _run_cli(checkpoint, path, mode, CACHE / f"out_{mode}_{path.stem}.jsonl", default_batch)
    # What release_freed_memory buys: windows mode on the longest file with and without it, alternating, several
    # times (without it the peak depends on how the heap happened to fragment: it varies from run to run).
    longest = recordings[list(recordings)[-1]]
    trim_runs: dict[bool, list[dict]] = {True: [], False: []}
    for repeat in range(1 if quick else TRIM_REPEATS):
        for trim in (False, True):
            trim_runs[trim].append(_run_cli(checkpoint, longest, "windows", CACHE / f"out_trim{int(trim)}_{repeat}_{longest.stem}.jsonl",
                                            default_batch, trim=trim))
    # The peak is set by the windows captioned together (a 30 s file fills a batch with 3): the same files in
    # timestamped mode at other batch sizes.
    other_batches = tuple(b for b in ((2, 8) if quick else (4, 8, 16)) if b != default_batch)
    first, last = list(recordings)[0], list(recordings)[-1]
    batch_runs = {(default_batch, name): runs["timestamped", name] for name in (first, last)}
    for b in other_batches:
        for name in (first, last):
            batch_runs[b, name] = _run_cli(checkpoint, recordings[name], "timestamped", CACHE / f"out_b{b}_{recordings[name].stem}.jsonl", b)

    import torch

    lines = [
        "### Inference from audio files (`CaptioningPipeline.caption_files`, `enclap-caption`)",
        "",
        f"**Captions per second from files** (decode + resample + EnCodec + CLAP + generation): {n_clips} clips of 10 s "
        f"(44.1 kHz FLAC); bart-base-shaped captioner (random weights, {CAPTION_TOKENS}-token captions, beam 4), demo-scale "
        "random EnCodec and fused CLAP; CPU, 1 torch thread, model loading excluded.",
        "",
        "| batch | seconds | captions/s | vs batch 1 |",
        "| ---: | ---: | ---: | ---: |",
    ]
    base = seconds[batch_sizes[0]]
    for batch in batch_sizes:
        lines.append(f"| {batch} | {seconds[batch]:.1f} | {n_clips / seconds[batch]:.2f} | {base / seconds[batch]:.2f}x |")
    names = list(recordings)
    lines += [
        "",
        f"**Long recordings, each run in a fresh process** (`enclap-caption --long_audio MODE --batch_size {default_batch}`, the CLI's "
        "default; 48 kHz FLAC, demo-scale captioner with the 13.6 s encoder window, random feature models, 1 torch thread): "
        "peak RSS (MiB) and wall time of the CLI's main (model loading included).",
        "",
        "| mode | " + " | ".join(f"{n} RSS | {n} time" for n in names) + f" | {names[-1]} / {names[0]} RSS |",
        "| --- | " + " | ".join("---: | ---:" for _ in names) + " | ---: |",
    ]
    for mode in MODES:
        cells = []
        for name in names:
            run = runs[mode, name]
            windows = f" ({run['windows']} windows)" if run["windows"] and run["windows"] > 1 else ""
            cells.append(f"{run['maxrss_kb'] / 1024:.0f} | {run['seconds']:.1f} s{windows}")
        ratio = runs[mode, names[-1]]["maxrss_kb"] / runs[mode, names[0]]["maxrss_kb"]
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    base = runs["windows", names[0]]["maxrss_kb"]

    def peaks(trim: bool) -> str:
        values = [r["maxrss_kb"] for r in trim_runs[trim]]
        seconds = sum(r["seconds"] for r in trim_runs[trim]) / len(values)
        return (" / ".join(f"{v / 1024:.0f}" for v in values) + f" MiB (max {max(values) / base:.2f}x the 30 s file), "
                f"{seconds:.1f} s on average")

    lines += [
        "",
        f"**Freed memory handed back** (`enclap.allocator.release_freed_memory`, glibc `malloc_trim`, every "
        f"{TRIM_EVERY_WINDOWS} windows of the whole-recording choice and after every generation batch): windows mode, "
        f"{names[-1]}, {len(trim_runs[True])} runs each, alternating: peak with it {peaks(True)}; without it {peaks(False)}.",
    ]
    lines += [
        "",
        f"**Peak RSS against `--batch_size`** (timestamped mode, the windows captioned together; same files and models, MiB):",
        "",
        f"| --batch_size | {first} | {last} | {last} / {first} |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for b in sorted({b for b, _ in batch_runs}):
        small, large = batch_runs[b, first]["maxrss_kb"], batch_runs[b, last]["maxrss_kb"]
        lines.append(f"| {b}{' (default)' if b == default_batch else ''} | {small / 1024:.0f} | {large / 1024:.0f} | {large / small:.2f}x |")
    lines += [
        "",
        "Memory is bounded by the window, not the file: `truncate` reads at most the first 30 s (`whole_clip_seconds`), "
        "`windows` and `timestamped` stream a long file window by window and keep only each window's codes and CLAP "
        "embedding (a few kB) for the whole-recording choice. The time of `windows` and `timestamped` grows with the "
        "number of windows, and the whole-recording choice scores every distinct window caption against every window "
        "(quadratic in the windows when, as with this random captioner, every window says something else). "
        "A long file's peak is reached with its first full batch of windows and grows with `--batch_size` (each window "
        "in a generation batch holds its encoder input and its beams' cross-attention cache), while a 30 s file never "
        "fills more than 3 windows: lower `--batch_size` to caption long recordings in less memory. "
        f"torch {torch.__version__}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(quick="--quick" in sys.argv))
