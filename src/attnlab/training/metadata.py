"""`<run>/metadata.json`: what is needed to trust and re-run a run, beside Hydra's `.hydra/`.

The resolved config and overrides, the code's git revision (with `git.diff` when the tree was
dirty), Python and package versions, the seed, the hardware, and start / end times with the
outcome. A resumed run appends to `resumes` instead of starting a new record (with how the segment
before it ended); `wall_time_s` runs from the first start to the last end, pauses between segments
included: the training time of all segments is in `result.json` (attnlab.training.jobs). No environment
variables are recorded except a short allow-list, so secrets (API keys) never end up here.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from datetime import datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from ..atomic import atomic_write

log = logging.getLogger("attnlab")
FILE = "metadata.json"
DIFF_FILE = "git.diff"
PACKAGES = (
    "attnlab", "torch", "lightning", "hydra-core", "omegaconf", "torchmetrics", "wandb",
    "tensorboard", "sacrebleu", "sentencepiece", "numpy",
)
# Environment variables that change results or where they go; never credentials.
ENV_ALLOWED = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "WANDB_MODE", "PYTHONHASHSEED", "ATTNLAB_DATA_DIR")


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(
    run_dir: Path, code_dir: Path = Path(__file__).resolve().parent, diff_name: str = DIFF_FILE
) -> dict[str, Any]:
    """Revision of the repository the attnlab code runs from; a dirty tree's diff goes to `diff_name`."""
    revision = _git("rev-parse", "HEAD", cwd=code_dir)
    if revision is None:
        return {"revision": None, "dirty": None, "diff": None, "note": "attnlab is not running from a git checkout"}
    status = _git("status", "--porcelain", "--untracked-files=normal", cwd=code_dir) or ""
    dirty = bool(status.strip())
    diff_file = None
    if dirty:
        diff = _git("diff", "HEAD", "--binary", cwd=code_dir) or ""
        untracked = [line[3:] for line in status.splitlines() if line.startswith("??")]
        if untracked:
            diff += "\n# untracked files (not in the diff):\n" + "".join(f"#   {p}\n" for p in untracked)
        (run_dir / diff_name).write_text(diff)
        diff_file = diff_name
    return {
        "revision": revision.strip(),
        "branch": (_git("rev-parse", "--abbrev-ref", "HEAD", cwd=code_dir) or "").strip() or None,
        "dirty": dirty,
        "diff": diff_file,
    }


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": memory,
        "cuda": torch.version.cuda if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }


def read(run_dir: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / FILE).read_text())
    except (OSError, ValueError):
        return None


def _write(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write(run_dir / FILE, json.dumps(record, indent=2, default=str))  # a kill never leaves half a record


@rank_zero_only  # one record per run, also when every task of a DDP SLURM job runs attnlab-train
def write_start(run_dir: str | Path, cfg: DictConfig, resumed_from: str | None = None) -> dict[str, Any]:
    """Record a run's start; for a resumed run, add an entry to the existing record's `resumes`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = read(run_dir)
    if previous is not None and resumed_from:
        resumes = previous.setdefault("resumes", [])
        diff_name = f"git.resume-{len(resumes) + 1}.diff"  # the run's own git.diff stays the start's
        resumes.append(
            {"started": _now(), "from_checkpoint": resumed_from, "git": git_state(run_dir, diff_name=diff_name),
             "command": sys.argv, "hydra_dir": _hydra_dir(), "previous_segment": _how_it_ended(previous)}
        )
        previous.update(status="running", finished=None)
        _write(run_dir, previous)
        return previous
    record = {
        "status": "running",
        "started": _now(),
        "finished": None,
        "command": sys.argv,
        "cwd": os.getcwd(),
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "seed": cfg.seed,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "git": git_state(run_dir),
        "python": {"version": sys.version, "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "packages": package_versions(),
        "hardware": hardware(),
        "environment": {k: os.environ[k] for k in ENV_ALLOWED if k in os.environ},
        "resumed_from": resumed_from,
        "reproduces": os.environ.get("ATTNLAB_REPRODUCES"),
        "resumes": [],
    }
    _write(run_dir, record)
    return record


@rank_zero_only
def write_end(run_dir: str | Path, status: str, metrics: dict[str, float] | None = None,
              error: str | None = None) -> None:
    """Record the outcome: status finished / failed, end time, wall time and the final metrics."""
    run_dir = Path(run_dir)
    record = read(run_dir) or {}
    finished = datetime.now().astimezone()
    started = record.get("started")
    record.update(status=status, finished=finished.isoformat(timespec="seconds"), error=error)
    if started:
        record["wall_time_s"] = round((finished - datetime.fromisoformat(started)).total_seconds(), 1)
    if metrics is not None:
        record["metrics"] = metrics
    try:
        _write(run_dir, record)
    except OSError as err:  # e.g. the full disk that ended the run: report that, not this
        log.warning("could not record the end of the run in %s: %s", run_dir / FILE, err)


def _hydra_dir() -> str | None:
    """The directory Hydra made for this command, while it exists (a resume that continues an
    earlier run removes it: attnlab.training.resume)."""
    path = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None
    return path if path and Path(path).is_dir() else None


def _how_it_ended(record: dict[str, Any]) -> dict[str, Any]:
    """The end of the segment a resume follows, before the record is reset to running: a segment
    still `running` was killed without a chance to record anything (its time: result.json)."""
    status = record.get("status")
    return {"status": "killed" if status == "running" else status,
            "finished": record.get("finished"), "error": record.get("error")}  # fmt: skip
