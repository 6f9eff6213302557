"""Checkpoint inspection: the parameter groups of a checkpoint, and which of them differ between two.

LAION-CLAP's ``check_ckpt.py`` does this for one layout with hard-coded key names; here any weights this
project writes or loads are read, keys are grouped by their first ``depth`` dotted components
(``audio_model.conv_block1``, ``text_model.encoder``...), and expectations can be checked from a script::

    enclap-ckpt list runs/clap-tiny/best [--depth 2] [--json]
    enclap-ckpt diff runs/clap-tiny/checkpoints/step_8 runs/clap-tiny/checkpoints/step_16 \\
        --expect-same text_model --expect-changed audio_projection [--atol 0] [--json]

**Layouts read** (:func:`open_checkpoint`):

* a ``save_pretrained`` directory -- a CLAP tower, a captioner, an exported ``best/`` / ``final/``:
  ``model.safetensors`` or ``pytorch_model.bin``, or shards with their ``*.index.json``;
* a training checkpoint ``checkpoints/step_N/`` (Accelerate's ``save_state`` + ``loop_state.json``): the
  weights of model 0, ``model.safetensors`` (``pytorch_model.bin`` when saved without safetensors); the
  optimizer, scheduler and RNG files beside it are not weights and are not read;
* a ``.safetensors`` file, read lazily (a tensor is loaded only when a diff compares it);
* a torch pickle (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) read with ``torch.load(weights_only=True)``, never
  running pickled code; the weights are unwrapped from ``{"state_dict": ...}`` (LAION's, Lightning's),
  ``{"model": ...}`` (PANNs') or ``{"model_state_dict": ...}``, and DDP's ``module.`` prefix is dropped when
  every key carries it.

What a file holds is decided by its content (the safetensors header, torch's zip or pickle magic), not its
name; anything else raises :class:`~enclap.errors.CheckpointError` naming the file and what was expected.

**Diff** (:func:`diff_checkpoints`): per group, each key is *same* when both sides hold it with the same
shape and dtype and ``max |a-b| <= atol`` (NaN equal to NaN; ``atol`` 0 = bit-identical values), else it
*differs*; a group reports its largest ``|a-b|``, its relative L2 change ``||a-b|| / ||a||`` over its
compared tensors, keys only in A / only in B, and shape or dtype mismatches. ``--expect-same PREFIX``
requires every group holding keys under ``PREFIX`` to be same over those keys; ``--expect-changed PREFIX``
requires every such group to differ (``--depth 1`` makes the whole tower one group). A failed expectation
exits 1 naming the groups; a prefix that matches no key is a usage error (exit 2), not a silent pass.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from .errors import CheckpointError, EnclapError

if TYPE_CHECKING:
    import torch

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".th")
# save_pretrained's and Accelerate's names for a model's weights, in the order they are preferred
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
LOOP_STATE_FILE = "loop_state.json"  # enclap.training.checkpoints.STATE_FILE (not imported: no torch at import)

# safetensors' dtype codes -> torch's names (safetensors' header spells them this way)
_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool",
}


# ------------------------------------------------------------------------------------------ reading
@dataclass
class TensorInfo:
    """Shape and dtype of one stored tensor, known without loading its values."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class Checkpoint:
    """The weights of one checkpoint: key -> :class:`TensorInfo`, values loaded on demand by :meth:`tensor`.

    ``layout`` says what was recognised (shown by ``enclap-ckpt list``), ``files`` which files hold the weights.
    """

    def __init__(self, path: Path, layout: str, files: list[Path], infos: dict[str, TensorInfo],
                 loader: Callable[[str], "torch.Tensor"]) -> None:
        self.path = path
        self.layout = layout
        self.files = files
        self.infos = infos
        self._loader = loader

    def keys(self) -> list[str]:
        return sorted(self.infos)

    def tensor(self, key: str) -> "torch.Tensor":
        """The values of ``key`` (CPU)."""
        if key not in self.infos:
            raise KeyError(f"{self.path}: no tensor '{key}'")
        return self._loader(key)


def _sniff(path: Path) -> str:
    """``"safetensors"``, ``"torch"`` (zip or legacy pickle) or ``""`` from a file's first bytes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
            size = path.stat().st_size
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err})") from err
    if head[:2] == b"PK" or head[:1] == b"\x80":  # torch.save's zip archive; a protocol-2+ pickle
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len <= size - 8:
            return "safetensors"
    return ""


def _open_safetensors(path: Path) -> tuple[dict[str, TensorInfo], Callable[[str], "torch.Tensor"]]:
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
        infos = {}
        for key in handle.keys():
            piece = handle.get_slice(key)
            infos[key] = TensorInfo(tuple(int(n) for n in piece.get_shape()), _SAFETENSORS_DTYPES.get(piece.get_dtype(), piece.get_dtype()))
    except Exception as err:  # SafetensorError, OSError... : the header or the file is damaged
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from err

    def load(key: str) -> "torch.Tensor":
        try:
            return handle.get_tensor(key)
        except Exception as err:
            raise CheckpointError(f"{path}: tensor '{key}' cannot be read ({type(err).__name__}: {err}); the file is damaged") from err

    return infos, load


def _flatten_tensors(obj: Any, path: Path, prefix: str = "") -> dict[str, "torch.Tensor"]:
    import torch

    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, dict):  # nested state dicts ({"audio": {...}, "text": {...}}) read as dotted keys
            out.update(_flatten_tensors(value, path, f"{name}."))
        else:
            raise CheckpointError(
                f"{path}: '{name}' is a {type(value).__name__}, not a tensor: not a state dict "
                f"(looked inside {', '.join(repr(w) for w in WRAPPER_KEYS)} for one)"
            )
    return out


def unwrap_state_dict(obj: Any, path: Path) -> tuple[dict[str, "torch.Tensor"], str]:
    """The tensors of a loaded torch checkpoint, and how they were found (``"state_dict"``, ``"module. stripped"``...)."""
    how = []
    for wrapper in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            how.append(f"{{{wrapper!r}: ...}}")
            break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    tensors = _flatten_tensors(obj, path)
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors")
    if all(k.startswith("module.") for k in tensors):  # DDP's wrapper, on every key of LAION's checkpoints
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
        how.append("'module.' stripped")
    return tensors, ", ".join(how)


def _open_torch(path: Path) -> tuple[dict[str, TensorInfo], Callable[[str], "torch.Tensor"], str]:
    import torch

    try:
        try:  # memory-mapped: a large checkpoint is not read whole to list it
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError...: many types
        raise CheckpointError(
            f"{path}: cannot be read as a weights-only torch checkpoint ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "only tensors and plain containers are loaded, never pickled code"
        ) from err
    tensors, how = unwrap_state_dict(obj, path)
    infos = {k: TensorInfo(tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in tensors.items()}
    return infos, tensors.__getitem__, how


def _open_file(path: Path) -> tuple[dict[str, TensorInfo], Callable[[str], "torch.Tensor"], str]:
    kind = _sniff(path)
    if kind == "safetensors":
        infos, load = _open_safetensors(path)
        return infos, load, "safetensors"
    if kind == "torch":
        infos, load, how = _open_torch(path)
        return infos, load, "torch (weights_only)" + (f", {how}" if how else "")
    expected = "a safetensors file or a torch checkpoint (.pt/.pth/.bin/.ckpt, zip or pickle)"
    if path.suffix == ".safetensors":
        raise CheckpointError(f"{path}: not a readable safetensors file (bad header); expected {expected}")
    raise CheckpointError(f"{path}: not a checkpoint (its content is neither safetensors nor a torch save); expected {expected}")


def _open_sharded(index: Path) -> tuple[dict[str, TensorInfo], Callable[[str], "torch.Tensor"], list[Path]]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index}: not a readable shard index ({type(err).__name__}: {err})") from err
    shards: dict[str, tuple[dict[str, TensorInfo], Callable]] = {}
    for name in sorted(set(weight_map.values())):
        shard = index.parent / name
        if not shard.is_file():
            raise CheckpointError(f"{index}: names shard '{name}', which is missing")
        infos, load, _ = _open_file(shard)
        shards[name] = (infos, load)
    infos: dict[str, TensorInfo] = {}
    owner: dict[str, str] = {}
    for key, name in weight_map.items():
        if key not in shards[name][0]:
            raise CheckpointError(f"{index}: '{key}' is mapped to {name}, which does not hold it")
        infos[key], owner[key] = shards[name][0][key], name
    return infos, (lambda key: shards[owner[key]][1](key)), [index.parent / n for n in sorted(shards)]


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The weights at ``path``, any layout of the module docstring; :class:`CheckpointError` otherwise."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file():
        infos, load, how = _open_file(path)
        return Checkpoint(path, how, [path], infos, load)
    training = (path / LOOP_STATE_FILE).is_file()
    kind = "training checkpoint (Accelerate save_state), model 0" if training else "save_pretrained directory"
    for name in INDEX_FILES:
        if (path / name).is_file():
            infos, load, files = _open_sharded(path / name)
            return Checkpoint(path, f"{kind}, {len(files)} shards", files, infos, load)
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            infos, load, how = _open_file(path / name)
            return Checkpoint(path, f"{kind}: {name} ({how})", [path / name], infos, load)
    if any(p.name.startswith("pytorch_model_fsdp") for p in path.iterdir()):
        raise CheckpointError(f"{path}: an FSDP sharded state (pytorch_model_fsdp_*): merge it first "
                              "(`accelerate merge-weights DIR OUT`), then inspect the merged file")
    raise CheckpointError(
        f"{path}: no weights found (looked for {', '.join(INDEX_FILES + WEIGHT_FILES)}); expected a save_pretrained "
        "directory, a checkpoints/step_N directory, or a weights file"
    )


def strip_prefix(checkpoint: Checkpoint, prefix: str) -> Checkpoint:
    """``checkpoint`` with ``prefix.`` removed from its keys when every key carries it (else unchanged).

    A training checkpoint holds the task's module (``tower.`` for a CLAP run, ``model.`` for the
    captioner): stripping it makes ``checkpoints/step_N`` comparable with an exported ``best/``.
    """
    prefix = prefix.rstrip(".") + "."
    if not checkpoint.infos or not all(k.startswith(prefix) for k in checkpoint.infos):
        return checkpoint
    infos = {k[len(prefix):]: v for k, v in checkpoint.infos.items()}
    load = checkpoint._loader
    return Checkpoint(checkpoint.path, f"{checkpoint.layout}, '{prefix}' stripped", checkpoint.files, infos,
                      lambda key: load(prefix + key))


def common_prefix_hint(a: Checkpoint, b: Checkpoint) -> str:
    """Advice when two checkpoints share no key because one nests the other's keys under a prefix."""
    if set(a.infos) & set(b.infos):
        return ""
    for outer, inner, name in ((a, b, "A"), (b, a, "B")):
        heads = {k.split(".", 1)[0] for k in outer.infos}
        if len(heads) == 1 and "." in next(iter(outer.infos)):
            head = heads.pop()
            if {k[len(head) + 1:] for k in outer.infos} & set(inner.infos):
                return f"no key in common: every key of {name} starts with '{head}.'; add --strip {head}"
    return "no key in common"


# ------------------------------------------------------------------------------------------ groups
def group_of(key: str, depth: int) -> str:
    """The first ``depth`` dotted components of ``key`` (the whole key when it has fewer)."""
    return ".".join(key.split(".")[: max(int(depth), 1)])


def under_prefix(key: str, prefix: str) -> bool:
    """True when ``key`` is ``prefix`` or lies below it on a dotted boundary (``text`` does not match ``text_model``)."""
    prefix = prefix.rstrip(".")
    return key == prefix or key.startswith(prefix + ".")


@dataclass
class GroupSummary:
    group: str
    tensors: int
    parameters: int
    dtypes: dict[str, int]  # dtype -> tensors


def summarize(checkpoint: Checkpoint, depth: int = 2) -> list[GroupSummary]:
    """Per group (sorted by name): tensors, scalar count, dtypes."""
    groups: dict[str, GroupSummary] = {}
    for key in checkpoint.keys():
        info = checkpoint.infos[key]
        g = groups.setdefault(group_of(key, depth), GroupSummary(group_of(key, depth), 0, 0, {}))
        g.tensors += 1
        g.parameters += info.numel
        g.dtypes[info.dtype] = g.dtypes.get(info.dtype, 0) + 1
    return [groups[name] for name in sorted(groups)]


@dataclass
class GroupDiff:
    """How one group differs between checkpoints A and B (see the module docstring)."""

    group: str
    status: str  # "same" | "differs" | "only in A" | "only in B"
    compared: int = 0  # keys in both with the same shape
    changed: int = 0  # of those, keys with max |a-b| > atol (or another dtype)
    max_abs_diff: float = 0.0
    relative_l2: float = 0.0  # ||a-b|| / ||a|| over the compared tensors
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    shape_mismatches: list[str] = field(default_factory=list)  # "key: (a shape) vs (b shape)"
    dtype_mismatches: list[str] = field(default_factory=list)
    changed_keys: list[str] = field(default_factory=list)


def _tensor_difference(a: "torch.Tensor", b: "torch.Tensor") -> tuple[float, float, float]:
    """(max |a-b|, ||a-b||^2, ||a||^2) in float64; NaN against NaN counts as equal, NaN against a number as inf."""
    import torch

    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    delta = (a64 - b64).abs()
    both_nan = torch.isnan(a64) & torch.isnan(b64)
    delta = torch.where(both_nan, torch.zeros_like(delta), delta)
    delta = torch.nan_to_num(delta, nan=math.inf)
    finite_a = torch.nan_to_num(a64, nan=0.0, posinf=0.0, neginf=0.0)
    max_abs = float(delta.max()) if delta.numel() else 0.0
    return max_abs, float((delta**2).sum()), float((finite_a**2).sum())


@dataclass
class KeyDiff:
    """How one key compares: ``where`` is "both", "only in A" or "only in B"."""

    where: str
    shape_a: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    dtype_a: str = ""
    dtype_b: str = ""
    max_abs: float = 0.0
    sq_diff: float = 0.0
    sq_norm_a: float = 0.0


def compare_keys(a: Checkpoint, b: Checkpoint) -> dict[str, KeyDiff]:
    """Every key of either checkpoint compared once (values loaded one key at a time)."""
    out = {}
    for key in sorted(set(a.infos) | set(b.infos)):
        ia, ib = a.infos.get(key), b.infos.get(key)
        if ib is None:
            out[key] = KeyDiff("only in A", shape_a=ia.shape, dtype_a=ia.dtype)
            continue
        if ia is None:
            out[key] = KeyDiff("only in B", shape_b=ib.shape, dtype_b=ib.dtype)
            continue
        d = KeyDiff("both", ia.shape, ib.shape, ia.dtype, ib.dtype)
        if ia.shape == ib.shape:
            d.max_abs, d.sq_diff, d.sq_norm_a = _tensor_difference(a.tensor(key), b.tensor(key))
        out[key] = d
    return out


def group_differences(compared: dict[str, KeyDiff], depth: int = 2, atol: float = 0.0,
                      keys: Callable[[str], bool] | None = None) -> list[GroupDiff]:
    """Per group (sorted by name) of :func:`compare_keys`'s result; ``keys`` limits the keys counted."""
    by_group: dict[str, list[str]] = {}
    for key in sorted(compared):
        if keys is None or keys(key):
            by_group.setdefault(group_of(key, depth), []).append(key)
    out = []
    for name, members in by_group.items():
        g = GroupDiff(name, "same")
        sq_diff = sq_norm = 0.0
        for key in members:
            d = compared[key]
            if d.where == "only in A":
                g.only_in_a.append(key)
            elif d.where == "only in B":
                g.only_in_b.append(key)
            elif d.shape_a != d.shape_b:
                g.shape_mismatches.append(f"{key}: {list(d.shape_a)} vs {list(d.shape_b)}")
            else:
                g.compared += 1
                sq_diff, sq_norm = sq_diff + d.sq_diff, sq_norm + d.sq_norm_a
                g.max_abs_diff = max(g.max_abs_diff, d.max_abs)
                if d.dtype_a != d.dtype_b:
                    g.dtype_mismatches.append(f"{key}: {d.dtype_a} vs {d.dtype_b}")
                if d.max_abs > atol or d.dtype_a != d.dtype_b:
                    g.changed += 1
                    g.changed_keys.append(key)
        g.relative_l2 = math.sqrt(sq_diff) / math.sqrt(sq_norm) if sq_norm > 0 else (0.0 if sq_diff == 0 else math.inf)
        if g.compared == 0 and not g.shape_mismatches and not (g.only_in_a and g.only_in_b):
            g.status = "only in A" if g.only_in_a else "only in B"
        elif g.changed or g.only_in_a or g.only_in_b or g.shape_mismatches:
            g.status = "differs"
        out.append(g)
    return out


def diff_checkpoints(a: Checkpoint, b: Checkpoint, depth: int = 2, atol: float = 0.0) -> list[GroupDiff]:
    """Per group (sorted by name) of either checkpoint: how B differs from A."""
    return group_differences(compare_keys(a, b), depth, atol)


def check_expectations(compared: dict[str, KeyDiff], *, depth: int, atol: float, expect_same: Sequence[str] = (),
                       expect_changed: Sequence[str] = ()) -> list[str]:
    """Every failed ``--expect-same`` / ``--expect-changed`` as a message naming its groups (empty: all hold).

    ``compared`` is :func:`compare_keys`'s result. Raises :class:`CheckpointError` for a prefix that
    matches no key of either checkpoint (a typo must not pass as "nothing changed").
    """
    failures = []
    for prefix, want_same in [(p, True) for p in expect_same] + [(p, False) for p in expect_changed]:
        diffs = group_differences(compared, depth, atol, keys=lambda key, p=prefix: under_prefix(key, p))
        if not diffs:
            raise CheckpointError(f"prefix '{prefix}' matches no key of either checkpoint; "
                                  f"`enclap-ckpt list PATH --depth {depth}` shows the groups")
        if want_same:
            bad = [d for d in diffs if d.status != "same"]
            if bad:
                failures.append(f"expected '{prefix}' unchanged, but " + "; ".join(_why(d) for d in bad))
        else:
            bad = [d for d in diffs if d.status == "same"]
            if bad:
                failures.append(f"expected '{prefix}' changed, but these groups are identical: " + ", ".join(d.group for d in bad))
    return failures


def _why(d: GroupDiff) -> str:
    parts = []
    if d.changed:
        parts.append(f"{d.changed}/{d.compared} tensors changed (max |a-b| {d.max_abs_diff:.3g}, first {d.changed_keys[0]})")
    if d.only_in_a:
        parts.append(f"{len(d.only_in_a)} key(s) only in A")
    if d.only_in_b:
        parts.append(f"{len(d.only_in_b)} key(s) only in B")
    if d.shape_mismatches:
        parts.append(f"{len(d.shape_mismatches)} shape mismatch(es), first {d.shape_mismatches[0]}")
    return f"{d.group}: " + ", ".join(parts)


# ------------------------------------------------------------------------------------------ printing
def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[int] = ()) -> str:
    rows = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_summary(checkpoint: Checkpoint, groups: list[GroupSummary]) -> str:
    total_t, total_p = sum(g.tensors for g in groups), sum(g.parameters for g in groups)
    rows = [(g.group, g.tensors, f"{g.parameters:,}", ", ".join(f"{d} x{n}" for d, n in sorted(g.dtypes.items()))) for g in groups]
    rows.append(("total", total_t, f"{total_p:,}", ""))
    return f"{checkpoint.path}: {checkpoint.layout}\n" + _table(("group", "tensors", "parameters", "dtypes"), rows, right=(1, 2))


def format_diff(a: Checkpoint, b: Checkpoint, diffs: list[GroupDiff], atol: float, show_same: bool = False) -> str:
    """The diff table: every group with ``show_same``, else the groups that are not the same, and a count."""
    rows = []
    for d in diffs if show_same else [d for d in diffs if d.status != "same"]:
        notes = []
        if d.only_in_a:
            notes.append(f"{len(d.only_in_a)} only in A")
        if d.only_in_b:
            notes.append(f"{len(d.only_in_b)} only in B")
        if d.shape_mismatches:
            notes.append(f"{len(d.shape_mismatches)} shape mismatch")
        if d.dtype_mismatches:
            notes.append(f"{len(d.dtype_mismatches)} dtype change")
        figures = (f"{d.max_abs_diff:.3g}", f"{d.relative_l2:.3g}") if d.compared else ("-", "-")
        rows.append((d.group, d.status, f"{d.changed}/{d.compared}", *figures, ", ".join(notes)))
    same = sum(d.status == "same" for d in diffs)
    head = f"A: {a.path} ({a.layout})\nB: {b.path} ({b.layout})\n"
    tail = f"{same} of {len(diffs)} groups same (atol {atol:g})"
    if not show_same and 0 < same < len(diffs):
        names = [d.group for d in diffs if d.status == "same"]
        tail += ": " + ", ".join(names[:12]) + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")
    if not rows:
        return head + tail
    return head + _table(("group", "status", "changed", "max|a-b|", "rel L2", "notes"), rows, right=(2, 3, 4)) + "\n" + tail


# ------------------------------------------------------------------------------------------ command line
def _json_default(value: Any) -> Any:
    return asdict(value) if hasattr(value, "__dataclass_fields__") else str(value)


def main(argv: Sequence[str] | None = None) -> int:
    """``enclap-ckpt {list,diff}``: the parameter groups of a checkpoint, and how two checkpoints differ."""
    parser = argparse.ArgumentParser(prog="enclap-ckpt", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="parameter groups: tensors, parameters, dtypes")
    p_list.add_argument("path", help="a model directory, checkpoints/step_N, a .safetensors or a .pt/.pth/.bin file")
    p_diff = sub.add_parser("diff", help="which groups differ between A and B, and by how much")
    p_diff.add_argument("a")
    p_diff.add_argument("b")
    p_diff.add_argument("--atol", type=float, default=0.0, help="a tensor is the same when max |a-b| <= atol (default 0: identical)")
    p_diff.add_argument("--expect-same", action="append", default=[], metavar="PREFIX",
                        help="exit 1 unless every group under PREFIX is the same (repeatable), e.g. a frozen text_model")
    p_diff.add_argument("--expect-changed", action="append", default=[], metavar="PREFIX",
                        help="exit 1 unless every group under PREFIX differs (repeatable)")
    p_diff.add_argument("--all", action="store_true", help="print every group (default: the differing ones, and a count of the same)")
    for p in (p_list, p_diff):
        p.add_argument("--strip", action="append", default=[], metavar="PREFIX",
                       help="drop PREFIX. from the keys of a checkpoint whose every key has it (repeatable), e.g. "
                            "'tower' to compare a CLAP run's checkpoints/step_N with its best/")
        p.add_argument("--depth", type=int, default=2, help="group keys by their first N dotted components (default 2)")
        p.add_argument("--json", metavar="FILE", nargs="?", const="-", help="write JSON (to FILE, or stdout with no FILE)")
    args = parser.parse_args(argv)
    if args.depth < 1:
        parser.error("--depth must be >= 1")
    try:
        if args.command == "list":
            checkpoint = open_checkpoint(args.path)
            for prefix in args.strip:
                checkpoint = strip_prefix(checkpoint, prefix)
            groups = summarize(checkpoint, args.depth)
            payload: dict[str, Any] = {
                "path": str(checkpoint.path), "layout": checkpoint.layout, "files": [str(f) for f in checkpoint.files],
                "depth": args.depth, "groups": groups,
                "total": {"tensors": sum(g.tensors for g in groups), "parameters": sum(g.parameters for g in groups)},
            }
            text = format_summary(checkpoint, groups)
            status = 0
        else:
            a, b = open_checkpoint(args.a), open_checkpoint(args.b)
            for prefix in args.strip:
                a, b = strip_prefix(a, prefix), strip_prefix(b, prefix)
            compared = compare_keys(a, b)
            diffs = group_differences(compared, args.depth, args.atol)
            failures = check_expectations(compared, depth=args.depth, atol=args.atol, expect_same=args.expect_same,
                                          expect_changed=args.expect_changed)
            payload = {"a": str(a.path), "b": str(b.path), "depth": args.depth, "atol": args.atol, "groups": diffs,
                       "expectation_failures": failures}
            text = format_diff(a, b, diffs, args.atol, show_same=args.all)
            if hint := common_prefix_hint(a, b):
                text += f"\nnote: {hint}"
            status = 1 if failures else 0
    except EnclapError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json == "-":
        print(json.dumps(payload, indent=2, default=_json_default))
    else:
        print(text)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    if status:
        print("\n".join(f"error: {f}" for f in payload["expectation_failures"]), file=sys.stderr)
    return status


__all__ = [
    "Checkpoint",
    "GroupDiff",
    "GroupSummary",
    "TensorInfo",
    "KeyDiff",
    "check_expectations",
    "compare_keys",
    "diff_checkpoints",
    "group_differences",
    "group_of",
    "main",
    "open_checkpoint",
    "strip_prefix",
    "summarize",
    "under_prefix",
    "unwrap_state_dict",
]

if __name__ == "__main__":
    raise SystemExit(main())
