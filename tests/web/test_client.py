"""The web demo's API through gradio_client, against the same server the browser tests use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from enclap.webapp import format_time

from ..conftest import torch_threads
from ..jobs.test_caption import parse_srt, parse_vtt

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("web")]  # one server and one browser per run


def test_caption_and_search_through_gradio_client(server, demo_root, tmp_path):
    from gradio_client import Client, handle_file

    from enclap.pipeline import CaptioningPipeline

    clip = sorted((demo_root / "runs/demo/data/audio/test").glob("*.wav"))[1]
    client = Client(server.url, verbose=False)
    status, caption, windows, picture, tags, downloads = client.predict(handle_file(str(clip)), api_name="/caption")
    with torch_threads(1):
        expected = CaptioningPipeline.from_pretrained(demo_root / "runs/demo/captioner/best", device="cpu").caption_timed([clip])[0]
    assert status.startswith(f"Captioned **{clip.name}**")
    assert caption == expected.caption
    windows = windows.get("value", windows)  # an update of the table's value and visibility
    assert windows["data"] == [[format_time(w.start), format_time(w.end), w.caption] for w in expected.windows]
    assert Path(picture).suffix == ".png" and Path(picture).stat().st_size > 0
    tags = tags.get("value", tags)
    assert len(tags["confidences"]) == 5
    downloads = downloads.get("value", downloads)
    paths = [Path(d["path"] if isinstance(d, dict) else d) for d in downloads]
    files = {path.name: path for path in paths}
    assert sorted(files) == [f"{clip.stem}.json", f"{clip.stem}.srt", f"{clip.stem}.vtt"]
    expected_times = [(w.start, w.end) for w in expected.windows]
    srt_cues = parse_srt(files[f"{clip.stem}.srt"].read_text(encoding="utf-8"))
    _, vtt_cues = parse_vtt(files[f"{clip.stem}.vtt"].read_text(encoding="utf-8"))
    for cues in (srt_cues, vtt_cues):
        assert np.allclose([(start, end) for start, end, _ in cues], expected_times, atol=1e-3)
    record = json.loads(files[f"{clip.stem}.json"].read_text(encoding="utf-8"))[0]
    assert (record["file"], record["caption"]) == (clip.name, expected.caption)  # the upload's name, no server path

    bad = tmp_path / "not audio.wav"
    bad.write_text("hello")
    status, caption, *_ = client.predict(handle_file(str(bad)), api_name="/caption")
    assert status.startswith("**Could not caption `not audio.wav`:**") and caption == ""

    status, results, choices, played = client.predict("rain on a roof", 3, api_name="/search")
    results = results.get("value", results)
    assert status.startswith("3 best of")
    ranks = [row[0] for row in results["data"]]
    scores = [row[1] for row in results["data"]]
    assert ranks == [1, 2, 3] and scores == sorted(scores, reverse=True)
    assert Path(played).name == Path(results["data"][0][2]).name
