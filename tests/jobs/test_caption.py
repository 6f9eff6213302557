"""inference.py / enclap-caption: files and folders in, captions out, bad files named."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from enclap.jobs.caption import main

from ..audio_helpers import tone, write_audio, write_bad_files
from ..conftest import REPO_ROOT
from ..pipeline_factory import build_tiny_checkpoint



pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_folder_and_files_with_a_bad_one(checkpoint, tmp_path, capsys):
    folder = tmp_path / "recordings"
    write_audio(folder / "a.wav", tone(0.6, 16000, 300.0), 16000)
    write_audio(folder / "sub" / "b.flac", tone(0.9, 44100, 500.0, channels=2), 44100)
    bad = write_bad_files(tmp_path / "bad")["text"]
    single = write_audio(tmp_path / "c.ogg", tone(0.7, 48000, 800.0), 48000, format="OGG", subtype="VORBIS")
    out_csv = tmp_path / "out" / "captions.csv"
    # a.wav is named twice (directly and through its folder): it is captioned once.
    code = main([str(folder), str(single), str(folder / "a.wav"), "--input", str(bad), "--ckpt", str(checkpoint),
                 "--output", str(out_csv), "-b", "2"])
    captured = capsys.readouterr()
    assert code == 1
    lines = [line.split("\t") for line in captured.out.strip().splitlines()]
    assert [line[0] for line in lines] == [str(folder / "a.wav"), str(folder / "sub" / "b.flac"), str(single)]
    assert f"{bad}: not a readable audio file" in captured.err and "1 of 4 file(s)" in captured.err
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["caption"] for r in rows[:3]] == [line[1] for line in lines]
    assert rows[3]["error"].startswith("not a readable audio file") and rows[3]["caption"] == ""

    out_json = tmp_path / "captions.json"
    assert main([str(folder / "a.wav"), "--ckpt", str(checkpoint), "--output", str(out_json)]) == 0
    assert json.loads(out_json.read_text())[0]["caption"] == lines[0][1]


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    write_audio(tmp_path / "a.wav", tone(0.2, 16000), 16000)
    assert main([str(tmp_path / "a.wav"), "--ckpt", str(tmp_path / "no_ckpt")]) == 2
    assert "EnCLAP captioner" in capsys.readouterr().err


def test_entry_point_help():
    out = subprocess.run([sys.executable, str(REPO_ROOT / "inference.py"), "--help"], capture_output=True, text=True, check=True)
    assert "--ckpt" in out.stdout and "--long_audio" in out.stdout


# ------------------------------------------------------------------ timed captions, output formats (issue 11)
import html
import re

import numpy as np

from enclap.audio import split_windows

FAST = ["--num_beams", "2", "--max_length", "12"]
WINDOW = 125 / 75  # the tiny checkpoint's encoder window: 125 codec frames at 75 frames/s


def _seconds(h, m, s, ms) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


_SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)\n((?:[^\n]+\n?)+)")
_VTT_TIMING = re.compile(r"(?:(\d\d+):)?(\d\d):(\d\d)\.(\d\d\d) --> (?:(\d\d+):)?(\d\d):(\d\d)\.(\d\d\d)")


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    """A strict SubRip parser: numbered cues from 1, HH:MM:SS,mmm times, non-empty text, blank-line separated."""
    assert text.endswith("\n") and "\r" not in text
    cues = []
    for number, block in enumerate(text.strip("\n").split("\n\n"), start=1):
        match = _SRT_CUE.fullmatch(block)
        assert match, f"not an SRT cue: {block!r}"
        assert int(match.group(1)) == number
        start, end = _seconds(*match.group(2, 3, 4, 5)), _seconds(*match.group(6, 7, 8, 9))
        assert start <= end and "-->" not in match.group(10)
        cues.append((start, end, match.group(10).strip("\n")))
    return cues


def parse_vtt(text: str) -> tuple[list[str], list[tuple[float, float, str]]]:
    """A strict WebVTT parser (header, NOTE blocks, cues with optional identifiers); returns (notes, cues)."""
    assert text.startswith("WEBVTT\n\n") and text.endswith("\n")
    notes, cues = [], []
    for block in text.strip("\n").split("\n\n")[1:]:
        lines = block.split("\n")
        if lines[0].startswith("NOTE"):
            assert not any("-->" in line for line in lines)
            notes.append(block[4:].strip())
            continue
        if "-->" not in lines[0]:
            lines = lines[1:]  # cue identifier
        timing = _VTT_TIMING.fullmatch(lines[0])
        assert timing, f"not a WebVTT timing line: {lines[0]!r}"
        text_lines = lines[1:]
        assert text_lines and all(line and "-->" not in line for line in text_lines)
        assert not any(re.search(r"&(?!amp;|lt;|gt;)|<", line) for line in text_lines), "unescaped & or <"
        g = timing.groups()
        cues.append((_seconds(g[0] or 0, *g[1:4]), _seconds(g[4] or 0, *g[5:8]), html.unescape("\n".join(text_lines))))
    return notes, cues


def _scene(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    third = int(seconds * 16000) // 3
    rest = int(seconds * 16000) - 2 * third
    return np.concatenate([
        tone(third / 16000, 16000, 300.0), 0.3 * rng.standard_normal(third).astype(np.float32),
        tone(rest / 16000, 16000, 1700.0, amplitude=0.2),
    ]).astype(np.float32)


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    return write_audio(folder / "long recording.wav", _scene(4.5, 0), 16000, subtype="FLOAT")


def test_timed_outputs_parse_and_match_the_windows(checkpoint, long_recording, tmp_path, capsys):
    out = tmp_path / "out"
    for ext in ("jsonl", "json", "csv", "tsv", "srt", "vtt"):
        timed = [] if ext in ("srt", "vtt") else ["--long_audio", "timestamped"]  # subtitles imply it
        assert main([str(long_recording), "--ckpt", str(checkpoint), "--output", str(out / f"c.{ext}"), *timed, *FAST]) == 0
    capsys.readouterr()
    # the windows, computed here: the encoder's window, tiling the recording, the last one aligned to its end
    expected_times = [(0.0, WINDOW), (WINDOW, 2 * WINDOW), (4.5 - WINDOW, 4.5)]

    (record,) = [json.loads(line) for line in (out / "c.jsonl").read_text().splitlines()]
    assert json.loads((out / "c.json").read_text()) == [record]
    assert record["file"] == str(long_recording) and record["error"] is None and record["duration"] == pytest.approx(4.5)
    times = [(w["start"], w["end"]) for w in record["windows"]]
    assert np.allclose(times, expected_times, atol=1 / 16000)
    captions = [w["caption"] for w in record["windows"]]
    assert record["caption"] in captions

    for ext, delimiter in (("csv", ","), ("tsv", "\t")):
        with open(out / f"c.{ext}", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter=delimiter))
        assert [r["kind"] for r in rows] == ["recording", "window", "window", "window"]
        assert (rows[0]["start"], float(rows[0]["end"]), rows[0]["caption"]) == ("0.000", pytest.approx(4.5), record["caption"])
        assert [r["caption"] for r in rows[1:]] == captions
        assert np.allclose([(float(r["start"]), float(r["end"])) for r in rows[1:]], expected_times, atol=1e-3)

    srt_cues = parse_srt((out / "c.srt").read_text(encoding="utf-8"))
    notes, vtt_cues = parse_vtt((out / "c.vtt").read_text(encoding="utf-8"))
    for cues in (srt_cues, vtt_cues):
        assert np.allclose([(s, e) for s, e, _ in cues], expected_times, atol=1e-3)
        assert [text for _, _, text in cues] == [c or "..." for c in captions]
    assert notes == [f"whole recording: {record['caption']}"]


def test_long_recording_gives_the_captions_of_its_windows_cut_out(checkpoint, long_recording, tmp_path, capsys):
    """Per-window captions of a streamed recording = the CLI on the windows cut out as files of their own."""
    import soundfile as sf

    samples, rate = sf.read(str(long_recording), dtype="float32")
    cuts = tmp_path / "cuts"
    windows = split_windows(samples, rate, WINDOW, 0.7)
    for i, w in enumerate(windows):
        write_audio(cuts / f"w{i:02d}.wav", w.samples, rate, subtype="FLOAT")
    assert main([str(long_recording), "--ckpt", str(checkpoint), "--hop", "0.7", "--output", str(tmp_path / "t.jsonl"), *FAST]) == 0
    assert main([str(cuts), "--ckpt", str(checkpoint), "--output", str(tmp_path / "cuts.jsonl"), *FAST]) == 0
    capsys.readouterr()
    timed = json.loads((tmp_path / "t.jsonl").read_text())
    alone = [json.loads(line)["caption"] for line in (tmp_path / "cuts.jsonl").read_text().splitlines()]
    assert len(windows) == 6 and [w["caption"] for w in timed["windows"]] == alone
    assert [(w["start"], w["end"]) for w in timed["windows"]] == [(w.start, w.end) for w in windows]


def test_mixed_folder_one_result_per_good_file_one_error_per_bad(checkpoint, long_recording, tmp_path, capsys):
    folder = tmp_path / "mixed"
    bad = write_bad_files(folder / "bad")
    write_audio(folder / "a.wav", tone(0.6, 16000, 300.0), 16000)
    write_audio(folder / "sub" / "a.flac", tone(2.0, 22050, 500.0, channels=2), 22050)
    (folder / "long.wav").write_bytes(long_recording.read_bytes())
    good = [folder / "a.wav", folder / "long.wav", folder / "sub" / "a.flac"]

    for args in ([], ["--long_audio", "windows"], ["--long_audio", "timestamped"]):
        out = tmp_path / f"out{len(args)}{args[-1] if args else ''}.jsonl"
        assert main([str(folder), "--ckpt", str(checkpoint), "--output", str(out), *args, *FAST]) == 1
        captured = capsys.readouterr()
        records = {r["file"]: r for r in map(json.loads, out.read_text().splitlines())}
        assert sorted(records) == sorted(map(str, good + list(bad.values())))
        assert all(records[str(p)]["caption"] and records[str(p)]["error"] is None for p in good)
        errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
        assert len(errors) == len(bad) and f"{len(bad)} of {len(bad) + len(good)} file(s)" in captured.err
        for path in bad.values():
            (line,) = [e for e in errors if e.startswith(f"error: {path}: ")]
            assert records[str(path)]["error"] and line.endswith(records[str(path)]["error"])
        stdout_files = {line.split("\t")[0] for line in captured.out.splitlines()}
        assert stdout_files == set(map(str, good))

    # SRT of several recordings: one file per good recording in the directory, named like it
    subs = tmp_path / "subs"
    assert main([str(folder), "--ckpt", str(checkpoint), "--format", "srt", "--output", str(subs), *FAST]) == 1
    capsys.readouterr()
    assert sorted(p.relative_to(subs).as_posix() for p in subs.rglob("*.srt")) == ["a.srt", "long.srt", "sub/a.srt"]
    assert all(parse_srt(p.read_text(encoding="utf-8")) for p in subs.rglob("*.srt"))
    assert len(parse_srt((subs / "long.srt").read_text(encoding="utf-8"))) == 3


def test_output_arguments_are_checked(checkpoint, long_recording, tmp_path, capsys):
    two = [str(long_recording), str(long_recording.with_name("other.wav"))]
    write_audio(long_recording.with_name("other.wav"), tone(0.5, 16000), 16000)
    for args, message in [
        ([*two, "--output", str(tmp_path / "x.srt")], "give --output a directory"),
        ([str(long_recording), "--output", str(tmp_path / "x.docx")], "names no format"),
        ([str(long_recording), "--format", "vtt", "--long_audio", "truncate"], "--long_audio timestamped"),
        ([str(long_recording), "--window", "2", "--long_audio", "windows"], "--long_audio timestamped"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--ckpt", str(checkpoint)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_subtitles_of_one_recording_go_to_stdout(checkpoint, long_recording, capsys):
    assert main([str(long_recording), "--ckpt", str(checkpoint), "--format", "srt", "--window", "2", *FAST]) == 0
    cues = parse_srt(capsys.readouterr().out)
    assert np.allclose([(s, e) for s, e, _ in cues], [(0, 2), (2, 4), (2.5, 4.5)], atol=1e-3)
