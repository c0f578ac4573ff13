"""Running under SLURM: who does what when a job is preempted or reaches its time limit.

One component owns each decision, so a requeued job always continues in its own run directory:

- **Preemption** (`scontrol requeue`, a partition with PreemptMode=REQUEUE): the scheduler requeues the
  job itself and sends SIGTERM first. Lightning stops at the end of the batch, `faults.CheckpointOnSignal`
  saves `last.ckpt`, the process exits (143). Submitit only logs a SIGTERM.
- **The time limit**: SLURM sends the signal the launcher asked for (`--signal=USR2@<signal_delay_s>`,
  hydra-submitit-launcher; `SUBMITIT_PREEMPT_SIGNAL` names another). Submitit owns that requeue: its
  handler resubmits the same call (the same sweep job, so the same `<sweep dir>/<job num>`) and runs
  `scontrol requeue` while `hydra.launcher.max_num_timeout` allows, else declines. Its handler acts the
  moment the signal lands, in the middle of a step, so while `fit` runs `DeferRequeueSignal` takes the
  signal first: training stops at the end of the batch as for SIGTERM, `last.ckpt` is saved, and only then
  is the signal handed to the handler that held it (`hand_over`, from `attnlab-train`'s main).
- **Lightning's own auto-requeue** (SLURMEnvironment's SIGUSR1 handler, which saves `hpc_ckpt_*.ckpt`
  in the middle of a step and calls `scontrol requeue` too) is off: `cluster_plugins` passes
  `SLURMEnvironment(auto_requeue=False)`; Lightning still reads ranks and addresses from SLURM, so a job
  with N tasks trains with `strategy=ddp`, `devices=N` (one process per task, none launched by Lightning).

When the job runs again, Hydra composes the same job (overrides, job number, run directory), and
`jobs.run_job` finds its `result.json` unfinished and `checkpoints/last.ckpt`, and resumes from it: the
same CSV log, TensorBoard run and W&B run id (derived from the directory), one more segment in result.json.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.environments import SLURMEnvironment

log = logging.getLogger("attnlab")

# The signal deferred in this process, and the handler it is handed to after the checkpoint.
_deferred: tuple[signal.Signals, Any] | None = None


def in_slurm_job() -> bool:
    """A task of a SLURM job (srun or a batch step), as Lightning's SLURMEnvironment.detect decides, without
    its warning that srun "is available but not used" (printed on any machine with SLURM installed)."""
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def requeue_signal() -> signal.Signals:
    """The signal submitit asks SLURM for before the time limit (its `SUBMITIT_PREEMPT_SIGNAL`, default USR2)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper()
    return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]


def cluster_plugins() -> list:
    """Lightning's SLURM environment without its auto-requeue, inside a SLURM job; nothing elsewhere."""
    return [SLURMEnvironment(auto_requeue=False)] if in_slurm_job() else []


def job_info() -> dict[str, Any] | None:
    """Which SLURM job and attempt this process is (for result.json's segments); None outside SLURM."""
    if not in_slurm_job():
        return None
    env = os.environ
    array = env.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{env.get('SLURM_ARRAY_TASK_ID')}" if array else env.get("SLURM_JOB_ID")
    return {"job_id": job, "restart_count": int(env.get("SLURM_RESTART_COUNT") or 0),
            "tasks": int(env.get("SLURM_NTASKS") or 1), "node": env.get("SLURMD_NODENAME")}  # fmt: skip


def deferred_signal() -> signal.Signals | None:
    """The requeue signal that stopped this process's training, if one did."""
    return _deferred[0] if _deferred else None


class DeferRequeueSignal(Callback):
    """Inside a SLURM job, while training: the requeue signal stops training at the end of the batch,
    as SIGTERM does (so `CheckpointOnSignal` saves last.ckpt), instead of reaching the launcher's handler
    in the middle of a step. `hand_over` gives it to that handler afterwards."""

    def __init__(self) -> None:
        self.signum = requeue_signal()
        self._trainer = None
        self._previous: Any = None

    def on_train_start(self, trainer, pl_module) -> None:
        # After Lightning registered its own handlers (it restores the ones it found at teardown).
        if not in_slurm_job() or threading.current_thread() is not threading.main_thread():
            return
        self._trainer, self._previous = trainer, signal.getsignal(self.signum)
        signal.signal(self.signum, self._defer)

    def _defer(self, signum: int, frame) -> None:
        global _deferred
        first = _deferred is None
        _deferred = (signal.Signals(signum), self._previous)
        if first:
            log.warning("%s (SLURM: the time limit is near): stopping at the end of this batch to save a "
                        "checkpoint, then handing the job to the launcher to requeue", signal.Signals(signum).name)
        connector = getattr(self._trainer, "_signal_connector", None)
        if connector is not None:
            connector.received_sigterm = True  # Lightning's own stop: the batch ends, then SIGTERMException
        else:  # another Lightning: its SIGTERM handler sets the same flag
            handler = signal.getsignal(signal.SIGTERM)
            if callable(handler):
                handler(signal.SIGTERM, frame)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._trainer is not None and signal.getsignal(self.signum) == self._defer:
            signal.signal(self.signum, self._previous)
        self._trainer = None


def hand_over() -> str | None:
    """After the checkpoint: give a deferred requeue signal to the handler that held it before
    (submitit's requeues the job and exits the process). Returns None when no signal was deferred,
    "declined" when that handler raised (submitit does when `max_num_timeout` requeues are spent: the
    job ends stopped, resumable by running the sweep again with its `hydra.sweep.dir`), else "handed"."""
    global _deferred
    if _deferred is None:
        return None
    signum, previous = _deferred
    _deferred = None
    signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    try:
        signal.raise_signal(signum)  # runs the handler now, in this thread
    except Exception as err:  # noqa: BLE001 - whatever the launcher raises to decline
        log.error("%s: the job was not requeued (%s: %s)", signum.name, type(err).__name__, err)
        return "declined"
    return "handed"
