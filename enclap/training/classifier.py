"""A CLAP audio classifier as a :class:`~enclap.training.loop.TrainingTask`: cross-entropy on labelled clips.

**Data.** :class:`LabelledAudioDataset` decodes a clip in the DataLoader's workers (``enclap.audio.load_audio``
at the tower's rate) and makes the encoder's input with :func:`enclap.clap.embedder.tower_audio_input`:
clips shorter than the tower's window are repeat-padded, longer ones cropped (HTS-AT: LAION's mel stack,
or its fusion stack). A training item ``(epoch, index)`` draws its crop from ``example_rng(seed, epoch,
index)``, so a resumed run sees exactly the crops an uninterrupted one would; validation and test crops
come from a fixed generator per clip.

**Loss in the loop's sum contract.** The module returns the *summed* cross-entropy of its micro-batch and
``counts`` is the number of clips, so the step loss is the mean over the global batch however it is split
into processes and accumulation steps, and the validation loss (``val_loss``) is the mean over the
validation clips.

**Validation**: besides ``val_loss``, :meth:`ClassifierTask.extra_validation` predicts the validation clips
(every process its shard, gathered) and reports ``val_accuracy`` (top-1) and ``val_balanced_accuracy``
(the mean of the per-class accuracies); the best model is picked by ``val_accuracy`` by default.
The export is a classifier directory (:class:`~enclap.clap.classifier.ClapClassifierModel`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from .loop import LossTerms, TrainingTask

if TYPE_CHECKING:
    from ..clap.classifier import ClapClassifierModel
    from .contract import ValidationContext

# keeps evaluation crops apart from the training examples' generators
EVALUATION_STREAM = 0xC1A5
VALIDATION_METRICS = ("val_accuracy", "val_balanced_accuracy")


class LabelledAudioDataset:
    """Labelled clips as encoder inputs. ``train=True``: items ``(epoch, index)`` (the loop's training items);
    otherwise items are plain indices. Every item also carries its ``label`` (class index) and ``index``."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], tower_config: Any, *, seed: int, train: bool) -> None:
        from .clap import _TowerAudio  # the CLAP trainer's decoder: file -> the tower's input, picklable

        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} audio files for {len(labels)} labels")
        self.paths = list(paths)
        self.labels = [int(label) for label in labels]
        self.audio = _TowerAudio(tower_config)
        self.seed = int(seed)
        self.train = bool(train)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        from ..data.dataset import example_rng

        if self.train:
            epoch, index = item  # type: ignore[misc]
            rng = example_rng(self.seed, epoch, index)
        else:
            index = int(item)  # type: ignore[arg-type]
            rng = np.random.default_rng([self.seed, EVALUATION_STREAM, index])
        features, longer = self.audio(self.paths[index], rng)
        return {"input_features": features, "is_longer": longer, "labels": self.labels[index], "index": int(index)}


def collate_labelled(examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stacks the encoder inputs; ``labels`` and ``index`` as long tensors, ``is_longer`` as ``(batch, 1)``."""
    return {
        "input_features": torch.from_numpy(np.stack([e["input_features"] for e in examples])),
        "is_longer": torch.tensor([[bool(e["is_longer"])] for e in examples]),
        "labels": torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long),
        "index": torch.tensor([int(e["index"]) for e in examples], dtype=torch.long),
    }


class ClassifierLossModule(nn.Module):
    """The classifier (``.classifier``) returning its summed cross-entropy as the loop's one loss term, ``(1,)``."""

    def __init__(self, classifier: "ClapClassifierModel") -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, input_features: torch.Tensor, is_longer: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(input_features=input_features, is_longer=is_longer).logits
        return nn.functional.cross_entropy(logits.float(), labels, reduction="sum").reshape(1)


def predict_logits(
    classifier: "ClapClassifierModel", dataset: LabelledAudioDataset, *, batch_size: int = 16, num_workers: int = 0,
    indices: Sequence[int] | None = None, progress: bool = False,
) -> np.ndarray:
    """Logits ``(len(indices), classes)`` float32 of ``dataset`` items (default all), in that order."""
    import sys

    from torch.utils.data import DataLoader
    from tqdm import tqdm

    indices = list(range(len(dataset))) if indices is None else list(indices)
    out = np.zeros((len(indices), classifier.config.num_labels), dtype=np.float32)
    if not indices:
        return out
    # its own generator: a loader left to draw its seed from the global RNG would move the training's dropout
    # stream at every validation, and a resumed run (validating at other moments) would diverge
    loader = DataLoader(dataset, sampler=indices, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_labelled,
                        generator=torch.Generator().manual_seed(0))
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    row = 0
    with torch.inference_mode():
        for batch in tqdm(loader, desc="classifying", unit="batch", file=sys.stderr, disable=not progress):
            logits = classifier(batch["input_features"].to(device), batch["is_longer"].to(device)).logits
            out[row : row + len(logits)] = logits.float().cpu().numpy()
            row += len(logits)
    classifier.train(was_training)
    return out


class ClassifierTask(TrainingTask):
    """A :class:`ClapClassifierModel` for :func:`~enclap.training.loop.run_training`; see the module docstring."""

    def __init__(
        self,
        classifier: "ClapClassifierModel",
        train_dataset: LabelledAudioDataset,
        validation: LabelledAudioDataset | None = None,
        *,
        fingerprint: dict[str, Any] | None = None,
        run_files: dict[str, str] | None = None,
        export_files: dict[str, str] | None = None,
        validation_batch_size: int = 16,
    ) -> None:
        self.classifier = classifier
        self.module = ClassifierLossModule(classifier)
        self.loss_terms = LossTerms(weights=[1.0], groups={})
        self.train_dataset = train_dataset
        self.val_dataset = validation  # the loop's val_loss
        self.validation = validation
        self.collate_fn = collate_labelled
        self._fingerprint = fingerprint or {}
        self._run_files = dict(run_files or {})
        self.export_files = dict(export_files or {})
        self.validation_batch_size = int(validation_batch_size)

    def counts(self, batch: dict[str, Any]) -> torch.Tensor:
        return torch.tensor([float(len(batch["labels"]))], dtype=torch.float64)

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: batch[k] for k in ("input_features", "is_longer", "labels")}

    def fingerprint(self) -> dict[str, Any]:
        return self._fingerprint

    def run_files(self) -> dict[str, str]:
        return self._run_files

    def validation_metric_names(self) -> set[str]:
        return set(VALIDATION_METRICS) if self.validation is not None else set()

    def extra_validation(self, module: nn.Module, step: int, context: "ValidationContext") -> dict[str, float]:
        """Top-1 and balanced accuracy on the validation clips (every process predicts its shard)."""
        from ..clap.classification import classification_metrics

        if self.validation is None or not len(self.validation):
            return {}
        mine = context.shard(len(self.validation))
        logits = predict_logits(module.classifier, self.validation, batch_size=self.validation_batch_size, indices=mine)
        pairs = context.gather([(i, int(np.argmax(row))) for i, row in zip(mine, logits)])
        if not context.is_main_process:
            return {}
        predictions = context.merge(pairs, len(self.validation))
        figures = classification_metrics(self.validation.labels, predictions, module.classifier.config.num_labels)
        return {"val_accuracy": figures["accuracy"], "val_balanced_accuracy": figures["balanced_accuracy"]}

    def export(self, module: nn.Module, directory: Path, state_dict: dict[str, Any] | None = None) -> None:
        """A classifier directory (``ClapClassifierModel.from_pretrained`` and ``enclap-train-classifier evaluate`` read it)."""
        kwargs: dict[str, Any] = {}
        if state_dict is not None:
            prefix = "classifier."
            kwargs["state_dict"] = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        module.classifier.save_pretrained(directory, **kwargs)
        for name, text in self.export_files.items():
            (Path(directory) / name).write_text(text)


__all__ = ["ClassifierLossModule", "ClassifierTask", "LabelledAudioDataset", "collate_labelled", "predict_logits"]
