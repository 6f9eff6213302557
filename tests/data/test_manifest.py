"""Manifests: EnCLAP's CSV layouts, clip keys, converters from the official CSVs, validation errors."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from enclap.data.manifest import (
    CaptionedClip,
    clip_key,
    convert_audiocaps,
    convert_clotho,
    features_path,
    manifest_layout,
    read_caption_pairs,
    read_manifest,
    resolve_audio_path,
    validate_manifest,
    write_eval_manifest,
    write_train_manifest,
)
from enclap.errors import AudioError, AudioNotFoundError, AudioPathOutsideRootError, ManifestError


def write_csv(path: Path, rows: list[list[str]], encoding: str = "utf-8", newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding=encoding, newline="") as fh:
        csv.writer(fh, lineterminator=newline).writerows(rows)
    return path


def problems_of(path: Path, **kwargs) -> list[str]:
    with pytest.raises(ManifestError) as info:
        if kwargs:
            validate_manifest(path, **kwargs)
        else:
            read_manifest(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    return info.value.problems


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.parametrize(
    "dataset, split, layout, clips, captions",
    [
        ("clotho", "train", "train", 3835, 19175),
        ("clotho", "valid", "eval", 1034, 5170),
        ("clotho", "test", "eval", 1045, 5225),
        ("audiocaps", "train", "train", 49274, 49274),
        ("audiocaps", "valid", "eval", 494, 2470),
        ("audiocaps", "test", "eval", 957, 4785),
    ],
)
def test_reads_enclap_csvs(shared_captions, dataset, split, layout, clips, captions):
    path = shared_captions / dataset / f"{split}.csv"
    manifest = read_manifest(path)
    assert manifest_layout(path) == layout
    assert len(manifest) == clips
    assert sum(len(c.captions) for c in manifest) == captions
    # Independent count with the csv module: one row per caption (train) or 5 captions per row (eval).
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == (captions if layout == "train" else clips)
    assert [c.file_path for c in manifest] == list(dict.fromkeys(r["file_path"] for r in rows))
    pairs = read_caption_pairs(path)
    assert len(pairs) == captions
    first = rows[0]
    expected_first = first["caption"] if layout == "train" else first["caption_1"]
    assert pairs[0] == (first["file_path"], expected_first.strip())
    assert all(c.key == c.file_path[: -len(".npy")] and c.key.startswith(f"{split}/") for c in manifest)


def test_audiocaps_names_are_Y_plus_youtube_id(shared_captions):
    """EnCLAP's AudioCaps names are 'Y' + the 11-character YouTube id, without a start time."""
    for split in ("train", "valid", "test"):
        for clip in read_manifest(shared_captions / "audiocaps" / f"{split}.csv"):
            assert re.fullmatch(rf"{split}/Y[A-Za-z0-9_-]{{11}}\.npy", clip.file_path), clip.file_path


def test_clotho_train_groups_five_captions_per_clip(shared_captions):
    manifest = read_manifest(shared_captions / "clotho" / "train.csv")
    assert {len(c.captions) for c in manifest} == {5}
    assert manifest[0].key == "train/Distorted AM Radio noise"


# ------------------------------------------------------------------------------------------- clip keys


@pytest.mark.parametrize(
    "file_path, key",
    [
        ("test/Santa Motor.npy", "test/Santa Motor"),
        ("valid/FR.CTC.08.CoyuyoS.001.npy", "valid/FR.CTC.08.CoyuyoS.001"),
        ("valid/FR.CTC.08.CoyuyoS.001", "valid/FR.CTC.08.CoyuyoS.001"),  # no known extension: nothing cut
        ("train\\Yr1nicOVtvkQ.npy", "train/Yr1nicOVtvkQ"),
        ("./train//a.WAV", "train/a"),
        ("b.flac", "b"),
        ("x.tar", "x.tar"),
    ],
)
def test_clip_key(file_path, key):
    assert clip_key(file_path) == key
    assert CaptionedClip(file_path, ("c",)).key == key


def test_clip_key_of_empty_path_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        clip_key("  ")


# ---------------------------------------------------------------------------------------------- reading


def test_train_layout_groups_rows_in_first_appearance_order(tmp_path):
    path = write_csv(
        tmp_path / "train.csv",
        [["file_path", "caption"], ["b/x.npy", "one"], ["a/y.npy", "two"], ["b/x.npy", " three "], ["a/y.npy", "four"]],
    )
    assert read_manifest(path) == [CaptionedClip("b/x.npy", ("one", "three")), CaptionedClip("a/y.npy", ("two", "four"))]
    assert read_caption_pairs(path) == [("b/x.npy", "one"), ("b/x.npy", "three"), ("a/y.npy", "two"), ("a/y.npy", "four")]


def test_eval_layout_with_quoting_bom_crlf_and_extra_columns(tmp_path):
    rows = [
        ["file_path", "caption_1", "caption_2", "caption_3", "source"],
        ["test/a, b.npy", 'He said "hi", twice', "line\nbreak", "ü é", "x"],
        ["test/c.npy", "c1", "c2", "c3", ""],
    ]
    path = tmp_path / "eval.csv"
    write_csv(path, rows, newline="\r\n")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # spreadsheet programs add a BOM
    assert manifest_layout(path) == "eval"
    assert read_manifest(path) == [
        CaptionedClip("test/a, b.npy", ('He said "hi", twice', "line\nbreak", "ü é")),
        CaptionedClip("test/c.npy", ("c1", "c2", "c3")),
    ]


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("file_path,caption\n\na.npy,x\n\n\nb.npy,y\n")
    assert [c.file_path for c in read_manifest(path)] == ["a.npy", "b.npy"]


# -------------------------------------------------------------------------------------------- bad input


def test_missing_file_path_column(tmp_path):
    path = write_csv(tmp_path / "m.csv", [["path", "caption"], ["a.npy", "x"]])
    (problem,) = problems_of(path)
    assert "missing column 'file_path'" in problem and "path, caption" in problem


def test_missing_caption_columns(tmp_path):
    path = write_csv(tmp_path / "m.csv", [["file_path", "text"], ["a.npy", "x"]])
    (problem,) = problems_of(path)
    assert "missing caption column" in problem and "'caption'" in problem and "caption_1" in problem


def test_gap_in_numbered_caption_columns(tmp_path):
    path = write_csv(tmp_path / "m.csv", [["file_path", "caption_1", "caption_3"], ["a.npy", "x", "y"]])
    (problem,) = problems_of(path)
    assert "caption_2" in problem


def test_both_layouts_in_one_header(tmp_path):
    path = write_csv(tmp_path / "m.csv", [["file_path", "caption", "caption_1"], ["a.npy", "x", "y"]])
    (problem,) = problems_of(path)
    assert "both 'caption'" in problem


def test_duplicate_column(tmp_path):
    path = write_csv(tmp_path / "m.csv", [["file_path", "caption_1", "caption_1"], ["a.npy", "x", "y"]])
    assert any("'caption_1' appears twice" in p for p in problems_of(path))


def test_every_empty_caption_is_reported_with_its_line(tmp_path):
    path = write_csv(
        tmp_path / "m.csv",
        [["file_path", "caption_1", "caption_2"], ["a.npy", "", "ok"], ["b.npy", "ok", "ok"], ["c.npy", "ok", "   "]],
    )
    problems = problems_of(path)
    assert len(problems) == 2
    assert "line 2" in problems[0] and "caption_1" in problems[0] and "a.npy" in problems[0]
    assert "line 4" in problems[1] and "caption_2" in problems[1] and "c.npy" in problems[1]


def test_duplicate_ids_in_eval_layout_are_all_reported(tmp_path):
    path = write_csv(
        tmp_path / "m.csv",
        [["file_path", "caption_1"], ["a.npy", "x"], ["b.npy", "y"], ["a.npy", "z"], ["b.npy", "w"]],
    )
    problems = problems_of(path)
    assert len(problems) == 2
    assert "line 4" in problems[0] and "duplicate file_path 'a.npy'" in problems[0] and "first at line 2" in problems[0]
    assert "line 5" in problems[1] and "'b.npy'" in problems[1] and "first at line 3" in problems[1]


def test_same_clip_under_two_extensions(tmp_path):
    path = write_csv(tmp_path / "m.csv", [["file_path", "caption"], ["t/a.npy", "x"], ["t/a.wav", "y"]])
    (problem,) = problems_of(path)
    assert "same clip 't/a'" in problem and "line 3" in problem


def test_paths_outside_the_root(tmp_path):
    path = write_csv(tmp_path / "m.csv", [["file_path", "caption"], ["/abs/a.npy", "x"], ["../b.npy", "y"], ["c.npy", "z"]])
    problems = problems_of(path)
    assert len(problems) == 2
    assert "'/abs/a.npy' is absolute" in problems[0]
    assert "'../b.npy' points outside the root" in problems[1]


def test_wrong_number_of_fields_and_empty_file_path(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("file_path,caption\na.npy,x,extra\n,y\nc.npy\n")
    problems = problems_of(path)
    assert "line 2: expected 2 fields" in problems[0] and "found 3" in problems[0]
    assert "line 3: empty file_path" in problems[1]
    assert "line 4: expected 2 fields" in problems[2]
    assert "line 4: empty caption" in problems[3]


def test_all_kinds_of_row_problems_come_in_one_error(tmp_path):
    path = write_csv(
        tmp_path / "m.csv",
        [
            ["file_path", "caption_1", "caption_2"],
            ["a.npy", "", "x"],  # empty caption
            ["a.npy", "y", "z"],  # duplicate id
            ["/b.npy", "y", "z"],  # absolute
            ["", "y", "z"],  # empty path
        ],
    )
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    problems = info.value.problems
    assert len(problems) == 4 and f"{path}: 4 problem(s)" in str(info.value)
    assert "line 2: empty caption" in problems[0]
    assert "line 3: duplicate file_path 'a.npy'" in problems[1]
    assert "line 4: file_path '/b.npy' is absolute" in problems[2]
    assert "line 5: empty file_path" in problems[3]


def test_bad_encoding(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes("file_path,caption\na.npy,fine\nb.npy,caf\u00e9 noise\n".encode("latin-1"))
    (problem,) = problems_of(path)
    assert "line 3" in problem and "not valid UTF-8" in problem and "0xe9" in problem


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_csv(tmp_path, content):
    path = tmp_path / "m.csv"
    path.write_bytes(content)
    (problem,) = problems_of(path)
    assert "empty file" in problem


def test_header_without_rows(tmp_path):
    path = write_csv(tmp_path / "m.csv", [["file_path", "caption"]])
    (problem,) = problems_of(path)
    assert "no data rows" in problem


def test_malformed_csv(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('file_path,caption\na.npy,"unterminated\n')
    (problem,) = problems_of(path)
    assert "malformed CSV" in problem


def test_missing_manifest_file(tmp_path):
    (problem,) = problems_of(tmp_path / "nope.csv")
    assert "no such file" in problem


# ------------------------------------------------------------------------------------ files on disk


@pytest.fixture
def small_tree(tmp_path):
    """A manifest of four clips; audio exists for two (.wav and .FLAC), features for one."""
    manifest = write_csv(
        tmp_path / "m.csv",
        [["file_path", "caption"], ["test/a.npy", "x"], ["test/b c.npy", "y"], ["test/d.npy", "z"], ["test/e.npy", "w"]],
    )
    audio = tmp_path / "audio"
    (audio / "test").mkdir(parents=True)
    (audio / "test" / "a.wav").write_bytes(b"RIFF")
    (audio / "test" / "b c.FLAC").write_bytes(b"fLaC")
    feats = tmp_path / "feats"
    (feats / "test").mkdir(parents=True)
    (feats / "test" / "a.npy").write_bytes(b"")
    return manifest, audio, feats


def test_resolve_audio_path(small_tree):
    _, audio, _ = small_tree
    assert resolve_audio_path("test/a.npy", audio) == audio / "test" / "a.wav"
    assert resolve_audio_path("test/b c.npy", audio) == audio / "test" / "b c.FLAC"
    assert resolve_audio_path("test/a.wav", audio) == audio / "test" / "a.wav"
    with pytest.raises(AudioNotFoundError) as info:
        resolve_audio_path("test/d.npy", audio, extensions=(".wav", ".flac"))
    assert "test/d.npy" in str(info.value) and ".wav, .flac" in str(info.value)


def test_resolve_prefers_the_first_extension(small_tree):
    _, audio, _ = small_tree
    (audio / "test" / "a.flac").write_bytes(b"fLaC")
    assert resolve_audio_path("test/a.npy", audio, extensions=(".flac", ".wav")).suffix == ".flac"
    assert resolve_audio_path("test/a.npy", audio, extensions=(".wav", ".flac")).suffix == ".wav"


@pytest.mark.parametrize(
    "entry, reason",
    [
        ("../outside.npy", "'..'"),
        ("test/../../outside.npy", "'..'"),
        ("..\\outside.npy", "'..'"),  # Windows separators are normalised before the check
        ("/ABSOLUTE/outside.npy", "absolute"),
        ("C:/outside.npy", "absolute"),
    ],
)
def test_resolve_refuses_entries_that_leave_the_root(tmp_path, entry, reason):
    audio = tmp_path / "audio"
    audio.mkdir()
    # The file the entry points at exists, so only the containment rule can refuse it.
    (tmp_path / "outside.wav").write_bytes(b"RIFF")
    entry = entry.replace("/ABSOLUTE", str(tmp_path))
    with pytest.raises(AudioPathOutsideRootError) as info:
        resolve_audio_path(entry, audio)
    assert isinstance(info.value, AudioError)  # callers that record bad clips and go on catch AudioError
    assert entry in str(info.value) and reason in info.value.reason and str(audio) in info.value.reason


def test_resolve_refuses_a_symlink_leading_out_of_the_root(tmp_path):
    audio = tmp_path / "audio"
    (audio / "test").mkdir(parents=True)
    secret = tmp_path / "elsewhere" / "secret.wav"
    secret.parent.mkdir()
    secret.write_bytes(b"RIFF")
    (audio / "test" / "linked.wav").symlink_to(secret)  # a file link
    (audio / "dirlink").symlink_to(secret.parent, target_is_directory=True)  # a folder link
    for entry in ("test/linked.npy", "test/linked.wav", "dirlink/secret.npy"):
        with pytest.raises(AudioPathOutsideRootError) as info:
            resolve_audio_path(entry, audio)
        assert entry in info.value.reason and str(secret) in info.value.reason


def test_resolve_follows_links_that_stay_inside_and_a_root_that_is_a_link(tmp_path, monkeypatch):
    real = tmp_path / "disk" / "audio"
    (real / "test").mkdir(parents=True)
    (real / "test" / "a.wav").write_bytes(b"RIFF")
    (real / "test" / "alias.wav").symlink_to(real / "test" / "a.wav")
    (real / "other").symlink_to(real / "test", target_is_directory=True)
    root_link = tmp_path / "audio_link"
    root_link.symlink_to(real, target_is_directory=True)
    # The path comes back spelled under the root as given (the link), not resolved.
    assert resolve_audio_path("test/a.npy", root_link) == root_link / "test" / "a.wav"
    assert resolve_audio_path("test/alias.npy", root_link) == root_link / "test" / "alias.wav"
    assert resolve_audio_path("other/a.npy", root_link) == root_link / "other" / "a.wav"
    # A relative root spelled through the link works the same.
    monkeypatch.chdir(tmp_path)
    assert resolve_audio_path("test/a.npy", "audio_link") == Path("audio_link") / "test" / "a.wav"


def test_validate_reports_a_symlink_out_of_the_root(small_tree, tmp_path):
    manifest, audio, _ = small_tree
    (tmp_path / "secret.wav").write_bytes(b"RIFF")
    (audio / "test" / "d.wav").symlink_to(tmp_path / "secret.wav")
    problems = problems_of(manifest, audio_root=audio)
    assert len(problems) == 2
    assert "'test/d.npy'" in problems[0] and "outside the audio root" in problems[0]
    assert "'test/e.npy'" in problems[1] and "no audio file" in problems[1]


def test_validate_reports_all_missing_audio(small_tree):
    manifest, audio, _ = small_tree
    problems = problems_of(manifest, audio_root=audio)
    assert len(problems) == 2
    assert "'test/d.npy'" in problems[0] and str(audio / "test" / "d") in problems[0]
    assert "'test/e.npy'" in problems[1]


def test_validate_reports_missing_features_in_every_root(small_tree, tmp_path):
    manifest, _, feats = small_tree
    other = tmp_path / "clap"
    (other / "test").mkdir(parents=True)
    problems = problems_of(manifest, features_root=[feats, other])
    assert len(problems) == 3 + 4
    assert all("no features file" in p for p in problems)
    assert str(features_path("test/b c.npy", feats)) in problems[0]


def test_validate_missing_root(small_tree, tmp_path):
    manifest, _, _ = small_tree
    (problem,) = problems_of(manifest, audio_root=tmp_path / "nowhere")
    assert "not a directory" in problem


def test_validate_passes_when_everything_exists(small_tree):
    manifest, audio, feats = small_tree
    for name in ("d", "e"):
        (audio / "test" / f"{name}.wav").write_bytes(b"RIFF")
    for name in ("b c", "d", "e"):
        (feats / "test" / f"{name}.npy").write_bytes(b"")
    clips = validate_manifest(manifest, audio_root=audio, features_root=feats)
    assert [c.key for c in clips] == ["test/a", "test/b c", "test/d", "test/e"]


# -------------------------------------------------------------------------------------------- writing


def test_write_and_read_back_both_layouts(tmp_path):
    clips = [CaptionedClip("train/a, b.npy", ("one", 'two "quoted"')), CaptionedClip("train/c.npy", ("three", "four"))]
    assert write_train_manifest(tmp_path / "t.csv", [(c.file_path, x) for c in clips for x in c.captions]) == 4
    assert read_manifest(tmp_path / "t.csv") == clips
    assert write_eval_manifest(tmp_path / "e.csv", clips) == 2
    assert read_manifest(tmp_path / "e.csv") == clips
    # What is on disk, read with the csv module rather than the library's reader.
    with open(tmp_path / "t.csv", newline="", encoding="utf-8") as fh:
        assert list(csv.reader(fh)) == [["file_path", "caption"]] + [[c.file_path, x] for c in clips for x in c.captions]
    with open(tmp_path / "e.csv", newline="", encoding="utf-8") as fh:
        assert list(csv.reader(fh)) == [["file_path", "caption_1", "caption_2"]] + [[c.file_path, *c.captions] for c in clips]


def test_write_eval_cuts_to_num_captions_and_rejects_short_clips(tmp_path):
    clips = [CaptionedClip("a.npy", ("1", "2", "3")), CaptionedClip("b.npy", ("1", "2"))]
    with pytest.raises(ManifestError) as info:
        write_eval_manifest(tmp_path / "e.csv", clips)
    assert "different numbers of captions (2, 3)" in info.value.problems[0]
    write_eval_manifest(tmp_path / "e.csv", clips, num_captions=2)
    assert read_manifest(tmp_path / "e.csv") == [CaptionedClip("a.npy", ("1", "2")), CaptionedClip("b.npy", ("1", "2"))]
    with pytest.raises(ManifestError) as info:
        write_eval_manifest(tmp_path / "f.csv", clips, num_captions=3)
    assert info.value.problems == ["'b.npy': 2 caption(s), 3 needed"]
    assert not (tmp_path / "f.csv").exists()


def test_writers_reject_empty_captions_and_duplicates_without_writing(tmp_path):
    with pytest.raises(ManifestError) as info:
        write_train_manifest(tmp_path / "t.csv", [("a.npy", "x"), ("b.npy", " "), ("", "y")])
    assert len(info.value.problems) == 2
    with pytest.raises(ManifestError) as info:
        write_eval_manifest(tmp_path / "e.csv", [CaptionedClip("a.npy", ("x",)), CaptionedClip("a.npy", ("",))])
    assert len(info.value.problems) == 2
    assert not (tmp_path / "t.csv").exists() and not (tmp_path / "e.csv").exists()


# ----------------------------------------------------------------------------------------- converters

CLOTHO_ROWS = [
    ["file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5"],
    ["Santa Motor.wav", "A machine whines.", "Clippers trim bushes.", "Someone trims.", "A pump whirs.", "Stamping, whining."],
    ["FR.CTC.08.CoyuyoS.001.wav", "Static chatters.", "A weed whacker starts.", "Clicking, faster.", "Bugs chirp.", "A dog barks."],
    ['Rain "heavy", café.wav', "Rain falls.", "Rain on a roof.", "Heavy rain.", "Water drops.", "A storm."],
]


def test_convert_clotho_train_and_eval_round_trip(tmp_path):
    src = write_csv(tmp_path / "clotho_captions_development.csv", CLOTHO_ROWS)
    assert convert_clotho(src, tmp_path / "train.csv", split="train", layout="train") == 3
    expected_pairs = [
        (f"train/{row[0][: -len('.wav')]}.npy", caption) for row in CLOTHO_ROWS[1:] for caption in row[1:]
    ]
    assert read_caption_pairs(tmp_path / "train.csv") == expected_pairs
    assert manifest_layout(tmp_path / "train.csv") == "train"

    assert convert_clotho(src, tmp_path / "test.csv", split="test", layout="eval") == 3
    clips = read_manifest(tmp_path / "test.csv")
    assert manifest_layout(tmp_path / "test.csv") == "eval"
    assert [c.file_path for c in clips] == ["test/Santa Motor.npy", "test/FR.CTC.08.CoyuyoS.001.npy", 'test/Rain "heavy", café.npy']
    assert [list(c.captions) for c in clips] == [row[1:] for row in CLOTHO_ROWS[1:]]
    # The converted names find the audio the Clotho archives hold (same base name, .wav).
    audio = tmp_path / "audio" / "test"
    audio.mkdir(parents=True)
    for row in CLOTHO_ROWS[1:]:
        (audio / row[0]).write_bytes(b"RIFF")
    validate_manifest(tmp_path / "test.csv", audio_root=tmp_path / "audio")


def test_convert_clotho_reports_all_source_problems(tmp_path):
    rows = [CLOTHO_ROWS[0], CLOTHO_ROWS[1], CLOTHO_ROWS[1], ["x.wav", "a", "", "c", "d", "e"], ["", "a", "b", "c", "d", "e"]]
    src = write_csv(tmp_path / "src.csv", rows)
    with pytest.raises(ManifestError) as info:
        convert_clotho(src, tmp_path / "out.csv", split="train", layout="train")
    problems = info.value.problems
    assert len(problems) == 3
    assert "line 3: duplicate file_name 'Santa Motor.wav'" in problems[0]
    assert "line 4: empty caption_2 for 'x.wav'" in problems[1]
    assert "line 5: empty file_name" in problems[2]
    assert not (tmp_path / "out.csv").exists()


def test_convert_clotho_missing_columns(tmp_path):
    src = write_csv(tmp_path / "src.csv", [["fname", "text"], ["a.wav", "x"]])
    with pytest.raises(ManifestError, match="file_name, caption_1"):
        convert_clotho(src, tmp_path / "out.csv", split="train", layout="train")


AUDIOCAPS_VAL = [
    ["audiocap_id", "youtube_id", "start_time", "caption"],
    *[[str(100 + i), "vfY_TJq7n_U", "130", f"Ducks quack {i}"] for i in range(5)],
    *[[str(200 + i), "-0xBsQWpXSc", "30", f"A crowd cheers, loudly {i}"] for i in range(5)],
]


def test_convert_audiocaps_eval_uses_enclap_names(tmp_path):
    src = write_csv(tmp_path / "val.csv", AUDIOCAPS_VAL)
    assert convert_audiocaps(src, tmp_path / "valid.csv", split="valid", layout="eval") == 2
    clips = read_manifest(tmp_path / "valid.csv")
    assert clips == [
        CaptionedClip("valid/YvfY_TJq7n_U.npy", tuple(f"Ducks quack {i}" for i in range(5))),
        CaptionedClip("valid/Y-0xBsQWpXSc.npy", tuple(f"A crowd cheers, loudly {i}" for i in range(5))),
    ]


def test_convert_audiocaps_train_with_start_time_template(tmp_path):
    rows = [AUDIOCAPS_VAL[0], ["1", "r1nicOVtvkQ", "30", "A woman talks"], ["2", "UDGBjjwyaqE", "0", "Clanging"]]
    src = write_csv(tmp_path / "train_src.csv", rows)
    n = convert_audiocaps(src, tmp_path / "train.csv", split="train", layout="train", name_template="{youtube_id}_{start_time}")
    assert n == 2
    assert read_caption_pairs(tmp_path / "train.csv") == [
        ("train/r1nicOVtvkQ_30.npy", "A woman talks"),
        ("train/UDGBjjwyaqE_0.npy", "Clanging"),
    ]


def test_convert_audiocaps_name_collision_and_uneven_counts(tmp_path):
    rows = [AUDIOCAPS_VAL[0], ["1", "abcdefghijk", "30", "x"], ["2", "abcdefghijk", "40", "y"]]
    src = write_csv(tmp_path / "src.csv", rows)
    with pytest.raises(ManifestError) as info:
        convert_audiocaps(src, tmp_path / "out.csv", split="train", layout="train")
    assert "line 3" in info.value.problems[0] and "{start_time}" in info.value.problems[0]
    # With the start time in the name they are two clips.
    assert convert_audiocaps(src, tmp_path / "out.csv", split="train", layout="train", name_template="Y{youtube_id}_{start_time}") == 2

    uneven = write_csv(tmp_path / "uneven.csv", AUDIOCAPS_VAL[:-1])
    with pytest.raises(ManifestError, match="different numbers of captions"):
        convert_audiocaps(uneven, tmp_path / "u.csv", split="test", layout="eval")
    assert convert_audiocaps(uneven, tmp_path / "u.csv", split="test", layout="eval", num_captions=4) == 2
    assert {len(c.captions) for c in read_manifest(tmp_path / "u.csv")} == {4}


def test_convert_audiocaps_bad_rows_and_template(tmp_path):
    rows = [AUDIOCAPS_VAL[0], ["1", "", "30", "x"], ["2", "abcdefghijk", "soon", "y"], ["3", "bcdefghijkl", "0", ""]]
    src = write_csv(tmp_path / "src.csv", rows)
    with pytest.raises(ManifestError) as info:
        convert_audiocaps(src, tmp_path / "out.csv", split="train", layout="train")
    assert [p.split(":")[0] for p in info.value.problems] == ["line 2", "line 3", "line 4"]
    good = write_csv(tmp_path / "good.csv", AUDIOCAPS_VAL[:2])
    with pytest.raises(ManifestError, match="name_template"):
        convert_audiocaps(good, tmp_path / "out.csv", split="train", layout="train", name_template="{video}")
