"""SPICE, SPIDEr and SPIDEr-FL wiring, with a stand-in for SPICE's Java program."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from enclap import metrics as M

from .helpers import PLAIN_CANDS, PLAIN_REFS, fake_corenlp_jar, jar_pins, java_path, tiny_fense_models



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
    java = java_path()
    fake = tmp_path / "java"
    log = tmp_path / "spice-calls.jsonl"
    fake.write_text(FAKE_JAVA.format(python=sys.executable, java=java, log=str(log)))
    fake.chmod(0o755)
    root = tmp_path / "cache"
    jars = tmp_path / "jars"
    jars.mkdir()
    M.provision_resources(root, corenlp_jars=[fake_corenlp_jar(jars / n, n) for n in M.CORENLP_JARS], corenlp_sha256=jar_pins())
    monkeypatch.setenv("FENSE_DATA", str(tmp_path))
    sbert, echecker = tiny_fense_models(tmp_path, monkeypatch)

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
