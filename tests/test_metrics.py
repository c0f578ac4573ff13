"""BLEU and chrF (attnlab.training.metrics) are the sacreBLEU package's numbers, batch by batch."""

from __future__ import annotations

import pytest
import sacrebleu
import torch

from attnlab.training import metrics

HYPS = [
    "The cat sat on the mat.",
    "A man is riding a bicycle down the street!",
    "Two dogs play in the snow , happily.",
    "She didn't know what to say",
    "Das ist ein Haus.",
    "",  # an empty output still counts (its reference length enters BLEU's brevity penalty)
    "A perfect match here.",
    "completely different words",
]
REFS = [
    "The cat is sitting on the mat.",
    "A man rides a bike down the street.",
    "Two dogs are playing in the snow.",
    "She did not know what to say.",
    "Das ist ein kleines Haus.",
    "Something was expected here.",
    "A perfect match here.",
    "nothing in common at all",
]


def test_bleu_equals_sacrebleu_corpus_bleu():
    metric = metrics.bleu()
    metric.update(HYPS, REFS)
    expected = sacrebleu.corpus_bleu(HYPS, [REFS]).score
    assert 10.0 < expected < 90.0  # a score that tells implementations apart
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-9)


def test_chrf_equals_sacrebleu_corpus_chrf():
    metric = metrics.chrf()
    metric.update(HYPS, REFS)
    expected = sacrebleu.corpus_chrf(HYPS, [REFS]).score
    assert 10.0 < expected < 90.0
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "make,reference", [(metrics.bleu, sacrebleu.corpus_bleu), (metrics.chrf, sacrebleu.corpus_chrf)]
)
def test_corpus_score_over_batches_is_not_a_mean_of_batch_scores(make, reference):
    """Updates add sufficient statistics: three uneven batches give the whole corpus' score."""
    metric = make()
    for lo, hi in ((0, 3), (3, 4), (4, len(HYPS))):
        metric.update(HYPS[lo:hi], REFS[lo:hi])
    assert float(metric.compute()) == pytest.approx(reference(HYPS, [REFS]).score, abs=1e-9)
    batch_mean = sum(reference(HYPS[lo:hi], [REFS[lo:hi]]).score for lo, hi in ((0, 3), (3, 4), (4, 8))) / 3
    assert abs(float(metric.compute()) - batch_mean) > 0.5
    metric.reset()
    assert int(metric.n_sentences) == 0 and float(metric.stats.sum()) == 0.0


def test_metric_states_merge_like_ddp_processes():
    """Two workers' states summed (what torchmetrics does across DDP processes) give the corpus score."""
    first, second = metrics.bleu(), metrics.bleu()
    first.update(HYPS[:5], REFS[:5])
    second.update(HYPS[5:], REFS[5:])
    first.merge_state(second)
    assert float(first.compute()) == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-9)


def test_corpus_scores_and_exact_match():
    scores = metrics.corpus_scores(HYPS, REFS)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-9)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=1e-9)
    assert metrics.corpus_scores(REFS, REFS)["bleu"] == pytest.approx(100.0)
    assert metrics.exact_match(HYPS, REFS) == pytest.approx(1 / 8)
    assert metrics.exact_match([], []) == 0.0


def test_signatures_are_sacrebleus():
    sigs = metrics.signatures()
    bleu = sacrebleu.BLEU(tokenize="13a")
    bleu.corpus_score(HYPS, [REFS])
    chrf = sacrebleu.CHRF()
    chrf.corpus_score(HYPS, [REFS])
    assert sigs["bleu"] == str(bleu.get_signature())
    assert sigs["chrf"] == str(chrf.get_signature())
    assert "tok:13a" in sigs["bleu"] and "nrefs:1" in sigs["bleu"]
    assert f"version:{sacrebleu.__version__}" in sigs["bleu"]
    assert "nc:6" in sigs["chrf"]


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        metrics.bleu().update(["a", "b"], ["a"])


def test_state_is_a_tensor_torchmetrics_can_reduce():
    metric = metrics.chrf()
    metric.update(HYPS, REFS)
    assert isinstance(metric.stats, torch.Tensor) and metric.stats.dtype == torch.float64
    assert int(metric.n_sentences) == len(HYPS)
