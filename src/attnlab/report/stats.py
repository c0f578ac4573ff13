"""Statistics for ablation reports: seed spread, significance, agreement with the paper.

Pure functions on plain numbers and strings (no Hydra, no Lightning), so the report, a
notebook or a test can call them alike. Where a well-kept library does the work it is
called rather than re-derived: Student's t and Welch's test come from scipy (already a
dependency, through optuna), the paired bootstrap is sacreBLEU's own `PairedTest`, called
the way the `sacrebleu --paired-bs` command line calls it, so the numbers are the CLI's.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.significance import PairedTest
from scipy import stats

ALPHA = 0.05

# The same metric objects as `attnlab.training.metrics` (test BLEU is sacreBLEU's default, 13a
# tokenisation; chrF is sacreBLEU's default) and as the CLI builds with no metric options.
_METRICS = {
    "bleu": lambda refs: BLEU(tokenize="13a", references=refs),
    "chrf": lambda refs: CHRF(references=refs),
    "ter": lambda refs: TER(references=refs),
}


@dataclass(frozen=True)
class SeedSummary:
    """Mean over seeds, sample std (ddof=1) and the 95% Student-t interval of the mean."""

    mean: float
    std: float | None  # None for one seed: a spread needs two
    n: int
    ci_low: float | None  # None for one seed
    ci_high: float | None


@dataclass(frozen=True)
class PairedResult:
    """One system and one metric of a paired bootstrap, as sacreBLEU reports it.

    `score` is the corpus score on the whole test set; `mean` and `ci` are the mean of the
    bootstrap scores and the half-width of their 95% interval (sacreBLEU prints
    `score (mean ± ci)`); `p_value` is against the reference system (None for the
    reference itself).
    """

    score: float
    mean: float
    ci: float
    p_value: float | None
    signature: str

    @property
    def ci_low(self) -> float:
        return self.mean - self.ci

    @property
    def ci_high(self) -> float:
        return self.mean + self.ci

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA


def _finite(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what}: expected a non-empty list of numbers, got {values!r}")
    if not np.all(np.isfinite(array)):
        # A NaN score is a failed run; averaging it in would silently poison the row.
        raise ValueError(f"{what}: non-finite value in {list(values)!r}")
    return array


def seed_summary(values: Sequence[float]) -> SeedSummary:
    """Mean, sample std and the 95% confidence interval of the mean over seeds.

    The interval is mean ± t(0.975, n-1) * std / sqrt(n): with 3-5 seeds the normal 1.96
    would be far too narrow.
    """
    array = _finite(values, "seed_summary")
    n = int(array.size)
    mean = float(array.mean())
    if n == 1:
        return SeedSummary(mean=mean, std=None, n=1, ci_low=None, ci_high=None)
    std = float(array.std(ddof=1))
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * std / math.sqrt(n)
    return SeedSummary(mean=mean, std=std, n=n, ci_low=mean - half, ci_high=mean + half)


@contextmanager
def _sacrebleu_seed(seed: int | None) -> Iterator[None]:
    # sacreBLEU reads its bootstrap seed only from $SACREBLEU_SEED (in PairedTest and in
    # the baseline's resampling); setting it for the call is the one way to pass a seed
    # without re-implementing its test. 'None' is its spelling for an unseeded RNG.
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = "None" if seed is None else str(seed)
    try:
        yield
    finally:
        if old is None:
            del os.environ["SACREBLEU_SEED"]
        else:
            os.environ["SACREBLEU_SEED"] = old


def _reference_streams(refs: Sequence[Sequence[str]] | Sequence[str], n: int) -> list[list[str]]:
    if len(refs) == 0:
        raise ValueError("paired_bootstrap: no references")
    streams = [list(refs)] if isinstance(refs[0], str) else [list(r) for r in refs]
    for i, stream in enumerate(streams):
        if len(stream) != n:
            raise ValueError(f"reference stream {i} has {len(stream)} lines, the hypotheses {n}")
    return streams


def paired_bootstrap(
    reference_hyps: Sequence[str],
    system_hyps: Mapping[str, Sequence[str]],
    refs: Sequence[Sequence[str]] | Sequence[str],
    metrics: Sequence[str] = ("bleu", "chrf"),
    n_samples: int = 1000,
    seed: int | None = 12345,
    reference_name: str = "reference",
) -> dict[str, dict[str, PairedResult]]:
    """sacreBLEU's paired bootstrap resampling of test sentences, per system and metric.

    The same computation as `sacrebleu REFS -i REFERENCE_HYPS SYS... -m bleu chrf
    --paired-bs --paired-bs-n N` with `SACREBLEU_SEED=seed` (sacreBLEU's default seed is
    12345; `seed=None` draws from the OS). `refs` is one reference per sentence (a list of
    strings) or sacreBLEU's list of reference streams, each as long as the hypotheses.

    Returns `{system: {metric: PairedResult}}` for every system in `system_hyps` and for
    the reference system under `reference_name` (its `p_value` is None). The p-value is
    two-sided: how often a resampled |difference| exceeds the observed one (sacreBLEU
    centres the resampled differences first), so `significant` says "different", not
    "better".
    """
    unknown = [m for m in metrics if m not in _METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics {list(metrics)!r}: choose from {sorted(_METRICS)}")
    if reference_name in system_hyps:
        raise ValueError(f"system name {reference_name!r} is the reference's; pass reference_name=")
    n = len(reference_hyps)
    if n == 0:
        raise ValueError("paired_bootstrap: no hypotheses")
    for name, hyps in system_hyps.items():
        if len(hyps) != n:
            raise ValueError(f"system {name!r} has {len(hyps)} hypotheses, the reference system {n}")
    streams = _reference_streams(refs, n)

    named = [(reference_name, list(reference_hyps))] + [(k, list(v)) for k, v in system_hyps.items()]
    # As the CLI: reference statistics cached in each metric, `references=None` to the test.
    objects = {name: _METRICS[name](streams) for name in metrics}
    with _sacrebleu_seed(seed):
        test = PairedTest(named, objects, references=None, test_type="bs", n_samples=n_samples)
        signatures, scores = test()

    # sacreBLEU keys its results by the score's display name (BLEU, chrF2, TER), in the
    # order of `objects`; map them back to ours.
    display = [key for key in scores if key != "System"]
    out: dict[str, dict[str, PairedResult]] = {name: {} for name, _ in named}
    for ours, theirs in zip(metrics, display, strict=True):
        signature = str(signatures[theirs])
        for (system, _), result in zip(named, scores[theirs], strict=True):
            out[system][ours] = PairedResult(
                score=float(result.score),
                mean=float(result.mean),
                ci=float(result.ci),
                p_value=None if result.p_value is None else float(result.p_value),
                signature=signature,
            )
    return out


def seed_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value that configurations A and B differ, from their per-seed scores.

    Welch's t-test (unequal variances) over one corpus score per seed. Why this and not a
    paired bootstrap on the pooled hypotheses of all seeds: the bootstrap resamples test
    sentences only, so it measures test-set noise and is blind to the training noise
    between seeds, which is what decides whether an ablation's delta would replicate
    (Clark et al., 2011, on optimizer instability). Welch and not Student because an
    ablation (no residuals, no positions) often changes the spread across seeds too.

    With 2-3 seeds a side the test has little power: a large p-value is "not shown", not
    "no difference". Needs two seeds a side. When both sides are constant the statistic
    is undefined (scipy gives NaN); the limit is returned instead: 1.0 for equal values,
    0.0 for different ones.
    """
    x, y = _finite(a, "seed_test a"), _finite(b, "seed_test b")
    if x.size < 2 or y.size < 2:
        raise ValueError(f"seed_test needs two seeds a side, got {x.size} and {y.size}")
    if np.all(x == x[0]) and np.all(y == y[0]):
        return 1.0 if x[0] == y[0] else 0.0
    return float(stats.ttest_ind(x, y, equal_var=False).pvalue)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation, ties given their average rank (Pearson's r on ranks).

    NaN when either side is constant: a correlation with a constant is undefined.
    """
    xs, ys = _finite(x, "spearman x"), _finite(y, "spearman y")
    if xs.size != ys.size:
        raise ValueError(f"spearman: {xs.size} values against {ys.size}")
    if xs.size < 2:
        raise ValueError("spearman needs at least two pairs")
    if np.all(xs == xs[0]) or np.all(ys == ys[0]):
        return float("nan")
    return float(stats.spearmanr(xs, ys).statistic)


def direction_agreement(paper: Sequence[float | None], ours: Sequence[float], tol: float = 0.0) -> float | None:
    """Share of rows where our delta moves the same way as the paper's.

    A delta within `tol` of zero counts as "no change" on either side (a BLEU difference
    of 0.1 has no direction worth claiming). Rows where the paper gives no number (None)
    are left out; None when no row is left.
    """
    if len(paper) != len(ours):
        raise ValueError(f"direction_agreement: {len(paper)} paper deltas against {len(ours)} ours")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")

    def sign(delta: float) -> int:
        return 0 if abs(delta) <= tol else (1 if delta > 0 else -1)

    pairs = [(p, o) for p, o in zip(paper, ours) if p is not None]
    if not pairs:
        return None
    return sum(sign(p) == sign(o) for p, o in pairs) / len(pairs)


def read_lines(*paths: str | Path) -> list[list[str]]:
    """The lines of each UTF-8 file, refusing files of different lengths.

    For references and hypothesis files (`hypotheses.<split>.txt` of attnlab-eval):
    `refs, base, ablated = read_lines(ref_path, base_path, ablated_path)`. Lines are read
    as the sacrebleu CLI reads them (universal newlines, trailing whitespace stripped) so
    that scores from these lines equal the CLI's on the same files.
    """
    if not paths:
        raise ValueError("read_lines: no file given")
    contents = []
    for path in paths:
        data = Path(path).read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data.count(b"\n", 0, err.start) + 1
            raise ValueError(f"{path}: line {line} is not UTF-8 ({err.reason})") from err
        # StringIO with newline=None splits as a text-mode file does (\n, \r\n, lone \r),
        # not as str.splitlines, which also breaks at U+2028 and form feeds.
        contents.append([line.rstrip() for line in io.StringIO(text, newline=None)])
    counts = [len(lines) for lines in contents]
    if len(set(counts)) > 1:
        listing = ", ".join(f"{path}: {count} lines" for path, count in zip(paths, counts))
        raise ValueError(f"files of different lengths ({listing})")
    return contents
