"""The one rule for every pretrained part: a hub id or a local path, or a clear error.

Every pretrained component (BART, tokenizer, EnCodec, CLAP) is loaded through :func:`load_pretrained`,
which tries a local path first and the model hub second, and turns the many ways that can fail
(no such directory, no network, gated repo, wrong files) into one :class:`PretrainedNotFoundError`
that says what was looked for and how to supply it. Random initialisation is never a fallback here:
callers that want random weights ask for them explicitly in their config.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, TypeVar

from .errors import CheckpointError, PretrainedNotFoundError

T = TypeVar("T")

# "org/name" or "name" as accepted by the model hub; anything else can only be a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def looks_like_hub_id(name_or_path: str) -> bool:
    """True when ``name_or_path`` could be a model hub id (and so is worth asking the hub for)."""
    if name_or_path.startswith((".", "/", "~")) or name_or_path.endswith((".pt", ".th", ".bin", ".ckpt")):
        return False
    return bool(_HUB_ID.match(name_or_path))


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def load_pretrained(
    loader: Callable[[str], T],
    name_or_path: str | os.PathLike,
    *,
    what: str,
    how_to_get: str = "",
) -> T:
    """Load ``what`` with ``loader(name_or_path)`` from a local path, or from the hub when it is a hub id.

    ``loader`` is e.g. ``EncodecModel.from_pretrained``. A missing local path fails at once, without
    a network round trip; a hub id that cannot be fetched (offline, unknown, gated) fails with a
    message that names the id and explains how to provide the files locally.
    """
    name = str(name_or_path)
    expanded = Path(name).expanduser()
    if expanded.exists():
        try:
            return loader(str(expanded))
        except (OSError, ValueError) as err:
            raise PretrainedNotFoundError(
                f"Could not load {what} from local path '{expanded}': {err}"
            ) from err
    if not looks_like_hub_id(name):
        raise PretrainedNotFoundError(
            f"Could not load {what}: '{name}' does not exist on this machine and is not a model hub id."
            + (f" {how_to_get}" if how_to_get else "")
        )
    try:
        return loader(name)
    except (OSError, ValueError, EnvironmentError) as err:
        reason = "the hub is disabled (HF_HUB_OFFLINE=1) and it is not in the local cache" if hub_offline() else (
            f"it is not in the local cache and the model hub could not provide it ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        )
        raise PretrainedNotFoundError(
            f"Could not load {what} '{name}': {reason}. Download it where the hub is reachable "
            f"(`hf download {name} --local-dir DIR`) and pass DIR instead of '{name}', or point HF_HOME at "
            f"a cache that holds it." + (f" {how_to_get}" if how_to_get else "")
        ) from err


def find_weights_file(directory: str | os.PathLike) -> Path:
    """The weights file of a ``save_pretrained``-style directory (safetensors preferred)."""
    directory = Path(directory)
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise PretrainedNotFoundError(
        f"{directory}: no weights file (looked for {', '.join(WEIGHT_FILES)})"
    )


def load_state_dict(path: str | os.PathLike) -> dict:
    """Read a state dict safely: safetensors, or a torch pickle with ``weights_only=True``.

    Accepts a directory (``save_pretrained`` layout) or a file. Checkpoints that wrap the weights
    (``{"state_dict": ...}`` as LAION's and Lightning's do, ``{"model": ...}``) are unwrapped.
    """
    import torch

    path = Path(path).expanduser()
    if path.is_dir():
        path = find_weights_file(path)
    if not path.is_file():
        raise PretrainedNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types
        raise CheckpointError(
            f"{path}: cannot be read as a weights-only torch checkpoint ({type(err).__name__}: {err}). "
            "Only tensors and plain containers are loaded, never arbitrary pickled code."
        ) from err
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj
