"""Caption manifests in EnCLAP's CSV format, converters from the official data set CSVs, and validation.

Two layouts exist, told apart by the header:

* **training**: ``file_path,caption`` with one row per caption, so a clip with five captions has five rows;
* **evaluation**: ``file_path,caption_1,...,caption_N`` with one row per clip.

``file_path`` is relative to a features root (``test/Santa Motor.npy``); the audio of the same clip is found
by swapping the extension under an audio root (``<audio_root>/test/Santa Motor.wav``). The identity of a clip
across audio, features and manifests is its *key*, the ``file_path`` without its extension and with POSIX
separators (``test/Santa Motor``); see :func:`clip_key`.

Every reader collects all the problems of a file before raising one :class:`ManifestError` that lists them
with their line numbers, so a broken manifest is fixed in one pass rather than one error at a time.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence

from ..audio import AUDIO_EXTENSIONS
from ..errors import AudioNotFoundError, AudioPathOutsideRootError, ManifestError

# Extensions that name a *representation* of a clip rather than part of its name. Only these are stripped
# to form a key: Clotho names such as "FR.CTC.08.CoyuyoS.001" contain dots that are part of the name.
FEATURE_EXTENSIONS = (".npy", ".npz", ".pt", ".safetensors")
_STRIPPED_EXTENSIONS = frozenset(e.lower() for e in FEATURE_EXTENSIONS + AUDIO_EXTENSIONS)

TRAIN_COLUMNS = ("file_path", "caption")
_CAPTION_N = re.compile(r"^caption_(\d+)$")

Layout = Literal["train", "eval"]


@dataclass(frozen=True)
class CaptionedClip:
    """One clip of a manifest and all its reference captions, in file order."""

    file_path: str  # as written in the CSV, e.g. "test/Santa Motor.npy"
    captions: tuple[str, ...]

    @property
    def key(self) -> str:
        """The clip's identity shared by audio, features and manifests (``clip_key(file_path)``)."""
        return clip_key(self.file_path)


def clip_key(file_path: str) -> str:
    """``'test/Santa Motor.npy'`` -> ``'test/Santa Motor'``: POSIX separators, known extension removed.

    Backslashes become ``/``, ``./`` prefixes and repeated separators are dropped. Only a feature extension
    (``.npy``...) or an audio extension (``.wav``, ``.flac``...) is removed, so dots inside names survive.
    """
    text = str(file_path).strip().replace("\\", "/")
    text = posixpath.normpath(text) if text else text
    if text in ("", "."):
        raise ValueError(f"empty file path {file_path!r} has no clip key")
    stem, ext = posixpath.splitext(text)
    if ext.lower() in _STRIPPED_EXTENSIONS and posixpath.basename(stem):
        return stem
    return text


def _path_problem(file_path: str) -> str | None:
    """Why ``file_path`` cannot be joined under a root, or None when it can."""
    text = file_path.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:/", text):
        return "is absolute; manifest paths must be relative to the audio or features root"
    if ".." in posixpath.normpath(text).split("/"):
        return "points outside the root ('..'); manifest paths must stay below the audio or features root"
    return None


# --------------------------------------------------------------------------------------------- reading


def _read_text(path: Path, encoding: str = "utf-8-sig") -> str:
    """The whole file as text; undecodable bytes become a ManifestError naming the line and byte."""
    if not path.exists():
        raise ManifestError(path, ["no such file"])
    if not path.is_file():
        raise ManifestError(path, ["not a regular file"])
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ManifestError(
            path,
            [
                f"line {line}: not valid {encoding.replace('-sig', '').upper()} text "
                f"(byte 0x{data[err.start]:02x} at offset {err.start}); re-save the file as UTF-8"
            ],
        ) from err


def _records(path: Path, text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(first line number, fields), ...]); blank lines are skipped, CSV syntax errors raised."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[tuple[int, list[str]]] = []
    header: list[str] | None = None
    prev_line = 0
    try:
        for fields in reader:
            start = prev_line + 1
            prev_line = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            if header is None:
                header = [f.strip() for f in fields]
            else:
                records.append((start, fields))
    except csv.Error as err:
        raise ManifestError(path, [f"line {reader.line_num}: malformed CSV ({err})"]) from err
    if header is None:
        raise ManifestError(path, ["empty file: no header row (expected 'file_path,caption' or 'file_path,caption_1,...')"])
    return header, records


def _detect_layout(header: list[str]) -> tuple[Layout | None, list[int], list[str]]:
    """(layout, caption column indexes in order, problems) from a header row."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        if name in seen:
            problems.append(f"header: column '{name}' appears twice (columns {seen[name] + 1} and {i + 1})")
        seen.setdefault(name, i)
    if "file_path" not in seen:
        problems.append(f"header: missing column 'file_path' (found: {', '.join(header) or 'nothing'})")
    numbered = {int(m.group(1)): seen[name] for name in seen if (m := _CAPTION_N.match(name))}
    if "caption" in seen and numbered:
        problems.append(
            "header: has both 'caption' (training layout) and 'caption_N' columns (evaluation layout); use one"
        )
        return None, [], problems
    if "caption" in seen:
        return "train", [seen["caption"]], problems
    if numbered:
        top = max(numbered)
        missing = [f"caption_{n}" for n in range(1, top + 1) if n not in numbered]
        if missing:
            problems.append(f"header: missing column(s) {', '.join(missing)} (caption columns must be numbered 1..N)")
        return "eval", [numbered[n] for n in sorted(numbered)], problems
    problems.append(
        "header: missing caption column(s): expected 'caption' (training layout) or 'caption_1'..'caption_N' "
        f"(evaluation layout); found: {', '.join(header) or 'nothing'}"
    )
    return None, [], problems


def _parse(path: Path, encoding: str = "utf-8-sig") -> tuple[Layout, list[CaptionedClip]]:
    text = _read_text(path, encoding)
    header, records = _records(path, text)
    layout, caption_cols, problems = _detect_layout(header)
    if layout is None or "file_path" not in header:
        raise ManifestError(path, problems)
    fp_col = header.index("file_path")
    names = header
    width = len(header)

    grouped: "OrderedDict[str, list[str]]" = OrderedDict()
    first_line: dict[str, int] = {}
    key_owner: dict[str, tuple[str, int]] = {}
    if not records:
        problems.append("no data rows after the header")
    for line, fields in records:
        if len(fields) != width:
            problems.append(f"line {line}: expected {width} fields ({', '.join(names)}), found {len(fields)}")
            fields = (fields + [""] * width)[:width]
        file_path = fields[fp_col].strip()
        if not file_path:
            problems.append(f"line {line}: empty file_path")
            continue
        bad_path = _path_problem(file_path)
        if bad_path:
            problems.append(f"line {line}: file_path '{file_path}' {bad_path}")
        key = clip_key(file_path)
        owner = key_owner.get(key)
        if owner and owner[0] != file_path:
            problems.append(
                f"line {line}: file_path '{file_path}' and '{owner[0]}' (line {owner[1]}) are the same clip "
                f"'{key}' with different extensions"
            )
        key_owner.setdefault(key, (file_path, line))
        captions: list[str] = []
        for col in caption_cols:
            caption = fields[col].strip()
            if not caption:
                problems.append(f"line {line}: empty caption in column '{names[col]}' for '{file_path}'")
            captions.append(caption)
        if layout == "eval" and file_path in grouped:
            problems.append(
                f"line {line}: duplicate file_path '{file_path}' (first at line {first_line[file_path]}); "
                "an evaluation manifest has one row per clip"
            )
            continue
        first_line.setdefault(file_path, line)
        grouped.setdefault(file_path, []).extend(captions)
    if problems:
        raise ManifestError(path, problems)
    return layout, [CaptionedClip(fp, tuple(caps)) for fp, caps in grouped.items()]


def manifest_layout(path: str | os.PathLike) -> Layout:
    """``'train'`` or ``'eval'``: the layout of a manifest, from its header (the file is fully validated)."""
    return _parse(Path(path))[0]


def read_manifest(path: str | os.PathLike) -> list[CaptionedClip]:
    """Read a manifest in either layout into clips, in order of first appearance.

    Training rows sharing a ``file_path`` are grouped into one clip (in any order in the file). Raises
    :class:`ManifestError` listing every problem with its line: unreadable or non-UTF-8 file, empty file,
    missing/duplicate columns, rows with the wrong number of fields, empty file paths or captions,
    absolute or escaping paths, duplicate rows of a clip in the evaluation layout, and two file paths that
    name the same clip.
    """
    return _parse(Path(path))[1]


def read_caption_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """One ``(file_path, caption)`` per caption, from a manifest in either layout (validated as read_manifest)."""
    return [(clip.file_path, caption) for clip in read_manifest(path) for caption in clip.captions]


# ------------------------------------------------------------------------------------------ validation


def resolve_audio_path(
    file_path: str,
    audio_root: str | os.PathLike,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
) -> Path:
    """The audio file of a manifest entry: ``'test/x.npy'`` -> ``<audio_root>/test/x.wav`` (or .flac, ...).

    An entry that already names an existing audio file is returned as it is. Extensions are tried in the
    order given, each also in upper case. Raises :class:`AudioNotFoundError` naming the root and extensions tried.

    The file returned is always inside ``audio_root``, whoever wrote the entry: an absolute entry, one
    whose ``..`` climbs out of the root, and a file that is, or lies below, a symbolic link leading out of
    the root raise :class:`AudioPathOutsideRootError` (an :class:`AudioError`) naming the entry and the
    reason. Links that stay inside the root are followed, and the root itself may be a symbolic link
    (audio kept on another disk is used by pointing ``audio_root`` at it, or at a link to it): containment
    is checked against the root's resolved location. The path returned is spelled under ``audio_root``
    as given, not resolved.
    """
    root = Path(audio_root)
    problem = _path_problem(str(file_path))
    if problem:
        raise AudioPathOutsideRootError(file_path, f"manifest entry {problem} (audio root {root})")
    key = clip_key(file_path)
    own_ext = posixpath.splitext(file_path.replace("\\", "/"))[1]
    candidates: list[Path] = []
    if own_ext.lower() in {e.lower() for e in extensions}:
        candidates.append(root / file_path.replace("\\", "/"))
    candidates += [root / f"{key}{variant}" for ext in extensions for variant in dict.fromkeys((ext, ext.upper()))]
    for candidate in candidates:
        if candidate.is_file():
            return _inside_root(candidate, root, file_path)
    exts = ", ".join(dict.fromkeys(e.lower() for e in extensions))
    raise AudioNotFoundError(
        root / key, f"no audio file for manifest entry '{file_path}' (tried extensions {exts} under {root})"
    )


def _inside_root(candidate: Path, root: Path, file_path: str) -> Path:
    """``candidate`` if, links followed, it is still below the resolved ``root``; else the error saying where it leads."""
    target = candidate.resolve()
    real_root = root.resolve()
    if not target.is_relative_to(real_root):
        raise AudioPathOutsideRootError(
            candidate,
            f"manifest entry '{file_path}' leads through a symbolic link to {target}, outside the audio root "
            f"{real_root}; point audio_root at the folder holding the audio instead of linking files into it",
        )
    return candidate


def features_path(file_path: str, features_root: str | os.PathLike) -> Path:
    """Where EnCLAP's per-file layout keeps the features of a manifest entry: ``<root>/<key>.npy``."""
    return Path(features_root) / f"{clip_key(file_path)}.npy"


def validate_manifest(
    path: str | os.PathLike,
    *,
    audio_root: str | os.PathLike | None = None,
    features_root: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    audio_extensions: Sequence[str] = AUDIO_EXTENSIONS,
) -> list[CaptionedClip]:
    """Read a manifest and check that every clip it names exists; returns the clips.

    ``audio_root``: each clip needs an audio file ``<audio_root>/<key>.<ext>`` for one of
    ``audio_extensions``. ``features_root``: one root or several (e.g. an EnCodec and a CLAP root, as in the
    reference layout); each clip needs ``<root>/<key>.npy`` in every one. All missing files of all clips
    are reported together in one :class:`ManifestError`.
    """
    clips = read_manifest(path)
    problems: list[str] = []
    if audio_root is not None:
        if not Path(audio_root).is_dir():
            raise ManifestError(path, [f"audio root {audio_root} is not a directory"])
        exts = "/".join(dict.fromkeys(e.lower().lstrip(".") for e in audio_extensions))
        for clip in clips:
            try:
                resolve_audio_path(clip.file_path, audio_root, audio_extensions)
            except AudioNotFoundError:
                problems.append(f"'{clip.file_path}': no audio file {Path(audio_root) / clip.key}.{{{exts}}}")
            except AudioPathOutsideRootError as err:
                problems.append(f"'{clip.file_path}': {err.reason}")
    if features_root is not None:
        roots = [features_root] if isinstance(features_root, (str, os.PathLike)) else list(features_root)
        for root in roots:
            if not Path(root).is_dir():
                problems.append(f"features root {root} is not a directory")
                continue
            for clip in clips:
                feature = features_path(clip.file_path, root)
                if not feature.is_file():
                    problems.append(f"'{clip.file_path}': no features file {feature}")
    if problems:
        raise ManifestError(path, problems)
    return clips


# --------------------------------------------------------------------------------------------- writing


def _check_caption(where: str, caption: str, problems: list[str]) -> str:
    text = str(caption).strip()
    if not text:
        problems.append(f"{where}: empty caption")
    return text


def _write_rows(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Write a CSV atomically (a reader never sees half a file), UTF-8 without BOM, '\\n' line ends."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_train_manifest(path: str | os.PathLike, pairs: Iterable[tuple[str, str]]) -> int:
    """Write a training manifest (``file_path,caption``, one row per caption); returns the number of rows.

    Raises :class:`ManifestError` (nothing is written) for empty file paths or captions.
    """
    rows: list[tuple[str, str]] = []
    problems: list[str] = []
    for i, (file_path, caption) in enumerate(pairs, start=1):
        file_path = str(file_path).strip()
        if not file_path:
            problems.append(f"pair {i}: empty file_path")
        rows.append((file_path, _check_caption(f"pair {i} ('{file_path}')", caption, problems)))
    if problems:
        raise ManifestError(path, problems)
    _write_rows(path, TRAIN_COLUMNS, rows)
    return len(rows)


def write_eval_manifest(
    path: str | os.PathLike, clips: Iterable[CaptionedClip], num_captions: int | None = None
) -> int:
    """Write an evaluation manifest (``file_path,caption_1..caption_N``); returns the number of clips.

    ``num_captions`` None: every clip must have the same number of captions. Otherwise clips with more are
    cut to the first ``num_captions`` and clips with fewer are an error. Duplicate file paths and empty
    captions are errors too; all problems are raised together and nothing is written.
    """
    clips = list(clips)
    problems: list[str] = []
    if num_captions is None:
        counts = sorted({len(c.captions) for c in clips})
        num_captions = counts[-1] if counts else 1
        if len(counts) > 1:
            problems.append(
                f"clips have different numbers of captions ({', '.join(map(str, counts))}); pass num_captions "
                "to cut them to a common number"
            )
    if num_captions < 1:
        raise ValueError(f"num_captions must be >= 1, got {num_captions}")
    rows: list[list[str]] = []
    seen: set[str] = set()
    for clip in clips:
        file_path = str(clip.file_path).strip()
        if not file_path:
            problems.append("a clip has an empty file_path")
        if file_path in seen:
            problems.append(f"'{file_path}': duplicate clip")
        seen.add(file_path)
        if len(clip.captions) < num_captions:
            problems.append(f"'{file_path}': {len(clip.captions)} caption(s), {num_captions} needed")
        caps = [_check_caption(f"'{file_path}' caption {j}", c, problems) for j, c in enumerate(clip.captions[:num_captions], 1)]
        rows.append([file_path, *caps])
    if problems:
        raise ManifestError(path, problems)
    _write_rows(path, ["file_path", *(f"caption_{n}" for n in range(1, num_captions + 1))], rows)
    return len(rows)


def write_manifest(
    path: str | os.PathLike, clips: Iterable[CaptionedClip], layout: Layout, num_captions: int | None = None
) -> int:
    """Write clips in either layout; returns the number of clips."""
    clips = list(clips)
    if layout == "train":
        write_train_manifest(path, ((c.file_path, cap) for c in clips for cap in c.captions))
        return len(clips)
    if layout == "eval":
        return write_eval_manifest(path, clips, num_captions)
    raise ValueError(f"layout must be 'train' or 'eval', got {layout!r}")


# ------------------------------------------------------------------------------------------ converters


def _read_source_csv(path: Path, required: Sequence[str], encoding: str) -> list[tuple[int, dict[str, str]]]:
    """Rows of an official CSV as dicts with their first line numbers; missing columns raise ManifestError."""
    text = _read_text(path, encoding)
    header, records = _records(path, text)
    missing = [c for c in required if c not in header]
    if missing:
        raise ManifestError(path, [f"header: missing column(s) {', '.join(missing)} (found: {', '.join(header)})"])
    problems: list[str] = []
    rows: list[tuple[int, dict[str, str]]] = []
    for line, fields in records:
        if len(fields) != len(header):
            problems.append(f"line {line}: expected {len(header)} fields, found {len(fields)}")
            continue
        rows.append((line, {name: value.strip() for name, value in zip(header, fields)}))
    if not records:
        problems.append("no data rows after the header")
    if problems:
        raise ManifestError(path, problems)
    return rows


def _feature_name(split: str, name: str) -> str:
    split = split.strip("/")
    return f"{split}/{name}.npy" if split else f"{name}.npy"


def convert_clotho(
    src_csv: str | os.PathLike,
    dst_csv: str | os.PathLike,
    *,
    split: str,
    layout: Layout,
    encoding: str = "utf-8-sig",
) -> int:
    """Convert an official Clotho v2 captions CSV (``file_name,caption_1..caption_5``) to EnCLAP's format.

    ``file_name`` ``'Santa Motor.wav'`` becomes ``file_path`` ``'<split>/Santa Motor.npy'``: audio extracted
    to ``<audio_root>/<split>/`` then resolves through :func:`resolve_audio_path`. ``layout='train'`` writes
    one row per caption (EnCLAP's training CSV), ``'eval'`` one row per clip. Returns the number of clips.
    Problems of the source (missing columns, empty names or captions, duplicate file names) are raised
    together as :class:`ManifestError`.
    """
    src = Path(src_csv)
    rows = _read_source_csv(src, ["file_name", "caption_1"], encoding)
    header_caps = sorted(
        (int(m.group(1)) for name in rows[0][1] if (m := _CAPTION_N.match(name))),
    )
    problems: list[str] = []
    clips: list[CaptionedClip] = []
    first: dict[str, int] = {}
    for line, row in rows:
        name = row["file_name"]
        if not name:
            problems.append(f"line {line}: empty file_name")
            continue
        if name in first:
            problems.append(f"line {line}: duplicate file_name '{name}' (first at line {first[name]})")
            continue
        first[name] = line
        captions = []
        for n in header_caps:
            caption = row[f"caption_{n}"]
            if not caption:
                problems.append(f"line {line}: empty caption_{n} for '{name}'")
            captions.append(caption)
        clips.append(CaptionedClip(_feature_name(split, clip_key(name)), tuple(captions)))
    if problems:
        raise ManifestError(src, problems)
    return write_manifest(dst_csv, clips, layout)


AUDIOCAPS_NAME_TEMPLATE = "Y{youtube_id}"
"""EnCLAP's AudioCaps naming: ``Y`` + the 11-character YouTube id (``train/Yr1nicOVtvkQ.npy``), no start time."""


def convert_audiocaps(
    src_csv: str | os.PathLike,
    dst_csv: str | os.PathLike,
    *,
    split: str,
    layout: Layout,
    name_template: str = AUDIOCAPS_NAME_TEMPLATE,
    num_captions: int | None = None,
    encoding: str = "utf-8-sig",
) -> int:
    """Convert an official AudioCaps CSV (``audiocap_id,youtube_id,start_time,caption``) to EnCLAP's format.

    Rows are grouped into clips by the name ``name_template`` gives them; the template may use
    ``{youtube_id}``, ``{start_time}`` (integer seconds as in the CSV), ``{end_time}`` (start + 10) and
    ``{audiocap_id}``. The default ``"Y{youtube_id}"`` reproduces EnCLAP's names; audio fetched by tools
    that name files ``<id>_<start>.wav`` needs ``"{youtube_id}_{start_time}"``. Two different segments
    that the template gives the same name are an error (add ``{start_time}``). ``layout='eval'`` writes
    one row per clip with ``num_captions`` captions (None: all clips must have the same number).
    Returns the number of clips.
    """
    src = Path(src_csv)
    rows = _read_source_csv(src, ["audiocap_id", "youtube_id", "start_time", "caption"], encoding)
    problems: list[str] = []
    grouped: "OrderedDict[str, list[str]]" = OrderedDict()
    segment_of: dict[str, tuple[str, str, int]] = {}
    for line, row in rows:
        ytid, start = row["youtube_id"], row["start_time"]
        if not ytid:
            problems.append(f"line {line}: empty youtube_id")
            continue
        try:
            start_s = int(float(start))
        except ValueError:
            problems.append(f"line {line}: start_time '{start}' is not a number")
            continue
        try:
            name = name_template.format(
                youtube_id=ytid, start_time=start_s, end_time=start_s + 10, audiocap_id=row["audiocap_id"]
            )
        except (KeyError, IndexError, ValueError) as err:
            raise ManifestError(src, [f"name_template {name_template!r} cannot be filled: {err!r}"]) from err
        if not row["caption"]:
            problems.append(f"line {line}: empty caption for youtube_id '{ytid}'")
        previous = segment_of.get(name)
        if previous and previous[:2] != (ytid, str(start_s)):
            problems.append(
                f"line {line}: segment {ytid}@{start_s}s gets the name '{name}' already given to "
                f"{previous[0]}@{previous[1]}s (line {previous[2]}); add {{start_time}} to name_template"
            )
            continue
        segment_of.setdefault(name, (ytid, str(start_s), line))
        grouped.setdefault(name, []).append(row["caption"])
    if problems:
        raise ManifestError(src, problems)
    clips = [CaptionedClip(_feature_name(split, name), tuple(caps)) for name, caps in grouped.items()]
    return write_manifest(dst_csv, clips, layout, num_captions)


__all__ = [
    "AUDIOCAPS_NAME_TEMPLATE",
    "CaptionedClip",
    "FEATURE_EXTENSIONS",
    "clip_key",
    "convert_audiocaps",
    "convert_clotho",
    "features_path",
    "manifest_layout",
    "read_caption_pairs",
    "read_manifest",
    "resolve_audio_path",
    "validate_manifest",
    "write_eval_manifest",
    "write_manifest",
    "write_train_manifest",
]
