"""Data: caption manifests (EnCLAP's CSV format), data set downloads, and the synthetic demo data set.

* :mod:`enclap.data.manifest` -- read/validate/write manifests, convert the official Clotho and AudioCaps CSVs.
* :mod:`enclap.data.download` -- resumable, checksum-verified downloads of Clotho v2.1 and ESC-50.
* :mod:`enclap.data.synthetic` -- a deterministic synthetic captioned sound-scene data set for the demo and tests.

Names are imported lazily on first use, so ``python -m enclap.data.download`` runs its module only once
and importing the package does no work.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "download": (
        "CLOTHO_V2_FILES", "ESC50_FILES", "ChecksumError", "DownloadError", "RemoteFile",
        "download_dataset", "download_file", "extract_archive",
    ),
    "manifest": (
        "AUDIOCAPS_NAME_TEMPLATE", "CaptionedClip", "clip_key", "convert_audiocaps", "convert_clotho",
        "features_path", "manifest_layout", "read_caption_pairs", "read_manifest", "resolve_audio_path",
        "validate_manifest", "write_eval_manifest", "write_manifest", "write_train_manifest",
    ),
    "synthetic": ("SyntheticConfig", "generate_dataset"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
