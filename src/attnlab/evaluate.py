"""`attnlab-eval ckpt=... split=test`: BLEU, chrF, exact match, loss/perplexity and decoding speed."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table
from torch.nn.utils.rnn import pad_sequence

from .checkpoint import TrainedModel, load_for_inference
from .cli import explain_and_exit
from .config import ConfigError
from .data.datamodule import TranslationDataModule
from .data.text import CorpusError, read_lines
from .decoding.batch import fit_sources, translate_ids
from .metrics import corpus_scores, exact_match, signatures
from .runtime import keep_freed_memory
from .translate import (
    ERRORS,
    check_batch_options,
    check_device,
    check_sentences,
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
        data, seed = run_data_config(cfg)
        if data.get("root"):
            data["root"] = to_absolute_path(data["root"])
        if cfg.split not in ("train", "val", "test"):
            raise ConfigError(f"split={cfg.split!r} is not one of ['train', 'val', 'test']")
        src, ref = TranslationDataModule(**data, seed=seed).read_split(cfg.split)
    src, ref = src[: cfg.limit], ref[: cfg.limit]
    if not src:
        raise CorpusError("the test set is empty")
    return src, ref


@torch.no_grad()
def teacher_forced_nll(trained: TrainedModel, sources: list[list[int]], references: list[str], batch_size: int):
    """Sum of -log p(reference token) and the number of tokens (EOS included), as in training."""
    model, cfg = trained.model, trained.model.config
    device = next(model.parameters()).device
    targets = [trained.tgt_tokenizer.encode(r)[: cfg.max_len - 1] for r in references]
    total, n = 0.0, 0
    for start in range(0, len(sources), batch_size):
        src = [torch.tensor(s) for s in sources[start : start + batch_size]]
        tgt = targets[start : start + batch_size]
        tgt_in = [torch.tensor([cfg.bos_id] + t) for t in tgt]
        tgt_out = [torch.tensor(t + [cfg.eos_id]) for t in tgt]
        pad = lambda xs: pad_sequence(xs, batch_first=True, padding_value=cfg.pad_id).to(device)
        logits = model(pad(src), pad(tgt_in))
        gold = pad(tgt_out)
        total += float(F.cross_entropy(logits.flatten(0, 1).float(), gold.flatten(), ignore_index=cfg.pad_id,
                                       reduction="sum"))  # fmt: skip
        n += int((gold != cfg.pad_id).sum())
    return total, n


def evaluate(cfg: DictConfig) -> dict:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    check_batch_options(cfg)
    device = check_device(cfg.device)
    trained = load_for_inference(to_absolute_path(cfg.ckpt), cfg.average_last, out_dir)
    decode_cfg, source = run_decode_settings(cfg.decode, trained.hparams)
    decode_cfg["n_best"] = 1  # scores are of the best hypothesis
    print(f"attnlab-eval: {describe_decoding(decode_cfg, source)}", flush=True)
    trained.model.to(device)
    src_text, ref_text = read_test_set(cfg)
    sources = fit_sources([trained.src_tokenizer.encode(s) for s in src_text], trained.model, cfg.split)

    start = time.perf_counter()
    results = translate_ids(trained.model, sources, decode_cfg, cfg.batch_size)
    seconds = time.perf_counter() - start
    hyp_ids = [hyps[0][0] for hyps in results]
    hyps = [trained.tgt_tokenizer.decode(ids) for ids in hyp_ids]

    nll, n_tokens = teacher_forced_nll(trained, sources, ref_text, cfg.batch_size)
    metrics = corpus_scores(hyps, ref_text)
    metrics.update(
        exact_match=exact_match(hyps, [" ".join(r.split()) for r in ref_text]),
        loss=nll / n_tokens,
        ppl=math.exp(min(nll / n_tokens, 50.0)),
        sentences=len(hyps),
        sentences_per_sec=len(hyps) / seconds,
        tokens_per_sec=sum(len(ids) + 1 for ids in hyp_ids) / seconds,  # output tokens, EOS included
    )
    hyp_path = out_dir / f"hypotheses.{cfg.split}.txt"
    hyp_path.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    results_json = {
        "metrics": metrics,
        "signatures": signatures(),
        "checkpoint": str(trained.path),
        "global_step": trained.global_step,
        "split": cfg.split if not cfg.src_file else str(cfg.src_file),
        "decode": decode_cfg,
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
