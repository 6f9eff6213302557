"""The reference ceiling: leave-one-out over each clip's references, against aac-metrics' own functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclap import metrics as M

from .helpers import OFFLINE, java_path


CEILING_REFS = [
    ["A dog barks loudly.", "A dog is barking.", "Cars pass while a dog barks."],
    ["Rain falls on a roof.", "Heavy rain on metal."],
    ["Only one reference here."],  # skipped
    ["Birds chirp.", "Birds sing in the trees.", "", "Many birds are chirping loudly."],  # the empty one is dropped
    ["A man speaks.", "A man talks quietly.", "Someone is speaking.", "A voice speaks.", "A male voice."],
]


@pytest.mark.slow
def test_reference_ceiling_is_leave_one_out(cache: Path, tmp_path: Path) -> None:
    java = java_path()
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
    java_path()
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
