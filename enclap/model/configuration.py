"""Configuration of the EnCLAP captioner: a BART configuration plus the codec / CLAP fields.

The released EnCLAP checkpoints ship a ``config.json`` with ``"model_type": "bart"`` and six extra keys
(``d_clap``, ``num_rvq``, ``encodec_vocab_size``, ``encodec_pad_token_id``, ``mcm_loss_scale``,
``label_smoothing``); :class:`EnClapBartConfig` reads such a file unchanged.
"""

import logging
import math

from huggingface_hub.dataclasses import strict
from transformers import BartConfig

# The codec embedding tables are rounded up to a multiple of this many rows (as in the reference),
# so a 1024-code codebook plus its pad row gets 1088 rows.
CODEC_TABLE_ROW_MULTIPLE = 64


def codec_table_rows(encodec_vocab_size: int) -> int:
    """Rows of each codebook embedding table: ``ceil((encodec_vocab_size + 1) / 64) * 64`` (1088 for 1024 codes)."""
    return math.ceil((encodec_vocab_size + 1) / CODEC_TABLE_ROW_MULTIPLE) * CODEC_TABLE_ROW_MULTIPLE

logger = logging.getLogger(__name__)


@strict
class EnClapBartConfig(BartConfig):
    """``BartConfig`` plus the EnCLAP fields.

    - ``d_clap``: size of the CLAP audio embedding projected into encoder position 0.
    - ``num_rvq``: number of EnCodec codebooks (residual quantisers) per frame.
    - ``encodec_vocab_size``: codes per codebook (1024 for EnCodec 24 kHz).
    - ``encodec_pad_token_id``: the code id that embeds to the (untrained, zero) pad row; used for
      padding and for masked codes in masked codec modeling.
    - ``mcm_loss_scale``: weight of the masked codec modeling loss in the total training loss.
    - ``label_smoothing``: label smoothing of the captioning cross-entropy.

    ``model_type`` stays ``"bart"`` so the released ``config.json`` files load without edits.
    """

    d_clap: int = 512
    num_rvq: int = 16
    encodec_vocab_size: int = 1024
    encodec_pad_token_id: int = 1024
    mcm_loss_scale: float | int = 0.7
    label_smoothing: float | int = 0.2

    @property
    def codec_table_rows(self) -> int:
        """Rows of each of the ``num_rvq`` codec embedding tables."""
        return codec_table_rows(self.encodec_vocab_size)

    @property
    def max_codec_frames(self) -> int:
        """Longest clip (in codec frames) the encoder takes: ``max_position_embeddings - 3``.

        The three other slots are the CLAP slot (first BOS), the second BOS and the EOS.
        """
        return self.max_position_embeddings - 3

    def validate_token_ids(self) -> None:
        """Part of the ``@strict`` validation: text token ids against the text vocabulary.

        transformers checks every ``*_token_id`` against ``vocab_size``; ``encodec_pad_token_id`` is a
        codec id (checked against the codec tables in :meth:`validate_enclap_fields`), so with a text
        vocabulary under 1025 tokens (tiny test / demo models) the generic check would warn wrongly.
        """
        for name in self:
            value = getattr(self, name)
            if name.endswith("_token_id") and name != "encodec_pad_token_id" and isinstance(value, int):
                if not 0 <= value < self.vocab_size:
                    logger.warning(
                        "EnClapBartConfig: %s must be None or a token id in [0, %d), got %d", name, self.vocab_size, value
                    )

    def validate_enclap_fields(self) -> None:
        """Part of the ``@strict`` validation: the codec / CLAP fields must describe a buildable model."""
        problems = []
        if self.d_clap < 1:
            problems.append(f"d_clap must be >= 1, got {self.d_clap}")
        if self.num_rvq < 1:
            problems.append(f"num_rvq must be >= 1, got {self.num_rvq}")
        if self.encodec_vocab_size < 1:
            problems.append(f"encodec_vocab_size must be >= 1, got {self.encodec_vocab_size}")
        elif not 0 <= self.encodec_pad_token_id < codec_table_rows(self.encodec_vocab_size):
            problems.append(
                f"encodec_pad_token_id must index a row of the {codec_table_rows(self.encodec_vocab_size)}-row "
                f"codec tables, got {self.encodec_pad_token_id}"
            )
        elif self.encodec_pad_token_id < self.encodec_vocab_size:
            problems.append(
                f"encodec_pad_token_id ({self.encodec_pad_token_id}) must not be a real code "
                f"(codes are 0..{self.encodec_vocab_size - 1})"
            )
        if self.mcm_loss_scale < 0:
            problems.append(f"mcm_loss_scale must be >= 0, got {self.mcm_loss_scale}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.max_position_embeddings < 4:
            problems.append(
                f"max_position_embeddings must be >= 4 (CLAP slot, BOS, one frame, EOS), got {self.max_position_embeddings}"
            )
        if problems:
            raise ValueError("Invalid EnClapBartConfig: " + "; ".join(problems))


__all__ = ["EnClapBartConfig", "codec_table_rows", "CODEC_TABLE_ROW_MULTIPLE"]
