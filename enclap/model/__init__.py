"""The EnCLAP captioner model: configuration, modules, MCM masking and input building.

Importing this package imports torch and transformers (but loads no weights); ``import enclap``
alone does not import it.
"""

from .configuration import EnClapBartConfig, codec_table_rows
from .inputs import (
    build_encoder_inputs,
    crop_codes,
    max_frames_for,
    split_codes_into_windows,
    window_starts,
)
from .masking import compute_span_mask, mask_codec_tokens, num_masked_spans
from .modeling import (
    IGNORE_INDEX,
    REFERENCE_GENERATION_DEFAULTS,
    EnClapBartEncoder,
    EnClapBartForConditionalGeneration,
    EnClapBartModel,
    EnClapBartOutput,
    EnClapBartPreTrainedModel,
    load_enclap_model,
    reference_generation_config,
)

__all__ = [
    "EnClapBartConfig",
    "codec_table_rows",
    "EnClapBartOutput",
    "EnClapBartPreTrainedModel",
    "EnClapBartEncoder",
    "EnClapBartModel",
    "EnClapBartForConditionalGeneration",
    "IGNORE_INDEX",
    "REFERENCE_GENERATION_DEFAULTS",
    "reference_generation_config",
    "load_enclap_model",
    "build_encoder_inputs",
    "crop_codes",
    "max_frames_for",
    "split_codes_into_windows",
    "window_starts",
    "compute_span_mask",
    "mask_codec_tokens",
    "num_masked_spans",
]
