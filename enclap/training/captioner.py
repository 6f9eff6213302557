"""The EnCLAP captioner as a :class:`~enclap.training.loop.TrainingTask`.

Its training objective is the model's: caption cross-entropy (with ``config.label_smoothing``) plus
``config.mcm_loss_scale`` times the masked codec modeling loss, which weights codebook ``i``'s
cross-entropy by ``1 / 2**(i+1)``. For the loop, :class:`CaptionerLossModule` returns that objective
as *sums* with :func:`caption_batch_counts` giving their counts: term 0 is the summed caption
cross-entropy over non-ignored tokens, term ``1 + i`` the summed cross-entropy of codebook ``i`` over
its masked positions. Dividing each sum by its count over a batch gives exactly the model's own
``loss`` / ``lm_loss`` / ``mcm_loss`` for that batch (a test holds the two together); the loop divides
by the counts of the whole optimizer step instead, so the step's loss does not depend on how the step
is split into micro-batches or processes.

**Validation measures captioning on clean codes.** Validation examples are never masked
(:class:`~enclap.data.dataset.CaptionPairDataset` with ``train=False``: the first ``max_frames``
frames, every MCM label -100), because at inference the captioner sees clean codes and ``best/`` must
be picked by the loss that matters there. The loop runs the same module on them: the codebook terms
have count 0, and the loop's ``sum / max(count, 1)`` makes each such term exactly 0, so it adds
nothing. Hence ``val_loss`` = ``val_lm_loss`` = the token-mean caption cross-entropy over the whole
validation set on clean inputs, *with* ``config.label_smoothing`` applied exactly as in the training
caption term and in the model's own ``lm_loss`` (so it is not a pure negative log-likelihood when
smoothing is on). MCM is a training objective only: with no masked position scored, the loop leaves
the ``val_mcm_loss`` group out of the validation figures, and the training job refuses it as
``best_metric``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

from ..data.dataset import IGNORE_INDEX, CaptionCollator
from .loop import LossTerms, TrainingTask, ValidationContext

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..features.extractor import ClipFeatures
    from ..model import EnClapBartForConditionalGeneration
    from ..pipeline import PipelineSettings

logger = logging.getLogger(__name__)

MODEL_INPUT_KEYS = ("input_ids", "encodec_mask", "attention_mask", "clap_embedding", "labels", "mcm_labels")


class CaptionerLossModule(nn.Module):
    """The captioner (``.captioner``) returning its loss-term sums: ``[caption CE sum, codebook 0..K-1 CE sums]``."""

    def __init__(self, captioner: "EnClapBartForConditionalGeneration") -> None:
        super().__init__()
        self.captioner = captioner

    def forward(
        self,
        input_ids: torch.Tensor,
        encodec_mask: torch.Tensor,
        attention_mask: torch.Tensor,
        clap_embedding: torch.Tensor,
        labels: torch.Tensor,
        mcm_labels: torch.Tensor,
    ) -> torch.Tensor:
        from transformers.models.bart.modeling_bart import shift_tokens_right

        config = self.captioner.config
        # The decoder reads the caption shifted right, exactly as the model does when given labels.
        decoder_input_ids = shift_tokens_right(labels, config.pad_token_id, config.decoder_start_token_id)
        outputs = self.captioner(
            input_ids=input_ids,
            clap_embedding=clap_embedding,
            encodec_mask=encodec_mask,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
        )
        # The model's own loss functions, as sums (one implementation of each: the model's).
        caption_sum = self.captioner.caption_loss(outputs.logits.float(), labels, reduction="sum")
        codec_sums, _ = self.captioner.codebook_cross_entropy_sums(outputs.encoder_last_hidden_state, mcm_labels)
        return torch.cat([caption_sum.reshape(1), codec_sums])


def caption_batch_counts(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(1 + num_codebooks,)`` float64: caption tokens with a label, then masked positions per codebook."""
    caption = (batch["labels"] != IGNORE_INDEX).sum().reshape(1)
    codec = (batch["mcm_labels"] != IGNORE_INDEX).sum(dim=(0, 1))
    return torch.cat([caption, codec]).to(torch.float64)


def captioner_loss_terms(config) -> LossTerms:
    """Weights: 1 for the caption term, ``mcm_loss_scale / 2**(i+1)`` for codebook ``i``; groups lm_loss / mcm_loss."""
    num_rvq = int(config.num_rvq)
    weights = [1.0] + [float(config.mcm_loss_scale) * 0.5 ** (i + 1) for i in range(num_rvq)]
    return LossTerms(weights=weights, groups={"lm_loss": [0], "mcm_loss": list(range(1, num_rvq + 1))})


class CaptionMetricValidation:
    """Caption the validation clips with the pipeline, on every process's share, and score them once (e.g. SPIDEr).

    :meth:`caption` runs the pipeline (the same code, batch size and generation settings as
    ``evaluate.py``) on the clips this process holds; :meth:`score` takes the captions of every clip,
    in order, and returns :class:`~enclap.metrics.CaptionScorer`'s corpus scores, the figures
    ``evaluate.py`` prints for the same checkpoint.
    """

    def __init__(
        self,
        clips: Sequence["ClipFeatures"],
        names: Sequence[str],
        references: Sequence[Sequence[str]],
        metrics: Sequence[str],
        *,
        batch_size: int = 16,
        metrics_cache: str | None = None,
    ) -> None:
        from ..metrics import CaptionScorer

        self.clips = list(clips)
        self.names = list(names)
        self.references = [list(r) for r in references]
        self.metrics = tuple(metrics)
        self.batch_size = batch_size
        self.scorer = CaptionScorer(self.metrics, cache_dir=metrics_cache)
        unavailable = self.scorer.unavailable
        if unavailable:
            from ..errors import MetricUnavailableError

            raise MetricUnavailableError(
                "validation metric(s) cannot run here: " + "; ".join(f"{name}: {why}" for name, why in unavailable.items())
            )

    def __len__(self) -> int:
        return len(self.clips)

    def caption(self, captioner, tokenizer, settings: "PipelineSettings", indices: Sequence[int]) -> list[str]:
        """Captions of the clips ``indices`` (in that order)."""
        from ..pipeline import CaptioningPipeline

        if not indices:
            return []
        device = next(captioner.parameters()).device
        pipeline = CaptioningPipeline(captioner, tokenizer, None, settings=settings, device=str(device), batch_size=self.batch_size)
        return pipeline.caption_features([self.clips[i] for i in indices], names=[self.names[i] for i in indices])

    def score(self, captions: Sequence[str]) -> dict[str, float]:
        """Corpus scores of one caption per clip (all clips, in order)."""
        if len(captions) != len(self.clips):
            raise ValueError(f"{len(captions)} captions for {len(self.clips)} validation clips")
        report = self.scorer.score(list(captions), self.references)
        return {name: float(value) for name, value in report.corpus.items()}


class CaptionerTask(TrainingTask):
    """The EnCLAP captioner for :func:`~enclap.training.loop.run_training`."""

    def __init__(
        self,
        model: "EnClapBartForConditionalGeneration",
        tokenizer: "PreTrainedTokenizerBase",
        train_dataset: Any,
        val_dataset: Any = None,
        *,
        pipeline_settings: "PipelineSettings | None" = None,
        metric_validation: CaptionMetricValidation | None = None,
        fingerprint: dict[str, Any] | None = None,
        export_files: dict[str, str] | None = None,
        run_files: dict[str, str] | None = None,
    ) -> None:
        from ..model.inputs import max_frames_for
        from ..pipeline import PipelineSettings

        config = model.config
        self.module = CaptionerLossModule(model)
        self.loss_terms = captioner_loss_terms(config)
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.collate_fn = CaptionCollator(
            max_frames_for(config),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            codec_pad_id=config.encodec_pad_token_id,
        )
        self.tokenizer = tokenizer
        self.pipeline_settings = pipeline_settings or PipelineSettings()
        self.metric_validation = metric_validation
        self._fingerprint = fingerprint or {}
        self.export_files = dict(export_files or {})
        self._run_files = dict(run_files or {})

    def counts(self, batch: dict[str, Any]) -> torch.Tensor:
        return caption_batch_counts(batch)

    def example_lengths(self) -> list[int] | None:
        lengths = getattr(self.train_dataset, "example_lengths", None)
        return lengths() if callable(lengths) else None

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {key: batch[key] for key in MODEL_INPUT_KEYS}

    def fingerprint(self) -> dict[str, Any]:
        return self._fingerprint

    def run_files(self) -> dict[str, str]:
        return self._run_files

    def validation_metric_names(self) -> set[str]:
        return set(self.metric_validation.metrics) if self.metric_validation else set()

    def extra_validation(self, module: nn.Module, step: int, context: ValidationContext) -> dict[str, float]:
        """Every process captions its share of the clips; the main process scores all of them once."""
        validation = self.metric_validation
        if validation is None:
            return {}
        indices = context.shard(len(validation))
        captions = validation.caption(module.captioner, self.tokenizer, self.pipeline_settings, indices)
        gathered = context.gather(list(zip(indices, captions)))
        if not context.is_main_process:
            return {}
        return validation.score(context.merge(gathered, len(validation)))

    def export(self, module: nn.Module, directory: Path, state_dict: dict[str, Any] | None = None) -> None:
        """A directory :meth:`CaptioningPipeline.from_pretrained` (and ``evaluate.py --ckpt``) loads.

        ``state_dict`` (the loss module's full weights, gathered by the loop) is what is written; the
        live module may hold only this process's shards (FSDP, ZeRO-3).
        """
        from ..pipeline import CaptioningPipeline

        captioner = module.captioner
        if state_dict is not None:
            prefix = "captioner."
            weights = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            captioner = type(captioner)(captioner.config)  # a CPU copy of the full weights, whatever the sharding
            missing, unexpected = captioner.load_state_dict(weights, strict=False)
            missing = [k for k in missing if k not in _tied_keys(captioner)]
            if missing or unexpected:
                raise RuntimeError(f"export: the gathered state dict does not fit the captioner (missing {missing[:5]}, unexpected {unexpected[:5]})")
            captioner.tie_weights()
            captioner.eval()
        device = next(captioner.parameters()).device
        CaptioningPipeline(captioner, self.tokenizer, None, settings=self.pipeline_settings, device=str(device)).save_pretrained(directory)
        for name, text in self.export_files.items():
            (Path(directory) / name).write_text(text)


def _tied_keys(model: nn.Module) -> set[str]:
    """Parameter names a state dict may leave out because they share storage with another (tied embeddings)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied.add(name)
        seen.setdefault(id(tensor), name)
    return tied


__all__ = [
    "CaptionMetricValidation",
    "CaptionerLossModule",
    "CaptionerTask",
    "caption_batch_counts",
    "captioner_loss_terms",
]
