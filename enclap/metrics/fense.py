"""FENSE and SPIDEr-FL: their models (SBERT, the error detector), whether they are here, and fetching them."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

from .integrity import ChecksumMismatchError, verify_sha256

# FENSE resources (aac_metrics/functional/fer.py, sbert_sim.py).
FENSE_SBERT_MODEL = "paraphrase-TinyBERT-L6-v2"
FENSE_ECHECKER = "echecker_clotho_audiocaps_base"
FENSE_ECHECKER_URLS = {
    "echecker_clotho_audiocaps_base": "https://github.com/blmoistawinde/fense/releases/download/V0.1/echecker_clotho_audiocaps_base.ckpt",
    "echecker_clotho_audiocaps_tiny": "https://github.com/blmoistawinde/fense/releases/download/V0.1/echecker_clotho_audiocaps_tiny.ckpt",
}
# SHA-256 of the error detectors as FENSE publishes them: the digests aac-metrics 0.5.4 checks after its own
# download (aac_metrics/functional/fer.py), but not for a file already in $FENSE_DATA (copied from another
# machine, say), which it then unpickles. Here every use checks them first.
FENSE_ECHECKER_SHA256: dict[str, str] = {
    "echecker_clotho_audiocaps_base": "1a719f090af70614bbdb9f9437530b7e133c48cfa4a58d964de0d47fc974a2fa",
    "echecker_clotho_audiocaps_tiny": "90ed0ac5033ec497ec66d4f68588053813e085671136dae312097c96c504f673",
}
FENSE_PENALTY = 0.9  # aac-metrics' default for FENSE and SPIDEr-FL

FENSE_HOW_TO = (
    "run `enclap-metrics setup --fense` where the network allows (fetches the SBERT model and the error "
    "detector), or copy the Hugging Face cache and $FENSE_DATA from a machine that has them"
)


def download_fense_models(device: str = "cpu") -> None:
    """Fetch FENSE's SBERT model and error detector into their caches (needs the network)."""
    from aac_metrics.functional.fense import _load_models_and_tokenizer

    _load_models_and_tokenizer(FENSE_SBERT_MODEL, FENSE_ECHECKER, None, device=device)
    verify_echecker(FENSE_ECHECKER)


def echecker_path(echecker: str) -> Path:
    """Where aac-metrics reads the error detector ``echecker`` from: ``$FENSE_DATA/<echecker>.ckpt``."""
    return _fense_data_dir() / f"{echecker}.ckpt"


def verify_echecker(echecker: str) -> Path:
    """The error detector's checkpoint, once its SHA-256 is the published one (:data:`FENSE_ECHECKER_SHA256`);
    raises :class:`~enclap.metrics.integrity.ChecksumMismatchError` naming the file and both digests."""
    ckpt = echecker_path(echecker)
    fix = f"delete it and run `enclap-metrics setup --fense`, or copy the file published at {FENSE_ECHECKER_URLS.get(echecker)}"
    verify_sha256(ckpt, echecker, FENSE_ECHECKER_SHA256, fix)
    return ckpt


def _hf_cached(repo_or_path: str, filenames: Sequence[str]) -> bool:
    """Whether a model is a local folder or has one of ``filenames`` in the Hugging Face cache (no network)."""
    if Path(os.path.expanduser(repo_or_path)).is_dir():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for name in filenames:
        try:
            hit = try_to_load_from_cache(repo_or_path, name)
        except Exception:  # malformed repo id: then it is not cached either
            return False
        if isinstance(hit, str):
            return True
    return False


def _fense_data_dir() -> Path:
    if os.environ.get("FENSE_DATA"):
        return Path(os.path.expanduser(os.environ["FENSE_DATA"]))
    import torch

    return Path(torch.hub.get_dir()) / "fense_data"


def _echecker_problems(echecker: str) -> list[str]:
    if echecker not in FENSE_ECHECKER_URLS:
        return [f"unknown FENSE error detector '{echecker}' (known: {', '.join(FENSE_ECHECKER_URLS)})"]
    ckpt = echecker_path(echecker)
    if not ckpt.is_file():
        return [f"the FENSE error detector {ckpt} is missing (from {FENSE_ECHECKER_URLS[echecker]}; FENSE_DATA sets the folder)"]
    try:
        verify_echecker(echecker)  # before anything unpickles it
    except ChecksumMismatchError as err:
        return [str(err)]
    try:
        import torch

        # mmap: reads the small "model_type" entry without loading the ~400 MB of weights.
        model_type = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["model_type"]
    except Exception as err:  # a corrupt or foreign file: say so rather than crash the check
        return [f"the FENSE error detector {ckpt} cannot be read ({type(err).__name__}: {err})"]
    if not _hf_cached(str(model_type), ("config.json",)):
        return [f"the error detector's encoder '{model_type}' is neither a local folder nor in the Hugging Face cache"]
    return []


def _fense_problems(sbert_model: str, echecker: str, *, need_sbert: bool) -> list[str]:
    if importlib.util.find_spec("sentence_transformers") is None:
        return ["sentence-transformers is not installed (pip install sentence-transformers)"]
    problems: list[str] = []
    if need_sbert:
        repo = sbert_model if "/" in sbert_model else f"sentence-transformers/{sbert_model}"
        if not (_hf_cached(sbert_model, ("modules.json", "config.json")) or _hf_cached(repo, ("modules.json", "config.json"))):
            problems.append(f"the SBERT model '{sbert_model}' is neither a local folder nor in the Hugging Face cache")
    return problems + _echecker_problems(echecker)
