"""The text side of CLAP: sentences -> L2-normalised embeddings in the audio embeddings' space.

CLAP embeds audio and text into one space, so a sentence can be compared with a sound by cosine
similarity. Two uses here: **zero-shot tags** (a recording's similarity to ``"This is a sound of
{label}."`` for every label of a list, LAION's zero-shot recipe) and **text-to-audio search**
(:mod:`enclap.search`).

:class:`TextEmbedder` is what those need from any CLAP text tower; :class:`ClapTextEmbedder` implements
it over transformers' :class:`ClapModel` (a hub id, a ``save_pretrained`` directory, or a LAION
checkpoint converted by :mod:`enclap.clap.convert`). :func:`load_text_embedder` is the one loader the
command line and the web demo call, so another tower (the project's own CLAP) plugs in there.

Tokenisation follows LAION's ``CLAP_Module``: RoBERTa's tokenizer, truncation to 77 tokens, padded to
that length. Padding to a fixed length also makes every forward the same shape, so a sentence's
embedding does not depend on the other sentences of its batch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import ConfigError, PretrainedNotFoundError

if TYPE_CHECKING:
    import torch
    from transformers import ClapModel, PreTrainedTokenizerBase

    from .clap_embed import ClapAudioEmbedder

logger = logging.getLogger(__name__)

# LAION's CLAP_Module tokenises with roberta-base, max_length 77.
LAION_TEXT_TOKENIZER = "FacebookAI/roberta-base"
LAION_TEXT_MAX_LENGTH = 77
DEFAULT_PROMPT = "This is a sound of {}."
RESOURCE_PACKAGE = "enclap.resources"
DEFAULT_LABELS_FILE = "esc50_labels.txt"


@runtime_checkable
class TextEmbedder(Protocol):
    """What zero-shot tagging and search need from a CLAP text tower."""

    dimension: int

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), dimension)`` float32, each row L2-normalised, in the audio embeddings' space."""
        ...


class ClapTextEmbedder:
    """:class:`TextEmbedder` over the text tower of a transformers :class:`ClapModel`.

    ``model`` may be the very object an audio embedder holds (:meth:`from_audio_embedder`): the two
    towers then share one copy of the weights.
    """

    def __init__(
        self,
        model: "ClapModel",
        tokenizer: "PreTrainedTokenizerBase",
        device: "str | torch.device" = "cpu",
        *,
        batch_size: int = 32,
        max_length: int = LAION_TEXT_MAX_LENGTH,
        name_or_path: str = "",
    ) -> None:
        import torch

        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        vocab = int(model.config.text_config.vocab_size)
        if len(tokenizer) > vocab:
            raise ConfigError(
                f"CLAP text tokenizer has {len(tokenizer)} tokens but the text tower of '{name_or_path}' only "
                f"{vocab}: they do not belong together"
            )
        # RoBERTa positions start after the padding index, so two positions are never used by tokens.
        positions = int(model.config.text_config.max_position_embeddings) - 2
        self.max_length = min(int(max_length), positions)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.dimension = int(model.config.projection_dim)
        self.name_or_path = name_or_path or str(getattr(model.config, "_name_or_path", "") or "")
        # CLAP's learned temperature for text-vs-audio logits (LAION: logit_scale_a on audio @ text.T)
        self.logit_scale = float(model.logit_scale_a.detach().exp().cpu()) if hasattr(model, "logit_scale_a") else 100.0

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        device: "str | torch.device" = "cpu",
        tokenizer: str | os.PathLike | None = None,
        batch_size: int = 32,
    ) -> "ClapTextEmbedder":
        """From a hub id, a ``save_pretrained`` directory, or a LAION ``.pt``/``.ckpt`` checkpoint.

        The tokenizer comes from ``tokenizer`` when given, else from the model directory / hub repo, else
        (a LAION checkpoint) RoBERTa-base's, which LAION's CLAP uses.
        """
        from transformers import ClapModel

        from ..loading import load_pretrained
        from .clap_embed import is_laion_checkpoint

        name = str(name_or_path)
        if is_laion_checkpoint(name):
            from ..clap.convert import load_laion_clap

            model = load_laion_clap(name, device="cpu")
        else:
            model = load_pretrained(ClapModel.from_pretrained, name, what="CLAP model")
        model.config._name_or_path = name
        return cls(model, load_clap_tokenizer(name, tokenizer, model), device=device, batch_size=batch_size, name_or_path=name)

    @classmethod
    def from_audio_embedder(
        cls, audio: "ClapAudioEmbedder", *, tokenizer: str | os.PathLike | None = None, batch_size: int = 32
    ) -> "ClapTextEmbedder":
        """The text tower of the model ``audio`` already holds (no second copy of the weights)."""
        name = audio.name_or_path
        return cls(audio.model, load_clap_tokenizer(name, tokenizer, audio.model), device=audio.device,
                   batch_size=batch_size, name_or_path=name)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        texts = [str(t) for t in texts]
        empty = [i for i, t in enumerate(texts) if not t.strip()]
        if empty:
            raise ValueError(f"text {empty[0]} is empty: nothing to embed")
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            part = texts[start : start + self.batch_size]
            batch = self.tokenizer(part, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                features = self.model.get_text_features(
                    input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device)
                )
            # transformers 5 returns a model output whose pooler_output is the normalised projection
            features = getattr(features, "pooler_output", features)
            out[start : start + len(part)] = torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()
        return out

    def config_dict(self) -> dict[str, Any]:
        return {"model": self.name_or_path, "dim": self.dimension, "max_length": self.max_length, "normalized": True}


def load_clap_tokenizer(
    name_or_path: str, tokenizer: str | os.PathLike | None, model: "ClapModel"
) -> "PreTrainedTokenizerBase":
    """The text tokenizer of a CLAP: ``tokenizer`` if given, the model's own, or (LAION checkpoint) RoBERTa-base.

    The project's random-initialised CLAPs (:mod:`enclap.features.random_models`) have a toy text tower
    with a tiny vocabulary; one saved without a tokenizer gets :func:`character_tokenizer`, which is
    the tokenizer made for such towers (their text embeddings are as random as their weights).
    """
    from transformers import AutoTokenizer

    from ..loading import load_pretrained
    from ..text import has_tokenizer_files
    from .clap_embed import is_laion_checkpoint
    from .random_models import is_random_model_dir

    what = f"CLAP text tokenizer of '{name_or_path}'"
    if tokenizer is not None:
        return load_pretrained(AutoTokenizer.from_pretrained, str(tokenizer), what=what)
    local = Path(name_or_path).expanduser()
    if is_laion_checkpoint(name_or_path):
        return load_pretrained(
            AutoTokenizer.from_pretrained, LAION_TEXT_TOKENIZER, what=what,
            how_to_get="LAION's CLAP tokenises with RoBERTa-base; pass its directory as the tokenizer.",
        )
    if local.is_dir():
        if has_tokenizer_files(local):
            return load_pretrained(AutoTokenizer.from_pretrained, str(local), what=what)
        if is_random_model_dir(local):
            logger.info("%s: random-initialised CLAP without a tokenizer; using the character tokenizer", local)
            return character_tokenizer(int(model.config.text_config.vocab_size))
        raise PretrainedNotFoundError(
            f"{local}: this CLAP directory has no text tokenizer (tokenizer.json / vocab.json), so its text tower "
            "cannot be used; pass one (e.g. a roberta-base directory) as the tokenizer"
        )
    return load_pretrained(AutoTokenizer.from_pretrained, name_or_path, what=what)


def character_tokenizer(vocab_size: int) -> "PreTrainedTokenizerFast":  # noqa: F821
    """A RoBERTa-layout tokenizer (``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3) over single characters.

    For random-initialised CLAP text towers whose vocabulary is far smaller than RoBERTa's: lower-case
    letters, digits, space and a little punctuation, cut to ``vocab_size`` entries. Deterministic.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    alphabet = list("abcdefghijklmnopqrstuvwxyz ") + list("0123456789.,'-!?")
    vocab = {token: i for i, token in enumerate((specials + alphabet)[: int(vocab_size)])}
    if len(vocab) <= len(specials):
        raise ConfigError(f"a character tokenizer needs vocab_size > {len(specials)}, got {vocab_size}")
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def load_text_embedder(
    spec: str | os.PathLike, device: "str | torch.device" = "cpu", *, tokenizer: str | os.PathLike | None = None
) -> TextEmbedder:
    """The text tower of the CLAP named by ``spec``: a tower trained by this project (``enclap-train-clap``'s
    export), a hub id or HF ``ClapModel`` directory, or a LAION checkpoint.

    The one place the command line and the web demo get a text tower from: another CLAP
    implementation is added here.
    """
    from ..clap.embedder import ClapTowerEmbedder, is_clap_tower_dir

    if is_clap_tower_dir(spec):
        if tokenizer is not None:
            raise ConfigError(f"{spec}: a project CLAP tower carries its own tokenizer; drop --tokenizer")
        return ClapTowerEmbedder.from_pretrained(spec, device=device)
    return ClapTextEmbedder.from_pretrained(spec, device=device, tokenizer=tokenizer)


def text_embedder_for(audio: Any, *, tokenizer: str | os.PathLike | None = None) -> TextEmbedder:
    """The text tower that goes with an audio embedder, sharing its weights: the embedder itself when it has
    one (a project CLAP tower), else the text half of the HF ``ClapModel`` it holds."""
    if hasattr(audio, "embed_texts"):
        return audio
    return ClapTextEmbedder.from_audio_embedder(audio, tokenizer=tokenizer)


# ----------------------------------------------------------------------------------------- zero-shot


def read_labels(path: str | os.PathLike | None = None) -> list[str]:
    """Labels, one per line (blank lines and ``#`` comments skipped); ``None`` = the 50 ESC-50 classes."""
    if path is None:
        from importlib.resources import files

        text = files(RESOURCE_PACKAGE).joinpath(DEFAULT_LABELS_FILE).read_text(encoding="utf-8")
        source = f"{RESOURCE_PACKAGE}/{DEFAULT_LABELS_FILE}"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot read the label list ({err})") from err
        source = str(path)
    labels = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not labels:
        raise ConfigError(f"{source}: no labels (one per line)")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(f"{source}: duplicate label(s) {duplicates}")
    return labels


class ZeroShotTagger:
    """Tags of a recording: cosine of its CLAP audio embedding with a prompt made of every label.

    ``probabilities`` are the softmax over labels of ``temperature`` x cosine (CLAP's own logit scale
    by default), as LAION computes zero-shot classification; ``scores`` are the cosines.
    """

    def __init__(
        self,
        text: TextEmbedder,
        labels: Sequence[str],
        *,
        prompt: str = DEFAULT_PROMPT,
        temperature: float | None = None,
    ) -> None:
        if "{}" not in prompt:
            raise ConfigError(f"the prompt template must contain '{{}}' where the label goes, got {prompt!r}")
        self.labels = list(labels)
        if not self.labels:
            raise ConfigError("no labels to tag with")
        self.prompt = prompt
        self.temperature = float(temperature if temperature is not None else getattr(text, "logit_scale", 100.0))
        self.label_embeddings = text.embed_texts([prompt.format(label) for label in self.labels])

    def scores(self, audio_embeddings: np.ndarray) -> np.ndarray:
        """Cosines ``(n, labels)`` of ``(n, dim)`` (or ``(dim,)``) L2-normalised audio embeddings."""
        audio = np.atleast_2d(np.asarray(audio_embeddings, dtype=np.float32))
        if audio.shape[1] != self.label_embeddings.shape[1]:
            raise ConfigError(
                f"audio embeddings have {audio.shape[1]} dimensions but the text tower gives "
                f"{self.label_embeddings.shape[1]}: they come from different CLAP models"
            )
        return audio @ self.label_embeddings.T

    def tag(self, audio_embedding: np.ndarray, top: int = 5) -> list[tuple[str, float, float]]:
        """The ``top`` labels of one recording as ``(label, cosine, probability)``, best first."""
        cosines = self.scores(audio_embedding)[0].astype(np.float64)
        logits = self.temperature * cosines
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        order = np.argsort(-cosines, kind="stable")[: max(1, int(top))]
        return [(self.labels[i], float(cosines[i]), float(probabilities[i])) for i in order]


__all__ = [
    "ClapTextEmbedder",
    "DEFAULT_PROMPT",
    "TextEmbedder",
    "ZeroShotTagger",
    "character_tokenizer",
    "load_clap_tokenizer",
    "load_text_embedder",
    "text_embedder_for",
    "read_labels",
]
