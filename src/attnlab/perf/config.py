"""The `attnlab-bench` config schema (conf/bench.yaml): an unknown key or a wrong type fails at
composition, naming the key; `check` rejects impossible values before anything is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from ..config import ModelSchema, OptimSchema
from ..errors import ConfigError

SYSTEM_NAMES = ("attnlab", "attnlab-bf16", "torch", "marian")
DEFAULT_SYSTEMS = ("attnlab", "torch", "marian")


@dataclass
class RealSchema:
    """`real.*`: decode a real test set with a trained checkpoint (attnlab/perf/real.py)."""

    ckpt: str | None = None  # given: the real-data part runs instead of the synthetic one
    average_last: int = 0
    split: str = "test"  # the checkpoint run's own test split (its data config), or any test set's name
    src_file: str | None = None  # or a source/reference pair of one sentence a line
    ref_file: str | None = None
    limit: int | None = None  # the first N sentences only
    systems: list = field(default_factory=lambda: ["attnlab", "attnlab+compile", "attnlab-bf16", "attnlab-int8",
                                                   "marian", "ctranslate2", "ctranslate2-int8"])  # fmt: skip
    strategies: list = field(default_factory=lambda: ["greedy", "beam"])
    beam_size: int = 4
    batch_size: int = 64
    max_len: int = 128  # output tokens at most (EOS included), the same for every system
    warmup: int = 1
    rounds: int = 3
    bleu_tolerance: float = 0.1  # attnlab and HF decode the same model: their BLEU must agree this closely


@dataclass
class BenchSchema:
    model: ModelSchema = field(default_factory=ModelSchema)
    optim: OptimSchema = field(default_factory=OptimSchema)
    paths: Any = MISSING
    vocab_size: int = 8000
    batch_size: int = 64
    src_len: int = 24
    tgt_len: int = 24
    decode_len: int = 24
    beam_size: int = 4
    systems: list = field(default_factory=lambda: list(DEFAULT_SYSTEMS))
    warmup: int = 2
    repeats: int = 5
    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = None
    compile: bool = False
    compile_decode: bool = False
    lightning: bool = True
    memory: bool = True
    seed: int = 0
    output: str | None = None
    task_name: str = "bench"
    real: RealSchema = field(default_factory=RealSchema)


ConfigStore.instance().store(name="attnlab_bench_schema", node=BenchSchema)


def check(cfg) -> None:
    """Values the schema's types cannot rule out."""
    unknown = [s for s in cfg.systems if s not in SYSTEM_NAMES]
    if unknown or "attnlab" not in cfg.systems:
        raise ConfigError(f"systems={list(cfg.systems)} must include attnlab and name only {list(SYSTEM_NAMES)}")
    if cfg.precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision={cfg.precision!r} is not one of ['fp32', 'bf16']")
    if cfg.precision == "bf16" and "attnlab-bf16" in cfg.systems:
        raise ConfigError("attnlab-bf16 pairs bf16 with fp32 systems: with precision=bf16 every system is bf16; "
                          "drop it from systems, or keep precision=fp32")  # fmt: skip
    if cfg.device not in ("cpu", "cuda"):
        raise ConfigError(f"device={cfg.device!r} is not one of ['cpu', 'cuda']")
    for key in ("batch_size", "src_len", "tgt_len", "decode_len", "beam_size", "repeats"):
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[key]}")
    if cfg.warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {cfg.warmup}")
    longest = max(cfg.src_len, cfg.tgt_len, cfg.decode_len + 1)
    if longest > cfg.model.max_len:
        raise ConfigError(f"model.max_len={cfg.model.max_len} is shorter than the longest sequence ({longest})")
