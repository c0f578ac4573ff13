"""`attnlab-report <sweep or run dirs...>`: one table row per job (or per configuration, with seed
replicates folded into mean ± std), in the terminal, as Markdown and as CSV; PNG plots of the
validation curves and of the metric against each swept value; for the `table3` sweep, the paper's
published deltas beside ours.

    attnlab-report outputs/demo/multiruns/latest
    attnlab-report outputs/train/runs/RUN_A outputs/train/runs/RUN_B    (a run and its reproduction)
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..cli import explain_and_exit
from ..errors import RefError
from .compute import ESTIMATED, TOKENS_LABEL
from .data import SEED, Job, Row, load, test_checkpoint
from .significance import BOOTSTRAP, RESAMPLES, SAME_SEED, WELCH, Comparison, compare_all, reference_row

console = Console(width=200)
# (column, header). Headers say where a number comes from: train and val columns are the last
# epoch's (runlog.last_values), `best val` the best epoch of that metric, test the checkpoint
# train.py tested (see test_source); the quality columns depend on the task (quality_columns).
LOSS_COLUMNS = [
    ("train/loss", "train loss, last epoch"), ("train/ppl", "train ppl, last epoch"),
    ("val/loss", "val loss, last epoch"), ("val/ppl", "val ppl, last epoch"),
]
RUN_COLUMNS = [("parameters", "params"), ("steps", "steps"), ("time_s", "time s")]
# Compute per run (attnlab.report.compute): the model's own matmul count, the training rate, the tokens.
COMPUTE_COLUMNS = [
    ("tokens_per_sec", "tokens/s"), ("flops_per_token", "train FLOPs / target token"),
    ("train_tokens", "target tokens"), ("train_flops", "train FLOPs"),
]
# The terminal shows what a comparison needs at a glance and fits a screen; report.md and report.csv keep all.
TERMINAL_LEAVES_OUT = {"train/loss", "train/ppl", *(c for c, _ in COMPUTE_COLUMNS)}
RESUMED = "≥"  # marks a time that covers only a resumed run's last segment (see notes)


def test_source(jobs: list[Job]) -> str:
    """`min val loss ckpt` when every run tested the checkpoint with the lowest val/loss, as
    train.py does with `callbacks.model_checkpoint`; `final weights` without one."""
    sources = {test_checkpoint(j.config) for j in jobs}
    if len(sources) > 1:
        return "best ckpt of each run's callbacks.model_checkpoint"
    source = sources.pop() if sources else None
    if source is None:
        return "final weights"
    if isinstance(source, str):  # eval_protocol last / average_last
        return source
    monitor, mode = source
    return f"{mode} {monitor.replace('/', ' ').replace('_', ' ')} ckpt"


def real_text(jobs: list[Job]) -> bool:
    return not (jobs and all(j.config.get("data.source", "synthetic") == "synthetic" for j in jobs))


def quality_names(jobs: list[Job]) -> list[str]:
    """Exact match on the synthetic tasks (BLEU is meaningless there), BLEU and chrF on real text."""
    return ["bleu", "chrf"] if real_text(jobs) else ["exact_match"]


def quality_columns(jobs: list[Job]) -> list[tuple[str, str]]:
    names = quality_names(jobs)
    label = {n: n.replace("_", " ") for n in names}
    cols = [(f"val/{n}", f"val {label[n]}, last epoch") for n in names]
    cols += [(f"best:val/{n}", f"best val {label[n]} (epoch)") for n in names]
    source = test_source(jobs)
    # a best checkpoint is one epoch's weights: say which; an average or the final weights are not
    source += ", epoch" if all(isinstance(test_checkpoint(j.config), tuple) for j in jobs) else ""
    cols += [(f"test/{n}", f"test {label[n]} ({source})") for n in names]
    return [c for c in cols if any(c[0] in j.values for j in jobs)]


def epoch_key(column: str) -> str | None:
    """Where Job.epochs keeps the epoch a column's number comes from."""
    if column.startswith("best:"):
        return column
    return "test" if column.startswith("test/") else None


def columns(jobs: list[Job]) -> list[tuple[str, str]]:
    compute = [c for c in COMPUTE_COLUMNS if any(c[0] in j.values for j in jobs)]
    return RUN_COLUMNS[:1] + LOSS_COLUMNS + quality_columns(jobs) + RUN_COLUMNS[1:] + compute


def is_quality(column: str) -> bool:
    """The columns that get a 95% interval over seeds: BLEU, chrF, exact match (val, best val, test)."""
    return column.split("/")[-1] in ("bleu", "chrf", "exact_match")


def fmt(value: float | None, column: str) -> str:
    if value is None:
        return ""
    if column in ("parameters", "steps"):
        return f"{value:,.0f}"
    if column == "time_s":
        return f"{value:.0f}"
    if column in ("flops_per_token", "train_tokens", "train_flops", "tokens_per_sec"):
        return f"{value:.3g}"
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def cell(row: Row, column: str) -> str:
    if column not in row.stats:
        return ""
    mean, std = row.stats[column]
    text = fmt(mean, column) + (f" ± {fmt(std, column)}" if std is not None else "")
    epochs = row.epochs(epoch_key(column)) if epoch_key(column) else ""
    if epochs:
        text += f" (ep {epochs})"
    if column == "time_s" and row.time_partial:
        text = RESUMED + text
    if column in ("train_tokens", "train_flops") and any(j.values.get("tokens_estimated") for j in row.jobs):
        text = ESTIMATED + text
    summary = row.summary(column) if is_quality(column) and column.startswith("test/") else None
    if summary is not None and summary.ci_low is not None:
        text += f" [{fmt(summary.ci_low, column)}, {fmt(summary.ci_high, column)}]"
    return text


class Significance:
    """Every row against the reference row (attnlab.report.significance), as table cells and notes."""

    def __init__(self, rows: list[Row], ref: Row | None, metrics: list[str], text: bool):
        self.ref, self.metrics = ref, metrics
        # the reference by what it is (model.n_heads=8), not by its job number
        self.ref_name = " ".join(f"{k}={v}" for k, v in ref.axes.items()) or ref.label if ref is not None else ""
        self.by_row = {id(r): c for r, c in zip(rows, compare_all(rows, ref, metrics, text))}

    def of(self, row: Row) -> Comparison | None:
        return self.by_row.get(id(row))

    def header(self) -> list[str]:
        if self.ref is None:
            return []
        name = {"bleu": "BLEU", "chrf": "chrF", "exact_match": "exact match"}
        return [f"Δ test {name.get(m, m)} vs {self.ref_name} (p)" for m in self.metrics] + ["p from"]

    def cells(self, row: Row) -> list[str]:
        comp = self.of(row)
        if comp is None:
            return []
        if comp.is_reference:
            return ["ref"] * len(self.metrics) + [""]
        out = []
        for m in self.metrics:
            if m in comp.p_values:
                out.append(f"{comp.deltas[m]:+.3g} (p {comp.p_values[m]:.3g}){comp.marker(m)}")
            else:
                out.append("")
        return out + [comp.test or "none (see notes)"]

    def notes(self, rows: list[Row]) -> list[str]:
        if self.ref is None:
            return []
        tests = {c.test for c in self.by_row.values() if c.test}
        out = [f"Δ test vs {self.ref_name}: the row's test score minus the reference row's (`--ref` picks it); "
               "`*`: p < 0.05, two-sided."]  # fmt: skip
        if BOOTSTRAP in tests:
            out.append(f"{BOOTSTRAP}: sacreBLEU's, {RESAMPLES:,} resamples of the sentences of the protocol's "
                       "first test set, one run a side (test-set noise only, not seed noise).")  # fmt: skip
        if any(t.startswith(SAME_SEED) for t in tests):
            out.append(f"{SAME_SEED}: a row with one seed against a reference with several (or the other way): "
                       "the same bootstrap against the other side's run of that seed, which saw the same "
                       "initialisation stream and batches; its Δ is against that run, not the mean.")  # fmt: skip
        if WELCH in tests:
            out.append(f"{WELCH}: Welch's t-test over the per-seed test scores (training noise included; "
                       "little power with 2-3 seeds).")  # fmt: skip
        why: dict[str, list[str]] = {}
        for row in rows:
            comp = self.of(row)
            if comp is not None and comp.note:
                why.setdefault(comp.note, []).append(row.label)
        out += [f"{note}: {', '.join(labels)}." for note, labels in why.items()]
        return out

    def csv_header(self) -> list[str]:
        return ["ref"] + [h for m in self.metrics for h in (f"Δtest/{m}", f"test/{m}_p")] + ["p_test", "p_note"]

    def csv_cells(self, row: Row) -> list:
        comp = self.of(row) or Comparison()
        cells = [self.ref_name]
        for m in self.metrics:
            cells += [comp.deltas.get(m, ""), comp.p_values.get(m, "")]
        return cells + ["reference" if comp.is_reference else comp.test or "", comp.note or ""]


def notes(rows: list[Row], cols, sig: Significance | None = None) -> list[str]:
    """What the column labels cannot say in a few words."""
    names = {c for c, _ in cols}
    out = []
    if any(len(r.jobs) > 1 for r in rows) and any(c.startswith("test/") and is_quality(c) for c in names):
        out.append("test quality [a, b]: the 95% confidence interval of the mean over seeds (Student t, n - 1 "
                   "degrees of freedom); the CSV has `_ci_low`, `_ci_high` and `_n` for every quality column.")
    if "train_flops" in names:
        out.append("Compute: `train FLOPs / target token` is the model's forward + backward matmul count "
                   "(attnlab.perf.flops) for a sentence pair of the data's mean length; `target tokens` is the "
                   "run's own count (train/target_tokens), and `train FLOPs` = FLOPs / target token × target "
                   f"tokens. {ESTIMATED} marks a run that logged no counter (made before it existed): its tokens "
                   f"are an estimate ({TOKENS_LABEL}: the logged rate counts source and target tokens; wall time "
                   "includes validation and test, so it errs high).")  # fmt: skip
    if any(c.startswith(("best:", "test/")) for c in names):
        out.append("Epochs count from 1. `best val`: the best epoch of each metric on its own. `test`: the "
                   "weights the run's eval_protocol names, in the header (attnlab.protocol: the best checkpoint of "
                   "callbacks.model_checkpoint with its epoch in brackets, the last checkpoint, or an average of the "
                   "last N); `final weights` when the run kept no best checkpoint.")
    if "time_s" in names and any(r.segments > 1 for r in rows):
        out.append("time s: wall seconds of the whole run; a resumed run's are the sum of its segments (the CSV's "
                   "`segments` counts them).")
    if "time_s" in names and any(r.time_partial for r in rows):
        out.append(f"{RESUMED}: a resumed run whose result.json predates segment records: the time of its last "
                   "segment only (metadata.json records when each segment started, not when the earlier ones "
                   "ended).")
    if sig is not None:
        out += sig.notes(rows)
    return out


def header_cells(keys: list[str], rows: list[Row], cols: list[tuple[str, str]],
                 sig: Significance | None = None) -> tuple[list[str], bool]:  # fmt: skip
    folded = any(len(r.jobs) > 1 for r in rows)
    axes = [k for k in keys if k != SEED]
    head = ["run", *axes] + (["seeds", "n"] if folded else [SEED] if SEED in keys else []) + ["status"]
    return head + [h for _, h in cols] + (sig.header() if sig else []), folded


def row_cells(row: Row, keys: list[str], cols: list[tuple[str, str]], folded: bool,
              sig: Significance | None = None) -> list[str]:  # fmt: skip
    seeds = [row.seeds, str(len(row.jobs))] if folded else [row.seeds] if SEED in keys else []
    cells = [row.label, *row.axes.values(), *seeds, row.status] + [cell(row, c) for c, _ in cols]
    return cells + (sig.cells(row) if sig else [])


def terminal_table(keys: list[str], rows: list[Row], cols, title: str, sig: Significance | None = None) -> Table:
    head, folded = header_cells(keys, rows, cols, sig)
    table = Table(title=title)
    for name in head:
        table.add_column(name, justify="left" if name in ("run", "status") or name in keys else "right")
    first_axis = next((k for k in keys if k != SEED), None)
    previous = None
    for row in rows:  # a rule between groups of the first swept axis
        if first_axis and previous is not None and row.axes[first_axis] != previous:
            table.add_section()
        previous = row.axes.get(first_axis) if first_axis else None
        style = None if row.status == "ok" else "red" if "failed" in row.status else "yellow"
        table.add_row(*row_cells(row, keys, cols, folded, sig), style=style)
    return table


def markdown(keys: list[str], rows: list[Row], cols, title: str, extra: list[str] = (),
             sig: Significance | None = None) -> str:  # fmt: skip
    head, folded = header_cells(keys, rows, cols, sig)
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row_cells(r, keys, cols, folded, sig)) + " |" for r in rows]
    lines += [line for note in [*notes(rows, cols, sig), *extra] for line in ("", note)]
    errors = [e for r in rows for e in r.errors]
    if errors:
        lines += ["", "## Failed jobs", ""] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


def _ci_cells(row: Row, column: str) -> list:
    summary = row.summary(column)
    if summary is None:
        return ["", "", ""]
    return ["" if summary.ci_low is None else summary.ci_low, "" if summary.ci_high is None else summary.ci_high,
            summary.n]  # fmt: skip


def write_csv(path: Path, keys: list[str], rows: list[Row], cols, sig: Significance | None = None) -> None:
    """Plain numbers (no formatting), a `_std` column beside each metric, the 95% interval and n of each
    quality metric, the comparison with the reference row, and every run directory."""
    axes = [k for k in keys if k != SEED]
    metric_cols = [c for c, _ in cols]
    ci_cols = [c for c in metric_cols if is_quality(c)]
    # the epoch each best / test number comes from (comma-separated for folded seeds)
    epoch_cols = [c for c in metric_cols if epoch_key(c)]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", *axes, "seeds", "n", "status"] + [h for c in metric_cols for h in (c, f"{c}_std")]
                        + [h for c in ci_cols for h in (f"{c}_ci_low", f"{c}_ci_high", f"{c}_n")]
                        + [f"{c}_epoch" for c in epoch_cols] + (sig.csv_header() if sig else [])
                        + ["tokens_estimated", "segments", "error", "run_dirs"])  # fmt: skip
        for r in rows:
            stats = [v for c in metric_cols for v in r.stats.get(c, ("", ""))]
            writer.writerow([r.label, *r.axes.values(), r.seeds, len(r.jobs), r.status]
                            + ["" if v is None else v for v in stats]
                            + [v for c in ci_cols for v in _ci_cells(r, c)]
                            + [r.epochs(epoch_key(c)) for c in epoch_cols] + (sig.csv_cells(r) if sig else [])
                            + [int(any(j.values.get("tokens_estimated") for j in r.jobs)), r.segments,
                               "; ".join(r.errors), "; ".join(str(j.run_dir) for j in r.jobs)])


def report(paths: list[str], out: Path | None = None, plots: bool = True, by_seed: bool = True,
           ref: str | None = None) -> dict[str, Path]:  # fmt: skip
    """Build every output; returns {name: file written}. `ref`: the row the others are tested against
    (a swept value, `value` or `key=value`; default `table3=base` in a table3 sweep, else the first row)."""
    jobs, keys, rows = load(paths, by_seed)
    ref_row = reference_row(rows, keys, ref) if len(rows) > 1 else None
    sig = Significance(rows, ref_row, quality_names(jobs), real_text(jobs))
    out = Path(out) if out else Path(paths[0]).resolve() / "report"
    out.mkdir(parents=True, exist_ok=True)
    cols = columns(jobs)
    title = f"attnlab report: {len(jobs)} runs, " + (f"swept: {', '.join(keys)}" if keys else "no differing overrides")
    console.print(terminal_table(keys, rows, [c for c in cols if c[0] not in TERMINAL_LEAVES_OUT], title, sig))
    console.print("report.md / report.csv: every column (train loss and ppl, compute: FLOPs, tokens).",
                  highlight=False, markup=False)  # fmt: skip
    for note in notes(rows, cols, sig):
        console.print(note, highlight=False, markup=False)
    for error in (e for r in rows for e in r.errors):
        console.print(f"[red]failed[/red] {error}", highlight=False, markup=True)
    files = {"markdown": out / "report.md", "csv": out / "report.csv"}
    files["markdown"].write_text(markdown(keys, rows, cols, title, sig=sig))
    write_csv(files["csv"], keys, rows, cols, sig)
    if any(k == "table3" for k in keys):
        from .table3 import table3_report

        files.update(table3_report(rows, cols, out, console, sig, plots))
    if plots:
        from .plots import plot_all

        plotted, skipped = plot_all(jobs, keys, rows, cols, out)
        files.update(plotted)
        if skipped:  # the plots that were not drawn, and why, below the table too
            for line in skipped:
                console.print(line, highlight=False, markup=False)
            files["markdown"].write_text(markdown(keys, rows, cols, title, skipped, sig))
    console.print("written: " + ", ".join(str(p) for p in files.values()), highlight=False)
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="attnlab-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", help="sweep dirs (e.g. outputs/demo/multiruns/latest) or run dirs")
    parser.add_argument("-o", "--out", type=Path, help="for report.md/.csv and the PNGs (default: <first dir>/report)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--no-fold", action="store_true", help="one row per job even for seed replicates")
    parser.add_argument("--ref", help="the row every other is tested against: a swept value, e.g. "
                        "model.n_heads=8 or 8 (default: table3=base in a table3 sweep, else the first row)")
    args = parser.parse_args(argv)
    try:
        report(args.dirs, args.out, plots=not args.no_plots, by_seed=not args.no_fold, ref=args.ref)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as err:
        explain_and_exit(err, "attnlab-report")
    except RefError as err:
        parser.error(str(err))


if __name__ == "__main__":
    sys.exit(main())
