"""Configs as data: YAML files in ``cfg/`` mapped onto typed dataclasses, with command-line overrides.

Every job declares its settings as a dataclass (the schema). :func:`load_config` merges, in order,
the schema's defaults, a YAML file (which may name a ``base:`` file it extends) and ``key=value``
overrides, and checks the result against the schema before any work starts: an unknown key or a value
of the wrong type fails with the file and key named, instead of an hour into a run.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence, TypeVar

from .errors import ConfigError

T = TypeVar("T")

BASE_KEY = "base"


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> Any:
    from omegaconf import OmegaConf

    path = path.expanduser().resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' includes form a cycle: {' -> '.join(map(str, seen + (path,)))}")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        node = OmegaConf.load(path)
    except Exception as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if node is None or not hasattr(node, "keys"):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    base = node.pop(BASE_KEY, None)
    if base is None:
        return node
    base_path = Path(base) if Path(base).is_absolute() else path.parent / base
    return OmegaConf.merge(_read_yaml(base_path, seen + (path,)), node)


def load_config(schema: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a ``schema`` instance from defaults, an optional YAML file and ``key=value`` overrides."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"{schema!r} is not a dataclass")
    where = str(path) if path is not None else "defaults"
    merged = OmegaConf.structured(schema)
    try:
        if path is not None:
            merged = OmegaConf.merge(merged, _read_yaml(Path(path)))
        if overrides:
            where = f"{where} + overrides {list(overrides)}"
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"overrides must look like key=value, got {bad}")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        result = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{where}: invalid config{f' at {key!r}' if key else ''}: {msg}") from err
    validate = getattr(result, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from err
    return result  # type: ignore[return-value]


def config_to_dict(config: Any) -> dict:
    """A plain dict of a config dataclass (for saving next to the outputs of a run)."""
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | os.PathLike) -> None:
    """Write the fully resolved config as YAML, so a run can be repeated exactly."""
    from omegaconf import OmegaConf

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
