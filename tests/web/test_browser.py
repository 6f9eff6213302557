"""The web demo driven by a real headless browser, as a person uses it after `make demo`.

Each test loads the page served by `python gradio_app.py` (no arguments, in the demo's working
directory), uploads a file through the page's own file input, presses the page's buttons and reads
what the page shows. What it shows is compared with the library computing the same thing directly in
this process. The browser's network log must show no request to anything but the local server.

With ``ENCLAP_SCREENSHOTS=DIR`` the tests save the README's screenshots into DIR.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import soundfile as sf

from enclap.webapp import format_time

from ..conftest import torch_threads
from ..jobs.test_caption import parse_srt
from .conftest import network_requests

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("web")]  # one server and one browser per run

TIMEOUT = 300  # seconds for one caption or search on a loaded machine
INITIAL_STATUS = "Upload a recording or record one, then press Caption."


def visible(text: str) -> str:
    """Text as a page shows it: without control characters, whitespace runs collapsed (the tiny random
    captioner's captions hold stray bytes that a browser does not render)."""
    return " ".join("".join(ch for ch in text if ch.isprintable()).split())


def window_rows(result) -> list[list[str]]:
    return [[format_time(w.start), format_time(w.end), visible(w.caption)] for w in result.windows]


def assert_local(urls: list[str], server_url: str) -> None:
    """Every http(s)/ws(s) request went to the app's own host and port (data:, blob: and chrome: are in-browser)."""
    local = urlsplit(server_url)
    assert urls, "the performance log recorded no request at all"
    outside = [
        url for url in urls
        if urlsplit(url).scheme in ("http", "https", "ws", "wss")
        and (urlsplit(url).hostname, urlsplit(url).port) != (local.hostname, local.port)
    ]
    assert outside == [], f"the page made requests outside {server_url}: {outside}"


def screenshot(driver, name: str) -> None:
    target = os.environ.get("ENCLAP_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(target) / name))


def wait_for(condition, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as err:  # elements come and go while Svelte re-renders
            last_error = err
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


def open_page(driver, server) -> None:
    from selenium.webdriver.common.by import By

    driver.get(server.url)
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#caption-button"), "the page to load", 120)


def text_of(driver, selector: str) -> str:
    """The visible text of an element without Gradio's progress tracker (its timer reads like "0.6s"), or "" while
    that tracker is pending."""
    return driver.execute_script(
        """
        const element = document.querySelector(arguments[0]);
        if (!element) return "";
        const tracker = element.querySelector('[data-testid="status-tracker"]');
        if (tracker && !tracker.classList.contains('hide')) return "";
        const copy = element.cloneNode(true);
        copy.querySelectorAll('[data-testid="status-tracker"]').forEach(t => t.remove());
        document.body.appendChild(copy);
        copy.style.position = 'absolute'; copy.style.left = '-10000px';
        const text = copy.innerText;
        copy.remove();
        return text.trim();
        """,
        selector,
    )


def upload_and_caption(driver, path: Path) -> str:
    """Put ``path`` into the recording widget through its file input, press Caption; the status text once it is done."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#audio-input input[type=file]").send_keys(str(path))
    # the widget shows the file's name/player once the upload is on the server
    wait_for(lambda: not driver.find_elements(By.CSS_SELECTOR, "#audio-input input[type=file]")
             or driver.find_elements(By.CSS_SELECTOR, "#audio-input audio, #audio-input [data-testid*=waveform]"),
             "the upload to finish", 60)
    return press_caption(driver)


def press_caption(driver) -> str:
    from selenium.webdriver.common.by import By

    before = text_of(driver, "#caption-status")
    driver.find_element(By.CSS_SELECTOR, "#caption-button").click()
    return wait_for(
        lambda: (lambda s: s if s and s != before else "")(text_of(driver, "#caption-status")), "the caption status"
    )


def table_rows(driver, selector: str) -> list[list[str]]:
    """The body rows of a Gradio Dataframe as rendered (its virtual rows, in row order)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' [role=row].virtual-row'))"
        ".sort((a, b) => Number(a.dataset.index) - Number(b.dataset.index))"
        ".map(r => Array.from(r.querySelectorAll('[role=gridcell]')).map(c => c.textContent.trim()))",
        selector,
    )


def download_links(driver) -> dict[str, str]:
    """{file name: URL} of the files the #downloads widget offers."""
    return driver.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll('#downloads a[href]'))"
        ".map(a => [decodeURIComponent(new URL(a.href).pathname.split('/').pop()), a.href]))"
    )


def fetch(url: str) -> str:
    from urllib.request import urlopen

    with urlopen(url, timeout=60) as response:  # the local server (assert_local checks the page's own requests)
        return response.read().decode("utf-8")


@pytest.fixture(scope="module")
def demo_pipeline(demo_root):
    """The demo's captioner loaded directly (the independent side of every comparison)."""
    from enclap.pipeline import CaptioningPipeline

    return CaptioningPipeline.from_pretrained(demo_root / "runs/demo/captioner/best", device="cpu")


@pytest.fixture(scope="module")
def test_clips(demo_root) -> list[Path]:
    return sorted((demo_root / "runs/demo/data/audio/test").glob("*.wav"))


def test_upload_a_wav_and_read_its_caption(browser, server, demo_pipeline, test_clips, tmp_path):
    from selenium.webdriver.common.by import By

    clip = tmp_path / "a recording.wav"
    clip.write_bytes(test_clips[0].read_bytes())
    open_page(browser, server)
    network_requests(browser)  # start the log afresh
    status = upload_and_caption(browser, clip)
    with torch_threads(1):
        expected = demo_pipeline.caption_timed([clip])[0]
    assert status.startswith("Captioned a recording.wav"), status
    caption = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#caption-text textarea").get_attribute("value"), "the caption")
    assert visible(caption) == visible(expected.caption)
    assert [[visible(c) for c in row] for row in table_rows(browser, "#windows")] == window_rows(expected)
    # the picture of the sound and the zero-shot tags are on the page
    picture = browser.find_element(By.CSS_SELECTOR, "#picture img").get_attribute("src")
    assert "gradio_api/file=" in picture and picture.endswith(".png")
    labels = {line.strip() for line in (Path(__file__).resolve().parents[2] / "enclap/resources/esc50_labels.txt").read_text().splitlines()}
    assert any(label in text_of(browser, "#tags") for label in labels if label and not label.startswith("#"))
    assert_local(network_requests(browser), server.url)


def test_a_long_recording_gets_its_table_of_windows(browser, server, demo_pipeline, test_clips, tmp_path):
    parts = [sf.read(str(path), dtype="float32")[0] for path in test_clips[:10]]
    rate = sf.info(str(test_clips[0])).samplerate
    long_file = tmp_path / "long recording.flac"
    sf.write(str(long_file), np.concatenate(parts), rate)
    with torch_threads(1):
        expected = demo_pipeline.caption_timed([long_file])[0]
    assert len(expected.windows) >= 2  # longer than the encoder's window

    open_page(browser, server)
    network_requests(browser)
    status = upload_and_caption(browser, long_file)
    assert f"{len(expected.windows)} windows" in status, status
    rows = wait_for(lambda: table_rows(browser, "#windows"), "the table of windows")
    assert [[visible(c) for c in row] for row in rows] == window_rows(expected)
    assert rows[0][0] == "0:00.0" and rows[-1][1] == format_time(expected.duration)
    links = wait_for(lambda: download_links(browser), "the subtitle downloads")
    assert sorted(links) == ["long recording.json", "long recording.srt", "long recording.vtt"], links
    cues = parse_srt(fetch(links["long recording.srt"]))
    assert np.allclose([(start, end) for start, end, _ in cues], [(w.start, w.end) for w in expected.windows], atol=1e-3)
    screenshot(browser, "web-caption.png")
    assert_local(network_requests(browser), server.url)


def test_a_corrupt_an_empty_and_a_silent_upload_get_readable_messages(browser, server, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(np.random.default_rng(0).integers(0, 256, 8000, dtype=np.uint8).tobytes())
    open_page(browser, server)
    network_requests(browser)
    assert press_caption(browser) == "Upload a recording or record one first, then press Caption."
    status = upload_and_caption(browser, broken)
    assert status.startswith("Could not caption broken.wav: not a readable audio file"), status
    page = browser.page_source
    assert "Traceback" not in page and 'File "' not in page
    screenshot(browser, "web-error.png")

    silent = tmp_path / "silence.wav"
    sf.write(str(silent), np.zeros(32_000, dtype=np.float32), 16_000)
    open_page(browser, server)
    status = upload_and_caption(browser, silent)
    assert status.startswith("Captioned silence.wav") and "silent" in status, status
    assert_local(network_requests(browser), server.url)


def test_search_shows_ranked_playable_results(browser, server, demo_root, test_clips):
    from selenium.webdriver.common.by import By

    from enclap.audio import load_audio
    from enclap.features.clap_embed import ClapAudioEmbedder
    from enclap.features.clap_text import load_text_embedder

    query = "a dog barks"
    from enclap.pipeline import PipelineSettings

    clap_dir = PipelineSettings.read(demo_root / "runs/demo/captioner/best").clap  # the CLAP the demo captioner names
    audio = ClapAudioEmbedder.from_pretrained(clap_dir)
    text = load_text_embedder(clap_dir)  # a HF ClapModel (tiny demo) or the demo's own CLAP tower (a real demo run)
    dense = {
        path.name: float(score)
        for path, score in zip(test_clips, (text.embed_texts([query]) @ audio.embed([load_audio(p, audio.sample_rate)[0] for p in test_clips]).T)[0])
    }

    open_page(browser, server)
    network_requests(browser)
    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Search')]").click()
    box = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#search-query textarea, #search-query input"), "the search box")
    box.send_keys(query)
    browser.find_element(By.CSS_SELECTOR, "#search-button").click()
    status = wait_for(lambda: text_of(browser, "#search-status"), "the search status")
    assert status.startswith(f"10 best of {len(test_clips)}") or status.startswith(f"{min(10, len(test_clips))} best of {len(test_clips)}"), status
    rows = wait_for(lambda: table_rows(browser, "#search-results"), "the results table")
    assert [int(r[0]) for r in rows] == list(range(1, min(10, len(test_clips)) + 1))
    shown = [(Path(r[2]).name, float(r[1])) for r in rows]
    # the page's scores are the dense cosines (the index stores float16), best first, and no file left
    # out scores higher than one shown
    for name, score in shown:
        assert abs(score - dense[name]) < 2e-3, (name, score, dense[name])
    assert [s for _, s in shown] == sorted((s for _, s in shown), reverse=True)
    left_out = [s for n, s in dense.items() if n not in {n for n, _ in shown}]
    assert all(min(s for _, s in shown) >= s - 2e-3 for s in left_out)
    # the best result is loaded into the player, served by the app
    source = wait_for(
        lambda: browser.execute_script(
            "const p = document.querySelector('#search-player');"
            "const e = p && p.querySelector('audio[src], [src*=\"gradio_api/file=\"], a[href*=\"gradio_api/file=\"]');"
            "return e && (e.src || e.href)"
        ),
        "the result player", 60,
    )
    assert "gradio_api/file=" in source and source.endswith(shown[0][0].replace(" ", "%20"))
    screenshot(browser, "web-search.png")
    assert_local(network_requests(browser), server.url)


def test_the_page_uses_system_fonts_only(browser, server):
    network_requests(browser)  # drop what earlier tests left in the log
    open_page(browser, server)
    fonts = browser.execute_script(
        "return Array.from(document.fonts).filter(f => f.status !== 'unloaded').map(f => f.family)"
    )
    page_font = browser.execute_script("return getComputedStyle(document.querySelector('#caption-button')).fontFamily")
    assert "system-ui" in page_font, page_font
    assert fonts == [], f"web fonts were loaded: {fonts}"
    assert_local(network_requests(browser), server.url)
