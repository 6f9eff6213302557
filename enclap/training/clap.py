"""The CLAP tower as a :class:`~enclap.training.loop.TrainingTask`: contrastive training on captioned audio.

**Data.** :class:`ClapTrainDataset` reads a caption manifest (either layout; one clip, several captions)
and decodes the audio in the DataLoader workers (``enclap.audio.load_audio``, resampled to the tower's
rate). Item ``(epoch, index)`` draws from ``example_rng(seed, epoch, index)`` alone: which of the
clip's captions it is paired with this epoch, and the crop of a clip longer than the window (or the
fusion crops of an HTS-AT fusion tower); clips shorter than the window are repeat-padded. A resumed
run therefore sees exactly the pairs an uninterrupted one would.

**Student training** (Wang et al., 2023, "Unsupervised Improvement of Audio-Text Cross-Modal
Representations", arXiv:2305.01864; docs/recipes/unsupervised.md): the annotated ("replay") clips are
subsampled to ``subset_pct`` percent (:func:`annotated_subset`, fixed by the seed) and each item is, with
probability ``curation_prob``, a curated pair drawn uniformly from the curated manifest instead. The paper's
code (zhepeiw/clap_curation, ``fit_batch``) swaps whole batches with that probability; here the swap is per
item, as the issue asks, and both draws come from ``example_rng`` so a resumed run still sees exactly
the pairs an uninterrupted one would. Optionally the loss uses SoftCLAP targets
(:func:`~enclap.clap.loss.softclap_targets`) from a frozen teacher's caption embeddings or the model's own.

**Frozen Sentence-BERT text side** (a tower of ``text_encoder="sentence_transformers"``, the DCASE 2023
baseline): the captions' sentence vectors are computed once (:mod:`enclap.clap.sentence_text`, cached on
disk) and given as ``sentence_table``; the training items then carry ``sentence_embeddings`` (the vector
of the caption drawn, by the same draw as the tokenized path) instead of token ids, and only the text
projection is trained. Validation reads the validation captions' vectors from the same table.

**Loss in the loop's sum contract.** The module returns one term, the symmetric InfoNCE of the batch
(:class:`~enclap.clap.loss.ClipLoss` with features gathered across processes), and ``counts`` is 1
per batch: a contrastive loss is not a sum over items (every pair's term depends on every other pair
of the batch), so it cannot be split into per-item sums that add up across micro-batches. With count 1
the loop's step loss is the mean of the micro-batch losses, and its gradient scaling (weight / global
count x processes, then DDP's average) gives each process ``1 / accumulation`` of its loss: with
gradients flowing through the gather, the averaged gradient is exactly that of the global-batch loss.
Every trainable parameter is tied into the loss with weight 0 (``0 * p.sum()``): an HTS-AT fusion
branch is unused by batches without long clips, and DDP refuses parameters that get no gradient.

**Fusion limit.** An HTS-AT fusion tower trains its fusion block with batch norm over pooled values: a
batch holding exactly one clip longer than the window cannot be normalised in training mode (as in
LAION's code); batches of clips all within the window, or with several long ones, train normally.

**Validation** is retrieval, not a loss: :func:`retrieval_validation` embeds the validation clips and all
their captions and reports R@1/5/10 and mAP@10 both ways (:func:`enclap.clap.evaluation.retrieval_metrics`),
as ``val_<name>``; the best checkpoint is picked by ``val_mAP@10`` (text-to-audio, DCASE's figure) by
default. There is no validation loss: an in-batch contrastive loss depends on how clips are grouped
into batches, and the loop's sharded validation would run the gathering loss on unequal numbers of
batches per process.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from ..clap.embedder import tower_audio_input
from ..clap.loss import ClipLoss, softclap_targets
from ..errors import ConfigError
from .loop import LossTerms, TrainingTask

if TYPE_CHECKING:
    from .contract import ValidationContext
    from .distributed import BatchGeometry
    from accelerate import Accelerator

    from ..clap.modeling import ClapTowerModel

logger = logging.getLogger(__name__)

# The stream tag keeps the validation crops apart from the training examples' generators.
VALIDATION_STREAM = 0xC1A9
SUBSET_STREAM = 0x5B5E7  # the annotated subset of student training (subset_pct)


class ClapAudioSource:
    """Clips of a manifest with their captions and audio files (resolved and checked up front)."""

    def __init__(self, manifest: str | os.PathLike, audio_root: str | os.PathLike) -> None:
        from ..data.manifest import read_manifest, resolve_audio_path

        self.manifest = str(manifest)
        clips = read_manifest(manifest)
        self.captions = [list(c.captions) for c in clips]
        self.keys = [c.key for c in clips]
        self.audio_paths = [str(resolve_audio_path(c.file_path, audio_root)) for c in clips]

    def __len__(self) -> int:
        return len(self.keys)


class _TowerAudio:
    """Audio decoding and the tower's input of one clip (picklable: it runs in DataLoader workers)."""

    def __init__(self, config: Any) -> None:
        from ..clap.modeling import htsat_feature_extractor

        self.config = config
        self.feature_extractor = htsat_feature_extractor(config) if config.audio_encoder == "htsat" else None

    def __call__(self, path: str, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
        from ..audio import load_audio

        samples, _ = load_audio(path, self.config.sample_rate)
        return tower_audio_input(self.config, self.feature_extractor, samples, rng)


class ClapTrainDataset:
    """Training pairs: item ``(epoch, index)`` -> the clip's audio input and one of its captions, tokenized.

    **Student training** (SoftCLAP's recipe, see the module docstring): ``subset`` keeps only those clips of
    ``source`` (the annotated "replay" set; item ``index`` is ``source`` clip ``subset[index]``), and with
    ``curated`` each item is, with probability ``curation_prob``, replaced by a curated pair drawn uniformly
    (with replacement) from all of ``curated``'s (clip, caption) pairs. Both draws come from the item's
    ``example_rng`` like the rest, so a resumed run sees the same mix. ``teacher_tokenizer`` adds the
    caption's ids in the teacher's vocabulary (``teacher_input_ids``), for SoftCLAP targets from a teacher.
    """

    def __init__(self, source: ClapAudioSource, config: Any, tokenizer: Any, seed: int, *,
                 subset: Sequence[int] | None = None, curated: ClapAudioSource | None = None,
                 curation_prob: float = 0.0, teacher_tokenizer: Any = None, teacher_max_text_length: int | None = None,
                 sentence_table: Any = None) -> None:
        self.source = source
        self.audio = _TowerAudio(config)
        self.tokenizer = tokenizer
        self.sentence_table = sentence_table
        self.max_text_length = int(config.max_text_length)
        self.seed = int(seed)
        self.subset = list(range(len(source))) if subset is None else [int(i) for i in subset]
        if not self.subset:
            raise ConfigError(f"{source.manifest}: no training clips left (empty subset)")
        if not 0.0 <= float(curation_prob) <= 1.0:
            raise ConfigError(f"curation_prob must be in [0, 1], got {curation_prob}")
        if curation_prob > 0 and (curated is None or len(curated) == 0):
            raise ConfigError(f"curation_prob={curation_prob} needs curated pairs (a non-empty curated manifest)")
        self.curated = curated
        self.curation_prob = float(curation_prob) if curated is not None else 0.0
        # (clip, caption) of every curated pair: pairs are drawn uniformly, as the curated manifest's rows
        self.curated_pairs = [(c, k) for c, caps in enumerate(curated.captions) for k in range(len(caps))] if curated else []
        self.teacher_tokenizer = teacher_tokenizer
        self.teacher_max_text_length = teacher_max_text_length

    def __len__(self) -> int:
        return len(self.subset)

    def draw(self, epoch: int, index: int) -> tuple[str, int, str, np.random.Generator]:
        """``(origin, clip, caption, rng)`` of item ``(epoch, index)``: origin ``"annotated"`` or ``"curated"``,
        the clip's index in that source; ``rng`` continues the item's stream (the audio crop draws from it)."""
        from ..data.dataset import example_rng

        rng = example_rng(self.seed, epoch, index)
        if self.curated is not None and rng.random() < self.curation_prob:
            clip, k = self.curated_pairs[int(rng.integers(len(self.curated_pairs)))]
            return "curated", clip, self.curated.captions[clip][k], rng
        clip = self.subset[index]
        captions = self.source.captions[clip]
        return "annotated", clip, captions[int(rng.integers(len(captions)))], rng

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        epoch, index = item
        origin, clip, caption, rng = self.draw(epoch, index)
        source = self.curated if origin == "curated" else self.source
        features, longer = self.audio(source.audio_paths[clip], rng)
        example: dict[str, Any] = {"input_features": features, "is_longer": longer}
        if self.sentence_table is not None:  # a Sentence-BERT tower: the caption's cached vector
            example["sentence_embeddings"] = self.sentence_table.vector(caption)
        elif self.tokenizer is None:
            raise ValueError("ClapTrainDataset needs a tokenizer, or a sentence_table for a Sentence-BERT tower")
        else:
            example["input_ids"] = self.tokenizer(caption, truncation=True, max_length=self.max_text_length)["input_ids"]
        if self.teacher_tokenizer is not None:
            example["teacher_input_ids"] = self.teacher_tokenizer(
                caption, truncation=True, max_length=self.teacher_max_text_length or self.max_text_length)["input_ids"]
        return example


def annotated_subset(n: int, subset_pct: float, seed: int) -> list[int]:
    """The clips kept of ``n`` annotated ones at ``subset_pct`` percent: ``max(1, round(n * pct / 100))`` of
    them, chosen by a permutation seeded by ``seed`` alone (the same subset on every process and resume),
    in manifest order."""
    if not 0.0 < float(subset_pct) <= 100.0:
        raise ConfigError(f"subset_pct must be in (0, 100], got {subset_pct}")
    if n == 0:
        return []
    keep = max(1, int(round(n * float(subset_pct) / 100.0)))
    order = np.random.default_rng(np.random.SeedSequence([int(seed), SUBSET_STREAM])).permutation(n)
    return sorted(int(i) for i in order[:keep])


class ClapAudioDataset:
    """Validation / evaluation audio: item ``index`` -> the clip's input (long clips cropped from a fixed seed)."""

    def __init__(self, source: ClapAudioSource, config: Any, seed: int = 0) -> None:
        self.source = source
        self.audio = _TowerAudio(config)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, VALIDATION_STREAM, int(index)])
        features, longer = self.audio(self.source.audio_paths[index], rng)
        return {"input_features": features, "is_longer": longer, "index": int(index)}


class ClapCollator:
    """Stacks audio inputs; pads token ids on the right with ``pad_token_id`` (attention mask 0 there)."""

    def __init__(self, pad_token_id: int, teacher_pad_token_id: int | None = None) -> None:
        self.pad_token_id = int(pad_token_id)
        self.teacher_pad_token_id = int(teacher_pad_token_id) if teacher_pad_token_id is not None else None

    @staticmethod
    def _pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        return ids, mask

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {
            "input_features": torch.from_numpy(np.stack([e["input_features"] for e in examples])),
            "is_longer": torch.tensor([[bool(e["is_longer"])] for e in examples]),
        }
        if "input_ids" in examples[0]:
            ids, mask = self._pad([e["input_ids"] for e in examples], self.pad_token_id)
            batch.update(input_ids=ids, attention_mask=mask)
        if "teacher_input_ids" in examples[0]:
            pad = self.teacher_pad_token_id if self.teacher_pad_token_id is not None else self.pad_token_id
            ids, mask = self._pad([e["teacher_input_ids"] for e in examples], pad)
            batch.update(teacher_input_ids=ids, teacher_attention_mask=mask)
        if "sentence_embeddings" in examples[0]:
            batch["sentence_embeddings"] = torch.from_numpy(np.stack([e["sentence_embeddings"] for e in examples]))
        if "index" in examples[0]:
            batch["index"] = torch.tensor([e["index"] for e in examples])
        return batch


class ClapLossModule(nn.Module):
    """The tower (``.tower``) returning its contrastive loss as the loop's one loss term, shape ``(1,)``.

    ``softclap_beta > 0``: SoftCLAP targets (:func:`~enclap.clap.loss.softclap_targets`) from the captions'
    embeddings by ``softclap_teacher`` (a frozen tower in eval mode, fed ``teacher_input_ids``; kept out of
    the module's parameters and state) or, without one, by the tower's own text embeddings, detached.
    """

    def __init__(self, tower: "ClapTowerModel", loss: ClipLoss, *, softclap_beta: float = 0.0,
                 softclap_teacher: "ClapTowerModel | None" = None) -> None:
        super().__init__()
        self.tower = tower
        self.loss = loss
        self.softclap_beta = float(softclap_beta)
        if softclap_teacher is not None:
            softclap_teacher.requires_grad_(False)
            softclap_teacher.eval()
        self._teacher = (softclap_teacher,)  # a tuple: not a submodule (no state_dict, optimizer or DDP entry)

    def forward(self, input_features: torch.Tensor, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, is_longer: torch.Tensor | None = None,
                sentence_embeddings: torch.Tensor | None = None, teacher_input_ids: torch.Tensor | None = None,
                teacher_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.loss.similarity == "dot":  # the raw projections: the loss scores their dot products as they are
            audio = self.tower.audio_embedding(input_features, is_longer)
            text = self.tower.text_embedding(input_ids, attention_mask, sentence_embeddings)
        else:
            out = self.tower(input_features=input_features, input_ids=input_ids, attention_mask=attention_mask,
                             is_longer=is_longer, sentence_embeddings=sentence_embeddings)
            audio, text = out["audio_embeds"], out["text_embeds"]
        targets = None
        if self.softclap_beta > 0:
            teacher = self._teacher[0]
            if teacher is not None:
                if teacher_input_ids is None:
                    raise ValueError("SoftCLAP with a teacher needs teacher_input_ids in the batch")
                if next(teacher.parameters()).device != input_features.device:
                    teacher.to(input_features.device)
                teacher.eval()
                with torch.no_grad():
                    captions = teacher.get_text_features(teacher_input_ids, teacher_attention_mask)
            else:
                captions = text.detach()
            targets = softclap_targets(captions, self.softclap_beta, local_loss=self.loss.local_loss)
        loss = self.loss(audio, text, self.tower.scale(), targets=targets)
        # every trainable parameter in the graph (weight 0): DDP expects a gradient for each
        anchor = sum(p.reshape(-1)[0] for p in self.parameters() if p.requires_grad) * 0.0
        return (loss + anchor).reshape(1)


# ------------------------------------------------------------------------------------------ validation
def embed_audio_dataset(
    tower: "ClapTowerModel", dataset: ClapAudioDataset, *, batch_size: int = 16, num_workers: int = 0,
    indices: Sequence[int] | None = None,
) -> np.ndarray:
    """L2-normalised audio embeddings of ``dataset`` items (``indices``, default all), in that order."""
    from torch.utils.data import DataLoader

    indices = list(range(len(dataset))) if indices is None else list(indices)
    out = np.zeros((len(indices), tower.dimension), dtype=np.float32)
    if not indices:
        return out
    loader = DataLoader(dataset, sampler=indices, batch_size=batch_size, num_workers=num_workers,
                        collate_fn=ClapCollator(0))
    device = next(tower.parameters()).device
    was_training = tower.training
    tower.eval()
    row = 0
    with torch.inference_mode():
        for batch in loader:
            emb = tower.get_audio_features(batch["input_features"].to(device), batch["is_longer"].to(device))
            out[row : row + len(emb)] = emb.float().cpu().numpy()
            row += len(emb)
    tower.train(was_training)
    return out


def retrieval_validation(
    model: "ClapTowerModel", dataset: ClapAudioDataset, accelerator: "Accelerator | None" = None, *,
    batch_size: int = 16, num_workers: int = 0,
) -> dict[str, float]:
    """Retrieval figures of ``model`` on ``dataset`` (its clips and all their captions); see the module docstring.

    With an ``accelerator`` every process embeds its shard of the clips and the embeddings are gathered
    (every process returns the same figures); without one the main process embeds everything.
    """
    from ..clap.evaluation import retrieval_metrics
    from .sampling import shard_indices

    n = len(dataset)
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        mine = shard_indices(n, accelerator.process_index, accelerator.num_processes)
        local = embed_audio_dataset(model, dataset, batch_size=batch_size, num_workers=num_workers, indices=mine)
        pairs = gather_object([(i, local[row]) for row, i in enumerate(mine)])
        audio = np.zeros((n, model.dimension), dtype=np.float32)
        for i, vector in pairs:
            audio[i] = vector
    else:
        audio = embed_audio_dataset(model, dataset, batch_size=batch_size, num_workers=num_workers)
    captions = [caption for caps in dataset.source.captions for caption in caps]
    owner = np.array([i for i, caps in enumerate(dataset.source.captions) for _ in caps], dtype=np.int64)
    text = model.embed_texts(captions)
    return retrieval_metrics(audio @ text.T, owner)


class ClapTask(TrainingTask):
    """The CLAP tower for :func:`~enclap.training.loop.run_training`; see the module docstring."""

    def __init__(
        self,
        tower: "ClapTowerModel",
        tokenizer: Any,
        train_dataset: ClapTrainDataset,
        validation: ClapAudioDataset | None = None,
        *,
        loss: ClipLoss | None = None,
        softclap_beta: float = 0.0,
        softclap_teacher: "ClapTowerModel | None" = None,
        fingerprint: dict[str, Any] | None = None,
        run_files: dict[str, str] | None = None,
        export_files: dict[str, str] | None = None,
        validation_batch_size: int = 16,
    ) -> None:
        tower.tokenizer = tokenizer
        self.tower = tower
        self.tokenizer = tokenizer
        self.module = ClapLossModule(tower, loss or ClipLoss(), softclap_beta=softclap_beta, softclap_teacher=softclap_teacher)
        self.loss_terms = LossTerms(weights=[1.0], groups={})
        self.train_dataset = train_dataset
        self.val_dataset = None  # validation is retrieval (extra_validation), see the module docstring
        self.validation = validation
        teacher_tokenizer = getattr(train_dataset, "teacher_tokenizer", None)
        self.collate_fn = ClapCollator(tokenizer.pad_token_id if tokenizer is not None else 0,
                                       teacher_tokenizer.pad_token_id if teacher_tokenizer is not None else None)
        self._fingerprint = fingerprint or {}
        self._run_files = dict(run_files or {})
        self.export_files = dict(export_files or {})
        self.validation_batch_size = int(validation_batch_size)

    def counts(self, batch: dict[str, Any]) -> torch.Tensor:
        return torch.ones(1, dtype=torch.float64)

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        keys = ("input_features", "input_ids", "attention_mask", "is_longer", "sentence_embeddings",
                "teacher_input_ids", "teacher_attention_mask")
        return {k: batch[k] for k in keys if k in batch}

    def fingerprint(self) -> dict[str, Any]:
        return self._fingerprint

    def run_files(self) -> dict[str, str]:
        return self._run_files

    def validation_metric_names(self) -> set[str]:
        from ..clap.evaluation import RETRIEVAL_METRIC_NAMES

        return {f"val_{name}" for name in RETRIEVAL_METRIC_NAMES} if self.validation is not None else set()

    def check_geometry(self, geometry: "BatchGeometry") -> None:
        """Gradient accumulation does not enlarge a contrastive batch: the negatives of each loss are the pairs
        of one micro-batch (gathered over the processes), so say so rather than let a user believe otherwise."""
        if geometry.accumulation > 1:
            logger.warning(
                "CLAP training with %d accumulation steps: each contrastive loss sees %d pairs (one micro-batch over "
                "%d process(es)), not the global batch of %d; raise per_device_train_batch_size or the process count "
                "for more negatives", geometry.accumulation, geometry.global_micro_batch, geometry.num_processes,
                geometry.global_batch)
        if geometry.global_micro_batch < 2:
            raise ConfigError(f"a contrastive batch needs negatives: {geometry.describe()} gives one pair per loss")

    def extra_validation(self, module: nn.Module, step: int, context: "ValidationContext") -> dict[str, float]:
        """Retrieval figures on the validation split; every process embeds its shard and the embeddings are gathered."""
        if self.validation is None:
            return {}
        figures = retrieval_validation(module.tower, self.validation, context.accelerator,
                                       batch_size=self.validation_batch_size)
        return {f"val_{name}": value for name, value in figures.items()}

    def export(self, module: nn.Module, directory: Path, state_dict: dict[str, Any] | None = None) -> None:
        """A tower directory: ClapTowerModel.from_pretrained and the CLAP embedder loader (enclap-extract --clap) read it.

        ``state_dict`` (the loss module's full weights, gathered by the loop on every process) is what is
        written: under FSDP / ZeRO-3 the live module holds only this process's shards.
        """
        kwargs: dict[str, Any] = {}
        if state_dict is not None:
            prefix = "tower."
            kwargs["state_dict"] = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        module.tower.save_pretrained(directory, tokenizer=self.tokenizer, **kwargs)
        for name, text in self.export_files.items():
            (Path(directory) / name).write_text(text)


__all__ = [
    "ClapAudioDataset",
    "ClapAudioSource",
    "ClapCollator",
    "ClapLossModule",
    "ClapTask",
    "ClapTrainDataset",
    "annotated_subset",
    "embed_audio_dataset",
    "retrieval_validation",
]
