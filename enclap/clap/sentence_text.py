"""A frozen Sentence-BERT text side for the CLAP tower, with caption embeddings computed once and cached.

The DCASE 2023 language-based retrieval baseline (task 6b) does not train a text encoder: every caption
goes once through Sentence-BERT (``all-mpnet-base-v2``), and only a linear projection of those fixed
vectors is learnt. A tower with ``text_encoder="sentence_transformers"`` does the same
(:mod:`enclap.clap.modeling`); this module holds its text machinery:

* :func:`load_sentence_transformer`: the model through the ``sentence-transformers`` package, from a hub
  id or a local directory (:func:`enclap.loading.load_pretrained`: a clear error when absent);
* :func:`sentence_encoder_identity`: a digest of what the model computes (its modules' description, maximum
  sequence length and every weight), so a cache entry is never reused for another model, whatever
  path or hub id named it;
* :func:`cached_sentence_embeddings`: the embeddings of a set of captions as a :class:`SentenceEmbeddingTable`,
  read from ``<cache_dir>/<identity>-<captions digest>.npy`` when present, else computed (on the main process
  only, the others wait for it) and written there atomically. The default cache directory is
  ``$ENCLAP_CACHE/sentence_embeddings`` (``~/.cache/enclap`` without ``ENCLAP_CACHE``): it is shared by
  every run, so a second run, a resumed run or another process reads the vectors instead of recomputing them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

CACHE_SUBDIR = "sentence_embeddings"


def default_cache_dir() -> Path:
    """``$ENCLAP_CACHE/sentence_embeddings``, or ``~/.cache/enclap/sentence_embeddings``."""
    root = os.environ.get("ENCLAP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "enclap")
    return Path(root) / CACHE_SUBDIR


def load_sentence_transformer(name_or_path: str, device: str | None = None) -> Any:
    """A ``sentence_transformers.SentenceTransformer`` from a hub id or a local directory, in eval mode."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:  # a declared dependency, but say what is missing if it is not there
        raise ConfigError("text_encoder=sentence_transformers needs the sentence-transformers package (pip install sentence-transformers)") from err
    from ..loading import load_pretrained

    model = load_pretrained(
        lambda path: SentenceTransformer(path, device=device or "cpu"), name_or_path,
        what="Sentence-BERT text encoder (model.text_weights)",
    )
    return model.eval()


def sentence_embedding_dimension(model: Any) -> int:
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        method = getattr(model, name, None)
        if method is not None and method() is not None:
            return int(method())
    raise ConfigError(f"cannot tell the embedding size of the Sentence-BERT model {model!r}")


def sentence_encoder_identity(model: Any) -> str:
    """A digest of the model's description and weights (what decides its output), 16 hex digits."""
    import torch

    hasher = hashlib.sha256()
    hasher.update(repr(model).encode("utf-8"))
    hasher.update(str(getattr(model, "max_seq_length", "")).encode("utf-8"))
    for name, tensor in sorted(model.state_dict().items()):
        hasher.update(name.encode("utf-8"))
        hasher.update(str(tuple(tensor.shape)).encode("utf-8"))
        data = tensor.detach().to("cpu").contiguous()
        if data.dtype == torch.bfloat16:
            data = data.float()
        hasher.update(data.numpy().tobytes())
    return hasher.hexdigest()[:16]


def encode_sentences(model: Any, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """``model.encode`` of ``texts`` as float32 ``(len(texts), dim)`` (no normalisation beyond the model's own)."""
    import torch

    if not texts:
        return np.zeros((0, sentence_embedding_dimension(model)), dtype=np.float32)
    with torch.inference_mode():
        vectors = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=progress)
    return np.asarray(vectors, dtype=np.float32)


def captions_digest(texts: Sequence[str]) -> str:
    hasher = hashlib.sha256()
    for text in texts:
        hasher.update(text.encode("utf-8"))
        hasher.update(b"\0")
    return hasher.hexdigest()[:16]


class SentenceEmbeddingTable:
    """Fixed sentence vectors of a set of distinct texts: ``vector(text)``, ``rows(texts)``, ``in`` tests."""

    def __init__(self, texts: Sequence[str], vectors: np.ndarray, *, identity: str = "", path: Path | None = None) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise ValueError(f"{len(texts)} texts but vectors of shape {vectors.shape}")
        self.texts = list(texts)
        self.vectors = vectors
        self.identity = identity
        self.path = path
        self._row = {text: i for i, text in enumerate(self.texts)}

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.texts)

    def __contains__(self, text: object) -> bool:
        return text in self._row

    def vector(self, text: str) -> np.ndarray:
        return self.vectors[self._row[text]]

    def rows(self, texts: Sequence[str]) -> np.ndarray:
        return self.vectors[[self._row[t] for t in texts]]


def _read_entry(path: Path, texts: list[str], dimension: int) -> np.ndarray | None:
    """The cached vectors at ``path`` if they are whole and belong to ``texts``; None otherwise (with the reason logged)."""
    sidecar = path.with_suffix(".json")
    try:
        info = json.loads(sidecar.read_text())
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        logger.warning("%s: unreadable cache entry (%s); computing it again", path, err)
        return None
    if info.get("texts") != texts or vectors.shape != (len(texts), dimension) or vectors.dtype != np.float32:
        logger.warning("%s: the cache entry does not match its captions or model (shape %s); computing it again", path, vectors.shape)
        return None
    return vectors


def cached_sentence_embeddings(
    model: Any,
    texts: Sequence[str],
    cache_dir: str | os.PathLike | None = None,
    *,
    accelerator: "Accelerator | None" = None,
    batch_size: int = 64,
    name: str = "",
    encode: Callable[..., np.ndarray] = encode_sentences,
) -> SentenceEmbeddingTable:
    """The sentence vectors of the distinct ``texts`` (sorted), from the cache or computed once; see the module docstring."""
    distinct = sorted(set(texts))
    identity = sentence_encoder_identity(model)
    dimension = sentence_embedding_dimension(model)
    directory = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = directory / f"{identity}-{captions_digest(distinct)}.npy"
    is_main = accelerator is None or accelerator.is_main_process
    if is_main:
        vectors = _read_entry(path, distinct, dimension) if path.is_file() else None
        if vectors is None:
            logger.info("embedding %d distinct captions with Sentence-BERT %s (cached in %s)", len(distinct), name or identity, path)
            vectors = encode(model, distinct, batch_size=batch_size, progress=True)
            directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
            with open(tmp, "wb") as fh:
                np.save(fh, vectors, allow_pickle=False)
            sidecar_tmp = tmp.with_suffix(".json")
            sidecar_tmp.write_text(json.dumps({"model": name, "identity": identity, "dimension": dimension, "texts": distinct},
                                              ensure_ascii=False))
            os.replace(sidecar_tmp, path.with_suffix(".json"))  # sidecar first: the .npy's presence means the pair is whole
            os.replace(tmp, path)
        else:
            logger.info("Sentence-BERT embeddings of %d captions read from %s", len(distinct), path)
    if accelerator is not None and accelerator.num_processes > 1:
        accelerator.wait_for_everyone()
        if not is_main:
            vectors = _read_entry(path, distinct, dimension)
            if vectors is None:
                raise ConfigError(f"{path}: the main process's Sentence-BERT cache entry cannot be read here (is {directory} shared by the processes?)")
    return SentenceEmbeddingTable(distinct, vectors, identity=identity, path=path)


__all__ = [
    "SentenceEmbeddingTable",
    "cached_sentence_embeddings",
    "default_cache_dir",
    "encode_sentences",
    "load_sentence_transformer",
    "sentence_embedding_dimension",
    "sentence_encoder_identity",
]
