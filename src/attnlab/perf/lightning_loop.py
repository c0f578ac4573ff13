"""The real training loop: `TranslationModule` under a Lightning `Trainer`, against the bare step.

Lightning steps and bare steps (an identical attnlab model with the same loss and Adam, no
framework) alternate in the same process: after each Lightning step, a callback runs one bare
step and times it. A Lightning step's time is the interval between two batch starts minus
the bare step run inside it, so it includes data fetching, logging and the optimiser
closure: everything the framework adds. Alternating keeps the comparison fair under load.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
import warnings

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from ..lit_module import TranslationModule
from ..model import TransformerConfig
from .measure import sync
from .peers import AttnlabSystem
from .workload import Batch, TrainStep


class _AlternateBareStep(L.Callback):
    def __init__(self, bare: TrainStep, device: torch.device):
        self.bare, self.device = bare, device
        self.lightning_s: list[float] = []
        self.bare_s: list[float] = []
        self._start: float | None = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        sync(self.device)
        now = time.perf_counter()
        if self._start is not None:
            self.lightning_s.append(now - self._start - self.bare_s[-1])
        self._start = now

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        sync(self.device)
        start = time.perf_counter()
        self.bare()
        sync(self.device)
        self.bare_s.append(time.perf_counter() - start)


def lightning_overhead(
    cfg: TransformerConfig, batch: Batch, optim: dict, warmup: int, repeats: int, precision: str = "fp32"
) -> dict:
    """Median step seconds of the Lightning loop and of the bare step, and the overhead fraction."""
    device = batch.src.device
    module = TranslationModule(model=cfg.to_dict(), optim=optim)
    bare = TrainStep(AttnlabSystem(cfg), batch, optim, precision)
    bare.system.model.to(device)
    timer = _AlternateBareStep(bare, device)
    steps = warmup + repeats + 1  # the first interval ends at the second batch start
    loader = DataLoader([{"src": batch.src, "tgt_in": batch.tgt_in, "tgt_out": batch.tgt_out}] * steps, batch_size=None)
    with tempfile.TemporaryDirectory() as log_dir, warnings.catch_warnings():
        # Expected here: one repeated in-memory batch, no validation, fewer steps than a log interval.
        for message in ("does not have many workers", "no `val_dataloader`", "logging interval", "LeafSpec"):
            warnings.filterwarnings("ignore", f".*{message}.*")
        quiet = logging.getLogger("lightning.pytorch")
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            trainer = L.Trainer(
                accelerator=device.type,
                devices=1,
                max_steps=steps,
                precision="bf16-mixed" if precision == "bf16" else "32-true",
                logger=CSVLogger(log_dir),  # as attnlab-train's default logger=csv
                log_every_n_steps=10,
                callbacks=[timer],
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                limit_val_batches=0,
                num_sanity_val_steps=0,
            )
            trainer.fit(module, train_dataloaders=loader)
        finally:
            quiet.setLevel(level)
    lightning_s = statistics.median(timer.lightning_s[warmup:])
    bare_s = statistics.median(timer.bare_s[warmup : warmup + len(timer.lightning_s[warmup:])])
    return {"lightning_step_s": lightning_s, "bare_step_s": bare_s, "overhead": lightning_s / bare_s - 1.0}
