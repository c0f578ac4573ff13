"""Trained models from checkpoint files: safe loading, clear refusals, and averaging.

Checkpoints are read with `torch.load(weights_only=True)`: a file from elsewhere can hold
tensors and plain containers only, never code to run. Every way a file can be wrong
(missing, truncated, not a checkpoint, another attnlab format, a config that does not
match the weights) ends in one `CheckpointError` naming the file and the fix.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data.tokenizers import Tokenizer, tokenizer_from_state
from .errors import CheckpointError
from .model import Transformer, TransformerConfig

# Bump when the checkpoint layout changes (keys, hyper-parameters, tokenizer states).
CHECKPOINT_FORMAT = 1


@dataclass
class TrainedModel:
    """A model in eval mode with the tokenizers it was trained with."""

    model: Transformer
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    hparams: dict
    path: Path
    global_step: int
    # The checkpoints an averaged model was made from, oldest first (empty for one checkpoint).
    averaged_from: list[Path] = field(default_factory=list)


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, after checking it is a readable attnlab checkpoint of this format."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.ckpt"))
        hint = f" (it holds {', '.join(found)})" if found else ""
        raise CheckpointError(f"{path} is a directory; pass one .ckpt file inside it{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only" in str(err):
            raise CheckpointError(
                f"{path} holds Python objects other than tensors and plain containers; attnlab loads "
                "checkpoints with torch.load(weights_only=True) and refuses to run code from a file"
            ) from None
        raise CheckpointError(f"{path} is not a checkpoint file, or it is truncated or corrupt ({err})") from None
    except Exception as err:  # torch.load raises whatever its unpickler meets: EOFError, IndexError, ...
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path} is not a checkpoint file, or it is truncated or corrupt ({first})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict); pass a .ckpt from attnlab-train")
    fmt = ckpt.get("attnlab_format")
    if fmt is None:
        raise CheckpointError(f"{path} was not written by attnlab-train (no attnlab_format key)")
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {fmt}, but this attnlab reads format {CHECKPOINT_FORMAT}; "
            "evaluate it with the attnlab version that trained it"
        )
    return ckpt


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the model from the checkpoint's own config and weights; no config file needed."""
    ckpt = read_checkpoint(path)
    hparams = ckpt.get("hyper_parameters") or {}
    try:
        config = TransformerConfig(**hparams["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its model config is missing or not understood ({err})") from None
    model = Transformer(config)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing or unexpected keys, or a tensor of another shape
        detail = "; ".join(line.strip() for line in str(err).splitlines()[1:3])
        detail = detail if len(detail) <= 300 else detail[:300] + " ..."
        raise CheckpointError(f"{path}: the weights do not fit the model its config describes ({detail})") from None
    try:
        tokenizers = {k: tokenizer_from_state(v) for k, v in ckpt["tokenizers"].items()}
        src_tok, tgt_tok = tokenizers["src"], tokenizers["tgt"]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: the tokenizers stored in it are missing or not understood ({err})") from None
    averaged_from = [Path(p) for p in ckpt.get("averaged_from", [])]
    return TrainedModel(
        model.to(device).eval(), src_tok, tgt_tok, hparams, Path(path), int(ckpt.get("global_step", 0)), averaged_from
    )


KEEP_PREFIX = "keep-"  # conf/callbacks/keep_last.yaml's file names


def last_checkpoints(directory: str | Path, n: int) -> list[Path]:
    """The n checkpoints of a run's checkpoints/ folder with the highest training steps, oldest first;
    `last.ckpt` and the epoch file of the same step count once. Where callbacks=keep_last left its
    evenly spaced `keep-*` series, only that series: the best-val checkpoint falls between its steps
    and would make the average's spacing (and so what it averages) depend on where validation peaked."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {directory}")
    paths = sorted(directory.glob(f"{KEEP_PREFIX}*.ckpt")) or sorted(directory.glob("*.ckpt"))
    by_step: dict[int, Path] = {}
    for path in paths:
        ckpt = read_checkpoint(path)
        if "averaged_from" in ckpt:  # an average carries its newest step: it would stand in for that checkpoint
            continue
        step = int(ckpt.get("global_step", 0))
        if step not in by_step or by_step[step].name == "last.ckpt":
            by_step[step] = path
    if len(by_step) < n:
        series = f"{KEEP_PREFIX}*.ckpt " if paths and paths[0].name.startswith(KEEP_PREFIX) else ""
        raise CheckpointError(
            f"{directory} holds {series}checkpoints of {len(by_step)} distinct steps, fewer than the {n} to average; "
            "train with callbacks=keep_last (it keeps the checkpoints of the last 5 epochs), or "
            f"callbacks=keep_last callbacks.keep_last.save_top_k={n} to keep the last {n}"
        )
    return [by_step[s] for s in sorted(by_step)[-n:]]


def average_checkpoints(paths: Sequence[str | Path], out_path: str | Path) -> Path:
    """Average the weights of several checkpoints of one model (Vaswani et al. 2017: the last
    5 or 20, written 10 minutes apart) into one checkpoint file that loads like any other."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    first = None
    for path in paths:
        ckpt = read_checkpoint(path)
        state = ckpt["state_dict"]
        if first is None:
            first = ckpt
            total = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
            continue
        if ckpt.get("hyper_parameters", {}).get("model") != first.get("hyper_parameters", {}).get("model"):
            raise CheckpointError(f"{path} is a different model from {paths[0]}; average checkpoints of one run")
        for k, v in state.items():
            if v.is_floating_point():
                total[k] += v.double()
    assert first is not None
    averaged = {
        k: (v / len(paths)).to(first["state_dict"][k].dtype) if v.is_floating_point() else v for k, v in total.items()
    }
    # Optimizer and loop states belong to one point of training; an average has none.
    keep = (
        "epoch",
        "global_step",
        "pytorch-lightning_version",
        "hparams_name",
        "hyper_parameters",
        "attnlab_format",
        "tokenizers",
    )
    out = {k: ckpt[k] for k in keep if k in ckpt}  # epoch and step of the newest
    out.update(state_dict=averaged, averaged_from=[str(p) for p in paths])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, out_path)
    return out_path


def load_for_inference(ckpt: str | Path, average_last: int = 0, out_dir: str | Path = ".") -> TrainedModel:
    """`ckpt` itself, or with average_last=N the average of the last N checkpoints in its
    folder (`ckpt` may then be the folder), written to out_dir/averaged.ckpt and loaded."""
    if average_last < 0:
        raise CheckpointError(f"average_last={average_last}: give 0 (use the checkpoint as it is) or N >= 1")
    if average_last == 0:
        return load_trained(ckpt)
    folder = Path(ckpt) if Path(ckpt).is_dir() else Path(ckpt).parent
    return load_trained(average_checkpoints(last_checkpoints(folder, average_last), Path(out_dir) / "averaged.ckpt"))
