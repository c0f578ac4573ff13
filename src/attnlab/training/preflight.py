"""Checks before training starts, so a run does not die after an hour on something knowable now.

`Preflight` is a Hydra callback (conf/train.yaml, `hydra.callbacks.preflight`): before Hydra
creates the run or sweep directory it checks that the output folder can be written and has
`min_free_mb` free, and that every config group option exists (an `optional` group such as
`sweep` would otherwise ignore a misspelt name). Inside `train`, `check_environment` runs right
after the config values are validated and before anything is built: the accelerator exists and the
model's training state fits its memory. `check_lengths` runs once the data is read, before the model
is built: no val/test sentence longer than `model.max_len`, no pair larger than a batch.
`check_before_fit` runs once the model is built: room for the checkpoints.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..errors import PreflightError
from ..suggest import did_you_mean

log = logging.getLogger("attnlab")

# Weights plus Adam's two moments, and the files alive at once: best, last, and a temporary copy
# while one of them is rewritten atomically.
COPIES_PER_CHECKPOINT = 3
CHECKPOINT_FILES = 3
# Training holds each parameter four times: the weight, its gradient and Adam's two moments.
TRAINING_COPIES = 4


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


def _where(dm, split: str, lang: str) -> str:
    return f"{dm.root}/{dm.split_files[split]}.{lang}" if dm.root else f"{split}.{lang}"


def check_lengths(dm, max_len: int) -> None:
    """No validation or test sentence may exceed model.max_len (training ones are filtered instead),
    and every pair of every split must fit in one batch of data.max_tokens."""
    for split in ("train", "val", "test"):
        for example in dm.examples.get(split, []):
            # source + EOS, and BOS + target: the longest positions the model must embed.
            for lang, n in ((dm.src_lang, len(example.src)), (dm.tgt_lang, len(example.tgt) + 1)):
                if n > max_len and split != "train":
                    raise PreflightError(
                        f"{_where(dm, split, lang)}, line {example.index + 1}: {n} tokens, more than "
                        f"model.max_len={max_len}; raise model.max_len or split the line (only training "
                        "sentences are filtered)"
                    )
                if n > dm.max_tokens:
                    raise PreflightError(
                        f"{_where(dm, split, lang)}, line {example.index + 1}: {n} tokens, more than one batch "
                        f"holds (data.max_tokens={dm.max_tokens}); raise data.max_tokens to at least {n}"
                    )


def check_accelerator(trainer: DictConfig) -> None:
    """trainer.accelerator names hardware this machine has, and no more devices than it has."""
    accelerator, devices = trainer.get("accelerator", "auto"), trainer.get("devices", "auto")
    if accelerator not in ("gpu", "cuda", "mps", "tpu"):
        return
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator, XLAAccelerator

    kinds = {"gpu": (CUDAAccelerator, MPSAccelerator), "cuda": (CUDAAccelerator,), "mps": (MPSAccelerator,)}
    present = [kind for kind in kinds.get(accelerator, (XLAAccelerator,)) if kind.is_available()]
    if not present:
        raise PreflightError(
            f"trainer.accelerator={accelerator} but this machine has no {accelerator.upper()} that torch can use "
            f"(torch {_torch_build()}); train on the CPU with trainer=cpu (the default), or run on a machine with one"
        )
    count = present[0].auto_device_count()
    if isinstance(devices, int) and devices > count:
        raise PreflightError(
            f"trainer.devices={devices} but this machine has {count} {accelerator.upper()} device(s); "
            f"use trainer.devices={count} or fewer (-1: all of them)"
        )


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): elsewhere torch emulates
    bf16 and a bf16 run is slower than fp32 (docs/performance.md)."""
    import torch

    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def check_cpu_precision(trainer: DictConfig) -> str | None:
    """A warning for bf16 training on a CPU without bf16 instructions (it still runs, slowly); None otherwise."""
    precision, accelerator = str(trainer.get("precision") or ""), trainer.get("accelerator", "auto")
    if not precision.startswith("bf16") or accelerator not in ("cpu", "auto") or cpu_has_bf16():
        return None
    if accelerator == "auto":
        import torch

        if torch.cuda.is_available():
            return None
    return (
        f"trainer.precision={precision} on a CPU without bf16 instructions (AVX512-BF16 or AMX): torch emulates "
        "them, so this run will be slower than with the default fp32 (trainer.precision=null)"
    )


def _torch_build() -> str:
    import torch

    return f"{torch.__version__}, " + (f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build")


def vocab_bound(data: DictConfig) -> int:
    """The largest vocabulary data.* can give, known before any text is read."""
    from ..data.tokenizers import SPECIALS

    return data.n_symbols + len(SPECIALS) if data.source == "synthetic" else max(data.vocab_size, len(SPECIALS))


def parameter_count(cfg: DictConfig) -> int:
    """Parameters of the model `cfg` describes, counted on the meta device: nothing is allocated."""
    import torch

    from ..config import model_config
    from ..model import Transformer

    vocab = vocab_bound(cfg.data)
    with torch.device("meta"):
        return Transformer(model_config(cfg, vocab, vocab)).num_parameters()


def machine_memory(trainer: DictConfig) -> tuple[int, str]:
    """(bytes, what) of the memory the model will live in: the first GPU's, or the machine's RAM
    (the container's cgroup limit when that is lower)."""
    import torch

    if trainer.get("accelerator") in ("gpu", "cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return props.total_memory, f"the GPU ({props.name})"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        limit = "max"
    if limit.isdigit() and int(limit) < total:
        return int(limit), "this container (its cgroup limit)"
    return total, "this machine"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.1f} {unit}"
        n /= 1024


def check_model_memory(cfg: DictConfig, memory: tuple[int, str] | None = None) -> None:
    """The model's training state (weights, gradients, Adam's two moments) fits the memory it will
    live in; said before the model is built, instead of an allocator's traceback."""
    try:
        params = parameter_count(cfg)
    except (NotImplementedError, RuntimeError):  # a part that cannot be built on the meta device
        return  # the real build follows, and train.build_module reports running out of memory there
    precision = str(cfg.trainer.get("precision") or "32")
    width = 8 if precision.startswith("64") else 2 if precision in ("16-true", "bf16-true") else 4
    need = params * width * TRAINING_COPIES
    have, what = memory or machine_memory(cfg.trainer)
    if need > have:
        raise PreflightError(
            f"the model does not fit in the memory of {what}: model.* describes {params:,} parameters, and "
            f"training them needs about {_size(need)} (weights, gradients and Adam's two moments, before "
            f"activations), but {what} has {_size(have)}; make it smaller (model.d_model={cfg.model.d_model}, "
            f"model.d_ff={cfg.model.d_ff}, model.encoder_layers / decoder_layers, data.vocab_size)"
        )


def check_environment(cfg: DictConfig) -> None:
    """What config values alone cannot tell: the hardware is there and the model fits in it."""
    check_accelerator(cfg.trainer)
    if warning := check_cpu_precision(cfg.trainer):
        log.warning(warning)
    check_model_memory(cfg)


def check_before_fit(out_dir: Path, module) -> None:
    """Disk room for the checkpoints this model will write."""
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    check_writable(out_dir, weights * COPIES_PER_CHECKPOINT * CHECKPOINT_FILES)
