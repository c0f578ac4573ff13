"""Corpus metrics: sacreBLEU (13a tokenisation) and chrF on detokenised text, exact match.

`SacreMetric` is a torchmetrics `Metric` whose state is sacreBLEU's own sufficient
statistics (n-gram match counts), summed over batches and, under DDP, over processes;
the score is computed from them by sacreBLEU. So the numbers and the signature are the
sacreBLEU package's, by construction. (torchmetrics' `CHRFScore` 1.9 drops the reference
n-grams of a sentence with no match, torchmetrics#3480, and smooths differently; its
`SacreBLEUScore` does not smooth where sacreBLEU's default does.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sacrebleu.metrics import BLEU, CHRF
from torchmetrics import Metric


class SacreMetric(Metric):
    """A sacreBLEU corpus metric (BLEU or CHRF object) as a torchmetrics Metric, 0-100."""

    full_state_update = False

    def __init__(self, metric: BLEU | CHRF, **kwargs):
        super().__init__(**kwargs)  # torchmetrics' own, e.g. sync_on_compute
        self.metric = metric
        width = len(metric._extract_corpus_statistics(["a"], [["a"]])[0])
        self.add_state("stats", default=torch.zeros(width, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_sentences", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, hypotheses: Sequence[str], references: Sequence[str]) -> None:
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
        if hypotheses:
            stats = self.metric._extract_corpus_statistics(list(hypotheses), [list(references)])
            self.stats += torch.tensor(stats, dtype=torch.float64).sum(0)
            self.n_sentences += len(hypotheses)

    def compute(self) -> torch.Tensor:
        if self.n_sentences == 0:
            return torch.tensor(0.0, dtype=torch.float64)
        stats = [int(round(s)) for s in self.stats.tolist()]
        return torch.tensor(self.metric._compute_score_from_stats(stats).score, dtype=torch.float64)


def bleu(**kwargs) -> SacreMetric:
    """Corpus BLEU as sacreBLEU's default: 13a tokenisation, exp smoothing, case-sensitive."""
    return SacreMetric(BLEU(tokenize="13a"), **kwargs)


def chrf(**kwargs) -> SacreMetric:
    """chrF (character 6-grams, beta 2, no word n-grams) as sacreBLEU's default."""
    return SacreMetric(CHRF(), **kwargs)


def signatures() -> dict[str, str]:
    """The sacreBLEU signatures of `bleu()` and `chrf()` for one reference per sentence."""
    out = {}
    for name, metric in (("bleu", BLEU(tokenize="13a")), ("chrf", CHRF())):
        metric.corpus_score(["a"], [["a"]])  # the signature needs the number of references
        out[name] = str(metric.get_signature())
    return out


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """{'bleu', 'chrf'} in 0-100 for detokenised strings, one reference each."""
    out = {}
    for name, make in (("bleu", bleu), ("chrf", chrf)):
        # these sentences only: rank 0 of a DDP job scores the test alone, so no gathering from other processes
        metric = make(sync_on_compute=False)
        metric.update(hypotheses, references)
        out[name] = float(metric.compute())
    return out


def exact_match(hypotheses: Sequence, references: Sequence) -> float:
    """Share of outputs identical to their reference (the synthetic tasks' accuracy)."""
    if not hypotheses:
        return 0.0
    return sum(h == r for h, r in zip(hypotheses, references, strict=True)) / len(hypotheses)
