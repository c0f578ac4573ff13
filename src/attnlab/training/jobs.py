"""Sweep jobs that behave: a result file per job, failures recorded instead of fatal, finished jobs
skipped and unfinished ones resumed when a sweep is run again, and a summary at the end.

Each job writes `result.json` next to its `.hydra/` directory: status (running / ok / failed /
stopped, with the error), the job's overrides, final and best metrics, parameter count, steps, wall
time (of all its segments when it was resumed), training tokens per second, and `protocol`: how its
test metrics were made (attnlab.protocol: weights, test sets, decoding, hypotheses files).
`SweepSummary` (a Hydra callback set in conf/train.yaml) reads them all when the sweep ends, prints
how many failed and exits non-zero if any did.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from ..atomic import atomic_symlink, atomic_write
from . import runlog, segments, slurm

log = logging.getLogger("attnlab")
RESULT_FILE = "result.json"
# Written by attnlab.protocol (which imports this module) after the run's test.
PROTOCOL_FILE = "protocol.json"
# Left in the directory Hydra made for a `resume=true` run that continued an earlier run instead, when
# that directory holds more than Hydra's own files and so is kept (resume.py removes it otherwise): it
# names the run, and attnlab-report does not list the directory as a run of its own.
RESUMED_INTO = "resumed_into.txt"
# Metrics that must be finite for a run to count as trained (a NaN here means it diverged).
LOSSES = ("train/loss", "train/loss_epoch", "val/loss")


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def read_result(job_dir: Path) -> dict | None:
    return _read_json(Path(job_dir) / RESULT_FILE)


@rank_zero_only  # a multi-task (DDP) SLURM job runs every task through run_job: rank 0 keeps the record
def write_result(job_dir: Path, result: dict) -> None:
    # Atomic: a job killed mid-write never leaves a half-written result behind.
    atomic_write(Path(job_dir) / RESULT_FILE, json.dumps(result, indent=2, sort_keys=True, default=str))


def last_checkpoint(cfg: DictConfig) -> Path:
    """Where the ModelCheckpoint callback keeps `last.ckpt` (save_last=true)."""
    dirpath = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
    return Path(dirpath or Path(cfg.paths.output_dir) / "checkpoints") / "last.ckpt"


def apply_threads(cfg: DictConfig) -> int:
    """`threads=N` caps torch's intra-op threads, so parallel jobs x threads stay within the cores.
    Unset under the joblib launcher, each of its n_jobs workers gets cores // n_jobs (torch would
    otherwise start one thread per core in every worker); under submitit, hydra.launcher.cpus_per_task.
    Returns the threads this job uses."""
    threads = cfg.get("threads")
    if not threads and HydraConfig.initialized():
        launcher = HydraConfig.get().launcher
        cores = os.cpu_count() or 1
        if "Joblib" in str(launcher.get("_target_", "")):
            n_jobs = int(launcher.get("n_jobs") or -1)
            threads = max(1, cores // (cores if n_jobs < 1 else min(n_jobs, cores)))
        elif launcher.get("cpus_per_task"):  # submitit: the cores the scheduler gave this job
            threads = int(launcher.cpus_per_task)
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def _diverged(metrics: dict[str, float]) -> str | None:
    for key in LOSSES:
        if key in metrics and not math.isfinite(metrics[key]):
            return (
                f"{key}={metrics[key]} (training diverged): lower optim.lr / optim.lr_scale "
                "or raise optim.warmup_steps"
            )
    return None


def _summarise(job_dir: Path, metrics: dict[str, float]) -> dict[str, Any]:
    """The numbers a report needs, from the returned metrics and the run's own CSV log."""
    rows = runlog.read_rows(runlog.find_metrics_csv(job_dir))
    # The log first: a job resumed from a finished checkpoint trains no further epoch, so only
    # the log still holds its validation numbers.
    final = runlog.last_values(rows)
    final.update({k: v for k, v in metrics.items() if k not in ("parameters", "steps")})
    return {
        "metrics": {"final": final, "best": runlog.best_values(rows)},
        "parameters": int(metrics.get("parameters", 0)),
        # under ddp_spawn the launching process's trainer never steps: the log has the count
        "steps": int(metrics.get("steps") or runlog.last_step(rows) or 0),
        "tokens_per_sec": runlog.mean_of(rows, "train/tokens_per_sec"),
        # how test/* was made (weights, test sets, decoding, hypotheses files): attnlab.protocol
        "protocol": _read_json(job_dir / PROTOCOL_FILE),
    }


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class _JobRecord:
    """`result.json` while its job runs: this process's segment with its clock, the run's earlier
    segments when the job continues the run's own checkpoint (attnlab.training.segments), and a lock, since
    a heartbeat thread rewrites the file too."""

    def __init__(self, job_dir: Path, cfg: DictConfig, result: dict[str, Any], earlier: list[dict[str, Any]]):
        self.job_dir, self.cfg, self.result, self.earlier = job_dir, cfg, result, earlier
        self.segment: dict[str, Any] = {"started": segments.now(), "finished": None, "status": "running",
                                        "resumed_from": result["resumed_from"], "wall_time_s": 0.0}  # fmt: skip
        if slurm.job_info():  # which SLURM job and attempt (restart_count) ran this segment
            self.segment["slurm"] = slurm.job_info()
        self.carried: list[dict[str, Any]] = []
        self._clock = time.perf_counter()
        self._lock = threading.Lock()
        self._follow_checkpoint()

    def _follow_checkpoint(self) -> None:
        """Name the checkpoint the job continues from once it is known (a sweep job resolves a user's
        ckpt_path inside training), and count the earlier segments if the checkpoint is the run's own."""
        ckpt = self.cfg.ckpt_path
        if not ckpt:
            return
        if self.segment["resumed_from"] is None:
            self.segment["resumed_from"] = self.result["resumed_from"] = str(ckpt)
        if not self.carried and Path(ckpt).resolve().parent == last_checkpoint(self.cfg).resolve().parent:
            self.carried = self.earlier

    def write(self, status: str | None = None, **fields: Any) -> None:
        """Rewrite result.json with the times so far; a `status` other than running ends the segment."""
        with self._lock:
            if status is not None:
                self._follow_checkpoint()
                fields.update(status=status, finished=segments.now())
                self.segment.update(status=status, finished=fields["finished"])
                if fields.get("error"):  # why this segment ended: kept when a later segment finishes the run
                    self.segment["error"] = fields["error"]
            self.segment["wall_time_s"] = round(time.perf_counter() - self._clock, 2)
            run = [*self.carried, self.segment]
            self.result.update(fields, started=run[0]["started"], segments=run, wall_time_s=segments.total_seconds(run),
                               segment_wall_time_s=self.segment["wall_time_s"])  # fmt: skip
            write_result(self.job_dir, self.result)


def run_job(cfg: DictConfig, train_fn: Callable[[DictConfig], dict[str, float]]) -> float | None:
    """Run one job and record it in `result.json`; returns the metric an Optuna sweep optimises.

    In a multirun a job that already finished with the same overrides is skipped, one that was
    interrupted resumes from its `last.ckpt`, and a failure is recorded and returned as None so
    the sweep goes on. In a single run the error propagates (train.py explains user errors).
    A job that continues its own run (a resume) adds a segment to the run's record: `wall_time_s`
    is the time of all segments, `segment_wall_time_s` this process's, `resumed_from` the checkpoint.
    """
    job_dir = Path(cfg.paths.output_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    multirun = in_multirun()
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    previous = read_result(job_dir)
    same_job = previous is not None and previous.get("overrides") == overrides
    if multirun and previous is not None and not same_job:
        log.warning("%s held another job (%s); starting this one afresh", job_dir, previous.get("overrides"))
    if multirun and same_job and previous.get("status") == "ok":
        log.info("job %s already finished (%s); skipping it", job_dir.name, job_dir / RESULT_FILE)
        return previous.get("objective")
    ckpt = last_checkpoint(cfg)
    if multirun and same_job and ckpt.is_file() and not cfg.ckpt_path:
        cfg.ckpt_path = str(ckpt)
        log.info("job %s resumes from %s", job_dir.name, ckpt)
    # Read before training touches them: a killed earlier segment ended at its last write.
    earlier = segments.earlier_segments(previous, [ckpt, runlog.find_metrics_csv(job_dir)])

    result: dict[str, Any] = {
        "status": "running",
        "error": None,
        "overrides": overrides,
        "job_num": HydraConfig.get().job.get("num") if HydraConfig.initialized() else None,
        "job_dir": str(job_dir),
        "optimized_metric": cfg.optimized_metric,
        # A single run's checkpoint is already chosen here (resume.prepare_resume in train.main).
        "resumed_from": str(cfg.ckpt_path) if cfg.ckpt_path else None,
    }
    result.update(threads=apply_threads(cfg), pid=os.getpid())
    record = _JobRecord(job_dir, cfg, result, earlier)
    record.write()
    try:
        with segments.Heartbeat(record.write):  # a SIGKILL'ed segment still leaves its time behind
            metrics = train_fn(cfg)
    except (Exception, SystemExit) as err:  # SystemExit too: one job's sys.exit must not end the sweep
        message = f"{type(err).__name__}: {err}"
        try:
            record.write("failed", error=message, traceback=traceback.format_exc(limit=-8))
        except OSError as write_err:  # e.g. the disk that failed the job: keep the job's own error
            log.error("could not record job %s as failed in %s: %s", job_dir.name, RESULT_FILE, write_err)
        if not multirun:
            raise
        log.error("job %s failed: %s", job_dir.name, message)
        return None
    except BaseException as err:  # Ctrl-C, SIGTERM (faults.Interrupted): saved, resumable; the sweep stops
        try:
            record.write("stopped", error=f"{type(err).__name__}: {err}")
        except OSError as write_err:
            log.error("could not record job %s as stopped in %s: %s", job_dir.name, RESULT_FILE, write_err)
        raise
    result.update(_summarise(job_dir, metrics))
    final = result["metrics"]["final"]
    diverged = _diverged(final)
    objective = final.get(cfg.optimized_metric)
    record.write("failed" if diverged else "ok", error=diverged, objective=objective)
    if diverged:
        log.error("job %s failed: %s", job_dir.name, diverged)
        return None
    return objective


def sweep_results(sweep_dir: Path) -> list[tuple[Path, dict | None]]:
    """(job directory, its result or None) for every job Hydra started in a sweep directory."""
    dirs = [p.parent for p in Path(sweep_dir).glob("*/.hydra")]
    dirs.sort(key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    return [(d, read_result(d)) for d in dirs]


class SweepSummary(Callback):
    """At the end of a multirun: count ok / failed / unfinished jobs, write `summary.json`, point
    `<task>/multiruns/latest` at the sweep, and exit with status 1 if any job did not finish ok."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sweep_results(sweep_dir)
        counts = {"ok": 0, "failed": 0, "unfinished": 0}
        lines = []
        for job_dir, result in jobs:
            status = (result or {}).get("status", "unfinished")
            status = status if status in counts else "unfinished"
            counts[status] += 1
            detail = (result or {}).get("error") or ""
            lines.append(f"  {job_dir.name:>4} {status:<10} {' '.join((result or {}).get('overrides', []))} {detail}")
        summary = {"sweep_dir": str(sweep_dir), "jobs": len(jobs), **counts}
        (sweep_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self._link_latest(sweep_dir)
        print(f"\nsweep {sweep_dir}: {len(jobs)} jobs, {counts['ok']} ok, {counts['failed']} failed, "
              f"{counts['unfinished']} unfinished", file=sys.stderr)
        print("\n".join(lines), file=sys.stderr)
        print(f"report: attnlab-report {sweep_dir}", file=sys.stderr)
        if counts["failed"] or counts["unfinished"]:
            print("re-run the same command with hydra.sweep.dir=" f"{sweep_dir} to retry only the jobs that "
                  "did not finish", file=sys.stderr)
            sys.exit(1)

    @staticmethod
    def _link_latest(sweep_dir: Path) -> None:
        if sweep_dir.parent.name != "multiruns":  # only in the default layout, never beside a user's own dir
            return
        latest = sweep_dir.parent / "latest"
        try:
            atomic_symlink(latest, sweep_dir.name)  # two sweeps ending together leave one valid link
        except OSError as err:  # a file system without symlinks only loses the shortcut
            log.warning("could not link %s: %s", latest, err)
