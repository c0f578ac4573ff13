"""Each report row against a reference row: the change of the test score and a p-value, from the test
that fits what both sides have (attnlab.report.stats does the statistics):

- one seed a side, real text: sacreBLEU's paired bootstrap (1,000 resamples of test sentences) on the
  saved hypotheses of the protocol's first test set, BLEU and chrF;
- two or more seeds a side: Welch's t-test over the per-seed test scores (training noise included);
- one seed against several (a row run once beside a reference rerun with more seeds): the same paired
  bootstrap against the reference's run of the same seed, so the pair differs only in the change
  (same initialisation stream, same batches); the delta is then against that run, not the mean;
- otherwise no p-value, and a note says why (no hypotheses files, a synthetic task with one seed,
  no run of the same seed on the other side).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RefError
from .compute import first_test_set
from .data import SEED, Job, Row, axis_value
from .stats import ALPHA, paired_bootstrap, read_lines, seed_test

BOOTSTRAP = "paired bootstrap"
SAME_SEED = "paired bootstrap vs the same seed"
WELCH = "Welch t over seeds"
RESAMPLES = 1000


@dataclass
class Comparison:
    """One row against the reference row; `test` names where the p-values come from (None: none)."""

    deltas: dict[str, float] = field(default_factory=dict)  # metric -> row minus reference
    p_values: dict[str, float] = field(default_factory=dict)
    test: str | None = None
    note: str | None = None
    is_reference: bool = False

    def marker(self, metric: str) -> str:
        return "*" if self.p_values.get(metric, 1.0) < ALPHA else ""


def reference_row(rows: list[Row], keys: list[str], ref: str | None) -> Row | None:
    """The row the others are compared with: `table3=base` in a table3 sweep, else the row whose swept
    value matches `ref` (`value` or `key=value`), else the first row."""
    if not rows:
        return None
    if ref is None and "table3" in keys:
        ref = "table3=base"
    if ref is None:
        return rows[0]
    key, _, value = ref.rpartition("=")
    for row in rows:
        if any(v == value and (not key or k == key) for k, v in row.axes.items()):
            return row
    choices = sorted({f"{k}={v}" for r in rows for k, v in r.axes.items()})
    raise RefError(f"--ref {ref!r}: no row has that value; choose from {', '.join(choices)}")


def _files(job: Job) -> tuple[str, Path, Path | None] | None:
    """(test set, hypotheses, references) of the protocol's first test set, when the hypotheses exist."""
    first = first_test_set(job.protocol)
    if first is None or not first[1].get("hypotheses"):
        return None
    name, record = first
    hyps = job.run_dir / record["hypotheses"]
    refs = job.run_dir / record["references"] if record.get("references") else None
    return (name, hyps, refs) if hyps.is_file() else None


def _bootstrap(row: Job, ref: Job, metrics: list[str], test: str = BOOTSTRAP) -> Comparison:
    mine, theirs = _files(row), _files(ref)
    missing = [j.label for j, f in ((row, mine), (ref, theirs)) if f is None]
    if missing:
        return Comparison(note=f"no p-value: no hyps/ file for {', '.join(missing)} (a run older than the "
                               "evaluation protocol, or one without a test)")  # fmt: skip
    if mine[0] != theirs[0]:
        return Comparison(note=f"no p-value: the runs tested different sets ({mine[0]}, {theirs[0]})")
    refs_file = mine[2] if mine[2] and mine[2].is_file() else theirs[2] if theirs[2] and theirs[2].is_file() else None
    if refs_file is None:
        return Comparison(note="no p-value: the references are not recorded (refs/ in a run directory)")
    try:
        refs, base, hyps = read_lines(refs_file, theirs[1], mine[1])
    except ValueError as err:
        return Comparison(note=f"no p-value: {err}")
    result = paired_bootstrap(base, {"row": hyps}, refs, metrics=metrics, n_samples=RESAMPLES)
    return Comparison(
        deltas={m: result["row"][m].score - result["reference"][m].score for m in metrics},
        p_values={m: result["row"][m].p_value for m in metrics},
        test=test,
    )


def _same_seed(row: Row, ref: Row, metrics: list[str]) -> Comparison:
    """One seed against several: the paired bootstrap against the other side's run of that seed."""
    single, many = (row, ref) if len(row.jobs) == 1 else (ref, row)
    seed = axis_value(single.jobs[0], SEED)
    match = [j for j in many.jobs if axis_value(j, SEED) == seed]
    if not match:
        return Comparison(note=f"no p-value: 1 seed ({seed}) against {len(many.jobs)} ({many.seeds}), none of them "
                               f"the same seed (bootstrap: the same seed a side; Welch: two or more)")  # fmt: skip
    mine, theirs = (single.jobs[0], match[0]) if single is row else (match[0], single.jobs[0])
    return _bootstrap(mine, theirs, metrics, test=f"{SAME_SEED} ({SEED}={seed})")


def _welch(row: Row, ref: Row, metrics: list[str]) -> Comparison:
    out = Comparison(test=WELCH)
    for metric in metrics:
        a = [j.values[f"test/{metric}"] for j in ref.jobs if f"test/{metric}" in j.values]
        b = [j.values[f"test/{metric}"] for j in row.jobs if f"test/{metric}" in j.values]
        if len(a) >= 2 and len(b) >= 2:
            out.deltas[metric] = sum(b) / len(b) - sum(a) / len(a)
            out.p_values[metric] = seed_test(a, b)
    if not out.p_values:
        return Comparison(note="no p-value: fewer than two seeds with a test score on a side")
    return out


def compare(row: Row, ref: Row, metrics: list[str], real_text: bool) -> Comparison:
    if row is ref:
        return Comparison(is_reference=True)
    if any(j.status != "ok" for j in row.jobs + ref.jobs):
        return Comparison(note="no p-value: a run on either side did not finish")
    n, n_ref = len(row.jobs), len(ref.jobs)
    if n >= 2 and n_ref >= 2:
        return _welch(row, ref, metrics)
    if n == 1 and n_ref == 1:
        if not real_text:
            return Comparison(note="no p-value: the paired bootstrap scores BLEU/chrF on real text; on a "
                                   f"synthetic task give seeds ({SEED}=1,2,3) for Welch's test")  # fmt: skip
        return _bootstrap(row.jobs[0], ref.jobs[0], metrics)
    if not real_text:
        return Comparison(note=f"no p-value: {n} seed(s) against {n_ref}; on a synthetic task give two or more "
                               "seeds a side for Welch's test")  # fmt: skip
    return _same_seed(row, ref, metrics)


def compare_all(rows: list[Row], ref: Row | None, metrics: list[str], real_text: bool) -> list[Comparison | None]:
    """One Comparison per row (None for every row when there is no reference row)."""
    return [None if ref is None else compare(row, ref, metrics, real_text) for row in rows]
