"""`attnlab-train`: compose the config, build data, model and trainer, fit, test (eval_protocol), report."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate, to_absolute_path
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from . import protocol
from .cli import USER_ERRORS, explain_and_exit
from .config import model_config, validate
from .data.datamodule import TranslationDataModule
from .errors import ConfigError, Interrupted, PreflightError
from .lit_module import TranslationModule
from .runtime import keep_freed_memory
from .suggest import with_suggestions
from .training import faults, metadata, preflight, slurm
from .training.jobs import in_multirun, run_job
from .training.loggers import configure_loggers, finish_wandb, log_final, log_run_config
from .training.resume import AtomicCheckpointIO, checkpoint_step, prepare_resume, resumes_in_place
from .training.summary import print_examples, print_summary

log = logging.getLogger("attnlab")


def _instantiate_all(group: DictConfig | None) -> list:
    """`logger:` / `callbacks:` groups are maps of name -> {_target_: ...}; null entries are off."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def build_datamodule(cfg: DictConfig) -> TranslationDataModule:
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if data.get("root"):
        data["root"] = to_absolute_path(data["root"])
    dm = TranslationDataModule(**data, seed=cfg.seed)
    dm.setup()
    return dm


def build_module(cfg: DictConfig, dm: TranslationDataModule) -> TranslationModule:
    model = model_config(cfg, dm.src_tokenizer.vocab_size, dm.tgt_tokenizer.vocab_size)
    try:
        return TranslationModule(
            model=model.to_dict(),
            optim=OmegaConf.to_container(cfg.optim, resolve=True),
            decode=OmegaConf.to_container(cfg.decode, resolve=True),
            tokenizers={"src": dm.src_tokenizer.to_state(), "tgt": dm.tgt_tokenizer.to_state()},
            val_decode_size=cfg.val_decode_size,
            val_decode_every=cfg.val_decode_every,
        )
    except RuntimeError as err:  # torch.OutOfMemoryError, or the CPU allocator's plain RuntimeError
        if not isinstance(err, torch.OutOfMemoryError) and "can't allocate memory" not in str(err):
            raise
        # preflight.check_model_memory counts the whole machine; other processes may hold part of it.
        raise PreflightError(
            f"out of memory while building the model (model.d_model={cfg.model.d_model}, "
            f"model.d_ff={cfg.model.d_ff}): {str(err).splitlines()[0]}; make the model smaller or free memory"
        ) from None


def build_trainer(cfg: DictConfig) -> L.Trainer:
    try:
        return L.Trainer(
            **OmegaConf.to_container(cfg.trainer, resolve=True),
            logger=_instantiate_all(cfg.logger) or False,
            # in a SLURM job, its time-limit signal first stops training at a batch end (training/slurm.py)
            callbacks=_instantiate_all(cfg.callbacks) + ([slurm.DeferRequeueSignal()] if slurm.in_slurm_job() else []),
            default_root_dir=cfg.paths.output_dir,
            # a kill while saving never leaves a corrupt last.ckpt; in SLURM, Lightning's auto-requeue is off
            plugins=[AtomicCheckpointIO(), *slurm.cluster_plugins()],
        )
    # TypeError: an unknown trainer.* key; the others: a value config.check_trainer does not know.
    except (TypeError, MisconfigurationException, ValueError) as err:
        raise ConfigError(f"trainer: {err}") from None


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) one model from a composed config; returns the final metrics.

    `metadata.json` records the run (and its outcome, even on failure); the W&B run is always
    finished, so the next job of a multirun never logs into this one.
    """
    validate(cfg)
    preflight.check_environment(cfg)  # the accelerator exists and the model fits its memory
    ckpt = prepare_resume(cfg)  # may switch paths.output_dir to the run being resumed
    configure_loggers(cfg, "train", resume_step=checkpoint_step(ckpt) if resumes_in_place(cfg) else None)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out_dir = Path(cfg.paths.output_dir)
    metadata.write_start(out_dir, cfg, resumed_from=str(ckpt) if ckpt else None)
    try:
        metrics = _fit_and_test(cfg, out_dir)
    except BaseException as err:
        metadata.write_end(out_dir, "failed", error=f"{type(err).__name__}: {err}")
        finish_wandb(failed=True)
        raise
    _best_effort("recording the end of the run", lambda: metadata.write_end(out_dir, "finished", metrics))
    _best_effort("closing the W&B run", finish_wandb)
    return metrics


def _best_effort(what: str, fn) -> None:
    """After metrics.json is written the run has succeeded: reporting that fails (a full disk
    under TensorBoard, a W&B outage) is a warning, never a failed run or a retrained sweep job."""
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - anything; the results are already saved
        log.warning("%s failed (%s: %s); the results are in metrics.json", what, type(err).__name__, err)


def _fit_and_test(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    if cfg.trainer.get("max_epochs") == -1 and cfg.trainer.get("max_steps") == -1:
        log.info(
            "trainer.max_epochs=-1: training runs until stopped (trainer.max_time, early stopping, "
            "or Ctrl-C / SIGTERM, which save a checkpoint to resume from)"
        )
    dm = build_datamodule(cfg)
    preflight.check_lengths(dm, cfg.model.max_len)  # every sentence fits the model and a batch
    testing = cfg.test and not cfg.trainer.get("fast_dev_run")
    test_sets = protocol.read_test_sets(cfg) if testing else {}  # a missing test set fails before training
    (out_dir / protocol.PROTOCOL_FILE).unlink(missing_ok=True)  # an earlier segment's, about to be outdated
    module = build_module(cfg, dm)
    preflight.check_before_fit(out_dir, module)  # disk room for checkpoints
    trainer = build_trainer(cfg)
    log.info("model: %s parameters", f"{module.model.num_parameters():,}")
    log_run_config(trainer.loggers, cfg, {"parameters": module.model.num_parameters()})
    ckpt_path = to_absolute_path(cfg.ckpt_path) if cfg.ckpt_path else None
    faults.fit_resumably(trainer, module, datamodule=dm, ckpt_path=ckpt_path)  # Ctrl-C/SIGTERM: save, then Interrupted
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if testing and trainer.is_global_zero:
        # eval_protocol.*: the declared weights and test sets, scored as attnlab-eval scores them
        tested = protocol.run_protocol(cfg, trainer, module, test_sets, out_dir)
        metrics.update(tested)
        _best_effort("logging the test metrics", lambda: protocol.log_test_metrics(trainer.loggers, tested,
                                                                                 trainer.global_step))  # fmt: skip
    metrics["parameters"] = module.model.num_parameters()
    metrics["steps"] = trainer.global_step
    if not trainer.is_global_zero:  # another task of a multi-task (DDP) SLURM job: rank 0 records the run
        return metrics
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    _best_effort("logging the final metrics", lambda: log_final(trainer.loggers, cfg, metrics))
    _best_effort("printing examples", lambda: print_examples(module, dm, "val", cfg.show_examples))
    print_summary(metrics, out_dir)
    return metrics


@with_suggestions("attnlab-train", "train")  # "did you mean" under Hydra's config errors
@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns the metric an Optuna sweep optimises. `run_job` writes result.json; in a multirun it
    records a failed job instead of raising, so one bad job never stops the sweep."""
    keep_freed_memory()
    try:
        if not in_multirun():  # in a sweep, train() does it inside run_job: a bad job is recorded, not fatal
            prepare_resume(cfg)  # before run_job, so its result.json lands in the run being resumed
        return run_job(cfg, train)
    except USER_ERRORS as err:
        explain_and_exit(err, "attnlab-train")
    except Interrupted as stop:
        print(f"attnlab-train: {stop}", file=sys.stderr)
        # SLURM's time-limit signal, deferred to the checkpoint: now the launcher's handler requeues the job
        # (submitit exits the process). If it declines, a sweep job ends as a result (result.json: stopped).
        if slurm.hand_over() == "declined" and in_multirun():
            return None
        sys.exit(stop.code)


if __name__ == "__main__":
    main()
