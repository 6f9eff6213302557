"""Installing the CoreNLP 3.6.0 jars for SPICE: every source, every file checked against its pinned SHA-256.

The jars here are small stand-ins; their pins are the test's own hashlib digests, given as the
``corenlp_sha256`` argument (or ``--sha256``), since the project pins no digest of the real files.
"""

from __future__ import annotations

import hashlib
import io
import urllib.request
import zipfile
from pathlib import Path

import pytest

from enclap import metrics as M
from enclap.errors import MetricUnavailableError

from .helpers import fake_corenlp_jar, fake_corenlp_zip, jar_bytes, jar_pins, java_path, sha256

LIB = Path("aac-metrics/spice/lib")
JAR, MODELS = M.CORENLP_JARS


def _placed(root: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted((root / LIB).glob("stanford-corenlp-3.6.0*.jar"))}


def _jars_folder(directory: Path, salt: bytes = b"") -> Path:
    directory.mkdir(parents=True)
    for name in M.CORENLP_JARS:
        fake_corenlp_jar(directory / name, name, salt)
    return directory


def test_corenlp_from_zip_enables_spice(tmp_path: Path) -> None:
    java_path()
    root = tmp_path / "cache"
    M.provision_resources(root)
    before = M.metric_availability(("spice", "spider"), root)
    assert not before["spice"].available and "stanford-corenlp-3.6.0" in before["spice"].reason
    assert "--corenlp" in before["spice"].how_to_enable and "--sha256" in before["spice"].how_to_enable
    assert not before["spider"].available
    archive = fake_corenlp_zip(tmp_path / M.CORENLP_ZIP)
    pins = {**jar_pins(), M.CORENLP_ZIP: sha256(archive)}
    M.provision_resources(root, corenlp_jars=[archive], corenlp_sha256=pins)
    assert _placed(root) == jar_pins()
    after = M.metric_availability(("spice",), root)
    assert after["spice"].available, after["spice"]


def test_corenlp_from_jars_and_folder(tmp_path: Path) -> None:
    jars = _jars_folder(tmp_path / "jars")
    M.provision_resources(tmp_path / "a", corenlp_jars=[jars / n for n in M.CORENLP_JARS], corenlp_sha256=jar_pins())
    M.provision_resources(tmp_path / "b", corenlp_jars=[jars], corenlp_sha256=jar_pins())
    assert _placed(tmp_path / "a") == _placed(tmp_path / "b") == jar_pins()


def test_corenlp_from_an_https_url(monkeypatch, tmp_path: Path) -> None:
    """The download path, with urlopen answering from memory (tests reach no network)."""
    body = fake_corenlp_zip(tmp_path / "served.zip").read_bytes()
    asked: list[str] = []

    def urlopen(url, timeout=None):
        asked.append(url)
        return io.BytesIO(body)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    url = f"https://downloads.example.invalid/mirror/{M.CORENLP_ZIP}"
    pins = {**jar_pins(), M.CORENLP_ZIP: hashlib.sha256(body).hexdigest()}
    M.provision_resources(tmp_path / "c", corenlp_jars=[url], corenlp_sha256=pins)
    assert asked == [url]
    assert _placed(tmp_path / "c") == jar_pins()
    assert not [p for p in (tmp_path / "c/aac-metrics").rglob("*") if p.suffix in (".zip", ".part", ".tmp")]


def test_plain_http_is_refused_before_any_download(monkeypatch, tmp_path: Path) -> None:
    def urlopen(url, timeout=None):
        raise AssertionError(f"downloaded {url}")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    url = f"http://nlp.stanford.edu/software/{M.CORENLP_ZIP}"
    with pytest.raises(MetricUnavailableError, match="refusing a plain http URL") as err:
        M.provision_resources(tmp_path / "c", corenlp_jars=[url], corenlp_sha256=jar_pins())
    assert url in str(err.value) and "https" in str(err.value)
    assert _placed(tmp_path / "c") == {}


def test_a_tampered_jar_is_refused_naming_file_and_both_digests(tmp_path: Path) -> None:
    jars = _jars_folder(tmp_path / "jars", salt=b"tampered")
    tampered = jars / MODELS
    for source in ([tampered], [jars]):
        with pytest.raises(M.ChecksumMismatchError) as err:
            M.provision_resources(tmp_path / "c", corenlp_jars=source, corenlp_sha256=jar_pins())
        message = str(err.value)
        assert str(tampered) in message or str(jars / JAR) in message
        failed = err.value.name
        assert f"expected {jar_pins()[failed]}" in message and f"actual {sha256(jars / failed)}" in message
    assert _placed(tmp_path / "c") == {}  # nothing placed from a folder with a bad jar, not even the good one


def test_a_tampered_zip_is_refused_before_extraction(tmp_path: Path) -> None:
    archive = fake_corenlp_zip(tmp_path / M.CORENLP_ZIP, salt=b"tampered")
    pinned_zip = hashlib.sha256(fake_corenlp_zip(tmp_path / "genuine.zip").read_bytes()).hexdigest()
    with pytest.raises(M.ChecksumMismatchError) as err:
        M.provision_resources(tmp_path / "c", corenlp_jars=[archive], corenlp_sha256={**jar_pins(), M.CORENLP_ZIP: pinned_zip})
    message = str(err.value)
    assert message.startswith(str(archive)) and M.CORENLP_ZIP in message
    assert f"expected {pinned_zip}" in message and f"actual {sha256(archive)}" in message
    assert _placed(tmp_path / "c") == {}


def test_a_tampered_jar_inside_a_zip_is_refused_naming_the_member(tmp_path: Path) -> None:
    archive = tmp_path / "corenlp.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr(f"stanford-corenlp-full-2015-12-09/{JAR}", jar_bytes(JAR))
        out.writestr(f"stanford-corenlp-full-2015-12-09/{MODELS}", jar_bytes(MODELS, b"tampered"))
    with pytest.raises(M.ChecksumMismatchError) as err:  # the zip has no pin: its jars are still checked
        M.provision_resources(tmp_path / "c", corenlp_jars=[archive], corenlp_sha256=jar_pins())
    message = str(err.value)
    assert str(archive) in message and f"stanford-corenlp-full-2015-12-09/{MODELS}" in message
    expected_actual = hashlib.sha256(jar_bytes(MODELS, b"tampered")).hexdigest()
    assert f"expected {jar_pins()[MODELS]}" in message and f"actual {expected_actual}" in message
    assert _placed(tmp_path / "c") == {}  # the good jar was not put in place either
    assert not list((tmp_path / "c" / LIB).glob(".*.tmp"))


def test_unpinned_files_are_refused_with_their_digest(tmp_path: Path) -> None:
    """The project pins no CoreNLP digest (none is published that could be checked): nothing runs unverified."""
    assert M.CORENLP_SHA256 == {M.CORENLP_ZIP: None, JAR: None, MODELS: None}
    jar = fake_corenlp_jar(tmp_path / JAR, JAR)
    with pytest.raises(M.ChecksumMismatchError) as err:
        M.provision_resources(tmp_path / "c", corenlp_jars=[jar])
    message = str(err.value)
    assert str(jar) in message and "no SHA-256 is pinned" in message and sha256(jar) in message
    assert f"--sha256 {JAR}=" in message
    assert _placed(tmp_path / "c") == {}


def test_bad_pins_and_bad_sources_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stanford-corenlp-3.6.0-model.jar"):  # a typo in a file name
        M.provision_resources(tmp_path / "c", corenlp_jars=[tmp_path], corenlp_sha256={"stanford-corenlp-3.6.0-model.jar": "0" * 64})
    with pytest.raises(ValueError, match="not 64 hex digits"):
        M.provision_resources(tmp_path / "c", corenlp_jars=[tmp_path], corenlp_sha256={JAR: "abc"})
    # a jar-named file that is not a jar: refused on its digest first
    bad = tmp_path / JAR
    bad.write_bytes(b"<html>not found</html>")
    with pytest.raises(M.ChecksumMismatchError, match=JAR):
        M.provision_resources(tmp_path / "c", corenlp_jars=[bad], corenlp_sha256=jar_pins())
    # a file whose digest the user pinned but which is not that jar: the content check names it
    wrong = fake_corenlp_jar(tmp_path / MODELS, JAR)
    with pytest.raises(MetricUnavailableError, match="not a Stanford CoreNLP 3.6.0 jar"):
        M.provision_resources(tmp_path / "c", corenlp_jars=[wrong], corenlp_sha256={MODELS: sha256(wrong)})
    other = fake_corenlp_jar(tmp_path / "corenlp.jar", JAR)
    with pytest.raises(MetricUnavailableError, match="corenlp.jar"):
        M.provision_resources(tmp_path / "c", corenlp_jars=[other], corenlp_sha256=jar_pins())
    with pytest.raises(MetricUnavailableError, match="no such file"):
        M.provision_resources(tmp_path / "c", corenlp_jars=[tmp_path / "missing.zip"], corenlp_sha256=jar_pins())
    assert _placed(tmp_path / "c") == {}


def test_cli_setup_pins_with_sha256(tmp_path: Path, capsys) -> None:
    jars = _jars_folder(tmp_path / "jars")
    cache = tmp_path / "cache"
    base = ["setup", "--cache-dir", str(cache), "--metrics", "spice", "--corenlp", str(jars)]
    assert M.main(base) == 2  # no pins: refused, with the digest to check
    err = capsys.readouterr().err
    assert "no SHA-256 is pinned" in err and "--sha256" in err
    assert M.main(base + ["--sha256", f"{JAR}=nothex"]) == 2
    assert "not 64 hex digits" in capsys.readouterr().err
    pins = [arg for name, digest in jar_pins().items() for arg in ("--sha256", f"{name}={digest.upper()}")]
    assert M.main(base + pins) == 0
    assert _placed(cache) == jar_pins()
