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

from .cli import explain_and_exit
from .report_data import SEED, Job, Row, load, test_checkpoint

console = Console(width=200)
# (column, header). Headers say where a number comes from: train and val columns are the last
# epoch's (runlog.last_values), `best val` the best epoch of that metric, test the checkpoint
# train.py tested (see test_source); the quality columns depend on the task (quality_columns).
LOSS_COLUMNS = [
    ("train/loss", "train loss, last epoch"), ("train/ppl", "train ppl, last epoch"),
    ("val/loss", "val loss, last epoch"), ("val/ppl", "val ppl, last epoch"),
]
RUN_COLUMNS = [("parameters", "params"), ("steps", "steps"), ("time_s", "time s")]
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


def quality_columns(jobs: list[Job]) -> list[tuple[str, str]]:
    """Exact match on the synthetic tasks (BLEU is meaningless there), BLEU and chrF on real text."""
    if jobs and all(j.config.get("data.source", "synthetic") == "synthetic" for j in jobs):
        names = ["exact_match"]
    else:
        names = ["bleu", "chrf"]
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
    return RUN_COLUMNS[:1] + LOSS_COLUMNS + quality_columns(jobs) + RUN_COLUMNS[1:]


def fmt(value: float | None, column: str) -> str:
    if value is None:
        return ""
    if column in ("parameters", "steps"):
        return f"{value:,.0f}"
    if column == "time_s":
        return f"{value:.0f}"
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
    return text


def notes(rows: list[Row], cols) -> list[str]:
    """What the column labels cannot say in a few words."""
    names = {c for c, _ in cols}
    out = []
    if any(c.startswith(("best:", "test/")) for c in names):
        out.append("Epochs count from 1. `best val`: the best epoch of each metric on its own. `test`: the "
                   "checkpoint named in the header (callbacks.model_checkpoint; train.py tests it), from the epoch "
                   "in brackets; `final weights` when the run kept no best checkpoint.")
    if "time_s" in names and any(r.segments > 1 for r in rows):
        out.append("time s: wall seconds of the whole run; a resumed run's are the sum of its segments (the CSV's "
                   "`segments` counts them).")
    if "time_s" in names and any(r.time_partial for r in rows):
        out.append(f"{RESUMED}: a resumed run whose result.json predates segment records: the time of its last "
                   "segment only (metadata.json records when each segment started, not when the earlier ones "
                   "ended).")
    return out


def header_cells(keys: list[str], rows: list[Row], cols: list[tuple[str, str]]) -> tuple[list[str], bool]:
    folded = any(len(r.jobs) > 1 for r in rows)
    axes = [k for k in keys if k != SEED]
    head = ["run", *axes] + (["seeds", "n"] if folded else [SEED] if SEED in keys else []) + ["status"]
    return head + [h for _, h in cols], folded


def row_cells(row: Row, keys: list[str], cols: list[tuple[str, str]], folded: bool) -> list[str]:
    seeds = [row.seeds, str(len(row.jobs))] if folded else [row.seeds] if SEED in keys else []
    return [row.label, *row.axes.values(), *seeds, row.status] + [cell(row, c) for c, _ in cols]


def terminal_table(keys: list[str], rows: list[Row], cols, title: str) -> Table:
    head, folded = header_cells(keys, rows, cols)
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
        table.add_row(*row_cells(row, keys, cols, folded), style=style)
    return table


def markdown(keys: list[str], rows: list[Row], cols, title: str, extra: list[str] = ()) -> str:
    head, folded = header_cells(keys, rows, cols)
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row_cells(r, keys, cols, folded)) + " |" for r in rows]
    lines += [line for note in [*notes(rows, cols), *extra] for line in ("", note)]
    errors = [e for r in rows for e in r.errors]
    if errors:
        lines += ["", "## Failed jobs", ""] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, keys: list[str], rows: list[Row], cols) -> None:
    """Plain numbers (no formatting), a `_std` column beside each metric, and every run directory."""
    axes = [k for k in keys if k != SEED]
    metric_cols = [c for c, _ in cols]
    # the epoch each best / test number comes from (comma-separated for folded seeds)
    epoch_cols = [c for c in metric_cols if epoch_key(c)]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", *axes, "seeds", "n", "status"] + [h for c in metric_cols for h in (c, f"{c}_std")]
                        + [f"{c}_epoch" for c in epoch_cols] + ["segments", "error", "run_dirs"])
        for r in rows:
            stats = [v for c in metric_cols for v in r.stats.get(c, ("", ""))]
            writer.writerow([r.label, *r.axes.values(), r.seeds, len(r.jobs), r.status]
                            + ["" if v is None else v for v in stats]
                            + [r.epochs(epoch_key(c)) for c in epoch_cols]
                            + [r.segments, "; ".join(r.errors), "; ".join(str(j.run_dir) for j in r.jobs)])


def report(paths: list[str], out: Path | None = None, plots: bool = True, by_seed: bool = True) -> dict[str, Path]:
    """Build every output; returns {name: file written}."""
    jobs, keys, rows = load(paths, by_seed)
    out = Path(out) if out else Path(paths[0]).resolve() / "report"
    out.mkdir(parents=True, exist_ok=True)
    cols = columns(jobs)
    title = f"attnlab report: {len(jobs)} runs, " + (f"swept: {', '.join(keys)}" if keys else "no differing overrides")
    console.print(terminal_table(keys, rows, cols, title))
    for note in notes(rows, cols):
        console.print(note, highlight=False, markup=False)
    for error in (e for r in rows for e in r.errors):
        console.print(f"[red]failed[/red] {error}", highlight=False, markup=True)
    files = {"markdown": out / "report.md", "csv": out / "report.csv"}
    files["markdown"].write_text(markdown(keys, rows, cols, title))
    write_csv(files["csv"], keys, rows, cols)
    if any(k == "table3" for k in keys):
        from .report_table3 import table3_report

        files.update(table3_report(rows, cols, out, console))
    if plots:
        from .report_plots import plot_all

        plotted, skipped = plot_all(jobs, keys, rows, cols, out)
        files.update(plotted)
        if skipped:  # the plots that were not drawn, and why, below the table too
            for line in skipped:
                console.print(line, highlight=False, markup=False)
            files["markdown"].write_text(markdown(keys, rows, cols, title, skipped))
    console.print("written: " + ", ".join(str(p) for p in files.values()), highlight=False)
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="attnlab-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", help="sweep dirs (e.g. outputs/demo/multiruns/latest) or run dirs")
    parser.add_argument("-o", "--out", type=Path, help="for report.md/.csv and the PNGs (default: <first dir>/report)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--no-fold", action="store_true", help="one row per job even for seed replicates")
    args = parser.parse_args(argv)
    try:
        report(args.dirs, args.out, plots=not args.no_plots, by_seed=not args.no_fold)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as err:
        explain_and_exit(err, "attnlab-report")


if __name__ == "__main__":
    sys.exit(main())
