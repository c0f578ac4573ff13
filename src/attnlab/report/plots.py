"""The report's PNGs: validation curves of every run overlaid (from each run's metrics.csv), the
quality metric against each swept value (mean with a std bar when seeds were folded), the quality
metric against total training FLOPs (compute-matched), and for Table 3 the paper's deltas against
ours. A plot with nothing to draw is not written; `plot_all` says which and why."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from ..training import runlog  # noqa: E402
from .data import SEED, Job, Row, axis_value, quality_column  # noqa: E402


def _label(job: Job, keys: list[str]) -> str:
    return " ".join(f"{k.split('.')[-1]}={axis_value(job, k)}" for k in keys) or job.label


SEED_MARKERS = ".ox^sv*+"
# Per configuration, beside its colour: runs whose curves coincide (two settings that train the
# same, or a run and its reproduction) must not hide each other, so each also gets its own dash
# pattern and hollow marker, and lines are slightly transparent. Dotted stays for failed runs.
CONFIG_STYLES = ["-", "--", "-.", (0, (6, 2, 1, 2, 1, 2))]
CONFIG_MARKERS = "osD^vP*X"
QUALITY = ("bleu", "chrf", "exact_match")


class PlainLogFormatter(ticker.LogFormatter):
    """Tick labels like 0.6 and 2 on a log axis instead of 6x10^-1: minor ticks labelled (as
    matplotlib's LogFormatter chooses: all under 1 decade, some under 2), plain numbers."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def _plain_log_axis(ax) -> None:
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 1)))


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


_save = save


def _row_name(row: Row) -> str:
    return " ".join(f"{k.split('.')[-1]}={v}" for k, v in row.axes.items()) or row.label


def quality_vs_flops_figure(rows: list[Row], metric: str):
    """Compute-matched view: one labelled point per configuration, x = its estimated total training
    FLOPs (log), y = the quality metric, std bars on both when seeds folded. A configuration above and
    left of another reached more with less compute."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for row in rows:
        if "train_flops" not in row.stats or metric not in row.stats:
            continue
        (x, xerr), (y, yerr) = row.stats["train_flops"], row.stats[metric]
        ax.errorbar([x], [y], xerr=[xerr or 0.0], yerr=[yerr or 0.0], marker="o", capsize=3, linestyle="none")
        ax.annotate(_row_name(row), (x, y), textcoords="offset points", xytext=(4, 4), fontsize="small")
    ax.set_xscale("log")
    ax.set(xlabel="training FLOPs (est.: FLOPs / target token × target tokens)", ylabel=metric,
           title=f"{metric} vs training compute")  # fmt: skip
    ax.grid(alpha=0.3)
    return fig


def paper_vs_ours_figure(stats: dict[str, dict], quality: str):
    """Table 3: two panels (ppl, BLEU), the paper's delta against ours, one labelled point per row; a
    row in the lower-left or upper-right quadrant moved the paper's way."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), squeeze=False)
    for ax, (name, s) in zip(axes[0], stats.items()):
        for row, paper, ours in s["pairs"]:
            ax.plot([paper], [ours], marker="o", linestyle="none", color="tab:blue")
            ax.annotate(row, (paper, ours), textcoords="offset points", xytext=(4, 4), fontsize="small")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.axvline(0, color="grey", linewidth=0.8)
        ours_label = "BLEU" if name == "BLEU" and quality == "bleu" else quality if name == "BLEU" else name
        rho = s["spearman"]
        ax.set(xlabel=f"paper Δ{name} (vs its base)", ylabel=f"our Δ{ours_label} (vs our base)",
               title=f"Δ{name}: Spearman {'n/a' if rho is None or rho != rho else f'{rho:.2f}'}")  # fmt: skip
        ax.grid(alpha=0.3)
    return fig


def curves_figure(jobs: list[Job], keys: list[str], metrics: list[str]):
    """One colour, dash pattern and marker per configuration (the swept values but the seed); with
    seeds, one marker per seed instead, so replicates of a configuration read as one band."""
    config_of = [_label(job, [k for k in keys if k != SEED]) for job in jobs]
    configs = list(dict.fromkeys(config_of))
    palette = plt.get_cmap("tab10" if len(configs) <= 10 else "tab20")
    seeds = list(dict.fromkeys(axis_value(job, SEED) for job in jobs)) if SEED in keys else []
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for job, config in zip(jobs, config_of):
            points = runlog.curve(job.rows, metric)
            if not points:
                continue
            c = configs.index(config)
            marker = (SEED_MARKERS[seeds.index(axis_value(job, SEED)) % len(SEED_MARKERS)] if seeds
                      else CONFIG_MARKERS[c % len(CONFIG_MARKERS)])
            style = CONFIG_STYLES[c % len(CONFIG_STYLES)] if job.status == "ok" else ":"  # failed/unfinished dotted
            ax.plot(*zip(*points), linestyle=style, marker=marker, markersize=6, markerfacecolor="none",
                    color=palette(c % palette.N), alpha=0.8, label=_label(job, keys))
        ax.set(xlabel="step", ylabel=metric, title=f"{metric} per validation")
        if metric.endswith("loss") or metric.endswith("ppl"):
            _plain_log_axis(ax)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    return fig


def _is_numeric(values: list[str]) -> bool:
    try:
        [float(v) for v in values]
    except ValueError:
        return False
    return True


def metric_vs_axis_figure(rows: list[Row], keys: list[str], axis: str, metric: str):
    """One series per combination of the other swept keys, x = the values of `axis` in report order.
    Numbers (heads, layers) are joined by lines; categories (positional kinds) are not, as there is
    nothing between them: points with std bars, the series side by side."""
    others = [k for k in keys if k not in (axis, SEED)]
    xs = list(dict.fromkeys(r.axes[axis] for r in rows))
    lines: dict[str, dict[str, tuple[float, float]]] = {}
    for r in rows:
        if metric in r.stats:
            name = " ".join(f"{k.split('.')[-1]}={r.axes[k]}" for k in others) or metric
            mean, std = r.stats[metric]
            lines.setdefault(name, {})[r.axes[axis]] = (mean, std or 0.0)
    numeric = _is_numeric(xs)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, (name, points) in enumerate(lines.items()):
        present = [x for x in xs if x in points]
        shift = 0.0 if numeric else 0.25 * (i - (len(lines) - 1) / 2) / max(1, len(lines) - 1)
        ax.errorbar([xs.index(x) + shift for x in present], [points[x][0] for x in present],
                    yerr=[points[x][1] for x in present], marker="o", capsize=3, label=name,
                    linestyle="-" if numeric else "none")
    ax.set_xticks(range(len(xs)), xs)
    if not numeric:
        ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.set(xlabel=axis, ylabel=metric, title=f"{metric} vs {axis}")
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend(fontsize="small")
    return fig


def plot_all(jobs: list[Job], keys: list[str], rows: list[Row], cols, out: Path) -> tuple[dict[str, Path], list[str]]:
    """({name: PNG written}, [a line for each plot left out and why])."""
    quality = quality_column(cols)
    metrics = ["val/loss"] + ([quality] if quality else [])
    drawn = [m for m in metrics if any(runlog.curve(job.rows, m) for job in jobs)]
    if not drawn:
        return {}, [f"No plots: no run logged {' or '.join(metrics)} (every job failed or stopped before "
                    "its first validation)."]
    files = {"curves": _save(curves_figure(jobs, keys, drawn), out / "curves.png")}
    skipped = []
    for axis in (k for k in keys if k != SEED):
        for metric in filter(None, (quality, "val/loss")):
            name = f"{metric.replace('/', '_')}_vs_{axis.replace('.', '_')}"
            if any(metric in r.stats for r in rows):
                files[name] = _save(metric_vs_axis_figure(rows, keys, axis, metric), out / f"{name}.png")
            else:
                skipped.append(f"No {name}.png: no run has {metric}.")
    # the test score (the protocol's) where the runs have one, else the last validation's
    metric = next((c for c, _ in cols if c.startswith("test/") and c.split("/")[-1] in QUALITY), quality)
    if metric:
        name = f"{metric.replace('/', '_')}_vs_train_flops"
        if any("train_flops" in r.stats and metric in r.stats for r in rows):
            files[name] = save(quality_vs_flops_figure(rows, metric), out / f"{name}.png")
        else:
            skipped.append(f"No {name}.png: no run has both {metric} and an estimate of its training FLOPs.")
    return files, skipped
