"""Structured-config schema for `conf/train.yaml`: Hydra merges every config group into
these dataclasses, so an unknown key or a wrong type fails at composition, naming the key.
Values (allowed choices, impossible combinations) are checked by `validate` before training.
"""

from __future__ import annotations

import math
import secrets
import typing
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Literal

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from .data.multi30k import check_selection
from .data.synthetic import TASKS
from .decoding.config import INFERENCE_ONLY, DecodeConfig
from .errors import ConfigError
from .model import TransformerConfig
from .suggest import ALIASES, did_you_mean
from .training.schedule import SCHEDULES

# numpy's legacy seeding (which Lightning's seed_everything drives) accepts 0 .. 2**32-1.
MAX_SEED = 2**32 - 1
# Lightning's accelerator names; "gpu" picks CUDA or Apple's MPS.
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


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


# decode.*: attnlab.decoding.DecodeConfig's keys and defaults, less those only eval and translate take.
DecodeSchema = _schema_from(DecodeConfig, INFERENCE_ONLY)


# eval_protocol.checkpoint: which weights give a run's own test score (attnlab.protocol).
PROTOCOL_CHECKPOINTS = ("best", "last", "average_last")


@dataclass
class EvalProtocolSchema:
    """How a run's own test score is made, once and the same way for every run it is compared with.
    Decoding comes from `decode.*`; `attnlab-eval` with the same weights gives the same scores."""

    # best: callbacks.model_checkpoint's best (its monitor, val/loss by default); last: checkpoints/last.ckpt;
    # average_last: the mean weights of the last `average_last` checkpoints in checkpoints/ (the paper's 5).
    checkpoint: str = "best"
    average_last: int = 5
    # null: the data's test split; or split names, e.g. [test_2016_flickr, test_2017_flickr] for data=multi30k.
    # The first gives test/bleu, test/chrf, ...; each further one test/<name>/bleu, ...
    test_sets: list[str] | None = None
    # attnlab-eval's default: sentences are batched by length, so the same batch size decodes the same.
    batch_size: int = 64


@dataclass
class PaperScaleSchema:
    """How a run that is written in a paper's numbers (conf/table3/) is scaled to this machine: widths
    (d_model, d_ff, d_head), depths (layers) and training steps are multiplied by these factors."""

    width: float = 1.0
    depth: float = 1.0
    steps: float = 1.0


@dataclass
class TrainSchema:
    model: ModelSchema = field(default_factory=ModelSchema)
    data: DataSchema = field(default_factory=DataSchema)
    optim: OptimSchema = field(default_factory=OptimSchema)
    decode: DecodeSchema = field(default_factory=DecodeSchema)
    paper_scale: PaperScaleSchema = field(default_factory=PaperScaleSchema)
    eval_protocol: EvalProtocolSchema = field(default_factory=EvalProtocolSchema)
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
    # Continue the newest run with the same overrides from its checkpoints/last.ckpt (attnlab.training.resume).
    resume: bool = False
    show_examples: int = 5
    optimized_metric: str = "val/loss"
    # torch intra-op threads per job (null: torch's default); parallel sweeps keep jobs x threads <= cores.
    threads: int | None = None


_PROCESS_UID = secrets.token_hex(3)
# Run directories end in this per-process id, so two runs started in the same second never collide.
# Cached, so launcher worker processes (joblib, submitit) resolve the sweep directory of the process
# that started the sweep (Hydra copies the resolver cache into every job's config).
# ${attnlab.scaled:512,${paper_scale.width}}: a paper's size at this run's scale (at least 1), so Table 3's
# rows are written once, in the paper's own numbers, for every scale.
OmegaConf.register_new_resolver(
    "attnlab.scaled", lambda value, factor: max(1, round(float(value) * float(factor))), replace=True
)
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


def decode_config(cfg: DictConfig) -> DecodeConfig:
    """DecodeConfig from `decode.*`, checked by its own rules (ConfigErrors naming the key)."""
    return DecodeConfig.from_dict(OmegaConf.to_container(cfg.decode, resolve=True))


def check_known_keys(cfg: DictConfig) -> None:
    """A key added with `+` (`+data.batch_size=64`) passes composition, then nothing would read it."""
    for group, schema in (
        ("model", ModelSchema),
        ("data", DataSchema),
        ("optim", OptimSchema),
        ("decode", DecodeSchema),
        ("eval_protocol", EvalProtocolSchema),
    ):
        known = [f.name for f in fields(schema)]
        for key in cfg[group]:
            if key not in known:
                alias = ALIASES.get(str(key))
                best = did_you_mean(str(key), known)
                hint = f"did you mean {alias}; " if alias else f"did you mean {group}.{best}? " if best else ""
                raise ConfigError(
                    f"{group}.{key} is not a config key; {hint}valid keys under {group}: {', '.join(known)}"
                )


def validate(cfg: DictConfig) -> None:
    """Everything that can be checked before data is read or a model is built."""
    check_known_keys(cfg)
    model_config(cfg)
    _choice("optim.schedule", cfg.optim.schedule, SCHEDULES)
    decode_config(cfg)
    _choice("data.source", cfg.data.source, ("synthetic", "parallel", "multi30k"))
    _choice("data.tokenizer", cfg.data.tokenizer, ("words", "sentencepiece"))
    _choice("data.spm_model_type", cfg.data.spm_model_type, ("bpe", "unigram"))
    if cfg.data.source != "synthetic" and not cfg.data.joint_vocab and cfg.model.tie_embeddings == "all":
        raise ConfigError(
            "model.tie_embeddings=all shares one embedding between source and target, which needs "
            "data.joint_vocab=true (or use model.tie_embeddings=decoder)"
        )
    if cfg.optim.warmup_steps < 0 or cfg.optim.lr <= 0:
        raise ConfigError("optim.lr must be > 0 and optim.warmup_steps >= 0")
    if not 0.0 <= cfg.optim.label_smoothing < 1.0:
        raise ConfigError(f"optim.label_smoothing must be in [0, 1), got {cfg.optim.label_smoothing}")
    if not (_is_int(cfg.seed) and 0 <= cfg.seed <= MAX_SEED):
        raise ConfigError(f"seed={cfg.seed!r} is not a valid seed: use an integer from 0 to {MAX_SEED} (2**32-1)")
    check_data(cfg.data, cfg.test)
    longest = cfg.data.max_len + 1 if cfg.data.source == "synthetic" else cfg.data.max_sentence_len
    if longest > cfg.model.max_len:
        raise ConfigError(
            f"model.max_len={cfg.model.max_len} is shorter than the longest training sequence "
            f"({longest} tokens, from data.max_len / data.max_sentence_len); raise model.max_len"
        )
    check_trainer(cfg.trainer, cfg.optim.schedule)
    check_eval_protocol(cfg)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _at_least(key: str, value: Any, low: int, why: str) -> None:
    if not (_is_int(value) and value >= low):
        raise ConfigError(f"{key}={value!r} is not allowed: it must be an integer >= {low} ({why})")


def check_data(data: DictConfig, test: bool = True) -> None:
    """data.* values that would otherwise fail deep inside the generator or the batching."""
    _at_least("data.max_tokens", data.max_tokens, 1, "padded tokens per batch")
    if data.source != "synthetic":
        _at_least("data.max_sentence_len", data.max_sentence_len, 1, "longer training pairs are left out")
        return
    _choice("data.task", data.task, TASKS)
    _at_least("data.n_symbols", data.n_symbols, 1, "the size of the synthetic alphabet")
    if not (_is_int(data.min_len) and _is_int(data.max_len) and 1 <= data.min_len <= data.max_len):
        raise ConfigError(
            f"data.min_len={data.min_len!r} and data.max_len={data.max_len!r} are not allowed: "
            "need 1 <= data.min_len <= data.max_len (the range of synthetic sequence lengths)"
        )
    for split in ("train", "val") + (("test",) if test else ()):
        _at_least(f"data.{split}_size", data[f"{split}_size"], 1, f"the number of generated {split} pairs")
    # A batch holds at least one pair, and a pair of data.max_len symbols is max_len + 1 tokens (EOS).
    if data.max_tokens < data.max_len + 1:
        raise ConfigError(
            f"data.max_tokens={data.max_tokens} cannot hold one pair of the longest length data.max_len="
            f"{data.max_len} allows ({data.max_len + 1} tokens with EOS); raise data.max_tokens to at least "
            f"{data.max_len + 1}"
        )


def check_eval_protocol(cfg: DictConfig) -> None:
    """eval_protocol.* values, and an average the run's callbacks cannot feed (found after training,
    that would lose the run's test score)."""
    p = cfg.eval_protocol
    _choice("eval_protocol.checkpoint", p.checkpoint, PROTOCOL_CHECKPOINTS)
    _at_least("eval_protocol.average_last", p.average_last, 1, "checkpoints to average")
    _at_least("eval_protocol.batch_size", p.batch_size, 1, "sentences decoded together")
    names = list(p.test_sets) if p.test_sets is not None else ["test"]
    if not names or not all(isinstance(n, str) and n.strip() for n in names) or len(set(names)) < len(names):
        raise ConfigError(
            f"eval_protocol.test_sets={names!r}: give null (the data's test split) or a list of distinct "
            "split names, e.g. [test_2016_flickr,test_2017_flickr]"
        )
    if cfg.data.source == "synthetic" and not set(names) <= {"train", "val", "test"}:
        raise ConfigError(f"eval_protocol.test_sets={names!r}: synthetic data has the splits train, val and test only")
    if cfg.data.source == "multi30k":
        for name in names:
            try:
                check_selection({"test": name} if name != "test" else {}, cfg.data.src_lang, cfg.data.tgt_lang)
            except ConfigError as err:
                raise ConfigError(f"eval_protocol.test_sets has {err}".replace("data.splits.test=", "")) from None
    if p.checkpoint != "average_last" or not cfg.test or cfg.trainer.get("fast_dev_run"):
        return
    kept, how = checkpoints_kept(cfg)
    if p.average_last > kept:
        raise ConfigError(
            f"eval_protocol.checkpoint=average_last averages the last {p.average_last} checkpoints, but this "
            f"run keeps at most {kept} ({how}); use callbacks=keep_last with callbacks.keep_last.save_top_k >= "
            f"{p.average_last} and enough epochs or steps to save them, or "
            + (f"eval_protocol.average_last={kept}" if kept else "eval_protocol.checkpoint=best")
        )


def checkpoints_kept(cfg: DictConfig) -> tuple[int, str]:
    """The most checkpoints of distinct steps the callbacks can leave (an upper bound: max_time or early
    stopping may end training sooner), and how that was counted."""
    epochs, steps = cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps", -1)
    kept, parts, save_last = 0, [], False
    for name, node in (cfg.callbacks or {}).items():
        if node is None or not str(node.get("_target_", "")).endswith("ModelCheckpoint"):
            continue
        save_last = save_last or bool(node.get("save_last"))
        if node.get("monitor") != "step":  # keeps the best by a metric, or only last.ckpt
            continue
        top_k = node.get("save_top_k", 1)
        keep = math.inf if top_k == -1 else top_k
        if node.get("every_n_train_steps") and _is_int(steps) and steps > 0:
            keep = min(keep, steps // node.every_n_train_steps)
        elif node.get("every_n_epochs") and not node.get("every_n_train_steps") and _is_int(epochs) and epochs > 0:
            keep = min(keep, epochs // node.every_n_epochs)
        kept += keep
        parts.append(f"callbacks.{name}: {keep if keep != math.inf else 'all'}")
    if not parts:
        return (1, "only last.ckpt") if save_last else (0, "no callback keeps the last checkpoints")
    return kept, ", ".join(parts)


def _precisions() -> list:
    from lightning.fabric.connector import _PRECISION_INPUT

    return [value for kind in typing.get_args(_PRECISION_INPUT) for value in typing.get_args(kind)]


def check_trainer(trainer: DictConfig, schedule: str = "inverse_sqrt") -> None:
    """The Lightning Trainer arguments users set most, checked before anything is built (Lightning
    itself would only refuse them deep inside fit, or divide by zero)."""
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    if epochs is not None and not (_is_int(epochs) and epochs >= -1):
        raise ConfigError(
            f"trainer.max_epochs={epochs!r} is not allowed: use a number of epochs >= 1, or -1 to train "
            "until stopped (trainer.max_steps, trainer.max_time, early stopping or Ctrl-C)"
        )
    if not (_is_int(steps) and steps >= -1):
        raise ConfigError(f"trainer.max_steps={steps!r} is not allowed: use a number of steps >= 1, or -1 for no limit")
    for key, value in (("max_epochs", epochs), ("max_steps", steps)):
        if value == 0 and not trainer.get("fast_dev_run"):
            raise ConfigError(
                f"trainer.{key}=0 would train nothing and save an untrained model; use a value >= 1 "
                "(or -1 for no limit); to score an existing checkpoint use attnlab-eval"
            )
    if epochs == -1 and steps == -1 and schedule == "cosine":
        raise ConfigError(
            "optim.schedule=cosine decays to zero at the last step, but trainer.max_epochs=-1 (until stopped) "
            "has no last step: set trainer.max_steps=N, a number of epochs, or another optim.schedule"
        )
    _at_least("trainer.accumulate_grad_batches", trainer.get("accumulate_grad_batches", 1), 1, "batches per step")
    devices = trainer.get("devices", "auto")
    if not _devices_ok(devices):
        raise ConfigError(
            f"trainer.devices={devices!r} is not allowed: use a number of devices >= 1, -1 (all of them), "
            "auto, or a list of device indices such as [0,1]"
        )
    precision = trainer.get("precision")
    if precision is not None and precision not in _precisions():
        allowed = ", ".join(dict.fromkeys(str(p) for p in _precisions()))  # 16 and "16" read the same
        raise ConfigError(f"trainer.precision={precision!r} is not one of: {allowed} (or null for 32-true)")
    accelerator = trainer.get("accelerator", "auto")
    if isinstance(accelerator, str) and accelerator not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={accelerator!r} is not one of {list(ACCELERATORS)}")


def _devices_ok(devices: Any) -> bool:
    if isinstance(devices, str):
        if devices.strip() == "auto":
            return True
        parts = [p.strip() for p in devices.split(",") if p.strip()]  # Lightning's "2", "-1", "0,1"
        return (
            bool(parts)
            and all(p.lstrip("-").isdigit() for p in parts)
            and _devices_ok(int(parts[0]) if len(parts) == 1 else [int(p) for p in parts])
        )
    if _is_int(devices):
        return devices >= 1 or devices == -1
    if isinstance(devices, (list, tuple, ListConfig)):
        return len(devices) > 0 and all(_is_int(d) and d >= 0 for d in devices)
    return False
