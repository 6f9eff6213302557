"""What the captioner reads: EnCodec codes and CLAP audio embeddings of each clip.

Import from the submodules (``enclap.features.extractor``, ``.codec``, ``.clap_embed``) or from here;
the names below are resolved lazily so that importing the package stays cheap.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "EncodecTokenizer": "codec",
    "convert_encodec_checkpoint": "codec",
    "AudioEmbedder": "clap_embed",
    "ClapAudioEmbedder": "clap_embed",
    "ClipFeatures": "extractor",
    "FeatureExtractor": "extractor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
