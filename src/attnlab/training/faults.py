"""Faults during training: a non-finite loss, and the signals a user or a scheduler sends.

Two callbacks (both in `conf/callbacks/default.yaml`):
- `NonFiniteLossGuard` looks at the loss and the gradients before every optimizer step. On NaN/inf
  it either stops with a message naming the step (`action: stop`, the default) or skips the update
  (`action: skip`). Either way the weights never take a non-finite step, so every checkpoint on
  disk stays a good one.
- `CheckpointOnSignal` saves `checkpoints/last.ckpt` when Ctrl-C (SIGINT) or SIGTERM ends `fit`.
  Lightning already turns SIGTERM into a stop at the end of the current batch (`SIGTERMException`)
  and Ctrl-C into a `KeyboardInterrupt`; both reach `on_exception`, where this callback saves.

`fit_resumably` wraps `trainer.fit` so that an interrupted fit ends the whole command with `Interrupted`
(exit 143 for SIGTERM, 130 for Ctrl-C, as a shell reports signals), even inside a multirun job, and a
full disk with `DiskFullError`; both messages say how to resume.

Fault injection (tests, and checking a cluster setup before a long run): `InjectNonFinite` makes a
chosen step's loss NaN or inf, `InjectSignal` sends the process a signal (KILL, TERM, INT) at a
chosen step, `InjectError` raises at a chosen step, e.g. in one job of a sweep.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import signal
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..errors import ConfigError, DiskFullError, Interrupted, NonFiniteLossError
from . import slurm

log = logging.getLogger("attnlab")

INTERRUPTS = (KeyboardInterrupt, SIGTERMException)


def last_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest checkpoint any ModelCheckpoint wrote in this run, if any (the mid-epoch `last.ckpt`
    of `callbacks.last_checkpoint` is usually newer than the epoch-end ones)."""
    paths = {p for cb in trainer.checkpoint_callbacks for p in (getattr(cb, "last_model_path", ""),
                                                                  getattr(cb, "best_model_path", ""))}
    found = [Path(p) for p in paths if p and Path(p).is_file()]
    return str(max(found, key=lambda p: p.stat().st_mtime_ns)) if found else None


class NonFiniteLossGuard(Callback):
    """Stop (or skip the update) when the loss or a gradient is NaN/inf.

    Checked in `on_before_optimizer_step`, i.e. after backward and before gradient clipping and
    the optimizer step, so a bad batch never reaches the weights. `skip` drops the gradients
    (`p.grad = None`, which Adam treats as "no update" for that parameter, moments included); the
    learning-rate schedule still advances. After `max_consecutive_skips` bad steps in a row the run
    stops anyway: a model whose every step is NaN is not going to recover.
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", max_consecutive_skips: int = 10):
        if action not in ("stop", "skip"):
            raise ConfigError(f"callbacks.nonfinite_loss.action={action!r} is not one of ['stop', 'skip']")
        self.action, self.max_consecutive_skips = action, max_consecutive_skips
        self.skipped, self._consecutive, self._batch_idx = 0, 0, 0
        self._loss: float = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        self._loss = float(loss.detach())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        # With a fp16 GradScaler, inf gradients are routine and the scaler already skips those steps.
        check_grads = grads and getattr(trainer.precision_plugin, "scaler", None) is None
        grad_norm = float(torch.nn.utils.get_total_norm(grads)) if check_grads else 0.0
        if math.isfinite(self._loss) and math.isfinite(grad_norm):
            self._consecutive = 0
            return
        where = f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self._batch_idx})"
        what = f"loss is {self._loss}" if not math.isfinite(self._loss) else f"gradient norm is {grad_norm}"
        self._consecutive += 1
        if self.action == "skip" and self._consecutive <= self.max_consecutive_skips:
            self.skipped += 1
            log.warning("%s at %s: update skipped (%d skipped so far)", what, where, self.skipped)
            for p in pl_module.parameters():
                p.grad = None
            return
        raise NonFiniteLossError(self._explain(trainer, what, where))

    def _explain(self, trainer: L.Trainer, what: str, where: str) -> str:
        kept = last_checkpoint(trainer)
        kept = f"the last good checkpoint is {kept}" if kept else "no checkpoint had been saved yet"
        repeat = f" for {self._consecutive} steps in a row" if self._consecutive > 1 else ""
        return (
            f"training diverged: {what} at {where}{repeat}; the weights were not updated and {kept}. "
            "Lower optim.lr or optim.lr_scale, raise optim.warmup_steps, keep trainer.gradient_clip_val, "
            "or set callbacks.nonfinite_loss.action=skip to skip such steps"
        )

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = state_dict.get("skipped", 0)


class CheckpointOnSignal(Checkpoint):
    """Save `{dirpath}/{filename}.ckpt` when Ctrl-C or SIGTERM interrupts `fit`.

    The name defaults to `last`, which is where Lightning's `ckpt_path="last"` and ModelCheckpoint's
    `save_last` look, so a requeued job resumes from the interruption, not from the last epoch end.
    Other exceptions are left alone: a checkpoint taken in the middle of a failure may not be one
    worth resuming from, and the regular checkpoints are still on disk.
    """

    def __init__(self, dirpath: str, filename: str = "last"):
        self.dirpath, self.filename = Path(dirpath), filename
        self.saved: Path | None = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, INTERRUPTS) or trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        signal = _stop_signal_name() if isinstance(exception, SIGTERMException) else "Ctrl-C (SIGINT)"
        if isinstance(exception, KeyboardInterrupt):
            # Ctrl-C can land after a batch was fetched but before it was trained on; record that batch
            # as never started, else Lightning's restart logic counts it and the resumed run's logging
            # step is one ahead of its global step. SIGTERM always stops between batches.
            progress = trainer.fit_loop.epoch_loop.batch_progress
            for counts in (progress.total, progress.current):
                counts.ready = counts.started = counts.processed
        path = self.dirpath / f"{self.filename}.ckpt"
        trainer.save_checkpoint(path)
        self.saved = path
        log.warning("%s at step %d: saved %s", signal, trainer.global_step, path)


def _stop_signal_name() -> str:
    """What stopped training through Lightning's SIGTERM path: SIGTERM, or SLURM's requeue signal (slurm.py)."""
    deferred = slurm.deferred_signal()
    return f"{deferred.name} (SLURM: time limit near)" if deferred else "SIGTERM"


def fit_resumably(trainer: L.Trainer, module: L.LightningModule, **kwargs) -> None:
    """`trainer.fit`, where every way training is cut off ends in an error that says how to resume:
    Lightning's two ways out of an interrupted fit (SIGTERMException after SIGTERM, `sys.exit(1)`
    raised while handling a KeyboardInterrupt) become `Interrupted`, a full disk `DiskFullError`.
    A checkpoint to resume from is read with weights_only=True (see resume.AtomicCheckpointIO too)."""
    kwargs.setdefault("weights_only", True)
    try:
        trainer.fit(module, **kwargs)
    except SystemExit as stop:
        sigterm = isinstance(stop, SIGTERMException)
        if not (sigterm or isinstance(stop.__context__, KeyboardInterrupt)):
            raise
        name, code = (_stop_signal_name(), 143) if sigterm else ("Ctrl-C (SIGINT)", 130)
        saved = [cb.saved for cb in trainer.callbacks if isinstance(cb, CheckpointOnSignal) and cb.saved]
        kept = f"saved {saved[0]}; " if saved else ""
        then = ("the job goes back to its launcher to be requeued (or run the sweep again with its "
                "hydra.sweep.dir)") if slurm.deferred_signal() else "run the same command with resume=true to continue"
        raise Interrupted(f"stopped by {name} at step {trainer.global_step}: {kept}{then}", code) from None
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        kept = last_checkpoint(trainer)
        kept = f"the newest complete checkpoint is {kept}" if kept else "no checkpoint had been saved yet"
        raise DiskFullError(
            f"the disk filled up at step {trainer.global_step} ({err.strerror}: {err.filename or 'while writing'}); "
            f"checkpoints are written atomically, so {kept}: free some space, then run the same command "
            "with resume=true"
        ) from None


class InjectNonFinite(Callback):
    """Fault injection: multiply the decoder's output by NaN (or inf) in the training step `step`.

    `attnlab-train +callbacks.inject._target_=attnlab.training.faults.InjectNonFinite +callbacks.inject.step=5`
    """

    def __init__(self, step: int, value: Literal["nan", "inf"] = "nan"):
        self.step, self.value = step, float(value)
        self.fired = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.fired or trainer.global_step != self.step:
            return
        self.fired = True

        def poison(module, inputs, output):
            handle.remove()
            return output * self.value

        handle = pl_module.model.decoder.register_forward_hook(poison)


class InjectSignal(Callback):
    """Fault injection: the process sends itself `SIG<name>` before training step `step`, exactly as
    `kill -<name> <pid>` from a shell would (KILL: no handler runs, nothing is flushed). It fires only
    in a run that did not start from a checkpoint, so the same command with `resume=true` goes through.

    `attnlab-train +callbacks.kill._target_=attnlab.training.faults.InjectSignal +callbacks.kill.step=12`
    """

    def __init__(self, step: int, name: Literal["KILL", "TERM", "INT"] = "KILL"):
        self.step, self.signal = step, signal.Signals[f"SIG{name}"]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not trainer.ckpt_path:
            os.kill(os.getpid(), self.signal)


class InjectError(Callback):
    """Fault injection: raise a RuntimeError before training step `step` (a bug inside a job)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"injected error at step {self.step}")
