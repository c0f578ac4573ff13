"""Checks before training starts, so a run does not die after an hour on something knowable now.

`Preflight` is a Hydra callback (conf/train.yaml, `hydra.callbacks.preflight`): before Hydra
creates the run or sweep directory it checks that the output folder can be written and has
`min_free_mb` free, and that every config group option exists (an `optional` group such as
`sweep` would otherwise ignore a misspelt name). `check_before_fit` runs inside `train` once the
data and the model are built: room for the checkpoints, and no val/test sentence longer than
`model.max_len`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .config import ConfigError
from .suggest import did_you_mean

# Weights plus Adam's two moments, and the files alive at once: best, last, and a temporary copy
# while one of them is rewritten atomically.
COPIES_PER_CHECKPOINT = 3
CHECKPOINT_FILES = 3


class PreflightError(ConfigError):
    """The environment cannot hold the run (output folder, disk space) or the data cannot fit."""


def existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_writable(out_dir: Path, min_free_bytes: int, key: str = "paths.log_dir") -> None:
    """The folder that will hold `out_dir` accepts files and has `min_free_bytes` free."""
    base = existing_ancestor(out_dir)
    if not base.is_dir():
        raise PreflightError(f"cannot create output directory {out_dir}: {base} is a file; choose another {key}")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as err:
        raise PreflightError(
            f"cannot write to {base} (for the output directory {out_dir}): {err.strerror}; choose another {key}"
        ) from None
    free = shutil.disk_usage(base).free
    if free < min_free_bytes:
        raise PreflightError(
            f"not enough free disk space for {out_dir}: {free / 2**20:,.0f} MiB free on {base}, "
            f"need at least {min_free_bytes / 2**20:,.0f} MiB; free some space or choose another {key}"
        )


def check_group_choices(cfg: DictConfig) -> None:
    """Every chosen config group option exists (a missing `optional` one would be silently skipped)."""
    loader = GlobalHydra.instance().config_loader()
    # hydra.searchpath on the command line adds config folders; list options as the composer saw them.
    searchpath = [o for o in cfg.hydra.overrides.hydra if o.startswith("hydra.searchpath=")]
    for group, choice in cfg.hydra.runtime.choices.items():
        if choice is None or group.startswith("hydra/"):
            continue
        options = loader.get_group_options(group, config_name=cfg.hydra.job.config_name, overrides=searchpath)
        if options and choice not in options:
            best = did_you_mean(str(choice), options)
            hint = f"did you mean {group}={best}? " if best else ""
            raise PreflightError(f"{group}={choice} does not exist; {hint}options: {', '.join(options)}")


class Preflight(Callback):
    """Hydra callback: the checks above, before the run (or sweep) directory is created."""

    def __init__(self, min_free_mb: int = 100):
        self.min_free_bytes = min_free_mb * 2**20

    def _check(self, config: DictConfig, out_dir: str) -> None:
        try:
            check_group_choices(config)
            check_writable(Path(out_dir), self.min_free_bytes)
        except PreflightError as err:
            # Hydra has not set up logging yet, and an exception here would come with a traceback.
            print(f"attnlab: error: {err}", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, config.hydra.sweep.dir)


def check_lengths(dm, max_len: int) -> None:
    """No validation or test sentence may exceed model.max_len (training ones are filtered instead)."""
    for split in ("val", "test"):
        for example in dm.examples.get(split, []):
            # source + EOS, and BOS + target: the longest positions the model must embed.
            for lang, n in ((dm.src_lang, len(example.src)), (dm.tgt_lang, len(example.tgt) + 1)):
                if n > max_len:
                    where = f"{dm.root}/{dm.split_files[split]}.{lang}" if dm.root else f"{split}.{lang}"
                    raise PreflightError(
                        f"{where}, line {example.index + 1}: {n} tokens, more than model.max_len={max_len}; "
                        "raise model.max_len or split the line (only training sentences are filtered)"
                    )


def check_before_fit(out_dir: Path, dm, module) -> None:
    """Data lengths, then disk room for the checkpoints this model will write."""
    check_lengths(dm, module.model.config.max_len)
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    check_writable(out_dir, weights * COPIES_PER_CHECKPOINT * CHECKPOINT_FILES)
