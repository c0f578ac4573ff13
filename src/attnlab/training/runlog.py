"""Reading a run's own CSV log (Lightning's CSVLogger `metrics.csv`): curves, last and best values.

Both the per-job `result.json` (jobs.py) and `attnlab-report` take their numbers from here,
so the report always agrees with the logs it was made from.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

# Quality metrics where larger is better; every other logged number (loss, nll, ppl) is minimised.
HIGHER_IS_BETTER = ("exact_match", "bleu", "chrf", "token_acc", "tokens_per_sec")


def find_metrics_csv(run_dir: Path) -> Path | None:
    """The CSV log of a run directory, wherever the `logger.csv` config put it inside."""
    found = sorted(Path(run_dir).glob("**/metrics.csv"))
    return found[0] if found else None


def read_rows(path: Path | None) -> list[dict[str, float]]:
    """metrics.csv rows with their empty cells dropped. A resumed run appends to the same file and
    may log a step twice; the later row wins, so a curve has one point per (step, metric)."""
    if path is None or not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in row.items() if k and v not in ("", None)} for row in csv.DictReader(f)]
    return rows


def curve(rows: list[dict[str, float]], key: str) -> list[tuple[int, float]]:
    """(step, value) points of one metric, one per step (the last logged), sorted by step."""
    points: dict[int, float] = {}
    for row in rows:
        if key in row:
            points[int(row.get("step", len(points)))] = row[key]
    return sorted(points.items())


def last_values(rows: list[dict[str, float]]) -> dict[str, float]:
    """The last logged value of every metric (the run's final numbers)."""
    out: dict[str, float] = {}
    for row in rows:
        out.update({k: v for k, v in row.items() if k not in ("epoch", "step")})
    return out


def best_values(rows: list[dict[str, float]], prefix: str = "val/") -> dict[str, float]:
    """The best value each `prefix` metric reached during training (min loss/ppl, max accuracy/BLEU)."""
    best: dict[str, float] = {}
    for row in rows:
        for key, value in row.items():
            if not key.startswith(prefix) or math.isnan(value):
                continue
            higher = key.endswith(HIGHER_IS_BETTER)
            if key not in best or (value > best[key] if higher else value < best[key]):
                best[key] = value
    return best


def last_step(rows: list[dict[str, float]]) -> int | None:
    """The largest training step the log reached (None for an empty log)."""
    return max((int(r["step"]) for r in rows if "step" in r), default=None)


def mean_of(rows: list[dict[str, float]], key: str) -> float | None:
    values = [row[key] for row in rows if key in row and math.isfinite(row[key])]
    return sum(values) / len(values) if values else None
