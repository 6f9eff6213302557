"""The metric names: what can be asked for, what runs by default, what runs offline, how each is displayed."""

from __future__ import annotations

DEFAULT_METRICS: tuple[str, ...] = (
    "bleu_1",
    "bleu_2",
    "bleu_3",
    "bleu_4",
    "meteor",
    "rouge_l",
    "cider_d",
    "spice",
    "spider",
    "fense",
    "spider_fl",
)
# Extra metric on request: vocabulary sizes (corpus-level only; its outputs are named "vocab.*").
EXTRA_METRICS: tuple[str, ...] = ("vocab",)
SUPPORTED_METRICS: tuple[str, ...] = DEFAULT_METRICS + EXTRA_METRICS
# What runs from the package registries alone.
OFFLINE_METRICS: tuple[str, ...] = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d", "vocab")

_DISPLAY = {
    "bleu_1": "BLEU-1",
    "bleu_2": "BLEU-2",
    "bleu_3": "BLEU-3",
    "bleu_4": "BLEU-4",
    "meteor": "METEOR",
    "rouge_l": "ROUGE-L",
    "cider_d": "CIDEr-D",
    "spice": "SPICE",
    "spider": "SPIDEr",
    "fense": "FENSE",
    "spider_fl": "SPIDEr-FL",
}
