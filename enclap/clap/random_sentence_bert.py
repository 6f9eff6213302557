"""A tiny random-initialised Sentence-BERT directory, for offline runs and tests of the Sentence-BERT text side.

The DCASE 2023 baseline's text encoder is ``sentence-transformers/all-mpnet-base-v2`` from the model hub.
Where the hub cannot be reached (the CPU recipe ``cfg/clap/dcase2023_tiny.yaml``, the test suite) a run may
*explicitly* use this stand-in instead: a 1-layer BERT with random weights and a word-level vocabulary
drawn from the captions, mean-pooled, saved as an ordinary ``sentence-transformers`` directory
(``modules.json``, ``sentence_bert_config.json``, the BERT and its tokenizer), so it loads exactly as the
real model does. Its vectors tell different captions apart but hold nothing learned. The directory holds
``RANDOM_INIT.json`` saying how it was made.

    python -m enclap.clap.random_sentence_bert runs/demo/models/sbert-tiny runs/demo/data/csv/train.csv runs/demo/data/csv/valid.csv
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import ConfigError, ManifestError

MARKER_FILE = "RANDOM_INIT.json"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def caption_vocabulary(captions: Iterable[str]) -> list[str]:
    """BERT's special tokens, then every lower-cased word and punctuation mark of ``captions`` (sorted)."""
    words = set()
    for caption in captions:
        words.update(re.findall(r"\w+|[^\w\s]", caption.lower()))
    return [*SPECIAL_TOKENS, *sorted(words - set(SPECIAL_TOKENS))]


def save_random_sentence_bert(
    directory: str | os.PathLike, captions: Sequence[str], *, seed: int = 0, hidden_size: int = 32,
    max_seq_length: int = 64,
) -> Path:
    """Build and save the stand-in (see the module docstring); the same arguments write the same weights."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    try:  # sentence-transformers >= 6 moved the modules; older releases have them in .models
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # pragma: no cover - depends on the installed release
        from sentence_transformers.models import Pooling, Transformer

    if not captions:
        raise ConfigError("a random Sentence-BERT needs captions to draw its vocabulary from")
    directory = Path(directory).expanduser()
    bert_dir = directory.with_name(f".tmp-bert-{directory.name}")
    bert_dir.mkdir(parents=True, exist_ok=True)
    vocab_file = bert_dir / "vocab.txt"
    vocab = caption_vocabulary(captions)
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(str(vocab_file), do_lower_case=True)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=2 * hidden_size, max_position_embeddings=max_seq_length + 2)
    generator = torch.Generator().manual_seed(seed)
    model = BertModel(config).eval()  # (its pooler is unused by mean pooling; saved so the BERT loads whole)
    with torch.no_grad():  # every weight from the seed (the stock init leaves biases and norms at constants)
        for parameter in model.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(bert_dir)
    tokenizer.save_pretrained(bert_dir)
    transformer = Transformer(str(bert_dir), max_seq_length=max_seq_length)
    dimension = (transformer.get_embedding_dimension() if hasattr(transformer, "get_embedding_dimension")
                 else transformer.get_word_embedding_dimension())
    SentenceTransformer(modules=[transformer, Pooling(dimension, "mean")], device="cpu").save(str(directory))
    import shutil

    shutil.rmtree(bert_dir, ignore_errors=True)
    marker = {"random_init": True, "model": "Sentence-BERT (1-layer BERT, mean pooling)", "seed": int(seed),
              "hidden_size": hidden_size, "vocabulary": len(vocab),
              "note": "random weights: use sentence-transformers/all-mpnet-base-v2 for meaningful text embeddings"}
    (directory / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return directory


def main(argv: Sequence[str] | None = None) -> int:
    from ..data.manifest import read_manifest

    parser = argparse.ArgumentParser(prog="python -m enclap.clap.random_sentence_bert",
                                     description="Save a tiny random Sentence-BERT whose vocabulary covers the manifests' captions.")
    parser.add_argument("directory")
    parser.add_argument("manifests", nargs="+", help="caption manifests whose words form the vocabulary")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        captions = [c for path in args.manifests for clip in read_manifest(path) for c in clip.captions]
        path = save_random_sentence_bert(args.directory, captions, seed=args.seed, hidden_size=args.hidden_size)
    except (ConfigError, ManifestError, OSError) as err:
        print(f"random-sentence-bert: {err}", file=sys.stderr)
        return 2
    print(f"random Sentence-BERT (explicitly random weights) saved to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
