"""Resuming a killed run: which checkpoint, which run directory, and what must be restored.

`attnlab-train ... resume=true` continues the newest run with the same overrides from its
`checkpoints/last.ckpt` (or the current run directory's, e.g. with `hydra.run.dir=<run>`);
`ckpt_path=<file>` names a checkpoint directly. Resuming in place continues the step count,
optimizer and LR schedule (Lightning), the data order and position (data/resumable.py), the
random state (RandomStateCheckpoint) and the CSV / TensorBoard / W&B runs (loggers.py).
Checkpoints are written atomically (AtomicCheckpointIO), so a kill while saving leaves the
previous `last.ckpt` intact, and read with `torch.load(weights_only=True)` only: a checkpoint to
resume from is checked first (attnlab.checkpoint.read_checkpoint: truncated, not a checkpoint, an
older format, code hidden in a pickle) and must describe the same `model.*` as the run's config.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf, open_dict

from ..atomic import atomic_open, writer_pid
from ..checkpoint import read_checkpoint
from ..errors import CheckpointError, ConfigError
from .jobs import RESUMED_INTO

log = logging.getLogger("attnlab")
LAST = "last.ckpt"
# What Hydra writes into a run directory before the task starts (its log file aside).
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
# Overrides that say how to start, not what to train: a resumed run matches the original without them.
_START_KEYS = ("resume", "ckpt_path")
_checked: set[tuple[str, int]] = set()


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save through `atomic_open` (a temporary file beside it, fsync, then a rename): readers (and
    a resumed run) only ever see a complete checkpoint, the old one or the new one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, fsync=True) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        # Tensors and plain containers only, whatever the caller asks: resuming never runs code from a file.
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


class RandomStateCheckpoint(L.Callback):
    """Saves the global RNG states in checkpoints and restores them just before the first training
    batch after a resume, so dropout draws the masks an uninterrupted run would have drawn."""

    def __init__(self) -> None:
        self._pending: dict | None = None

    def state_dict(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            saved, here = state["cuda"], torch.cuda.device_count()
            if len(saved) != here:
                log.warning("the checkpoint has the RNG states of %d GPUs, this process sees %d: "
                            "dropout will not repeat the interrupted run's masks exactly", len(saved), here)
            for device, rng in enumerate(saved[:here]):
                torch.cuda.set_rng_state(rng, device)


class LoaderStateCheckpoint(L.Callback):
    """Carries the training loader's position (data/resumable.py) across a resume.

    Lightning saves the loader's `state_dict` in the checkpoint, but when `configure_optimizers` asks
    for `trainer.estimated_stepping_batches` (the LR schedule does) it builds the loader before it
    restores the loops, and never hands the state back: a run resumed mid-epoch restarted that epoch
    from its first batch. This callback keeps the state in its own slot and gives it to the loader
    at `on_train_start`, after the restore and before the first batch is drawn.
    """

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._pending: dict | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        loader = trainer.train_dataloader if trainer is not None else None
        if not hasattr(loader, "state_dict"):
            return {}
        state = loader.state_dict()
        # Batches trained on, by Lightning's count: the loader itself has also yielded the batch that
        # is prefetched, or that Ctrl-C interrupted before its update.
        state["batches_done"] = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"loader": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("loader")

    def on_train_start(self, trainer, pl_module) -> None:
        state, self._pending = self._pending, None
        loader = trainer.train_dataloader
        if state is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(state)
            fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
            if getattr(loader, "num_workers", 0) > 0 and fetcher is not None:
                # A loader with workers draws (and prefetches) its order as soon as its iterator
                # exists, and Lightning created it before this hook: start it again from the state.
                iter(fetcher)


def _writer_alive(tmp: Path) -> bool:
    """Whether the process that named a temporary file (AtomicCheckpointIO: atomic.writer_pid) still runs here."""
    pid = writer_pid(tmp)
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def checkpoint_step(ckpt: Path) -> int:
    """The global step a checkpoint was saved at (memory-mapped: the weights are not read)."""
    return int(torch.load(ckpt, map_location="cpu", mmap=True, weights_only=True).get("global_step", 0))


def check_resumable(cfg: DictConfig, ckpt: Path) -> None:
    """A clear ConfigError, before any training, for a checkpoint this run cannot continue from:
    unreadable (read_checkpoint's reasons) or trained with other `model.*` settings."""
    wanted = OmegaConf.to_container(cfg.model, resolve=True)
    # prepare_resume runs twice per run (main, then train): read the file once per model config
    # (the jobs of a sweep from one checkpoint have different ones).
    key = (str(ckpt), ckpt.stat().st_mtime_ns, repr(sorted(wanted.items())))
    if key in _checked:
        return
    try:
        saved = (read_checkpoint(ckpt).get("hyper_parameters") or {}).get("model") or {}
    except CheckpointError as err:
        raise ConfigError(f"cannot resume: {err}") from None
    differ = [k for k in wanted if k in saved and saved[k] != wanted[k]]
    if differ:
        theirs = ", ".join(f"model.{k}={saved[k]}" for k in differ)
        ours = ", ".join(f"model.{k}={wanted[k]}" for k in differ)
        raise ConfigError(
            f"cannot resume from {ckpt}: it was trained with {theirs}, but this run has {ours}; "
            "resume with the checkpoint's model settings, or start a new run without resume/ckpt_path"
        )
    _checked.add(key)


def _start_free(overrides) -> list[str]:
    return sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in _START_KEYS)


def _previous_run(here: Path) -> Path | None:
    """The newest sibling run directory with the same overrides (ignoring resume/ckpt_path) that has
    a last checkpoint. Only for single runs: a sweep re-run resumes its jobs in place (jobs.py)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode == RunMode.MULTIRUN:
        return None
    want = _start_free(HydraConfig.get().overrides.task)
    found = []
    for ckpt in here.parent.glob(f"*/checkpoints/{LAST}"):
        run = ckpt.parent.parent
        overrides = run / ".hydra" / "overrides.yaml"
        if run != here and overrides.is_file() and _start_free(yaml.safe_load(overrides.read_text()) or []) == want:
            found.append((ckpt.stat().st_mtime, run))
    return max(found)[1] if found else None


def prepare_resume(cfg: DictConfig) -> Path | None:
    """Decide what this run continues from and point the config at it; returns the checkpoint.

    - `ckpt_path=<file>`: continue from that checkpoint (in place when it is this run's own).
    - `resume=true`: this run directory's last.ckpt, else the newest earlier run with the same
      overrides, whose directory this run then continues in (`paths.output_dir` is switched; the
      directory Hydra made for this command is removed, its log appended to the run's).
      With nothing to resume, the run starts afresh (logged), so a resume flag is always safe.
    Idempotent: afterwards `ckpt_path` holds the checkpoint.
    """
    here = Path(cfg.paths.output_dir).resolve()
    if cfg.ckpt_path:
        ckpt = Path(to_absolute_path(cfg.ckpt_path)).resolve()
        if not ckpt.is_file():
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file ({ckpt})")
    elif cfg.get("resume"):
        run = here if (here / "checkpoints" / LAST).is_file() else _previous_run(here)
        if run is None:
            log.warning("resume=true: no %s in %s or an earlier run with these overrides; starting afresh",
                        LAST, here.parent)
            return None
        ckpt = run / "checkpoints" / LAST
        log.info("resume=true: continuing %s from %s", run, ckpt)
    else:
        return None
    elsewhere = ckpt.parent.name == "checkpoints" and ckpt.parent.parent != here and cfg.get("resume")
    with open_dict(cfg):
        cfg.ckpt_path = str(ckpt)
        if elsewhere:
            cfg.paths.output_dir = str(ckpt.parent.parent)
    for stale in ckpt.parent.glob(".*.tmp"):  # a save interrupted by a kill
        if not _writer_alive(stale):  # not the save in progress of a run still training there
            stale.unlink(missing_ok=True)
    check_resumable(cfg, ckpt)
    if elsewhere:  # only now is it sure that this command continues that run
        _leave_hydra_dir(here, ckpt.parent.parent)
    return ckpt


def _leave_hydra_dir(here: Path, run: Path) -> None:
    """This command continues `run`, so the run directory Hydra made for it stays empty: its log file
    moves to the run, and the directory is removed (or, if it holds anything else, names the run)."""
    if not here.is_dir():
        return
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra is None or hydra.mode == RunMode.MULTIRUN or Path(hydra.runtime.output_dir).resolve() != here:
        (here / RESUMED_INTO).write_text(f"{run}\n")
        return
    move_log_files(here, run)
    if remove_hydra_dir(here, run, hydra.output_subdir):
        log.info("resume=true: removed %s, which Hydra had made for this command", here)


def move_log_files(here: Path, run: Path) -> None:
    """Point every logging file handler that writes into `here` (Hydra's job log, `train.log`) at the
    file of the same name in `run`, appending what it wrote so far: the run's log has every segment."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = {h for lg in loggers for h in getattr(lg, "handlers", []) if isinstance(h, logging.FileHandler)}
    for handler in handlers:
        source = Path(handler.baseFilename)
        if source.parent.resolve() != here:
            continue
        handler.acquire()
        try:
            if handler.stream is not None:
                handler.stream.close()  # flushes
                handler.stream = None
            if source.is_file():
                with open(run / source.name, "ab") as target:
                    target.write(source.read_bytes())
                source.unlink()
            # FileHandler opens its file again, appending, at the next record.
            handler.baseFilename, handler.mode = os.fspath(run / source.name), "a"
        finally:
            handler.release()


def remove_hydra_dir(here: Path, run: Path, hydra_subdir: str | None = ".hydra") -> bool:
    """Remove `here` if it holds nothing but Hydra's own files (`<hydra_subdir>/` with the command's
    config, overrides and Hydra settings): one by one by name, never a whole tree, so nothing else can
    go. Anything more and it is kept, with `resumed_into.txt` naming the run it continued. True if removed."""
    subdir = here / hydra_subdir if hydra_subdir else None
    hydra_only = {p.name for p in here.iterdir()} <= ({hydra_subdir} if hydra_subdir else set()) and (
        subdir is None or not subdir.exists()
        or (subdir.is_dir() and not subdir.is_symlink()
            and all(p.name in HYDRA_FILES and p.is_file() and not p.is_symlink() for p in subdir.iterdir()))
    )  # fmt: skip
    if hydra_only:
        try:
            if subdir is not None and subdir.exists():
                for name in HYDRA_FILES:
                    (subdir / name).unlink(missing_ok=True)
                subdir.rmdir()
            here.rmdir()  # fails if anything appeared meanwhile
            return True
        except OSError as err:
            log.warning("resume=true: could not remove %s (%s); it names the run it continued", here, err)
    (here / RESUMED_INTO).write_text(f"{run}\n")
    return False


def resumes_in_place(cfg: DictConfig) -> bool:
    """True when the run continues its own run directory (so its loggers continue too)."""
    if not cfg.ckpt_path:
        return False
    ckpt = Path(cfg.ckpt_path).resolve()
    return ckpt.parent.name == "checkpoints" and ckpt.parent.parent == Path(cfg.paths.output_dir).resolve()
