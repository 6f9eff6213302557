"""Retrieval and zero-shot metrics on hand-made similarity matrices, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from enclap.clap.evaluation import first_hit_ranks, read_labelled_csv, retrieval_metrics, topk_accuracy
from enclap.errors import ManifestError


def test_text_to_audio_ranks_and_map_by_hand():
    # 3 clips x 4 captions; caption j describes clip owner[j]
    owner = [0, 0, 1, 2]
    sim = np.array(
        [
            # c0   c1   c2   c3
            [0.9, 0.1, 0.3, 0.2],  # clip 0
            [0.5, 0.8, 0.7, 0.1],  # clip 1
            [0.4, 0.6, 0.2, 0.3],  # clip 2
        ]
    )
    m = retrieval_metrics(sim, owner)
    # text->audio, column by column: c0 -> clip0 ranks 1; c1 -> clip0 (0.1) below 0.8, 0.6: rank 3;
    # c2 -> clip1 (0.7) top: rank 1; c3 -> clip2 (0.3) vs 0.2, 0.1: rank 1
    assert m["t2a_R@1"] == pytest.approx(3 / 4)
    assert m["t2a_R@5"] == pytest.approx(1.0)
    assert m["t2a_mAP@10"] == pytest.approx((1 + 1 / 3 + 1 + 1) / 4)
    assert m["mAP@10"] == m["t2a_mAP@10"]
    # audio->text, row by row: clip0's captions c0 (0.9, top) -> rank 1; clip1's c2 (0.7) after c1 (0.8): rank 2;
    # clip2's c3 (0.3) after c1 (0.6), c0 (0.4): rank 3
    assert m["a2t_R@1"] == pytest.approx(1 / 3)
    assert m["a2t_R@5"] == pytest.approx(1.0)
    assert m["a2t_mAP@10"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_several_correct_captions_count_the_best_ranked_one():
    # one clip query, 6 captions, its captions are 3 and 5; scores put caption 5 second
    sim = np.array([[0.9, 0.1, 0.2, 0.05, 0.3, 0.8], [0.0, 0.9, 0.9, 0.9, 0.9, 0.0]])
    owner = [1, 1, 1, 0, 1, 0]
    m = retrieval_metrics(sim, owner)
    # clip 0 -> its captions 3 (0.05, rank 6) and 5 (0.8, rank 2): best rank 2
    # clip 1 -> its captions 0,1,2,4: the best (1, 2 or 4 at 0.9) ties with wrong caption 3 (0.9): rank 2
    assert m["a2t_R@1"] == 0.0
    assert m["a2t_mAP@10"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_ties_are_broken_against_the_query():
    # everything scores alike: the correct candidate ranks after every wrong one
    ranks = first_hit_ranks(np.zeros((2, 4)), np.eye(2, 4, dtype=bool))
    assert ranks.tolist() == [4.0, 4.0]
    m = retrieval_metrics(np.ones((4, 4)), [0, 1, 2, 3])
    assert m["t2a_R@1"] == 0.0 and m["t2a_mAP@10"] == pytest.approx(1 / 4)


def test_a_query_without_a_correct_item_counts_as_a_miss():
    # clip 2 has no caption: its audio->text query can hit nothing
    sim = np.array([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5]])
    m = retrieval_metrics(sim, [0, 1])
    assert m["a2t_R@1"] == pytest.approx(2 / 3)
    assert m["a2t_mAP@10"] == pytest.approx(2 / 3)
    assert m["a2t_queries_without_target"] == 1.0
    assert m["t2a_R@1"] == 1.0


def test_ranks_beyond_ten_give_no_map():
    sim = np.tile(np.arange(12, 0, -1, dtype=float)[:, None], (1, 12))  # clip 0 always first, clip 11 last
    m = retrieval_metrics(sim, list(range(12)))
    assert m["t2a_R@10"] == pytest.approx(10 / 12)
    assert m["t2a_mAP@10"] == pytest.approx(sum(1 / r for r in range(1, 11)) / 12)


def test_topk_accuracy_by_hand():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0], [0.3, 0.2, 0.1]])
    acc = topk_accuracy(scores, [1, 0, 2], ks=(1, 2))
    # item 0 right; item 1 ties with class 1 -> rank 2; item 2's class scores last -> rank 3
    assert acc == {"top1": pytest.approx(1 / 3), "top2": pytest.approx(2 / 3)}


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="caption_clip"):
        retrieval_metrics(np.zeros((2, 3)), [0, 1])
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(np.zeros((2, 2)), [0, 5])
    with pytest.raises(ValueError, match="finite"):
        retrieval_metrics(np.full((2, 2), np.nan), [0, 1])


def test_labelled_csv_layouts(tmp_path):
    esc = tmp_path / "esc50.csv"
    esc.write_text("filename,fold,target,category,esc10,src_file,take\n1-100-A-0.wav,1,0,dog,True,100,A\n2-1-A-1.wav,2,1,rooster,False,1,A\n")
    assert read_labelled_csv(esc) == [
        {"file": "1-100-A-0.wav", "label": "dog", "fold": "1", "source": "100", "target": "0", "line": "2"},
        {"file": "2-1-A-1.wav", "label": "rooster", "fold": "2", "source": "1", "target": "1", "line": "3"},
    ]
    generic = tmp_path / "labels.csv"
    generic.write_text("file,label\na.wav,beep\n")
    assert read_labelled_csv(generic) == [{"file": "a.wav", "label": "beep", "fold": "", "source": "", "target": "", "line": "2"}]
    bad = tmp_path / "bad.csv"
    bad.write_text("path,name\na.wav,x\n")
    with pytest.raises(ManifestError, match="bad.csv"):
        read_labelled_csv(bad)


def test_chance_figures_by_hand_and_by_simulation():
    from enclap.clap.evaluation import chance_retrieval

    chance = chance_retrieval(4)
    assert chance["t2a_R@1"] == pytest.approx(1 / 4) and chance["t2a_R@5"] == 1.0
    assert chance["t2a_mAP@10"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    rng = np.random.default_rng(0)
    runs = [retrieval_metrics(rng.random((20, 20)), list(range(20)))["t2a_mAP@10"] for _ in range(300)]
    assert np.mean(runs) == pytest.approx(chance_retrieval(20)["t2a_mAP@10"], rel=0.05)
