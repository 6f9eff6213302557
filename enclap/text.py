"""Caption tokenizers: BART's, loaded by the loading rule, or a small one trained on a caption corpus.

The released EnCLAP checkpoints use BART's byte-level BPE (``facebook/bart-base``; BOS 0, PAD 1, EOS 2).
A model trained from scratch on a small corpus (the embedded demo, the tests) uses a byte-level BPE
trained here on its captions, with the same special-token layout so that every generation default
(forced BOS 0 / EOS 2, pad 1) holds for both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .loading import load_pretrained

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_TOKENIZER = "facebook/bart-base"
# BART's layout: the model config, the collators and generation all assume these ids.
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


def has_tokenizer_files(directory: str | os.PathLike) -> bool:
    return any((Path(directory) / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(name_or_path: str | os.PathLike = DEFAULT_TOKENIZER) -> "PreTrainedTokenizerBase":
    """BART-style tokenizer from a hub id or a local directory (see :func:`enclap.loading.load_pretrained`)."""
    from transformers import AutoTokenizer

    def loader(path: str) -> "PreTrainedTokenizerBase":
        config_file = Path(path) / "config.json"
        if config_file.is_file() and "encodec_pad_token_id" in json.loads(config_file.read_text()):
            # A captioner checkpoint: its config.json says model_type "bart", and AutoTokenizer would read it
            # as a plain BART config, which takes the codec pad id (1024) for an out-of-vocabulary text token.
            from .model.configuration import EnClapBartConfig

            return AutoTokenizer.from_pretrained(path, config=EnClapBartConfig.from_pretrained(path))
        return AutoTokenizer.from_pretrained(path)

    tokenizer = load_pretrained(
        loader,
        name_or_path,
        what="caption tokenizer",
        how_to_get="The released EnCLAP checkpoints use facebook/bart-base's tokenizer.",
    )
    check_special_tokens(tokenizer, str(name_or_path))
    return tokenizer


def check_special_tokens(tokenizer: "PreTrainedTokenizerBase", source: str) -> None:
    """Refuse a tokenizer whose BOS/PAD/EOS ids differ from BART's 0/1/2: generation would silently break."""
    got = (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id)
    if got != (0, 1, 2):
        raise ValueError(f"{source}: tokenizer has BOS/PAD/EOS ids {got}; EnCLAP needs BART's (0, 1, 2)")


def train_caption_tokenizer(captions: Iterable[str], vocab_size: int = 1000, min_frequency: int = 1) -> "PreTrainedTokenizerBase":
    """Train a byte-level BPE on ``captions`` with BART's special tokens and post-processing.

    Deterministic for the same captions in the same order. Returns a ``BartTokenizerFast`` that can be
    saved with ``save_pretrained`` next to a model and loaded back with :func:`load_tokenizer`.
    """
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import BartTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False, lowercase=False)
    bpe.train_from_iterator(
        list(captions), vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False, trim_offsets=True)
    tokenizer = BartTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    check_special_tokens(tokenizer, "trained tokenizer")
    return tokenizer
