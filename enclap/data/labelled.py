"""Labelled audio for classifiers: ESC-50's ``meta/esc50.csv`` or a ``file,label[,fold][,source]`` CSV, and
splits that keep every source recording on one side.

A clip of ESC-50 is a 5 s cut of a freesound recording (``src_file``); several clips come from the same
recording and sound alike, so a split that put some of them in training and others in the test would
measure memory of the recording, not the class. Every split here is therefore made of whole *source
groups*: ESC-50's ``src_file``, a generic CSV's ``source`` column, or, where neither is given, each clip
alone. Rows come from :func:`enclap.clap.evaluation.read_labelled_csv` (the zero-shot evaluation's reader).

Split modes (:data:`SPLIT_MODES`):

* ``esc50_fold5``: the folds other than ``test_fold`` (default 5) train; ``test_fold`` is split by source
  into validation and test (``validation_share`` of its clips, default half, stratified by class), as
  the custom CLAP recipes do;
* ``crossval``: every fold is the test split once (5 runs on ESC-50); the training folds give up a
  source-grouped ``validation_share`` of their clips (default 1/8: half a fold of four) for validation;
* ``files``: separate train / validation / test CSVs (the demo data's ``labels/{split}.csv``); a source
  named in two of them is an error.

Source splits are deterministic from the seed: groups are ordered by name, shuffled with a generator
seeded by ``(seed, stream)``, and dealt per class to whichever side is further below its share.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import ConfigError, ManifestError

SPLIT_MODES = ("esc50_fold5", "crossval", "files")
# generator streams: one per kind of split, so that changing one never moves another
_FOLD_STREAM = 0xF05
_CROSSVAL_STREAM = 0xC5


@dataclass(frozen=True)
class LabelledClip:
    """One labelled clip: ``file`` relative to the audio root, its class, fold and source recording."""

    file: str
    label: str
    fold: str = ""
    source: str = ""
    target: str = ""  # ESC-50's class index ("" elsewhere)
    origin: str = ""  # "<csv>:<line>", for messages

    @property
    def line(self) -> str:
        """The clip's line in its CSV."""
        return self.origin.rsplit(":", 1)[-1]

    @property
    def group(self) -> str:
        """The source group the clip belongs to (its source recording, or the clip itself)."""
        return f"source:{self.source}" if self.source else f"file:{self.file}"


@dataclass
class Split:
    """Indices into a clip list: ``train``, ``validation`` and ``test`` (any may be empty)."""

    name: str
    train: list[int]
    validation: list[int] = field(default_factory=list)
    test: list[int] = field(default_factory=list)

    def sides(self) -> dict[str, list[int]]:
        return {"train": self.train, "validation": self.validation, "test": self.test}

    def describe(self, clips: Sequence[LabelledClip]) -> str:
        parts = []
        for side, indices in self.sides().items():
            groups = len({clips[i].group for i in indices})
            parts.append(f"{side} {len(indices)} clips ({groups} sources)")
        return f"{self.name}: " + ", ".join(parts)


def read_labelled(path: str | os.PathLike) -> list[LabelledClip]:
    """The clips of ESC-50's esc50.csv or a ``file,label[,fold][,source]`` CSV (errors name the file and line)."""
    from ..clap.evaluation import read_labelled_csv

    return [LabelledClip(file=r["file"], label=r["label"], fold=r["fold"], source=r["source"], target=r["target"],
                         origin=f"{path}:{r['line']}") for r in read_labelled_csv(path)]


def class_names(clips: Sequence[LabelledClip]) -> list[str]:
    """The classes in index order: ESC-50's ``target`` order when every clip has one (and they agree), else sorted names."""
    labels = sorted({c.label for c in clips})
    if clips and all(c.target.isdigit() for c in clips):
        by_target: dict[int, set[str]] = defaultdict(set)
        for c in clips:
            by_target[int(c.target)].add(c.label)
        consistent = all(len(names) == 1 for names in by_target.values()) and len(by_target) == len(labels)
        if consistent:
            return [next(iter(by_target[t])) for t in sorted(by_target)]
    return labels


def resolve_audio(clips: Sequence[LabelledClip], audio_root: str | os.PathLike, csv_path: str | os.PathLike) -> list[str]:
    """Every clip's audio file under ``audio_root``, checked up front; all missing files are listed at once."""
    from .manifest import resolve_audio_path
    from ..errors import AudioError

    paths, problems = [], []
    for clip in clips:
        try:
            paths.append(str(resolve_audio_path(clip.file, audio_root)))
        except AudioError as err:
            problems.append(f"line {clip.line}: audio file '{clip.file}' not found under {audio_root} ({err.reason})")
    if problems:
        raise ManifestError(csv_path, problems)
    return paths


# ------------------------------------------------------------------------------------------ source splits
def source_groups(clips: Sequence[LabelledClip], indices: Sequence[int]) -> dict[str, list[int]]:
    """``indices`` grouped by source recording (groups in name order, indices in the order given)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i in indices:
        groups[clips[i].group].append(i)
    return dict(sorted(groups.items()))


def split_by_source(
    clips: Sequence[LabelledClip], indices: Sequence[int], share: float, *, seed: int, stream: int = 0
) -> tuple[list[int], list[int]]:
    """``indices`` in two parts of whole source groups, the first holding about ``share`` of each class's clips.

    A group's class is its most frequent label. Within a class, the groups are shuffled (seeded by
    ``(seed, stream)``) and each goes to the side whose count is further below its target, so the result
    depends on the seed and the clips alone. Indices keep their given order within each part.
    """
    if not 0.0 < share < 1.0:
        raise ConfigError(f"a split share must be between 0 and 1 (exclusive), got {share}")
    groups = source_groups(clips, indices)
    by_label: dict[str, list[str]] = defaultdict(list)
    for name, members in groups.items():
        counts = Counter(clips[i].label for i in members)
        label = min(counts, key=lambda lab: (-counts[lab], lab))
        by_label[label].append(name)
    rng = np.random.default_rng([int(seed), int(stream)])
    first: set[str] = set()
    for label in sorted(by_label):
        names = by_label[label]
        a = b = 0
        for k in rng.permutation(len(names)):
            n = len(groups[names[k]])
            total = a + b + n
            if abs(a + n - share * total) <= abs(a - share * total):
                first.add(names[k])
                a += n
            else:
                b += n
    ordered = list(indices)
    return [i for i in ordered if clips[i].group in first], [i for i in ordered if clips[i].group not in first]


def folds_of(clips: Sequence[LabelledClip], csv_path: str | os.PathLike) -> list[str]:
    """The folds of a fold-layout CSV in order (numeric when they are numbers); checks the layout.

    Every clip needs a fold, and a source recording must lie in one fold (ESC-50 guarantees it): otherwise
    the folds would leak a recording between training and test, and a ManifestError names the rows.
    """
    problems = [f"line {c.line}: '{c.file}' has no fold" for c in clips if not c.fold]
    if len(problems) == len(clips):
        raise ManifestError(csv_path, ["no fold column (or every fold empty): a fold split (split.mode=esc50_fold5 or crossval) "
                                       "needs ESC-50's esc50.csv or a file,label,fold[,source] CSV; use split.mode=files "
                                       "with separate train / validation / test CSVs otherwise"])
    spans: dict[str, set[str]] = defaultdict(set)
    for c in clips:
        if c.source:
            spans[c.source].add(c.fold)
    problems += [f"source '{s}' lies in several folds {sorted(f)}: its clips would be on both sides of a split"
                 for s, f in sorted(spans.items()) if len(f) > 1]
    if problems:
        raise ManifestError(csv_path, problems)
    folds = {c.fold for c in clips}
    return sorted(folds, key=lambda f: (0, int(f), f) if f.isdigit() else (1, 0, f))


def esc50_fold_split(
    clips: Sequence[LabelledClip], csv_path: str | os.PathLike, *, test_fold: str = "5", validation_share: float = 0.5,
    seed: int = 0,
) -> Split:
    """Folds other than ``test_fold`` train; ``test_fold`` is split by source into validation and test."""
    folds = folds_of(clips, csv_path)
    test_fold = str(test_fold)
    if test_fold not in folds or len(folds) < 2:
        raise ConfigError(
            f"{csv_path}: split.mode=esc50_fold5 holds out fold {test_fold!r} and trains on the others, but the folds are "
            f"{folds} (ESC-50 has 1-5); set split.test_fold to one of them, or split.mode=files"
        )
    train = [i for i, c in enumerate(clips) if c.fold != test_fold]
    held = [i for i, c in enumerate(clips) if c.fold == test_fold]
    validation, test = split_by_source(clips, held, validation_share, seed=seed, stream=_FOLD_STREAM)
    if not validation or not test:
        raise ConfigError(f"{csv_path}: fold {test_fold} has too few source recordings to split into validation and test")
    return Split(f"fold{test_fold}", train, validation, test)


def crossval_splits(
    clips: Sequence[LabelledClip], csv_path: str | os.PathLike, *, validation_share: float = 0.125, seed: int = 0
) -> list[Split]:
    """One split per fold: that fold is the test; a source-grouped share of the other folds validates."""
    folds = folds_of(clips, csv_path)
    if len(folds) < 2:
        raise ConfigError(f"{csv_path}: cross-validation needs at least 2 folds, found {folds}")
    splits = []
    for k, fold in enumerate(folds):
        rest = [i for i, c in enumerate(clips) if c.fold != fold]
        train, validation = split_by_source(clips, rest, 1.0 - validation_share, seed=seed, stream=_CROSSVAL_STREAM + k)
        splits.append(Split(f"fold{fold}", train, validation, [i for i, c in enumerate(clips) if c.fold == fold]))
    return splits


def files_split(parts: dict[str, tuple[str | os.PathLike, list[LabelledClip]]]) -> tuple[list[LabelledClip], Split]:
    """Separate CSVs (``{"train": (path, clips), "validation": ..., "test": ...}``) as one clip list and its split."""
    clips: list[LabelledClip] = []
    sides: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for side in sides:
        if side in parts:
            _, members = parts[side]
            sides[side] = list(range(len(clips), len(clips) + len(members)))
            clips.extend(members)
    split = Split("files", sides["train"], sides["validation"], sides["test"])
    check_sources_disjoint(clips, split)
    return clips, split


def check_sources_disjoint(clips: Sequence[LabelledClip], split: Split) -> None:
    """Raise ConfigError naming every source recording (or file) found on two sides of ``split``."""
    where: dict[str, set[str]] = defaultdict(set)
    for side, indices in split.sides().items():
        for i in indices:
            where[clips[i].group].add(side)
    shared = {g: sides for g, sides in where.items() if len(sides) > 1}
    if shared:
        shown = "; ".join(f"{g.split(':', 1)[1]!r} in {sorted(s)}" for g, s in sorted(shared.items())[:10])
        raise ConfigError(f"{len(shared)} source recording(s) / file(s) on both sides of the {split.name} split: {shown}"
                          + (" ..." if len(shared) > 10 else ""))


__all__ = [
    "SPLIT_MODES",
    "LabelledClip",
    "Split",
    "check_sources_disjoint",
    "class_names",
    "crossval_splits",
    "esc50_fold_split",
    "files_split",
    "folds_of",
    "read_labelled",
    "resolve_audio",
    "source_groups",
    "split_by_source",
]
