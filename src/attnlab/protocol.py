"""A run's own test score, made one declared way: `eval_protocol.*` (conf/train.yaml) names the
weights (the best checkpoint, last.ckpt, or the average of the last N checkpoints) and the test
sets; `decode.*` the decoding. Every run of a sweep is scored the same way, so its report compares
like with like.

It scores with attnlab-eval's own functions (`evaluate.score`, `checkpoint.load_for_inference`),
so `attnlab-eval ckpt=<run>/checkpoints average_last=N split=<test set>` gives the same numbers.
It writes what a report needs to compare runs sentence by sentence (paired bootstrap):
`<run>/hyps/<test set>.txt`, one detokenised hypothesis per source line, the references they were
scored against (`<run>/refs/<test set>.txt`, after the corpus cleaning, so a report needs neither
the corpus nor its config to re-score them), and `<run>/protocol.json`, which result.json copies as
its `protocol` (with the model's own shape, vocabulary sizes included, for the report's FLOPs).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from .checkpoint import TrainedModel, load_for_inference
from .decoding import DecodeConfig
from .errors import CheckpointError, ConfigError, CorpusError
from .evaluate import read_split, score, write_hypotheses
from .training.jobs import PROTOCOL_FILE, last_checkpoint
from .training.metrics import signatures
from .translate import run_decode_settings

log = logging.getLogger("attnlab")
HYPS_DIR = "hyps"
REFS_DIR = "refs"
# evaluate.score's names -> the run's metric names. test/loss is label-smoothed like val/loss and
# train/loss; test/nll is attnlab-eval's `loss` and test/ppl its `ppl`.
RUN_KEYS = {"bleu": "bleu", "chrf": "chrf", "exact_match": "exact_match", "label_smoothed_loss": "loss",
            "loss": "nll", "ppl": "ppl", "token_acc": "token_acc"}  # fmt: skip
RECORDED = ("bleu", "chrf", "exact_match", "loss", "ppl", "label_smoothed_loss", "token_acc", "sentences")


def test_set_names(cfg: DictConfig) -> list[str]:
    """The protocol's test sets; "test" is the data's own test split (data.splits.test)."""
    names = cfg.eval_protocol.test_sets
    return list(names) if names is not None else ["test"]


def read_test_sets(cfg: DictConfig) -> dict[str, tuple[list[str], list[str]]]:
    """Every test set's sentences, read before training so that a missing file ends the run before it
    trains rather than after."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    texts = {}
    for name in test_set_names(cfg):
        src, ref = read_split(data, cfg.seed, name)
        if not src:
            raise CorpusError(f"eval_protocol.test_sets: the test set {name!r} is empty")
        texts[name] = (src, ref)
    return texts


def protocol_weights(cfg: DictConfig, trainer: L.Trainer, module, scratch: Path) -> TrainedModel:
    """The weights the protocol names, loaded the way attnlab-eval loads them."""
    protocol = cfg.eval_protocol
    folder = last_checkpoint(cfg).parent
    if protocol.checkpoint == "average_last":
        try:
            return load_for_inference(folder, protocol.average_last, scratch)
        except CheckpointError as err:  # training ended before it saved enough checkpoints
            raise ConfigError(
                f"eval_protocol.checkpoint=average_last: {err}. The checkpoints are kept: score them with "
                f"attnlab-eval ckpt={folder} average_last=N"
            ) from None
    if protocol.checkpoint == "best":
        callback = trainer.checkpoint_callback
        path = callback.best_model_path if callback is not None else ""
    else:
        path = str(last_checkpoint(cfg)) if last_checkpoint(cfg).is_file() else ""
    if path:
        return load_for_inference(path)
    log.warning("eval_protocol.checkpoint=%s: the run saved no such checkpoint; testing the final weights in memory",
                protocol.checkpoint)  # fmt: skip
    return TrainedModel(module.model.eval(), module.src_tokenizer, module.tgt_tokenizer, dict(module.hparams), Path(),
                        trainer.global_step)  # fmt: skip


def _relative(path: Path, run_dir: Path) -> str:
    """Inside the run directory a path is recorded relative to it, so a moved run still reads right."""
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def run_protocol(cfg: DictConfig, trainer: L.Trainer, module, texts: dict, run_dir: Path) -> dict[str, float]:
    """Score the protocol's weights on every test set; returns the run's test metrics (the first test
    set as test/<metric>, each further one as test/<name>/<metric>) and writes hyps/ and protocol.json."""
    protocol = cfg.eval_protocol
    with tempfile.TemporaryDirectory(prefix="attnlab-average-") as scratch:  # an average is not kept
        trained = protocol_weights(cfg, trainer, module, Path(scratch))
    # What attnlab-eval decodes with for this checkpoint when no decode.* is given on its command line.
    settings, _ = run_decode_settings(cfg.decode, trained.hparams, given=set())
    settings = settings.replace(n_best=1)
    trained.model.to(trainer.strategy.root_device)
    metrics: dict[str, float] = {}
    sets = {}
    for i, (name, (src, ref)) in enumerate(texts.items()):
        scores, hyps = score(trained, src, ref, settings, protocol.batch_size, name)
        hyp_path = write_hypotheses(run_dir / HYPS_DIR / f"{name}.txt", hyps)
        ref_path = write_hypotheses(run_dir / REFS_DIR / f"{name}.txt", ref)
        prefix = "test/" if i == 0 else f"test/{name}/"
        metrics.update({prefix + ours: float(scores[theirs]) for theirs, ours in RUN_KEYS.items()})
        sets[name] = {**{k: scores[k] for k in RECORDED}, "metrics_prefix": prefix,
                      "hypotheses": _relative(hyp_path, run_dir),
                      "references": _relative(ref_path, run_dir)}  # fmt: skip
        log.info("test set %s (%d sentences): BLEU %.2f, chrF %.2f", name, len(hyps), scores["bleu"], scores["chrf"])
    write_record(cfg, trainer, trained, settings, sets, run_dir)
    return metrics


def write_record(cfg, trainer, trained: TrainedModel, settings: DecodeConfig, sets: dict, run_dir: Path) -> dict:
    protocol = cfg.eval_protocol
    averaged = protocol.checkpoint == "average_last"
    in_memory = trained.path == Path()
    callback = trainer.checkpoint_callback
    first = next(iter(sets))
    if in_memory:
        command = None
    else:
        ckpt = last_checkpoint(cfg).parent if averaged else trained.path
        command = f"attnlab-eval ckpt={ckpt}" + (f" average_last={protocol.average_last}" if averaged else "")
        command += f" split={first} batch_size={protocol.batch_size}"
    record = {
        "checkpoint": protocol.checkpoint,
        "average_last": protocol.average_last if averaged else None,
        # what "best" means in this run: the model_checkpoint callback's monitor and mode
        "monitor": getattr(callback, "monitor", None) if protocol.checkpoint == "best" else None,
        "mode": getattr(callback, "mode", None) if protocol.checkpoint == "best" else None,
        "weights": "final weights in memory" if in_memory else _relative(trained.path, run_dir),
        "averaged_from": [_relative(p, run_dir) for p in trained.averaged_from],
        "global_step": trained.global_step,
        "test_sets": sets,
        "decode": settings.to_dict(),
        "batch_size": protocol.batch_size,
        "signatures": signatures(),
        "eval_command": command,
        "model": trained.model.config.to_dict(),
    }
    (run_dir / PROTOCOL_FILE).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    return record


def log_test_metrics(loggers: list, metrics: dict[str, float], step: int) -> None:
    """Into the run's CSV / TensorBoard / W&B logs, where trainer.test used to log them."""
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        logger.save()
