"""A test-only callback for SLURM jobs: each training step takes at least `seconds`, so a tiny job runs
long enough for the scheduler to interrupt it (jobs import it through PYTHONPATH=tests/slurm).
`attempts=N` paces only the job's first N attempts (SLURM_RESTART_COUNT < N): a job that runs into its
time limit once and then has little left to do, so a requeued attempt finishes before the next warning."""

from __future__ import annotations

import os
import time

from lightning.pytorch.callbacks import Callback


class Pace(Callback):
    def __init__(self, seconds: float = 0.2, attempts: int | None = None):
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        self.seconds = seconds if attempts is None or restarts < attempts else 0.0
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        left = self.seconds - (time.monotonic() - self._start)
        if left > 0:
            time.sleep(left)
