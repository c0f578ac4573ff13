"""The dashboards: CSV (always), TensorBoard and Weights & Biases (offline unless logged in).

`configure_loggers` fills in, before the `logger:` group is instantiated, what depends on the
run: the W&B name (from the overrides), group (one per sweep), tags (the swept keys), job type,
id (stable per run directory, so a resumed run continues the same W&B run) and mode; and for a
run resumed in place, where the CSV and TensorBoard logs continue from. After the run,
`log_final` puts the final metrics in the W&B summary and TensorBoard's HParams view, and
`finish_wandb` closes the W&B run even when the job failed (in a multirun, a run left open
would swallow the next job's logs).

The HParams view gets what a comparison needs, not the full config: the keys that tell the runs
apart (`comparison_hparams`) and the final metrics (`final_metric_order`). TensorBoard 2.21's table
shows the first 5 hyper-parameters (`differs` ones first, then by name) and the first 5 metrics,
at about 160 px a column: in a 1600 px window, one key and five metrics fit; every further
hyper-parameter pushes a metric off-screen (docs/reproducibility.md). So the settings that define a
run (`run_settings`: model, optim, data, decode, seed, length) go beside it as a `settings` text
table (TEXT tab), and the full config stays in `.hydra/config.yaml`, `metadata.json`, the loggers'
`hparams.yaml` and the W&B run config.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import netrc
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from . import metadata, segments
from .jobs import read_result

log = logging.getLogger("attnlab")
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


def _surviving(name: str):
    """WandbLogger.<name>, but a stopped wandb service turns the call into nothing (SurvivingWandbLogger)."""

    def method(self, *args: Any, **kwargs: Any) -> Any:
        if self._service_lost:
            return None
        try:
            return getattr(WandbLogger, name)(self, *args, **kwargs)
        except ConnectionError as err:  # BrokenPipeError, ConnectionResetError: wandb-core is gone
            self._service_lost = True
            log.warning("W&B: the wandb service stopped (%s: %s); this process logs no more to W&B",
                        type(err).__name__, err)
            return None

    method.__name__ = name
    return method


class SurvivingWandbLogger(WandbLogger):
    """Lightning's WandbLogger, except that a W&B service process that died under the run costs a warning
    and the rest of this process's W&B logging, not the run.

    wandb-core is a child process of the run. A scheduler that cancels, preempts or requeues a job sends
    SIGTERM to every process of the job, so wandb-core exits at once (wandb/wandb#9963) while training
    still has to finish its batch and save `last.ckpt`; the next W&B call would raise ConnectionResetError
    and fail the run instead. The CSV and TensorBoard logs go on; a resumed segment logs into the same
    W&B run again (its id comes from the run directory)."""

    _service_lost = False
    log_metrics = _surviving("log_metrics")
    log_hyperparams = _surviving("log_hyperparams")
    log_text = _surviving("log_text")
    log_table = _surviving("log_table")
    log_image = _surviving("log_image")
    after_save_checkpoint = _surviving("after_save_checkpoint")
    finalize = _surviving("finalize")


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
    """Final metrics: the W&B run summary, and TensorBoard's HParams view (`write_hparams`)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(metrics)
        elif isinstance(logger, TensorBoardLogger):
            write_hparams(logger, cfg, metrics)


# The settings that define what was trained and how it was decoded (the `settings` text). Left out:
# where files go (paths, roots, caches, split file names), how the run is executed (workers,
# compile) and class names.
_SETTING_GROUPS = ("model", "optim", "data", "decode")
_SETTING_KEYS = ("seed", "trainer.max_epochs", "trainer.max_steps")
_NOT_SETTINGS = {"_target_", "root", "cache_dir", "splits", "num_workers", "compile"}
# Final metrics in the order the HParams view should show them (it shows the first 5 at first):
# exact match on the synthetic tasks, BLEU and chrF on real text (as attnlab-report chooses).
_SYNTHETIC_FIRST = ("test/exact_match", "test/ppl", "val/exact_match", "parameters", "time_s",
                    "test/bleu", "test/chrf", "val/ppl", "val/bleu", "val/chrf")
_TEXT_FIRST = ("test/bleu", "test/chrf", "test/ppl", "parameters", "time_s",
               "val/bleu", "val/chrf", "val/ppl", "test/exact_match", "val/exact_match")
_LATER = ("test/loss", "val/loss", "train/loss_epoch", "steps")


def _flat(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}.{key}"))
        return out
    return {prefix: node}


def leading_keys() -> list[str]:
    """The keys that tell this run from its siblings: a sweep's swept keys; in a single run, the
    command line's overrides (what it changed), minus those that say only where it writes; the
    seed when there are none."""
    if swept_keys():
        return swept_keys()
    keys = [o.lstrip("+~").partition("=")[0] for o in _task_overrides()]
    return [k for k in dict.fromkeys(keys) if not k.startswith(_NOT_IN_NAME)] or ["seed"]


def comparison_hparams(cfg: DictConfig) -> dict[str, Any]:
    """{key: value} of the leading keys (`leading_keys`): the HParams columns. A group choice
    (`table3=C_N2`, `model=small`) is a key too, with the option's name as its value."""
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    values: dict[str, Any] = {}
    for key in leading_keys():
        value = OmegaConf.select(cfg, key, default=None) if "." in key else choices.get(key)
        if value is None and key in cfg and not OmegaConf.is_config(cfg[key]):
            value = cfg[key]
        values[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return values


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """The model / optim / data / decode settings, the seed and the training length, flat."""
    config = OmegaConf.to_container(cfg, resolve=True)
    values: dict[str, Any] = {}
    for group in _SETTING_GROUPS:
        for key, value in _flat(config.get(group) or {}, group).items():
            if not _NOT_SETTINGS & set(key.split(".")):
                values[key] = value
    for key in _SETTING_KEYS:
        values[key] = OmegaConf.select(cfg, key, default=None)
    return values


def final_metric_order(cfg: DictConfig, metrics: dict[str, float]) -> list[str]:
    first = _SYNTHETIC_FIRST if OmegaConf.select(cfg, "data.source") == "synthetic" else _TEXT_FIRST
    return [m for m in (*first, *_LATER) if m in metrics]


def _metric_description(metric: str, cfg: DictConfig) -> str:
    """Which weights a number comes from (train.py: test on the best checkpoint when there is one)."""
    if metric.startswith("test/"):
        protocol = OmegaConf.select(cfg, "eval_protocol.checkpoint", default="best")
        if protocol == "last":
            return "test set, last checkpoint"
        if protocol == "average_last":
            return f"test set, average of the last {OmegaConf.select(cfg, 'eval_protocol.average_last')} checkpoints"
        monitor = OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor", default=None)
        mode = OmegaConf.select(cfg, "callbacks.model_checkpoint.mode", default="min")
        return f"test set, checkpoint with the {mode} {monitor}" if monitor else "test set, final weights"
    if metric.startswith("val/"):
        return "validation, last epoch"
    if metric == "time_s":
        return "wall seconds of the run (all its segments when it was resumed)"
    return ""


def run_seconds(run_dir: str | Path) -> float | None:
    """Wall seconds of the whole run so far: the earlier segments result.json lists (attnlab.training.segments)
    plus this running one; without those records, the time since metadata.json's last start."""
    recorded = (read_result(run_dir) or {}).get("segments") or []
    current = next((seg for seg in reversed(recorded) if seg.get("status") == "running"), None)
    started = segments.epoch_seconds(current and current.get("started"))
    if started is not None:
        earlier = sum(seg.get("wall_time_s") or 0.0 for seg in recorded if seg is not current)
        return round(earlier + time.time() - started, 1)
    record = metadata.read(run_dir) or {}
    started = segments.epoch_seconds(((record.get("resumes") or [{}])[-1].get("started")) or record.get("started"))
    return None if started is None else round(time.time() - started, 1)


def _hparam_value(value: Any):
    """(protobuf Value field, TensorBoard data type) for one setting; bool before int (bool is an int)."""
    if isinstance(value, bool):
        return "bool_value", "DATA_TYPE_BOOL"
    if isinstance(value, (int, float)):
        return "number_value", "DATA_TYPE_FLOAT64"
    return "string_value", "DATA_TYPE_STRING"


def write_hparams(logger: TensorBoardLogger, cfg: DictConfig, metrics: dict[str, float]) -> None:
    """One HParams session per run: `comparison_hparams` (marked `differs`, which TensorBoard sorts
    first) and the final metrics as `final/<metric>` scalars and metric columns; `run_settings` as
    the `settings` text. Written with TensorBoard's own protos instead of Lightning's
    `log_hyperparams`, which would also rewrite the logger's hparams.yaml (the full config)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from tensorboard.plugins.hparams import metadata as hp

    hparams = comparison_hparams(cfg)
    final = dict(metrics)
    seconds = run_seconds(cfg.paths.output_dir)
    if seconds is not None:
        final["time_s"] = seconds
    order = final_metric_order(cfg, final)
    experiment = api_pb2.Experiment()
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for key, value in hparams.items():
        if value is None:  # unset (a default chosen at run time): no column rather than "None"
            continue
        if isinstance(value, (list, dict)):
            value = str(value)
        field, dtype = _hparam_value(value)
        setattr(start.hparams[key], field, value)
        experiment.hparam_infos.add(name=key, type=api_pb2.DataType.Value(dtype), differs=True)
    for metric in order:
        experiment.metric_infos.add(name=api_pb2.MetricName(tag=f"final/{metric}"),
                                    display_name=metric.replace("_", " "),
                                    description=_metric_description(metric, cfg))
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    step = int(final.get("steps") or 0)
    writer = logger.experiment
    for tag, data in ((hp.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
                      (hp.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)),
                      (hp.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))):
        summary = Summary(value=[Summary.Value(tag=tag, metadata=hp.create_summary_metadata(data))])
        writer._get_file_writer().add_summary(summary, step)
    for metric in order:
        writer.add_scalar(f"final/{metric}", final[metric], step)
    table = "| setting | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in run_settings(cfg).items())
    writer.add_text("settings", table, step)
    writer.flush()


def finish_wandb(failed: bool = False) -> None:
    """Close the process's W&B run, if one is open (no import cost when W&B was never used)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        try:
            wandb.finish(exit_code=1 if failed else 0)
        except ConnectionError as err:  # wandb-core was stopped with the job (SurvivingWandbLogger)
            log.warning("W&B: could not finish the run, the wandb service stopped (%s: %s)", type(err).__name__, err)
