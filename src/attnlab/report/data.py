"""What `attnlab-report` reads: the jobs under sweep or run directories, their overrides, status
and numbers, folded into one row per configuration (seed replicates become mean and std).

Numbers come from each run's own CSV log (attnlab.training.runlog), with the job's `result.json` only for
what the log does not hold (parameters, steps, wall time) or for a run whose log is gone, so the
report always equals the logs it was made from.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from ..training import metadata, runlog
from ..training.jobs import PROTOCOL_FILE, RESULT_FILE, RESUMED_INTO, read_result
from .compute import compute_values
from .stats import SeedSummary, seed_summary

# Keys that say where a run went, not what it was (where it writes, what it resumes from, how many
# threads it uses): never an ablation axis, so sweeps run with different threads fold into one table.
NOT_AXES = ("hydra.", "paths.", "ckpt_path", "resume", "threads")
SEED = "seed"


@dataclass
class Job:
    run_dir: Path
    label: str  # short name: <sweep>/<job num> or the run directory's name
    overrides: dict[str, str]
    config: dict[str, str]  # flattened `.hydra/config.yaml` (interpolations left as written)
    status: str  # ok / failed / unfinished
    error: str | None
    values: dict[str, float]
    rows: list[dict[str, float]] = field(repr=False, default_factory=list)  # metrics.csv, for curves
    # column -> the epoch (from 1) its number comes from: `best:val/*` and the test checkpoint's
    epochs: dict[str, int] = field(default_factory=dict)
    segments: int = 1  # processes that trained the run: its start and every resume
    time_partial: bool = False  # time_s is the last segment's only (see _segments)
    protocol: dict | None = None  # how test/* was made (attnlab.protocol): test sets, hypotheses files


@dataclass
class Row:
    """One line of the report: a job, or the seed replicates of one configuration."""

    jobs: list[Job]
    axes: dict[str, str]
    stats: dict[str, tuple[float, float | None]]  # column -> (mean, std; None for a single run)

    @property
    def label(self) -> str:
        return self.jobs[0].label if len(self.jobs) == 1 else f"{self.jobs[0].label} (+{len(self.jobs) - 1})"

    @property
    def seeds(self) -> str:
        return ",".join(j.overrides.get(SEED, j.config.get(SEED, "?")) for j in self.jobs)

    @property
    def status(self) -> str:
        states = [j.status for j in self.jobs]
        if len(set(states)) == 1:
            return states[0]
        return ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))

    @property
    def segments(self) -> int:
        return max(j.segments for j in self.jobs)

    @property
    def time_partial(self) -> bool:
        return any(j.time_partial for j in self.jobs)

    def epochs(self, column: str) -> str:
        """`4` or, for folded seeds, `4,5,4`: the epoch each job's number in `column` comes from."""
        found = [str(j.epochs[column]) for j in self.jobs if column in j.epochs]
        return ",".join(found)

    def summary(self, column: str) -> SeedSummary | None:
        """Mean, std, n and the 95% Student-t interval over the jobs that have `column` (None when none
        has it or a value is not finite)."""
        values = [j.values[column] for j in self.jobs if column in j.values]
        if not values or not all(math.isfinite(v) for v in values):
            return None
        return seed_summary(values)

    @property
    def errors(self) -> list[str]:
        return [f"{j.label}: {' '.join(j.error.split())}" for j in self.jobs if j.error]  # one line each


def quality_column(cols, default: str | None = None) -> str | None:
    """The validation metric that says how good a run is: the first `val/*` column that is neither
    loss nor perplexity (exact match on the synthetic tasks, BLEU on real text)."""
    return next((c for c, _ in cols if c.startswith("val/") and c not in ("val/loss", "val/ppl")), default)


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Every run directory (one holding `.hydra/` or `result.json`) given or found under the paths."""
    found: list[Path] = []
    for given in paths:
        path = Path(given).resolve()  # follows `multiruns/latest`
        if not path.is_dir():
            raise FileNotFoundError(f"{given}: no such directory (give a sweep or run directory)")
        if (path / RESUMED_INTO).is_file():  # a resume=true shell: the run it continued holds the results
            path = Path((path / RESUMED_INTO).read_text().strip())
        if (path / ".hydra").is_dir() or (path / RESULT_FILE).is_file():
            found.append(path)
            continue
        shells = {p.parent.resolve() for p in path.glob(f"**/{RESUMED_INTO}")}
        runs = sorted({p.parent.resolve() for p in path.glob("**/.hydra")} - shells, key=_run_order)  # `latest` twice
        if not runs:
            raise FileNotFoundError(f"{given}: no runs found (no */.hydra/ directories under it)")
        found.extend(runs)
    return list(dict.fromkeys(found))


def _run_order(path: Path) -> tuple:
    return (str(path.parent), int(path.name) if path.name.isdigit() else -1, path.name)


def parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key.lstrip("+~")] = value
    return out


def _flatten(node, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: str(node)}


def load_job(run_dir: Path) -> Job:
    result = read_result(run_dir) or {}
    hydra_dir = run_dir / ".hydra"
    overrides = result.get("overrides")
    if overrides is None and (hydra_dir / "overrides.yaml").is_file():
        overrides = list(OmegaConf.load(hydra_dir / "overrides.yaml"))
    config = {}
    if (hydra_dir / "config.yaml").is_file():
        config = _flatten(OmegaConf.to_container(OmegaConf.load(hydra_dir / "config.yaml"), resolve=False))
    rows = runlog.read_rows(runlog.find_metrics_csv(run_dir))
    status = result.get("status", "unfinished")
    segments, time_partial = _segments(result, metadata.read(run_dir) or {})
    protocol = result.get("protocol") or _read_json(run_dir / PROTOCOL_FILE)
    values = _values(result, rows)
    values.update(compute_values(run_dir, protocol, values))
    return Job(
        run_dir=run_dir,
        label=f"{run_dir.parent.name}/{run_dir.name}" if run_dir.name.isdigit() else run_dir.name,
        overrides=parse_overrides(overrides or []),
        config=config,
        status=status if status in ("ok", "failed") else "unfinished",
        error=result.get("error"),
        values=values,
        rows=rows,
        epochs=_epochs(rows, test_checkpoint(config)),
        segments=segments,
        time_partial=time_partial,
        protocol=protocol,
    )


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _segments(result: dict, record: dict) -> tuple[int, bool]:
    """(segments, whether `wall_time_s` covers only the last). result.json lists every segment and
    sums their times (attnlab.training.segments); one written before it did timed only its own process, and
    then metadata.json's `resumes` still counts the segments."""
    if result.get("segments"):
        return len(result["segments"]), False
    count = 1 + len(record.get("resumes") or [])
    return count, count > 1


def test_checkpoint(config: dict[str, str]) -> tuple[str, str] | str | None:
    """Which weights the run's test score comes from (its `eval_protocol`, attnlab.protocol): for the
    best checkpoint, (monitor, mode) of `callbacks.model_checkpoint` (Lightning's first ModelCheckpoint
    in every callbacks preset), None when the run had none (the final weights); for the other
    protocols a short label: "last ckpt" or "avg of last N ckpts"."""
    protocol = config.get("eval_protocol.checkpoint", "best")
    if protocol == "last":
        return "last ckpt"
    if protocol == "average_last":
        return f"avg of last {config.get('eval_protocol.average_last', '?')} ckpts"
    monitor = config.get("callbacks.model_checkpoint.monitor")
    if monitor in (None, "None") or config.get("callbacks.model_checkpoint.save_top_k") == "0":
        return None
    return monitor, config.get("callbacks.model_checkpoint.mode", "min")


def _best_epoch(rows: list[dict[str, float]], key: str, mode: str) -> int | None:
    """The first epoch (from 1) where `key` reached its best, as ModelCheckpoint and
    runlog.best_values pick it (a tie keeps the earlier epoch)."""
    best, epoch = None, None
    for row in rows:
        value = row.get(key)
        if value is None or math.isnan(value) or "epoch" not in row:
            continue
        if best is None or (value > best if mode == "max" else value < best):
            best, epoch = value, int(row["epoch"]) + 1
    return epoch


def _epochs(rows: list[dict[str, float]], checkpoint: tuple[str, str] | None) -> dict[str, int]:
    epochs = {}
    for key in runlog.best_values(rows):
        epoch = _best_epoch(rows, key, "max" if key.endswith(runlog.HIGHER_IS_BETTER) else "min")
        if epoch is not None:
            epochs[f"best:{key}"] = epoch
    if isinstance(checkpoint, tuple) and any(k.startswith("test/") for r in rows for k in r):
        epoch = _best_epoch(rows, *checkpoint)
        if epoch is not None:
            epochs["test"] = epoch
    return epochs


def _values(result: dict, rows: list[dict[str, float]]) -> dict[str, float]:
    values = dict((result.get("metrics") or {}).get("final", {}))
    values.update(runlog.last_values(rows))  # the run's own log wins
    # the best epoch too: one unlucky last epoch should not hide what the run reached (min loss, max accuracy)
    values.update({f"best:{k}": v for k, v in runlog.best_values(rows).items()})
    if "train/loss_epoch" in values:  # the epoch mean; `train/loss` in result.json is the last step's
        values["train/loss"] = values["train/loss_epoch"]
    if "train/nll" in values:  # perplexity as val/ppl is computed: exp of the unsmoothed NLL
        values["train/ppl"] = math.exp(min(values["train/nll"], 50.0))
    steps = result.get("steps") or runlog.last_step(rows)
    rate = result.get("tokens_per_sec") or runlog.mean_of(rows, "train/tokens_per_sec")
    run = {"parameters": result.get("parameters"), "steps": steps, "time_s": result.get("wall_time_s"),
           "tokens_per_sec": rate}  # fmt: skip
    for key, value in run.items():
        if value:
            values[key] = float(value)
    return values


def axes_of(jobs: list[Job]) -> list[str]:
    """The keys whose values differ between jobs: overrides first (what the sweep set), else the
    resolved configs (a run and its reproduction, started with different command lines)."""
    def differing(maps: list[dict[str, str]]) -> list[str]:
        keys = list(dict.fromkeys(k for m in maps for k in m if not k.startswith(NOT_AXES)))
        return [k for k in keys if len({m.get(k, "") for m in maps}) > 1]

    keys = differing([j.overrides for j in jobs])
    if not keys and len(jobs) > 1:
        keys = differing([j.config for j in jobs])
    return keys


def axis_value(job: Job, key: str) -> str:
    return job.overrides.get(key, job.config.get(key, ""))


def _sort_key(jobs: list[Job], keys: list[str]):
    """Numbers sort as numbers; other values keep the order the sweep listed them in."""
    orders = {}
    for key in keys:
        values = list(dict.fromkeys(axis_value(j, key) for j in jobs))
        try:
            values.sort(key=float)
        except ValueError:
            pass
        orders[key] = {v: i for i, v in enumerate(values)}
    return lambda job: tuple(orders[k][axis_value(job, k)] for k in keys)


def fold(jobs: list[Job], keys: list[str], by_seed: bool = True) -> list[Row]:
    """One row per configuration. Jobs that differ only by seed fold into mean and std; jobs with
    the same seed (a run and its reproduction) stay apart, so the report can compare them."""
    config_keys = [k for k in keys if k != SEED]
    order = _sort_key(jobs, keys)
    groups: dict[tuple, list[Job]] = {}
    for job in sorted(jobs, key=order):
        groups.setdefault(tuple(axis_value(job, k) for k in config_keys), []).append(job)
    rows = []
    for members in groups.values():
        seeds = [axis_value(j, SEED) for j in members]
        if by_seed and SEED in keys and len(set(seeds)) == len(seeds):
            rows.append(_row(members, config_keys))
        else:
            rows.extend(_row([j], config_keys) for j in members)
    return rows


def _row(jobs: list[Job], keys: list[str]) -> Row:
    stats = {}
    for column in {c for j in jobs for c in j.values}:
        values = [j.values[column] for j in jobs if column in j.values]
        std = statistics.stdev(values) if len(values) > 1 else None
        stats[column] = (statistics.fmean(values), std)
    return Row(jobs=jobs, axes={k: axis_value(jobs[0], k) for k in keys}, stats=stats)


def load(paths: list[str | Path], by_seed: bool = True) -> tuple[list[Job], list[str], list[Row]]:
    jobs = [load_job(d) for d in find_run_dirs(paths)]
    if len({j.run_dir.parent for j in jobs}) == 1:  # one sweep: its job numbers say enough
        for job in jobs:
            job.label = job.run_dir.name
    keys = axes_of(jobs)
    return jobs, keys, fold(jobs, keys, by_seed)
