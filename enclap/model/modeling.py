"""The EnCLAP captioner: a BART whose encoder reads EnCodec codes and a CLAP embedding.

Built on transformers' BART modules (decoder, encoder layers, attention back ends) and computing
exactly what the reference implementation (``jaeyeonkim99/EnCLAP``, ``modeling/enclap_bart.py``)
computes, with the state-dict names of the released checkpoints:

- encoder input ``input_ids`` is ``(batch, length, num_rvq)``; ``encodec_mask`` ``(batch, length)``
  marks codec frames. At codec positions the embedding is the sum over codebooks of ``num_rvq``
  tables (``model.encoder.embed_encodec.{i}``); elsewhere it is the (unscaled) BART token embedding of
  column 0. Position 0 is replaced by ``clap_projection(clap_embedding)``.
- BART's learned positions are shifted right by one: position 0 (the CLAP slot) gets none.
- training adds masked codec modeling (MCM): ``num_rvq`` linear heads on the encoder output,
  cross-entropy at masked positions, codebook ``i`` weighted ``1 / 2**(i+1)``.

Differences from the reference, none of which changes a number:

- the codebook sum is one fused ``embedding_bag`` over the concatenated tables instead of
  ``num_rvq`` lookups; the pad row keeps the reference's semantics (its stored value is added, it
  never receives a gradient);
- MCM logits are computed only at labelled positions (the reference projects every position
  through every head, then ignores all but ~15 % of them);
- attention uses the configured transformers back end; by default SDPA, with a blockwise kernel for
  CPU training with attention dropout, where SDPA has no fused kernel (``attention.py``);
- a codebook without any masked position contributes 0 to the MCM loss (the reference gives NaN);
- it runs on any device (no hard-coded ``.cuda()``) and on current transformers.
"""

import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig
from transformers.cache_utils import EncoderDecoderCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput, Seq2SeqModelOutput
from transformers.models.bart.modeling_bart import (
    BartAttention,
    BartDecoder,
    BartEncoderLayer,
    BartLearnedPositionalEmbedding,
    BartPreTrainedModel,
    BartScaledWordEmbedding,
    shift_tokens_right,
)
from transformers.utils import can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from ..errors import CheckpointError
from ..loading import load_pretrained
from .attention import ENCLAP_ATTENTION, register_enclap_attention
from .configuration import EnClapBartConfig

# A dictionary entry in transformers' attention registries, so that any process holding an EnCLAP
# model (also one unpickled in a worker) can resolve its attention back end.
register_enclap_attention()

# Label value ignored by every loss (the Hugging Face / PyTorch convention the reference uses).
IGNORE_INDEX = -100

# Generation settings of the reference CLI (``inference.py``): beam 4, no repeated trigram,
# 50 tokens at most, forced BOS 0 / EOS 2, BART's decoder start 2 and pad 1.
REFERENCE_GENERATION_DEFAULTS: dict = {
    "bos_token_id": 0,
    "decoder_start_token_id": 2,
    "eos_token_id": 2,
    "pad_token_id": 1,
    "forced_bos_token_id": 0,
    "forced_eos_token_id": 2,
    "num_beams": 4,
    "no_repeat_ngram_size": 3,
    "early_stopping": True,
    "max_length": 50,
}


def reference_generation_config(**overrides) -> GenerationConfig:
    """A ``GenerationConfig`` with the reference CLI's settings, optionally overridden."""
    return GenerationConfig(**{**REFERENCE_GENERATION_DEFAULTS, **overrides})


@dataclass
class EnClapBartOutput(Seq2SeqLMOutput):
    """``Seq2SeqLMOutput`` plus the two parts of the training loss.

    Convention (the reference's): when both ``labels`` and ``mcm_labels`` are given,
    ``mcm_loss`` is already multiplied by ``config.mcm_loss_scale`` and ``loss = lm_loss + mcm_loss``.
    With only ``mcm_labels``, ``loss = mcm_loss`` (unscaled); with only ``labels``, ``loss = lm_loss``.
    """

    mcm_loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None


class EnClapBartPreTrainedModel(BartPreTrainedModel):
    """Common base: the EnCLAP config class and initialisation of the EnCLAP-specific buffers."""

    config_class = EnClapBartConfig
    config: EnClapBartConfig

    def _check_and_adjust_attn_implementation(
        self, attn_implementation: str | None, is_init_check: bool = False, allow_all_kernels: bool = False
    ) -> str:
        # Unless asked for another back end, use SDPA with the blockwise kernel for CPU training with
        # attention dropout (enclap/model/attention.py); it is plain SDPA everywhere else.
        resolved = super()._check_and_adjust_attn_implementation(attn_implementation, is_init_check, allow_all_kernels)
        return ENCLAP_ATTENTION if attn_implementation is None and resolved == "sdpa" else resolved

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, EnClapBartForConditionalGeneration):
            with torch.no_grad():
                module.final_logits_bias.zero_()


class EnClapBartEncoder(EnClapBartPreTrainedModel):
    """BART encoder over ``[CLAP slot, BOS, codec frames..., EOS]`` sequences.

    Sub-modules (names are those of the released checkpoints): ``embed_tokens`` (tied to the shared
    BART embedding), ``embed_encodec`` (``num_rvq`` tables of ``codec_table_rows`` rows),
    ``clap_projection`` (``Linear(d_clap, d_model)``), ``embed_positions``, ``layers``,
    ``layernorm_embedding``.
    """

    _can_record_outputs = {
        "hidden_states": BartEncoderLayer,
        "attentions": BartAttention,
    }

    def __init__(self, config: EnClapBartConfig):
        super().__init__(config)
        self.dropout = config.dropout
        self.layerdrop = config.encoder_layerdrop
        embed_dim = config.d_model
        self.padding_idx = config.pad_token_id
        self.max_source_positions = config.max_position_embeddings
        embed_scale = math.sqrt(embed_dim) if config.scale_embedding else 1.0

        self.embed_tokens = BartScaledWordEmbedding(config.vocab_size, embed_dim, self.padding_idx, embed_scale=embed_scale)
        self.embed_encodec = nn.ModuleList(
            [
                nn.Embedding(config.codec_table_rows, embed_dim, padding_idx=config.encodec_pad_token_id)
                for _ in range(config.num_rvq)
            ]
        )
        self.clap_projection = nn.Linear(config.d_clap, embed_dim)
        self.embed_positions = BartLearnedPositionalEmbedding(config.max_position_embeddings, embed_dim)
        self.layers = nn.ModuleList([BartEncoderLayer(config, layer_idx=i) for i in range(config.encoder_layers)])
        self.layernorm_embedding = nn.LayerNorm(embed_dim)
        self.gradient_checkpointing = False
        self.post_init()

    # ------------------------------------------------------------------ embeddings
    def embed_codec_frames(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum over codebooks of the codebook embeddings: ``(..., num_rvq)`` ids -> ``(..., d_model)``.

        One ``embedding_bag`` over the concatenated tables replaces ``num_rvq`` lookups and sums.
        Pad ids (``encodec_pad_token_id``) behave exactly as in ``nn.Embedding(padding_idx=...)``:
        the stored pad row is added (it is zero unless a checkpoint says otherwise) and never
        receives a gradient.
        """
        num_rvq = len(self.embed_encodec)
        if codes.shape[-1] != num_rvq:
            raise ValueError(f"codec ids must have {num_rvq} codebooks in the last dimension, got shape {tuple(codes.shape)}")
        rows = self.config.codec_table_rows
        pad = self.config.encodec_pad_token_id
        lead_shape = codes.shape[:-1]
        codes = codes.reshape(-1, num_rvq)
        if codes.numel():
            low, high = (int(v) for v in torch.aminmax(codes))
            if low < 0 or high >= rows:
                # Checked because an out-of-range id would silently read the next codebook's table.
                raise ValueError(
                    f"codec ids must be in [0, {rows}) (codes 0..{self.config.encodec_vocab_size - 1}, pad {pad}); "
                    f"got values in [{low}, {high}]"
                )
        tables = [embedding.weight for embedding in self.embed_encodec]
        is_pad = codes == pad
        # Table i occupies rows [i*rows, (i+1)*rows) of the concatenation. Every pad id is sent to
        # the single index ``pad`` (table 0's pad row), which embedding_bag leaves out of the sum and
        # out of the gradient; the pad rows' stored values are added back below without gradient.
        offsets = torch.arange(num_rvq, device=codes.device, dtype=codes.dtype) * rows
        flat_ids = torch.where(is_pad, torch.full_like(codes, pad), codes + offsets)
        summed = F.embedding_bag(flat_ids, torch.cat(tables, dim=0), mode="sum", padding_idx=pad)
        pad_rows = torch.stack([table[pad] for table in tables]).detach()
        summed = summed + is_pad.to(summed.dtype) @ pad_rows
        return summed.view(*lead_shape, -1)

    def embed_encoder_inputs(
        self,
        input_ids: torch.Tensor,
        encodec_mask: torch.Tensor | None,
        clap_embedding: torch.Tensor | None,
    ) -> torch.Tensor:
        """Token embeddings of the encoder input (before positions): codec sums, BART tokens, CLAP slot."""
        if input_ids.ndim == 2:
            # Plain BART text input (the reference supports it): scaled token embeddings.
            return self.embed_tokens(input_ids)
        if input_ids.ndim != 3:
            raise ValueError(f"input_ids must be (batch, length, num_rvq) codec ids, got shape {tuple(input_ids.shape)}")
        if encodec_mask is None:
            raise ValueError("encodec_mask (batch, length) is required with (batch, length, num_rvq) input_ids")
        if encodec_mask.shape != input_ids.shape[:2]:
            raise ValueError(
                f"encodec_mask shape {tuple(encodec_mask.shape)} does not match input_ids {tuple(input_ids.shape[:2])}"
            )
        if clap_embedding is None:
            # The reference cannot run without it either (its embeddings stay undefined).
            raise ValueError("clap_embedding (batch, d_clap) is required with codec input_ids")
        if clap_embedding.shape != (input_ids.shape[0], self.config.d_clap):
            raise ValueError(
                f"clap_embedding must be (batch={input_ids.shape[0]}, d_clap={self.config.d_clap}), "
                f"got {tuple(clap_embedding.shape)}"
            )
        is_codec = encodec_mask.to(input_ids.device) > 0
        pad = self.config.encodec_pad_token_id
        codec_ids = input_ids.masked_fill(~is_codec.unsqueeze(-1), pad)
        codec_embeds = self.embed_codec_frames(codec_ids)
        # Non-codec positions (BOS/EOS) use the BART embedding of column 0 *without* embed_scale,
        # as the reference does on this path.
        bart_ids = input_ids[..., 0].masked_fill(is_codec, 0)
        bart_embeds = F.embedding(bart_ids, self.embed_tokens.weight, padding_idx=self.embed_tokens.padding_idx)
        embeds = torch.where(is_codec.unsqueeze(-1), codec_embeds, bart_embeds)
        clap = self.clap_projection(clap_embedding.to(device=embeds.device, dtype=self.clap_projection.weight.dtype))
        return torch.cat([clap.unsqueeze(1).to(embeds.dtype), embeds[:, 1:]], dim=1)

    def shifted_positions(self, length: int) -> torch.Tensor:
        """``(length, d_model)`` positions: zero for the CLAP slot, BART position ``i-1`` at position ``i``."""
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"encoder input of {length} positions exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings} (at most {self.config.max_codec_frames} codec frames)"
            )
        weight = self.embed_positions.weight
        offset = self.embed_positions.offset
        # BART position p lives in row p + offset; position i of the encoder gets BART position i-1.
        shifted = weight[offset : offset + length - 1]
        return torch.cat([weight.new_zeros(1, weight.shape[1]), shifted], dim=0)

    # ------------------------------------------------------------------ forward
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        clap_embedding: torch.Tensor | None = None,
        encodec_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        """Encode ``input_ids`` (batch, length, num_rvq) + ``encodec_mask`` + ``clap_embedding`` (batch, d_clap).

        ``inputs_embeds`` (batch, length, d_model) may replace ``input_ids``; positions are shifted
        the same way. ``attention_mask`` (batch, length) is 1 on real positions, 0 on padding.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_encoder_inputs(input_ids, encodec_mask, clap_embedding)

        positions = self.shifted_positions(inputs_embeds.shape[1]).to(inputs_embeds.device)
        hidden_states = inputs_embeds + positions
        hidden_states = self.layernorm_embedding(hidden_states)
        hidden_states = F.dropout(hidden_states, p=self.dropout, training=self.training)

        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask
        )
        for encoder_layer in self.layers:
            if self.training and self.layerdrop > 0.0 and torch.rand([]) < self.layerdrop:
                continue  # LayerDrop
            hidden_states = encoder_layer(hidden_states, attention_mask, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)


class EnClapBartModel(EnClapBartPreTrainedModel):
    """Encoder-decoder without the LM head: ``shared``, ``encoder`` (EnCLAP), ``decoder`` (stock BART)."""

    _tied_weights_keys = {
        "decoder.embed_tokens.weight": "shared.weight",
        "encoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: EnClapBartConfig):
        super().__init__(config)
        embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.shared = BartScaledWordEmbedding(config.vocab_size, config.d_model, config.pad_token_id, embed_scale=embed_scale)
        self.encoder = EnClapBartEncoder(config)
        self.decoder = BartDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.shared = value
        self.encoder.embed_tokens = self.shared
        self.decoder.embed_tokens = self.shared

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        clap_embedding: torch.Tensor | None = None,
        encodec_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> Seq2SeqModelOutput:
        """Run the encoder (unless ``encoder_outputs`` is given) and the decoder."""
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            # BART would shift input_ids right; codec input_ids are not text, so this cannot apply.
            raise ValueError("EnCLAP needs decoder_input_ids (or labels, or decoder_inputs_embeds) for the decoder")
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                clap_embedding=clap_embedding,
                encodec_mask=encodec_mask,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                **kwargs,
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(
                last_hidden_state=encoder_outputs[0],
                hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
                attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
            )
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs[0],
            encoder_attention_mask=attention_mask,
            past_key_values=past_key_values,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            past_key_values=decoder_outputs.past_key_values,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


class EnClapBartForConditionalGeneration(EnClapBartPreTrainedModel, GenerationMixin):
    """The EnCLAP captioner: :class:`EnClapBartModel`, the tied LM head, ``final_logits_bias`` and the MCM heads.

    ``forward`` takes the reference's keyword arguments (``input_ids``, ``clap_embedding``,
    ``encodec_mask``, ``attention_mask``, ``labels``, ``mcm_labels``, ...) and returns an
    :class:`EnClapBartOutput`. ``generate`` takes the same encoder inputs, batched, and defaults
    to the reference CLI's settings (:data:`REFERENCE_GENERATION_DEFAULTS`).
    """

    base_model_prefix = "model"
    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}
    _keys_to_ignore_on_load_missing = ["final_logits_bias"]

    def __init__(self, config: EnClapBartConfig):
        super().__init__(config)
        self.model = EnClapBartModel(config)
        self.final_logits_bias = nn.Buffer(torch.zeros((1, self.model.shared.num_embeddings)))
        self.lm_head = nn.Linear(config.d_model, self.model.shared.num_embeddings, bias=False)
        self.mcm_heads = nn.ModuleList(
            [nn.Linear(config.d_model, config.encodec_vocab_size) for _ in range(config.num_rvq)]
        )
        self.post_init()
        # Checkpoints carry no generation settings of their own; use the reference CLI's.
        # (from_pretrained still prefers a generation_config.json when the directory has one.)
        self.generation_config = reference_generation_config()

    def adjust_generation_fn(self, generation_config, from_auto_class, from_pipeline, pretrained_model_name_or_path, **kwargs):
        """After ``from_pretrained``: keep the reference CLI's generation settings unless the folder says otherwise.

        The released checkpoint folders hold no ``generation_config.json``; transformers would then
        derive one from ``config.json`` (20 tokens, greedy), which is not how the reference captions.
        A folder that does carry a ``generation_config.json`` (e.g. written by ``save_pretrained``),
        or an explicit ``generation_config=`` argument, is respected.
        """
        super().adjust_generation_fn(
            generation_config, from_auto_class, from_pipeline, pretrained_model_name_or_path, **kwargs
        )
        if generation_config is None and pretrained_model_name_or_path is not None:
            folder = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
            if folder.is_dir() and not (folder / "generation_config.json").is_file():
                self.generation_config = reference_generation_config()

    def _reorder_cache(self, past_key_values, beam_idx: torch.LongTensor):
        """Beam search: reorder the decoder self-attention cache only.

        Every beam of a clip holds the same cross-attention keys/values (the encoder output is
        repeated per beam) and ``beam_idx`` never moves a beam to another clip, so reordering the
        cross-attention cache (6 layers x beams x heads x ~1000 positions per step) changes nothing.
        transformers 4.x BART (which the reference ran on) skipped it too; 5.x reorders everything.
        """
        if isinstance(past_key_values, EncoderDecoderCache):
            past_key_values.self_attention_cache.reorder_cache(beam_idx)
        else:
            past_key_values.reorder_cache(beam_idx)
        return past_key_values

    def get_encoder(self, modality: str | None = None) -> EnClapBartEncoder:
        return self.model.encoder

    def get_decoder(self) -> BartDecoder:
        return self.model.decoder

    # ------------------------------------------------------------------ losses
    def masked_codec_loss(self, encoder_hidden: torch.Tensor, mcm_labels: torch.Tensor) -> torch.Tensor:
        """Unscaled MCM loss: sum over codebooks ``i`` of ``CE_i / 2**(i+1)``.

        ``CE_i`` is the mean cross-entropy of head ``i`` over the positions where
        ``mcm_labels[..., i] != -100``; only those positions are projected through the head.
        A codebook with no labelled position contributes 0 (the reference divides 0 by 0).
        """
        num_rvq = len(self.mcm_heads)
        if mcm_labels.shape != (*encoder_hidden.shape[:2], num_rvq):
            raise ValueError(
                f"mcm_labels must be (batch, length, num_rvq) = {(*encoder_hidden.shape[:2], num_rvq)}, "
                f"got {tuple(mcm_labels.shape)}"
            )
        mcm_labels = mcm_labels.to(encoder_hidden.device)
        # One gather of every labelled (position, codebook) pair, grouped by codebook (nonzero on the
        # codebook-major view returns them in that order), instead of one masked select per head.
        head_index, batch_index, time_index = (mcm_labels != IGNORE_INDEX).permute(2, 0, 1).nonzero(as_tuple=True)
        counts = torch.bincount(head_index, minlength=num_rvq).tolist()
        rows = encoder_hidden[batch_index, time_index].split(counts)
        targets = mcm_labels[batch_index, time_index, head_index].split(counts)
        total = encoder_hidden.new_zeros(())
        for i, head in enumerate(self.mcm_heads):
            logits = head(rows[i])
            # sum / count == the mean of CrossEntropyLoss(); an empty selection gives 0 (and keeps the
            # head in the graph, so distributed training sees a gradient for every parameter).
            summed = F.cross_entropy(logits, targets[i], reduction="sum")
            total = total + summed / max(counts[i], 1) * (0.5 ** (i + 1))
        return total

    def caption_loss(self, lm_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Captioning cross-entropy with ``config.label_smoothing``; ``-100`` labels are ignored."""
        labels = labels.to(lm_logits.device)
        return F.cross_entropy(
            lm_logits.view(-1, lm_logits.shape[-1]),
            labels.view(-1),
            ignore_index=IGNORE_INDEX,
            label_smoothing=float(self.config.label_smoothing),
        )

    # ------------------------------------------------------------------ forward
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        clap_embedding: torch.Tensor | None = None,
        encodec_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        mcm_labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> EnClapBartOutput:
        """Forward pass; see :class:`EnClapBartOutput` for how the losses combine.

        ``labels`` (batch, target_length) are caption token ids (-100 ignored); the decoder input
        is ``labels`` shifted right when ``decoder_input_ids`` is not given. ``mcm_labels``
        (batch, length, num_rvq) hold the original codes at masked positions and -100 elsewhere.
        With ``mcm_labels`` but no caption (no ``labels`` / decoder input) only the encoder runs and
        ``logits`` is None.
        """
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

        if mcm_labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            # MCM only (no caption): the decoder has nothing to read, run the encoder alone.
            if encoder_outputs is None:
                encoder_outputs = self.model.encoder(
                    input_ids=input_ids,
                    clap_embedding=clap_embedding,
                    encodec_mask=encodec_mask,
                    attention_mask=attention_mask,
                    inputs_embeds=inputs_embeds,
                    **kwargs,
                )
            mcm_loss = self.masked_codec_loss(encoder_outputs[0], mcm_labels)
            return EnClapBartOutput(
                loss=mcm_loss,
                mcm_loss=mcm_loss,
                encoder_last_hidden_state=encoder_outputs[0],
                encoder_hidden_states=getattr(encoder_outputs, "hidden_states", None),
                encoder_attentions=getattr(encoder_outputs, "attentions", None),
            )

        outputs = self.model(
            input_ids,
            clap_embedding=clap_embedding,
            encodec_mask=encodec_mask,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        lm_logits = self.lm_head(outputs[0]) + self.final_logits_bias.to(outputs[0].device)

        lm_loss = self.caption_loss(lm_logits, labels) if labels is not None else None
        mcm_loss = (
            self.masked_codec_loss(outputs.encoder_last_hidden_state, mcm_labels) if mcm_labels is not None else None
        )
        if mcm_loss is None:
            loss = lm_loss
        elif lm_loss is None:
            loss = mcm_loss
        else:
            mcm_loss = mcm_loss * self.config.mcm_loss_scale
            loss = lm_loss + mcm_loss

        return EnClapBartOutput(
            loss=loss,
            lm_loss=lm_loss,
            mcm_loss=mcm_loss,
            logits=lm_logits,
            past_key_values=outputs.past_key_values,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)


def _describe_key(item) -> str:
    """A loading-report entry as text: a key, or (key, checkpoint shape, model shape)."""
    if isinstance(item, tuple) and len(item) == 3:
        key, found, expected = item
        return f"{key} (checkpoint {list(found)}, model {list(expected)})"
    return str(item)


def _first_line(err: BaseException) -> str:
    text = str(err)
    return text.splitlines()[0] if text else ""


def load_enclap_model(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    *,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> EnClapBartForConditionalGeneration:
    """Load a captioner from a ``save_pretrained`` directory (or hub id), ready for inference.

    The directory holds ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin`` (the
    released EnCLAP checkpoints); a ``.bin`` is read with ``weights_only=True``. Every checkpoint
    key must match the model: missing, unexpected or wrongly shaped weights raise
    :class:`~enclap.errors.CheckpointError` naming them. A path that does not exist raises
    :class:`~enclap.errors.PretrainedNotFoundError`. The model is returned in eval mode on ``device``.
    """

    def loader(path: str) -> EnClapBartForConditionalGeneration:
        extra = {}
        if dtype is not None:
            extra["dtype"] = dtype
        if attn_implementation is not None:
            extra["attn_implementation"] = attn_implementation
        try:
            # Wrong shapes are reported below with the key names instead of transformers' bare RuntimeError.
            model, info = EnClapBartForConditionalGeneration.from_pretrained(
                path, output_loading_info=True, weights_only=True, ignore_mismatched_sizes=True, **extra
            )
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"{path}: the weights cannot be read safely ({type(err).__name__}: {_first_line(err)}). "
                "Only tensors and plain containers are loaded, never arbitrary pickled code."
            ) from err
        except (RuntimeError, EOFError) as err:
            raise CheckpointError(f"{path}: the weights cannot be loaded ({type(err).__name__}: {_first_line(err)})") from err
        problems = []
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
            found = sorted((_describe_key(item) for item in info.get(kind) or []))
            if found:
                problems.append(
                    f"{kind.replace('_', ' ')}: {', '.join(found[:20])}" + (f" (+{len(found) - 20} more)" if len(found) > 20 else "")
                )
        if problems:
            raise CheckpointError(f"{path}: the checkpoint does not fit EnClapBartForConditionalGeneration: " + "; ".join(problems))
        return model

    model = load_pretrained(
        loader,
        name_or_path,
        what="EnCLAP captioner",
        how_to_get="Pass a directory holding config.json and model.safetensors or pytorch_model.bin "
        "(e.g. a released EnCLAP checkpoint folder such as 'clotho/base').",
    )
    return model.to(device).eval()


__all__ = [
    "EnClapBartOutput",
    "EnClapBartPreTrainedModel",
    "EnClapBartEncoder",
    "EnClapBartModel",
    "EnClapBartForConditionalGeneration",
    "IGNORE_INDEX",
    "REFERENCE_GENERATION_DEFAULTS",
    "reference_generation_config",
    "load_enclap_model",
]
