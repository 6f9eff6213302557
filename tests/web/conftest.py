"""The web demo as a person meets it: `make demo`, then `python gradio_app.py` with no arguments, in a browser.

Session fixtures: a quick demo run laid out as `make demo` lays it out (``<tmp>/runs/demo``), the app
started from ``<tmp>`` with no arguments on a free port of 127.0.0.1 (a real server in its own
process), and a headless Chromium driven by Selenium with its network log switched on.

Where Chromium or its driver cannot be found the browser tests skip, except under ``CI=true``, where
they fail: CI installs both (.ci/run), so a missing browser there is a broken set-up, not a reason to
pass. (``require`` from tests/conftest.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ..conftest import require

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,1400",
)
SERVER_START_SECONDS = 600  # loading torch + models and indexing on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A working directory holding ``runs/demo`` laid out as `make demo` leaves it.

    By default the parts the app reads, built small: a tiny random captioner checkpoint whose
    ``pipeline.json`` names its EnCodec and CLAP (``captioner/best``, as the demo's does) and test
    recordings under ``data/audio/test``. ``ENCLAP_WEB_TEST_DEMO=runs/demo`` uses a real demo run
    instead (readable captions: how the README's screenshots are taken).
    """
    root = tmp_path_factory.mktemp("user")
    demo = root / "runs" / "demo"
    existing = os.environ.get("ENCLAP_WEB_TEST_DEMO")
    if existing:
        demo.parent.mkdir(parents=True)
        demo.symlink_to(Path(existing).resolve(), target_is_directory=True)
        return root
    from ..pipeline_factory import build_tiny_checkpoint
    from ..test_search import write_clip

    build_tiny_checkpoint(demo / "captioner" / "best")
    for i in range(8):
        write_clip(demo / "data" / "audio" / "test" / f"clip_{i:04d}.wav", seed=i)
    return root


class Server:
    def __init__(self, process: subprocess.Popen, url: str, log: Path) -> None:
        self.process, self.url, self.log = process, url, log


@pytest.fixture(scope="session")
def server(demo_root) -> Server:
    """`python gradio_app.py --port N --device cpu` started in the demo's working directory: the demo's defaults."""
    port = free_port()
    log = demo_root / "server.log"
    # One torch thread, as the tests' own expected captions (under torch_threads(1)): EnCodec's codebook search on
    # random tiny models has near-ties whose winner can change with the thread count.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("GRADIO_ANALYTICS_ENABLED", None)  # the app must switch analytics off by itself
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "gradio_app.py"), "--port", str(port), "--device", "cpu"],
            cwd=demo_root, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + SERVER_START_SECONDS
    while True:
        if process.poll() is not None:
            pytest.fail(f"the web app exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the web app did not answer on {url} within {SERVER_START_SECONDS} s:\n{log.read_text()[-4000:]}")
        time.sleep(1)
    yield Server(process, url, log)
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Headless Chromium (Debian's chromium + chromium-driver) with the performance (network) log on."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    require(chromium is not None, "chromium", "apt-get install chromium (.ci/run does)")
    require(driver_path is not None, "chromedriver", "apt-get install chromium-driver (.ci/run does)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        require(False, "selenium", "pip install -r requirements-dev.txt (make install does)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def network_requests(driver) -> list[str]:
    """Every URL the browser asked for since the last call (requests and WebSockets), from its performance log."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
        elif message["method"] == "Network.webSocketCreated":
            urls.append(message["params"]["url"])
    return urls
