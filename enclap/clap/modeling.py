"""The CLAP tower: an audio encoder and a text encoder projected into one embedding space.

:class:`ClapTowerModel` (a transformers ``PreTrainedModel``: ``save_pretrained`` / ``from_pretrained``)
holds

* ``audio_model``: :class:`transformers.ClapAudioModel` (HTS-AT; input: LAION mels ``(batch, 1 or 4,
  frames, 64)`` and ``is_longer``, as transformers' ClapModel) or :class:`Cnn14` (input: waveforms
  ``(batch, samples)`` at the config's rate; PANNs' own log-mel front end runs inside);
* ``text_model``: any ``transformers.AutoModel`` text encoder, pooled per ``config.text_pooling``; or, for
  ``config.text_encoder="sentence_transformers"``, none: a frozen Sentence-BERT (``sentence_encoder``, loaded
  from ``config.sentence_transformer`` when first needed, never part of the weights or the optimizer) gives
  sentence vectors, and ``sentence_embedding_table`` (set by training) serves the captions already embedded;
* ``audio_projection`` / ``text_projection`` (``linear1`` [ReLU ``linear2``], named as transformers'
  ClapProjectionLayer so an HTS-AT + RoBERTa tower exports to a plain ClapModel by renaming nothing);
* ``logit_scale``: log of the inverse temperature.

``get_audio_features`` / ``get_text_features`` return L2-normalised embeddings; ``forward`` returns both
and the scale the loss multiplies the cosine similarities by. ``embed_texts(list[str])`` (the
``TextEmbedder`` protocol: ``embed_texts`` + ``dimension``) uses the tokenizer saved with the model.

**PANNs layout.** :class:`Cnn14` has PANNs' module names (``bn0``, ``conv_block1..6.{conv1,conv2,bn1,bn2}``,
``fc1``, ``fc_audioset``) and reproduces torchlibrosa's front end under its keys: the STFT as two
frozen Conv1d kernels (``spectrogram_extractor.stft.conv_real/conv_imag.weight``: the Hann-windowed DFT,
reflect-padded by ``n_fft // 2``, power 2; they are kept for the checkpoint's layout and the forward pass
computes the same transform with ``torch.stft``, which a test holds equal to the kernels' convolution) and the Slaney mel matrix ``logmel_extractor.melW``
(``(n_fft // 2 + 1, mel_bins)``, librosa's ``filters.mel`` with ``norm="slaney"``), then
``10 log10(max(x, 1e-10))`` (ref 1, no top_db). So ``Cnn14_mAP=0.431.pth``'s ``model`` dict loads into
``audio_model`` with ``load_state_dict(strict=True)`` (:func:`load_panns_cnn14`). PANNs' SpecAugment
(training-time masking, no weights) is not reproduced. ``fc_audioset`` (the AudioSet tagging head) is
kept so the checkpoint loads whole and :meth:`Cnn14.forward` can tag; it takes no part in the embedding
and is frozen.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from ..errors import CheckpointError, ConfigError
from .configuration import ClapTowerConfig

# text encoders whose pooler can be left out when it is not what is read (DDP refuses unused weights)
_POOLER_OPTIONAL = ("bert", "roberta", "mpnet", "xlm-roberta", "camembert", "distilbert")


# ------------------------------------------------------------------------------------------------ CNN14
def _dft_kernels(n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torchlibrosa's STFT kernels: real and imaginary parts of the periodic-Hann-windowed DFT, (bins, 1, n_fft)."""
    bins = n_fft // 2 + 1
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(bins, dtype=torch.float64)
    angle = -2 * math.pi * n[:, None] * k[None, :] / n_fft
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)[:, None]
    real = (torch.cos(angle) * window).T[:, None, :]
    imag = (torch.sin(angle) * window).T[:, None, :]
    return real.float(), imag.float()


def _mel_matrix(sample_rate: int, n_fft: int, mel_bins: int, fmin: float, fmax: float) -> torch.Tensor:
    """librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax).T (Slaney scale and norm): (n_fft//2 + 1, mel_bins)."""
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1, num_mel_filters=mel_bins, min_frequency=float(fmin),
        max_frequency=float(fmax), sampling_rate=int(sample_rate), norm="slaney", mel_scale="slaney",
    )
    return torch.from_numpy(np.asarray(bank, dtype=np.float32))


class _Stft(nn.Module):
    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        bins = n_fft // 2 + 1
        self.n_fft, self.hop = n_fft, hop
        self.conv_real = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        self.conv_imag = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        self.reset_kernels()
        for p in self.parameters():
            p.requires_grad_(False)

    def reset_kernels(self) -> None:
        real, imag = _dft_kernels(self.n_fft)
        with torch.no_grad():
            self.conv_real.weight.copy_(real)
            self.conv_imag.weight.copy_(imag)


class _Spectrogram(nn.Module):
    """Power spectrogram (batch, 1, frames, bins) of waveforms (batch, samples), torchlibrosa's Spectrogram."""

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.stft = _Stft(n_fft, hop)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # torch.stft computes what the conv kernels do (a test holds them together) by FFT, ~10x faster on CPU
        n_fft = self.stft.n_fft
        window = torch.hann_window(n_fft, periodic=True, dtype=waveform.dtype, device=waveform.device)
        spec = torch.stft(waveform, n_fft, hop_length=self.stft.hop, window=window, center=True, pad_mode="reflect",
                          return_complex=True)
        return spec.abs().pow(2).transpose(1, 2)[:, None]

    def forward_with_kernels(self, waveform: torch.Tensor) -> torch.Tensor:
        """The same power spectrogram by torchlibrosa's route: the STFT kernels as a strided convolution."""
        x = F.pad(waveform[:, None, :], (self.stft.n_fft // 2, self.stft.n_fft // 2), mode="reflect")
        real = self.stft.conv_real(x)
        imag = self.stft.conv_imag(x)
        return (real**2 + imag**2).transpose(1, 2)[:, None]


class _LogMel(nn.Module):
    """torchlibrosa's LogmelFilterBank(ref=1, amin=1e-10, top_db=None) with its ``melW`` key."""

    def __init__(self, sample_rate: int, n_fft: int, mel_bins: int, fmin: float, fmax: float) -> None:
        super().__init__()
        self.settings = (sample_rate, n_fft, mel_bins, fmin, fmax)
        self.melW = nn.Parameter(_mel_matrix(*self.settings), requires_grad=False)

    def reset_matrix(self) -> None:
        with torch.no_grad():
            self.melW.copy_(_mel_matrix(*self.settings))

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(power, self.melW)
        return 10.0 * torch.log10(torch.clamp(mel, min=1e-10))


class _ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=pool)


class Cnn14(nn.Module):
    """PANNs' CNN14 (``pytorch/models.py: Cnn14``) with its log-mel front end; see the module docstring.

    ``embed(waveform)`` -> ``(batch, 32 * base_channels)``: the ``fc1`` embedding (2048-d at full size) the
    DCASE 2023 retrieval baseline projects; ``forward`` also returns the AudioSet ``clipwise_output``.
    """

    def __init__(self, sample_rate: int, window_size: int, hop_size: int, mel_bins: int, fmin: float, fmax: float,
                 classes_num: int, base_channels: int = 64) -> None:
        super().__init__()
        self.spectrogram_extractor = _Spectrogram(window_size, hop_size)
        self.logmel_extractor = _LogMel(sample_rate, window_size, mel_bins, fmin, fmax)
        self.bn0 = nn.BatchNorm2d(mel_bins)
        widths = [base_channels * 2**i for i in range(6)]
        channels = [1, *widths]
        for i in range(6):
            setattr(self, f"conv_block{i + 1}", _ConvBlock(channels[i], channels[i + 1]))
        self.embedding_size = widths[-1]
        self.fc1 = nn.Linear(widths[-1], widths[-1])
        self.fc_audioset = nn.Linear(widths[-1], classes_num)
        self.fc_audioset.requires_grad_(False)

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, 1, frames, mel_bins) log-mel power in dB."""
        return self.logmel_extractor(self.spectrogram_extractor(waveform))

    def embed(self, waveform: torch.Tensor) -> torch.Tensor:
        x = self.log_mel(waveform.float())
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # normalise each mel bin
        for i in range(6):
            x = getattr(self, f"conv_block{i + 1}")(x, (2, 2) if i < 5 else (1, 1))
            x = F.dropout(x, p=0.2, training=self.training)
        x = torch.mean(x, dim=3)  # over frequency
        x = F.max_pool1d(x, 3, 1, 1) + F.avg_pool1d(x, 3, 1, 1)
        x = F.dropout(x, p=0.5, training=self.training)
        x = torch.amax(x, dim=2) + torch.mean(x, dim=2)  # over time
        x = F.dropout(x, p=0.5, training=self.training)
        return F.relu(self.fc1(x))

    def forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = self.embed(waveform)
        clipwise = torch.sigmoid(self.fc_audioset(F.dropout(embedding, p=0.5, training=self.training)))
        return {"embedding": embedding, "clipwise_output": clipwise}


def load_panns_cnn14(model: "ClapTowerModel", path_or_state_dict: "str | os.PathLike | dict") -> None:
    """Load PANNs' CNN14 weights (``Cnn14_mAP=0.431.pth``, or its ``model`` dict) into ``model.audio_model``.

    Strict: every key of the checkpoint must fill the network and every weight must come from it;
    otherwise :class:`CheckpointError` lists what is missing or unexpected.
    """
    from ..loading import load_state_dict

    if model.config.audio_encoder != "cnn14":
        raise ConfigError(f"load_panns_cnn14: the tower's audio encoder is {model.config.audio_encoder!r}, not cnn14")
    where = "the given state dict" if isinstance(path_or_state_dict, dict) else str(path_or_state_dict)
    state = path_or_state_dict if isinstance(path_or_state_dict, dict) else load_state_dict(path_or_state_dict)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    _load_strict(model.audio_model, state, where)


def _load_strict(module: nn.Module, state: dict, where: str) -> None:
    """``module.load_state_dict(state, strict=True)``, or a CheckpointError listing what does not fit."""
    from .convert import state_dict_problems

    detail = state_dict_problems(module.state_dict(), state)
    if detail:
        raise CheckpointError(f"{where}: does not fit the network: " + "; ".join(detail))
    module.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------------- the tower
def pooled_audio_output(
    audio_model: nn.Module, input_features: torch.Tensor, is_longer: torch.Tensor | None = None
) -> torch.Tensor:
    """The audio encoder's pooled output before any projection: CNN14's embedding of waveforms, or HTS-AT's
    pooler output of mels (``is_longer`` defaults to all False: no fusion)."""
    if isinstance(audio_model, Cnn14):
        return audio_model.embed(input_features)
    if is_longer is None:
        is_longer = torch.zeros((input_features.shape[0], 1), dtype=torch.bool, device=input_features.device)
    return audio_model(input_features=input_features, is_longer=is_longer).pooler_output


class ClapProjection(nn.Module):
    """LAION's projection (``linear1`` -> ReLU -> ``linear2``) or a single ``linear1``."""

    def __init__(self, in_size: int, out_size: int, kind: str) -> None:
        super().__init__()
        self.linear1 = nn.Linear(in_size, out_size)
        self.linear2 = nn.Linear(out_size, out_size) if kind == "mlp" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear1(x)
        return self.linear2(F.relu(x)) if self.linear2 is not None else x


class ClapTowerPreTrainedModel(PreTrainedModel):
    config: ClapTowerConfig
    config_class = ClapTowerConfig
    base_model_prefix = "clap_tower"
    main_input_name = "input_features"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # PANNs' init_layer / init_bn; the front end is a fixed transform, recomputed rather than drawn.
        if isinstance(module, _Stft):
            real, imag = _dft_kernels(module.n_fft)
            init.copy_(module.conv_real.weight, real)
            init.copy_(module.conv_imag.weight, imag)
        elif isinstance(module, _LogMel):
            init.copy_(module.melW, _mel_matrix(*module.settings))
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and not isinstance(module, nn.Conv1d):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ClapTowerModel):
            init.constant_(module.logit_scale, module.config.logit_scale_init)


class ClapTowerModel(ClapTowerPreTrainedModel):
    """See the module docstring. ``tokenizer`` (set by :meth:`from_pretrained` when the directory has one)
    serves :meth:`embed_texts`."""

    def __init__(self, config: ClapTowerConfig) -> None:
        super().__init__(config)
        from transformers import AutoModel, ClapAudioModel

        if config.audio_encoder == "htsat":
            self.audio_model = ClapAudioModel(config.htsat_config())
            audio_size = int(config.audio_config["hidden_size"])
        else:
            self.audio_model = Cnn14(**config.audio_config)
            audio_size = self.audio_model.embedding_size
        if config.uses_sentence_transformer:
            self.text_model = None
            text_size = config.text_embedding_dim
        else:
            text_config = config.text_model_config()
            kwargs = {}
            if text_config.model_type in _POOLER_OPTIONAL:
                kwargs["add_pooling_layer"] = config.text_pooling == "pooler"
            self.text_model = AutoModel.from_config(text_config, **kwargs)
            text_size = int(text_config.hidden_size)
        self.audio_projection = ClapProjection(audio_size, config.projection_dim, config.projection)
        self.text_projection = ClapProjection(text_size, config.projection_dim, config.projection)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self.tokenizer = None
        # Plain attributes, not submodules: the frozen Sentence-BERT stays out of state_dict, optimizer and DDP.
        object.__setattr__(self, "_sentence_encoder", None)
        self.sentence_embedding_table = None
        self.post_init()
        self.apply_freezing()

    # ------------------------------------------------------------------------------------- freezing
    def apply_freezing(self) -> None:
        """Honour ``freeze_audio`` / ``freeze_text`` (and keep the fixed front end / tagging head frozen)."""
        if self.config.freeze_audio:
            self.audio_model.requires_grad_(False)
        if self.config.freeze_text and self.text_model is not None:
            self.text_model.requires_grad_(False)
        if isinstance(self.audio_model, Cnn14):
            for part in (self.audio_model.spectrogram_extractor, self.audio_model.logmel_extractor, self.audio_model.fc_audioset):
                part.requires_grad_(False)

    def train(self, mode: bool = True) -> "ClapTowerModel":
        # A frozen tower stays in eval mode: its batch-norm statistics and dropout must not move either.
        super().train(mode)
        if self.config.freeze_audio:
            self.audio_model.eval()
        if self.config.freeze_text and self.text_model is not None:
            self.text_model.eval()
        return self

    # ------------------------------------------------------------------------------------- features
    @property
    def dimension(self) -> int:
        return int(self.config.projection_dim)

    def audio_embedding(self, input_features: torch.Tensor, is_longer: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised audio embeddings: HTS-AT mels (+ is_longer) or CNN14 waveforms -> (batch, projection_dim)."""
        return self.audio_projection(pooled_audio_output(self.audio_model, input_features, is_longer))

    def text_embedding(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                       sentence_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised text embeddings (batch, projection_dim), pooled per ``config.text_pooling``; for a
        Sentence-BERT tower, the projection of ``sentence_embeddings`` (batch, text_embedding_dim)."""
        if self.config.uses_sentence_transformer:
            if sentence_embeddings is None:
                raise ValueError("a Sentence-BERT tower embeds sentence vectors: pass sentence_embeddings (or use embed_texts)")
            weight = self.text_projection.linear1.weight
            return self.text_projection(sentence_embeddings.to(device=weight.device, dtype=weight.dtype))
        if input_ids is None:
            raise ValueError("text_embedding needs input_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        pooling = self.config.text_pooling
        hidden = out.last_hidden_state
        if pooling == "pooler":
            pooled = out.pooler_output
        elif pooling == "cls":
            pooled = hidden[:, 0]
        elif pooling == "mean":
            mask = attention_mask.to(hidden.dtype)[..., None]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        else:  # last non-padding token, wherever the padding is
            positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
            last = (attention_mask.long() * positions).argmax(dim=1)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.text_projection(pooled)

    def get_audio_features(self, input_features: torch.Tensor, is_longer: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised audio embeddings (batch, projection_dim)."""
        return F.normalize(self.audio_embedding(input_features, is_longer), dim=-1)

    def get_text_features(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                          sentence_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised text embeddings (batch, projection_dim)."""
        return F.normalize(self.text_embedding(input_ids, attention_mask, sentence_embeddings), dim=-1)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), capped at ``logit_scale_max`` (open_clip clamps the parameter at log 100)."""
        return self.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def forward(
        self,
        input_features: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        is_longer: torch.Tensor | None = None,
        sentence_embeddings: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Both embeddings (normalised) and the logit scale: what :class:`~enclap.clap.loss.ClipLoss` takes."""
        return {
            "audio_embeds": self.get_audio_features(input_features, is_longer),
            "text_embeds": self.get_text_features(input_ids, attention_mask, sentence_embeddings),
            "logit_scale": self.scale(),
        }

    # ------------------------------------------------------------------------------------- text API
    @property
    def sentence_encoder(self) -> Any:
        """The frozen Sentence-BERT of a ``sentence_transformers`` tower, loaded on first use onto the tower's device."""
        if not self.config.uses_sentence_transformer:
            raise ConfigError("this CLAP tower's text encoder is a transformers model, not a Sentence-BERT")
        if self._sentence_encoder is None:
            from .sentence_text import load_sentence_transformer

            device = next(self.parameters()).device
            self.attach_sentence_encoder(load_sentence_transformer(self.config.sentence_transformer, device=str(device)))
        return self._sentence_encoder

    def attach_sentence_encoder(self, encoder: Any) -> None:
        """Use ``encoder`` (an already loaded SentenceTransformer of ``config.sentence_transformer``); it is frozen."""
        from .sentence_text import sentence_embedding_dimension

        dimension = sentence_embedding_dimension(encoder)
        if dimension != self.config.text_embedding_dim:
            raise ConfigError(f"the Sentence-BERT {self.config.sentence_transformer!r} gives {dimension}-d vectors; "
                              f"this tower's text projection takes {self.config.text_embedding_dim}")
        encoder.requires_grad_(False)
        object.__setattr__(self, "_sentence_encoder", encoder.eval())

    def sentence_vectors(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Sentence-BERT vectors of ``texts``: from ``sentence_embedding_table`` where it has them, else computed."""
        from .sentence_text import encode_sentences

        table = self.sentence_embedding_table
        texts = list(texts)
        out = np.zeros((len(texts), self.config.text_embedding_dim), dtype=np.float32)
        missing = [i for i, t in enumerate(texts) if table is None or t not in table]
        known = [i for i in range(len(texts)) if table is not None and texts[i] in table]
        if known:
            out[known] = table.rows([texts[i] for i in known])
        if missing:
            out[missing] = encode_sentences(self.sentence_encoder, [texts[i] for i in missing], batch_size=batch_size)
        return out

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if self.tokenizer is None:
            raise ConfigError(
                "this CLAP tower has no tokenizer: load it with ClapTowerModel.from_pretrained(DIR) from a directory "
                "saved with one (save_pretrained(DIR, tokenizer=...)), or set model.tokenizer"
            )
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.max_text_length,
                              return_tensors="pt")

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalised text embeddings ``(len(texts), dimension)`` float32 (the TextEmbedder protocol)."""
        texts = list(texts)
        if any(not isinstance(t, str) for t in texts):
            raise ValueError("embed_texts takes a list of strings")
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                chunk = texts[start : start + batch_size]
                if self.config.uses_sentence_transformer:
                    vectors = torch.from_numpy(self.sentence_vectors(chunk, batch_size=batch_size))
                    emb = self.get_text_features(sentence_embeddings=vectors.to(device))
                else:
                    tokens = self.tokenize(chunk)
                    emb = self.get_text_features(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
                out[start : start + len(emb)] = emb.float().cpu().numpy()
        self.train(was_training)
        return out

    # ------------------------------------------------------------------------------------- save/load
    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, tokenizer: Any = None, **kwargs: Any) -> None:
        """transformers' save_pretrained, plus the tokenizer (given, or the model's own) and the audio front end."""
        super().save_pretrained(save_directory, *args, **kwargs)
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is not None:
            tokenizer.save_pretrained(save_directory)
        if self.config.audio_encoder == "htsat":
            htsat_feature_extractor(self.config).save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> "ClapTowerModel":
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model.apply_freezing()
        path = Path(str(pretrained_model_name_or_path)).expanduser()
        from ..text import has_tokenizer_files

        if path.is_dir() and has_tokenizer_files(path):
            model.tokenizer = load_tower_tokenizer(str(path))
        return model


def load_tower_tokenizer(name_or_path: str):
    """The tokenizer of a text tower (AutoTokenizer; GPT-2-style tokenizers get their EOS as padding)."""
    from transformers import AutoTokenizer

    from ..loading import load_pretrained

    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, name_or_path, what="CLAP text tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def htsat_feature_extractor(config: ClapTowerConfig):
    """LAION's mel front end for an HTS-AT tower (fusion or rand_trunc as the config says)."""
    from ..features.clap_embed import laion_feature_extractor

    return laion_feature_extractor(enable_fusion=config.enable_fusion, max_length_s=config.clip_seconds,
                                   feature_size=int(config.audio_config["num_mel_bins"]))


__all__ = ["ClapProjection", "ClapTowerModel", "Cnn14", "htsat_feature_extractor", "load_panns_cnn14", "load_tower_tokenizer"]
