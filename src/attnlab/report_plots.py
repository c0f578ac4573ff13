"""The report's PNGs: validation curves of every run overlaid (from each run's metrics.csv), and
the quality metric against each swept value (mean with a std bar when seeds were folded)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt  # noqa: E402

from . import runlog  # noqa: E402
from .report_data import SEED, Job, Row, axis_value, quality_column  # noqa: E402


def _label(job: Job, keys: list[str]) -> str:
    return " ".join(f"{k.split('.')[-1]}={axis_value(job, k)}" for k in keys) or job.label


SEED_MARKERS = ".ox^sv*+"


def curves(jobs: list[Job], keys: list[str], metrics: list[str], path: Path) -> Path:
    """One colour per configuration (the swept values but the seed), one marker per seed: replicates
    of a configuration read as one band, and colours do not repeat before configurations do."""
    config_of = [_label(job, [k for k in keys if k != SEED]) for job in jobs]
    configs = list(dict.fromkeys(config_of))
    palette = plt.get_cmap("tab10" if len(configs) <= 10 else "tab20")
    seeds = list(dict.fromkeys(axis_value(job, SEED) for job in jobs)) if SEED in keys else []
    colors = [palette(configs.index(config) % palette.N) for config in config_of]
    markers = [SEED_MARKERS[seeds.index(axis_value(job, SEED)) % len(SEED_MARKERS)] if seeds else "." for job in jobs]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for job, color, marker in zip(jobs, colors, markers):
            points = runlog.curve(job.rows, metric)
            if points:
                style = "-" if job.status == "ok" else ":"  # failed/unfinished runs dotted
                ax.plot(*zip(*points), style, marker=marker, markersize=4, color=color, label=_label(job, keys))
        ax.set(xlabel="step", ylabel=metric, title=f"{metric} per validation")
        if metric.endswith("loss") or metric.endswith("ppl"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def metric_vs_axis(rows: list[Row], keys: list[str], axis: str, metric: str, path: Path) -> Path:
    """One line per combination of the other swept keys, x = the values of `axis` in report order."""
    others = [k for k in keys if k not in (axis, SEED)]
    xs = list(dict.fromkeys(r.axes[axis] for r in rows))
    lines: dict[str, dict[str, tuple[float, float]]] = {}
    for r in rows:
        if metric in r.stats:
            name = " ".join(f"{k.split('.')[-1]}={r.axes[k]}" for k in others) or metric
            mean, std = r.stats[metric]
            lines.setdefault(name, {})[r.axes[axis]] = (mean, std or 0.0)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, points in lines.items():
        present = [x for x in xs if x in points]
        ax.errorbar([xs.index(x) for x in present], [points[x][0] for x in present],
                    yerr=[points[x][1] for x in present], marker="o", capsize=3, label=name)
    ax.set_xticks(range(len(xs)), xs)
    ax.set(xlabel=axis, ylabel=metric, title=f"{metric} vs {axis}")
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_all(jobs: list[Job], keys: list[str], rows: list[Row], cols, out: Path) -> dict[str, Path]:
    quality = quality_column(cols)
    files = {"curves": curves(jobs, keys, ["val/loss"] + ([quality] if quality else []), out / "curves.png")}
    for axis in (k for k in keys if k != SEED):
        for metric in filter(None, (quality, "val/loss")):
            name = f"{metric.replace('/', '_')}_vs_{axis.replace('.', '_')}"
            files[name] = metric_vs_axis(rows, keys, axis, metric, out / f"{name}.png")
    return files
