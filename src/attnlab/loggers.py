"""The dashboards: CSV (always), TensorBoard and Weights & Biases (offline unless logged in).

`configure_loggers` fills in, before the `logger:` group is instantiated, what depends on the
run: the W&B name (from the overrides), group (one per sweep), tags (the swept keys), job type,
id (stable per run directory, so a resumed run continues the same W&B run) and mode; and for a
run resumed in place, where the CSV and TensorBoard logs continue from. After the run,
`log_final` puts the final metrics in the W&B summary and TensorBoard's HParams view, and
`finish_wandb` closes the W&B run even when the job failed (in a multirun, a run left open
would swallow the next job's logs).
"""

from __future__ import annotations

import csv
import hashlib
import netrc
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

# Overrides that do not change what is trained: left out of W&B names.
_NOT_IN_NAME = ("logger", "paths", "resume", "ckpt_path", "hydra", "show_examples")


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger deletes an existing metrics.csv when it starts; a run resumed at
    `resume_step` keeps the rows logged before that step instead, so one file holds the whole run."""

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._resume_step = resume_step

    @property
    def experiment(self):
        if self._experiment is not None or self._resume_step is None:
            return super().experiment
        path = Path(self.log_dir) / "metrics.csv"
        kept = []
        if path.is_file():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            kept = [r for r in rows if r.get("step", "") != "" and int(float(r["step"])) < self._resume_step]
        writer = super().experiment  # removes the old file
        writer.metrics = [{k: v for k, v in r.items() if v != ""} for r in kept] + writer.metrics
        writer.save()
        return writer

    @rank_zero_only
    def save(self) -> None:
        # Another process may have written this file (ddp_spawn: the fit and the test phase each
        # run in a worker holding its own copy of the writer). Lightning's writer only knows the
        # columns it logged itself and would rewrite the file without the others, so learn them first.
        writer = self.experiment
        path = Path(writer.metrics_file_path)
        if writer.metrics and path.is_file():
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            missing = [k for k in header if k not in writer.metrics_keys]
            if missing:
                writer.metrics_keys.extend(missing)
                writer.metrics_keys.sort()
        super().save()


def has_wandb_credentials() -> bool:
    """An API key in the environment, or `wandb login`'s entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_run_id(run_dir: str | Path) -> str:
    """Stable per run directory: a resumed run logs into the run it continues."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def _task_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_name(cfg: DictConfig) -> str:
    """`n_heads=2,positional=none` from the overrides (last key component); in a sweep only the swept
    keys' (what tells its jobs apart); the task name when none."""
    swept = set(swept_keys())
    parts = []
    for override in _task_overrides():
        key, _, value = override.lstrip("+~").partition("=")
        if not key.startswith(_NOT_IN_NAME) and (not swept or key in swept):
            parts.append(f"{key.split('.')[-1]}={value}")
    return ",".join(parts)[:120] or cfg.task_name


def swept_keys() -> list[str]:
    """Keys a multirun varies: sweep overrides on its command line and `hydra.sweeper.params`."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return []
    hc = HydraConfig.get()
    keys = list((OmegaConf.select(hc, "sweeper.params") or {}).keys())
    sweep_config = Path(hc.sweep.dir) / "multirun.yaml"
    if sweep_config.is_file():
        overrides = OmegaConf.load(sweep_config).hydra.overrides.task
        keys += [o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides))
                 if o.is_sweep_override()]
    return sorted(set(keys))


def sweep_group(cfg: DictConfig) -> str | None:
    """One W&B group per sweep: the task name and the sweep directory's time stamp."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return f"{cfg.task_name}-{Path(HydraConfig.get().sweep.dir).name}"


def configure_loggers(cfg: DictConfig, job_type: str = "train", resume_step: int | None = None) -> None:
    """Complete the `logger:` nodes in place (see the module docstring)."""
    if not cfg.get("logger"):
        return
    with open_dict(cfg):
        for node in cfg.logger.values():
            target = str((node or {}).get("_target_", ""))
            if target.endswith("WandbLogger"):
                node.setdefault("name", run_name(cfg))
                node.setdefault("group", sweep_group(cfg))
                node.setdefault("tags", swept_keys())
                node.setdefault("job_type", job_type)
                node.setdefault("id", wandb_run_id(cfg.paths.output_dir))
                if "WANDB_MODE" not in os.environ and "mode" not in node:
                    node.mode = "online" if has_wandb_credentials() else "offline"
            elif resume_step is not None and target.endswith("TensorBoardLogger"):
                node.purge_step = resume_step  # TensorBoard hides the events logged after the checkpoint
            elif resume_step is not None and target.endswith("ResumableCSVLogger"):
                node.resume_step = resume_step


def log_run_config(loggers: list[Logger], cfg: DictConfig, extra: dict[str, Any]) -> None:
    """The full resolved config (and e.g. parameter counts) as every logger's hyper-parameters."""
    config = {**OmegaConf.to_container(cfg, resolve=True), **extra}
    for logger in loggers:
        logger.log_hyperparams(config)


def log_final(loggers: list[Logger], cfg: DictConfig, metrics: dict[str, float]) -> None:
    """Final metrics: the W&B run summary, and TensorBoard's HParams view (as `final/<metric>`)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(metrics)
        elif isinstance(logger, TensorBoardLogger):
            config = OmegaConf.to_container(cfg, resolve=True)
            logger.log_hyperparams(config, metrics={f"final/{k}": v for k, v in metrics.items()})
            logger.experiment.flush()


def finish_wandb(failed: bool = False) -> None:
    """Close the process's W&B run, if one is open (no import cost when W&B was never used)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
