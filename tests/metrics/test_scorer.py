"""The scorer: equality with aac-metrics and with a pure-Python BLEU / ROUGE-L / CIDEr-D, awkward captions,
unavailable metrics reported, run-time failures.

Tests that start Java share module-scoped results so Java starts as few times as possible, and are slow.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from enclap import metrics as M
from enclap.errors import MetricUnavailableError

from .helpers import CANDIDATES, OFFLINE, PLAIN_CANDS, PLAIN_REFS, REFERENCES, java_path


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


@pytest.mark.slow
def test_ngram_metrics_equal_pure_python_definitions(cache: Path) -> None:
    java_path()
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
    java_path()
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
        java_path=java_path(),
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
    java_path()
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
    java_path()
    scorer = M.CaptionScorer(("bleu_1",), cache_dir=cache)
    with pytest.raises(ValueError, match=r"clips \[1\]"):
        scorer.score(["a dog", "rain"], [["a dog barks"], ["", "..."]])


@pytest.mark.slow
def test_single_clip_reports_cider_unavailable_but_scores_the_rest(cache: Path) -> None:
    java_path()
    report = M.CaptionScorer(("bleu_1", "cider_d", "rouge_l"), cache_dir=cache).score(["a dog barks"], [["a dog barks"]])
    assert report.corpus["bleu_1"] == pytest.approx(1.0, abs=1e-6) and report.corpus["rouge_l"] == pytest.approx(1.0)
    assert "cider_d" not in report.corpus and "at least 2 clips" in report.unavailable["cider_d"]



# ------------------------------------------------------------------------------------------------------------
# Failures at run time and the command line end to end (tokenizer only: no METEOR start)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_broken_tokenizer_jar_is_reported_not_raised(cache: Path, tmp_path: Path) -> None:
    java_path()
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
