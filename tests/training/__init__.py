"""Training tests; this module also holds the small factories they share (and tests/data/test_dataset.py uses).

Everything is tiny and written by the tests themselves: a feature store of random EnCodec codes with a
few dozen frames per clip, manifests of short captions, and a random-initialised captioner of width 32.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

WORDS = ["a", "dog", "barks", "car", "passes", "bird", "sings", "loud", "soft", "rain", "falls", "bell", "rings", "twice", "and", "then"]
CODEBOOK_SIZE = 1024


def caption_for(index: int, variant: int = 0) -> str:
    """A short caption that differs between clips (and between a clip's references)."""
    rng = np.random.default_rng([index, variant])
    return " ".join(rng.choice(WORDS, size=3 + (index + variant) % 4))


def random_clip(rng: np.random.Generator, frames: int, num_codebooks: int = 16, d_clap: int = 16) -> tuple[np.ndarray, np.ndarray]:
    codes = rng.integers(0, CODEBOOK_SIZE, size=(frames, num_codebooks)).astype(np.int16)
    clap = rng.standard_normal(d_clap).astype(np.float32)
    return codes, clap / np.linalg.norm(clap)


def write_store(root: Path, clips: dict[str, tuple[np.ndarray, np.ndarray]], *, metadata: dict | None = None) -> Path:
    """A sharded feature store holding ``clips`` (key -> (codes, clap))."""
    from enclap.features.extractor import ClipFeatures
    from enclap.features.store import ShardWriter

    with ShardWriter(root, shard_size=8, metadata=metadata) as writer:
        for key, (codes, clap) in clips.items():
            writer.add(key, ClipFeatures(codes=codes, clap=clap))
    return root


def write_train_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_path", "caption"])
        writer.writerows(rows)
    return path


def write_eval_csv(path: Path, rows: list[tuple[str, list[str]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    width = max(len(caps) for _, caps in rows)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_path"] + [f"caption_{i + 1}" for i in range(width)])
        for file_path, caps in rows:
            writer.writerow([file_path, *caps])
    return path


STORE_METADATA = {
    "extractor": {
        "codec": {"model": "tiny/encodec", "bandwidth": 12.0, "codebook_size": CODEBOOK_SIZE, "num_codebooks": 16},
        "clap": {"model": "tiny/clap", "dim": 16},
    },
    "num_codebooks": 16,
    "d_clap": 16,
}


def make_feature_set(
    root: Path,
    *,
    num_train: int = 16,
    num_val: int = 4,
    captions_per_clip: int = 2,
    frames: tuple[int, int] = (20, 60),
    num_codebooks: int = 16,
    d_clap: int = 16,
    seed: int = 0,
) -> dict[str, Path]:
    """A store with train/ and valid/ clips, a training manifest (several captions per clip) and an eval manifest."""
    rng = np.random.default_rng(seed)
    clips = {}
    train_rows, val_rows = [], []
    for i in range(num_train):
        key = f"train/clip_{i:03d}"
        clips[key] = random_clip(rng, int(rng.integers(*frames)), num_codebooks, d_clap)
        train_rows += [(f"{key}.npy", caption_for(i, v)) for v in range(captions_per_clip)]
    for i in range(num_val):
        key = f"valid/clip_{i:03d}"
        clips[key] = random_clip(rng, int(rng.integers(*frames)), num_codebooks, d_clap)
        val_rows.append((f"{key}.npy", [caption_for(1000 + i, v) for v in range(3)]))
    metadata = None if (num_codebooks, d_clap) != (16, 16) else STORE_METADATA
    return {
        "store": write_store(root / "store", clips, metadata=metadata),
        "train_csv": write_train_csv(root / "csv" / "train.csv", train_rows),
        "val_csv": write_eval_csv(root / "csv" / "valid.csv", val_rows),
    }


def tiny_overrides(files: dict[str, Path], output: Path, **extra) -> list[str]:
    """``key=value`` overrides for a tiny random-initialised run over ``files`` (see make_feature_set)."""
    values = {
        "output_dir": output,
        "seed": 7,
        "data.train_file": files["train_csv"],
        "data.validation_file": files["val_csv"],
        "data.features": files["store"],
        "data.max_target_length": 16,
        "data.encodec_masking_prob": 0.15,
        "data.encodec_masking_span": 3,
        "model.init": "random",
        "model.d_model": 32,
        "model.encoder_layers": 1,
        "model.decoder_layers": 1,
        "model.attention_heads": 4,
        "model.ffn_dim": 64,
        "model.max_position_embeddings": 48,  # 45 frames: longer clips are cropped
        "model.dropout": 0.0,
        "model.attention_dropout": 0.0,
        "model.activation_dropout": 0.0,
        "tokenizer.train_from_captions": "true",
        "tokenizer.vocab_size": 300,
        "validation.val_max_target_length": 16,  # the decoder has 48 positions
        "train.num_train_epochs": 2,
        "train.train_batch_size": 4,  # global
        "train.per_device_eval_batch_size": 4,
        "train.mixed_precision": "no",
        "validation.metrics": "[]",  # the validation loss only, unless a test asks for caption metrics
        "train.learning_rate": 3e-3,
        "train.lr_scheduler_type": "constant_with_warmup",
        "train.num_warmup_steps": 0,
        "train.report_to": "none",
        "train.dataloader_num_workers": 0,
        "train.progress": "false",
        "train.logging_steps": 1,
        "train.checkpoints_total_limit": 0,
    }
    values.update(extra)
    # An empty value is written '' (a bare "key=" means null to OmegaConf).
    return [f"{key}={value if value != '' else repr('')}" for key, value in values.items()]
