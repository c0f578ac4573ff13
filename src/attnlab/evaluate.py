"""`attnlab-eval ckpt=... split=test`: BLEU, chrF, exact match, loss/perplexity and decoding speed."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table
from torch.nn.utils.rnn import pad_sequence

from . import config as _registers_resolvers  # noqa: F401  (${attnlab.uid:} in eval.yaml)
from .checkpoint import TrainedModel, load_for_inference
from .cli import explain_and_exit
from .data.datamodule import SPLITS, TranslationDataModule
from .data.text import read_lines
from .decoding import DecodeConfig
from .decoding.batch import fit_sources, translate_ids
from .errors import ConfigError, CorpusError
from .runtime import keep_freed_memory
from .training.metrics import corpus_scores, exact_match, signatures
from .translate import (
    ERRORS,
    check_batch_options,
    check_device,
    check_sentences,
    command_decode,
    describe_decoding,
    run_decode_settings,
)

log = logging.getLogger("attnlab")


def run_data_config(cfg: DictConfig) -> tuple[dict, int]:
    """The `data.*` node (and seed) to rebuild the evaluation text from: `data=...` if given,
    else the config of the training run the checkpoint belongs to."""
    if cfg.get("data"):
        return OmegaConf.to_container(cfg.data, resolve=True), cfg.seed
    ckpt = Path(to_absolute_path(cfg.ckpt))
    run_config = (ckpt if ckpt.is_dir() else ckpt.parent).parent / ".hydra" / "config.yaml"
    if not run_config.is_file():
        raise ConfigError(
            f"cannot tell which data {ckpt} was trained on ({run_config} not found); "
            "give data=... (e.g. data=reverse) or src_file=... ref_file=..."
        )
    run = OmegaConf.load(run_config)
    try:  # data.* may refer to the rest of the run's config (${model.max_len}, ${paths.data_dir})
        data = OmegaConf.to_container(run.data, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(
            f"cannot read the data config of {run_config} ({type(err).__name__}: {str(err).splitlines()[0]}); "
            "give data=... or src_file=... ref_file=..."
        ) from None
    return data, int(run.get("seed", cfg.seed))


def read_test_set(cfg: DictConfig) -> tuple[list[str], list[str]]:
    if cfg.src_file or cfg.ref_file:
        if not (cfg.src_file and cfg.ref_file):
            raise ConfigError("give both src_file=... and ref_file=... (one sentence a line, aligned)")
        src_path, ref_path = Path(to_absolute_path(cfg.src_file)), Path(to_absolute_path(cfg.ref_file))
        src, ref = check_sentences(read_lines(src_path), str(src_path)), read_lines(ref_path)
        if len(src) != len(ref):
            raise CorpusError(f"{src_path} has {len(src)} lines but {ref_path} has {len(ref)}; they must align")
    else:
        src, ref = read_split(*run_data_config(cfg), cfg.split)
    src, ref = src[: cfg.limit], ref[: cfg.limit]
    if not src:
        raise CorpusError("the test set is empty")
    return src, ref


def read_split(data: dict, seed: int, split: str) -> tuple[list[str], list[str]]:
    """The sentences of one split of a run's `data.*`: train, val, test, or, for a corpus on disk, any
    test set by its file name (`test_2017_flickr` with data=multi30k reads test_2017_flickr.{src,tgt})."""
    data = dict(data)
    if data.get("root"):
        data["root"] = to_absolute_path(data["root"])
    if split not in SPLITS:
        if data.get("source", "synthetic") == "synthetic":
            raise ConfigError(f"split={split!r} is not one of {list(SPLITS)} (the splits of synthetic data)")
        data["splits"] = {**(data.get("splits") or {}), "test": split}
        split = "test"
    return TranslationDataModule(**data, seed=seed).read_split(split)


@torch.no_grad()
def teacher_forced(trained: TrainedModel, sources: list[list[int]], references: list[str], batch_size: int):
    """Teacher-forced sums over the references, as in training: (label-smoothed loss with the run's own
    optim.label_smoothing, -log p(reference token), tokens predicted right, tokens); EOS counts."""
    model, cfg = trained.model, trained.model.config
    smoothing = float((trained.hparams.get("optim") or {}).get("label_smoothing", 0.0))
    device = next(model.parameters()).device
    targets = [trained.tgt_tokenizer.encode(r)[: cfg.max_len - 1] for r in references]
    sums = [0.0, 0.0, 0, 0]
    for start in range(0, len(sources), batch_size):
        src = [torch.tensor(s) for s in sources[start : start + batch_size]]
        tgt = targets[start : start + batch_size]
        tgt_in = [torch.tensor([cfg.bos_id] + t) for t in tgt]
        tgt_out = [torch.tensor(t + [cfg.eos_id]) for t in tgt]
        pad = lambda xs: pad_sequence(xs, batch_first=True, padding_value=cfg.pad_id).to(device)
        for i, value in enumerate(model.loss(pad(src), pad(tgt_in), pad(tgt_out), smoothing)):
            sums[i] += value.item()
    return tuple(sums)


def score(
    trained: TrainedModel, src_text: list[str], ref_text: list[str], settings: DecodeConfig, batch_size: int, what: str
) -> tuple[dict, list[str]]:
    """Decode a test set and score it: (metrics, detokenised best hypotheses, one per source line).
    attnlab-eval and a training run's own test (attnlab.protocol) both score with this, so the same
    weights, decoding and batch size give the same numbers."""
    sources = fit_sources([trained.src_tokenizer.encode(s) for s in src_text], trained.model, what)
    start = time.perf_counter()
    results = translate_ids(trained.model, sources, settings.replace(n_best=1), batch_size)
    seconds = time.perf_counter() - start
    hyp_ids = [hyps[0][0] for hyps in results]
    hyps = [trained.tgt_tokenizer.decode(ids) for ids in hyp_ids]

    smoothed, nll, correct, n_tokens = teacher_forced(trained, sources, ref_text, batch_size)
    metrics = corpus_scores(hyps, ref_text)
    metrics.update(
        exact_match=exact_match(hyps, [" ".join(r.split()) for r in ref_text]),
        loss=nll / n_tokens,  # NLL per token, no label smoothing: exp(loss) is the perplexity
        ppl=math.exp(min(nll / n_tokens, 50.0)),
        label_smoothed_loss=smoothed / n_tokens,  # what val/loss measures during training
        token_acc=correct / n_tokens,
        sentences=len(hyps),
        sentences_per_sec=len(hyps) / seconds,
        tokens_per_sec=sum(len(ids) + 1 for ids in hyp_ids) / seconds,  # output tokens, EOS included
    )
    return metrics, hyps


def write_hypotheses(path: Path, hyps: list[str]) -> Path:
    """One detokenised hypothesis a line, UTF-8, in the order of the source lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    return path


def evaluate(cfg: DictConfig) -> dict:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    check_batch_options(cfg)
    command_decode(cfg.decode)
    device = check_device(cfg.device)
    trained = load_for_inference(to_absolute_path(cfg.ckpt), cfg.average_last, out_dir)
    settings, source = run_decode_settings(cfg.decode, trained.hparams)
    settings = settings.replace(n_best=1)  # scores are of the best hypothesis
    print(f"attnlab-eval: {describe_decoding(settings, source)}", flush=True)
    trained.model.to(device)
    src_text, ref_text = read_test_set(cfg)
    metrics, hyps = score(trained, src_text, ref_text, settings, cfg.batch_size, cfg.split)
    hyp_path = write_hypotheses(out_dir / f"hypotheses.{cfg.split}.txt", hyps)
    results_json = {
        "metrics": metrics,
        "signatures": signatures(),
        "checkpoint": str(trained.path),
        "averaged_from": [str(p) for p in trained.averaged_from],
        "global_step": trained.global_step,
        "split": cfg.split if not cfg.src_file else str(cfg.src_file),
        "decode": settings.to_dict(),
        "decode_from": source,
        "hypotheses": str(hyp_path),
    }
    (out_dir / "results.json").write_text(json.dumps(results_json, indent=2))
    print_results(metrics, results_json)
    return metrics


def print_results(metrics: dict, results: dict) -> None:
    table = Table(title=f"attnlab-eval: {results['split']}", show_header=False)
    table.add_row("BLEU", f"{metrics['bleu']:.2f}")
    table.add_row("chrF", f"{metrics['chrf']:.2f}")
    table.add_row("exact match", f"{metrics['exact_match']:.4f}")
    table.add_row("loss (NLL/token)", f"{metrics['loss']:.4f}")
    table.add_row("perplexity", f"{metrics['ppl']:.2f}")
    speed = f"{rate(metrics['sentences_per_sec'])} sent/s, {rate(metrics['tokens_per_sec'])} tok/s"
    table.add_row("decoding speed", speed)
    console = Console()
    console.print(table)
    for name in ("bleu", "chrf"):
        console.print(f"{name} signature: {results['signatures'][name]}", soft_wrap=True)
    console.print(f"hypotheses: {results['hypotheses']}", soft_wrap=True)


def rate(per_second: float) -> str:
    """Three significant figures at most, and never a slow rate rounded to 0."""
    if per_second >= 100:
        return f"{per_second:.0f}"
    return f"{per_second:.3g}"


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    keep_freed_memory()
    try:
        return evaluate(cfg)["bleu"]
    except ERRORS as err:
        explain_and_exit(err, "attnlab-eval")


if __name__ == "__main__":
    main()
