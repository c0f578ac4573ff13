"""Structured-config schema for `conf/train.yaml`: Hydra merges every config group into
these dataclasses, so an unknown key or a wrong type fails at composition, naming the key.
Values (allowed choices, impossible combinations) are checked by `validate` before training.
"""

from __future__ import annotations

import secrets
import typing
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Literal

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .model import TransformerConfig
from .schedule import SCHEDULES


class ConfigError(ValueError):
    """A configuration a user wrote that cannot work; the message names the key."""


def _schema_from(cls, exclude: set[str]):
    """An OmegaConf-friendly copy of a dataclass: Literal[...] fields become str
    (OmegaConf cannot type-check Literal; `validate` checks the allowed values)."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in fields(cls):
        if f.name in exclude:
            continue
        kind = str if typing.get_origin(hints[f.name]) is Literal else hints[f.name]
        specs.append((f.name, kind, field(default=f.default)))
    return make_dataclass(f"{cls.__name__}Schema", specs)


ModelSchema = _schema_from(TransformerConfig, {"src_vocab_size", "tgt_vocab_size", "pad_id", "bos_id", "eos_id"})


@dataclass
class DataSchema:
    source: str = "synthetic"
    task: str = "reverse"
    n_symbols: int = 20
    min_len: int = 4
    max_len: int = 12
    train_size: int = 20000
    val_size: int = 500
    test_size: int = 500
    root: str | None = None
    src_lang: str = "src"
    tgt_lang: str = "tgt"
    splits: dict = field(default_factory=lambda: {"train": "train", "val": "val", "test": "test"})
    vocab_size: int = 8000
    # Real text: "words" (whitespace) or "sentencepiece" (subwords, cached under cache_dir).
    tokenizer: str = "words"
    spm_model_type: str = "bpe"
    joint_vocab: bool = False
    cache_dir: str | None = None
    max_sentence_len: int = 128
    max_tokens: int = 4096
    num_workers: int = 0


@dataclass
class OptimSchema:
    schedule: str = "inverse_sqrt"
    lr: float = 1e-3
    lr_scale: float = 1.0
    warmup_steps: int = 4000
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-9
    weight_decay: float = 0.0
    label_smoothing: float = 0.1


@dataclass
class DecodeSchema:
    strategy: str = "greedy"
    beam_size: int = 4
    n_best: int = 1
    length_penalty: float = 0.6
    max_len_a: float = 1.0
    max_len_b: int = 50
    compile: bool = False


@dataclass
class TrainSchema:
    model: ModelSchema = field(default_factory=ModelSchema)
    data: DataSchema = field(default_factory=DataSchema)
    optim: OptimSchema = field(default_factory=OptimSchema)
    decode: DecodeSchema = field(default_factory=DecodeSchema)
    trainer: Any = MISSING
    logger: Any = None
    callbacks: Any = None
    paths: Any = MISSING
    seed: int = 0
    task_name: str = "train"
    val_decode_size: int = 200
    val_decode_every: int = 1
    test: bool = True
    ckpt_path: str | None = None
    # Continue the newest run with the same overrides from its checkpoints/last.ckpt (attnlab.resume).
    resume: bool = False
    show_examples: int = 5
    optimized_metric: str = "val/loss"
    # torch intra-op threads per job (null: torch's default); parallel sweeps keep jobs x threads <= cores.
    threads: int | None = None


_PROCESS_UID = secrets.token_hex(3)
# Run directories end in this per-process id, so two runs started in the same second never collide.
# Cached, so launcher worker processes (joblib, submitit) resolve the sweep directory of the process
# that started the sweep (Hydra copies the resolver cache into every job's config).
OmegaConf.register_new_resolver("attnlab.uid", lambda: _PROCESS_UID, replace=True, use_cache=True)
ConfigStore.instance().store(name="attnlab_schema", node=TrainSchema)


def _choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}")


def model_config(cfg: DictConfig, src_vocab_size: int = 1, tgt_vocab_size: int = 1) -> TransformerConfig:
    """TransformerConfig from `model.*`; its own checks become ConfigErrors naming the key."""
    try:
        return TransformerConfig(
            **OmegaConf.to_container(cfg.model, resolve=True),
            src_vocab_size=src_vocab_size,
            tgt_vocab_size=tgt_vocab_size,
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None


def validate(cfg: DictConfig) -> None:
    """Everything that can be checked before data is read or a model is built."""
    model_config(cfg)
    _choice("optim.schedule", cfg.optim.schedule, SCHEDULES)
    _choice("decode.strategy", cfg.decode.strategy, ("greedy", "beam"))
    _choice("data.source", cfg.data.source, ("synthetic", "parallel", "multi30k"))
    _choice("data.tokenizer", cfg.data.tokenizer, ("words", "sentencepiece"))
    _choice("data.spm_model_type", cfg.data.spm_model_type, ("bpe", "unigram"))
    if cfg.data.source != "synthetic" and not cfg.data.joint_vocab and cfg.model.tie_embeddings == "all":
        raise ConfigError(
            "model.tie_embeddings=all shares one embedding between source and target, which needs "
            "data.joint_vocab=true (or use model.tie_embeddings=decoder)"
        )
    if cfg.decode.beam_size < 1:
        raise ConfigError(f"decode.beam_size must be >= 1, got {cfg.decode.beam_size}")
    if not 1 <= cfg.decode.n_best <= cfg.decode.beam_size:
        raise ConfigError(
            f"decode.n_best must be in [1, decode.beam_size={cfg.decode.beam_size}], got {cfg.decode.n_best}"
        )
    if cfg.optim.warmup_steps < 0 or cfg.optim.lr <= 0:
        raise ConfigError("optim.lr must be > 0 and optim.warmup_steps >= 0")
    if not 0.0 <= cfg.optim.label_smoothing < 1.0:
        raise ConfigError(f"optim.label_smoothing must be in [0, 1), got {cfg.optim.label_smoothing}")
    longest = cfg.data.max_len + 1 if cfg.data.source == "synthetic" else cfg.data.max_sentence_len
    if longest > cfg.model.max_len:
        raise ConfigError(
            f"model.max_len={cfg.model.max_len} is shorter than the longest training sequence "
            f"({longest} tokens, from data.max_len / data.max_sentence_len); raise model.max_len"
        )
