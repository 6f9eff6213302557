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
