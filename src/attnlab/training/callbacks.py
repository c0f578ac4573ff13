"""Lightning callbacks for the dashboards: gradient norm, sample translations, attention maps.

Each writes to whichever loggers the run has: W&B (tables, images), TensorBoard (text,
figures); the attention images are also saved as PNG files in the run directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import grad_norm

from ..data.batching import collate

log = logging.getLogger("attnlab")


class GradNormMonitor(L.Callback):
    """Logs `train/grad_norm`, the global L2 norm of the gradients before clipping: spikes show
    instability long before the loss does."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        norms = grad_norm(pl_module, norm_type=2)
        if "grad_2.0_norm_total" in norms:
            pl_module.log("train/grad_norm", norms["grad_2.0_norm_total"], on_step=True, on_epoch=False)


def _first_examples(trainer, n: int):
    """(batch, sources, references) for the first n validation sentences, or None without data."""
    dm = trainer.datamodule
    if dm is None or not getattr(dm, "examples", None) or n <= 0:
        return None
    examples = dm.examples["val"][:n]
    src_text, ref_text = dm.text["val"]
    return collate(examples), src_text[:n], ref_text[:n]


class SampleTranslations(L.Callback):
    """After each validation, a table of `n` sentences: source, reference, the model's output."""

    def __init__(self, n: int = 8):
        self.n = n

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        shows_text = any(isinstance(lg, (WandbLogger, TensorBoardLogger)) for lg in trainer.loggers)
        if trainer.sanity_checking or not shows_text:
            return  # only W&B and TensorBoard show text: do not decode for a CSV file
        first = _first_examples(trainer, self.n)
        if first is None:
            return
        batch, sources, references = first
        hyps = pl_module.best_hypotheses(batch["src"].to(pl_module.device), greedy=True)
        rows = [[s, r, pl_module.tgt_tokenizer.decode(h)] for s, r, h in zip(sources, references, hyps)]
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_text(key="val/samples", columns=["source", "reference", "output"], data=rows, step=step)
            elif isinstance(logger, TensorBoardLogger):
                table = "| source | reference | output |\n|---|---|---|\n"
                table += "".join(f"| {s} | {r} | {h} |\n" for s, r, h in rows)
                logger.experiment.add_text("val/samples", table, global_step=step)


def attention_figure(weights: torch.Tensor, src_labels: list[str], tgt_labels: list[str], title: str):
    """One row of heatmaps, a head each; weights (h, Tq, Tk) of one sentence."""
    from matplotlib.figure import Figure

    heads = weights.size(0)
    fig = Figure(figsize=(2.6 * heads, 2.8), constrained_layout=True)
    axes = fig.subplots(1, heads, squeeze=False)[0]
    for h, ax in enumerate(axes):
        ax.imshow(weights[h].float().cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(f"head {h + 1}", fontsize=8)
        ax.set_xticks(range(len(src_labels)), src_labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(tgt_labels)), tgt_labels if h == 0 else [""] * len(tgt_labels), fontsize=6)
    fig.suptitle(title, fontsize=9)
    return fig


class AttentionMaps(L.Callback):
    """At the end of training: the last layer's encoder self-, decoder self- and cross-attention
    of the first validation sentence, per head, as PNGs in `<run>/attention/` and logger images."""

    def __init__(self, dirname: str = "attention"):
        self.dirname = dirname

    @torch.no_grad()
    def on_fit_end(self, trainer, pl_module) -> None:
        first = _first_examples(trainer, 1)
        if first is None or trainer.sanity_checking:
            return
        batch, _, _ = first
        src, tgt_in = batch["src"].to(pl_module.device), batch["tgt_in"].to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        maps = pl_module.model.attention_maps(src, tgt_in)
        pl_module.train(was_training)
        tok_src, tok_tgt = pl_module.src_tokenizer, pl_module.tgt_tokenizer
        src_labels = [tok_src.decode([i]) or str(i) for i in src[0].tolist()]
        tgt_labels = [tok_tgt.decode([i]) or str(i) for i in tgt_in[0].tolist()]
        rows_cols = {"encoder_self": (src_labels, src_labels), "decoder_self": (tgt_labels, tgt_labels),
                     "cross": (tgt_labels, src_labels)}
        out_dir = Path(trainer.default_root_dir) / self.dirname
        out_dir.mkdir(parents=True, exist_ok=True)
        step = trainer.global_step
        for kind, layers in maps.items():
            if not layers or layers[-1] is None:
                continue
            queries, keys = rows_cols[kind]
            fig = attention_figure(layers[-1][0], keys, queries, f"{kind}, layer {len(layers)}, step {step}")
            path = out_dir / f"{kind}.png"
            fig.savefig(path, dpi=100)
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image(key=f"attention/{kind}", images=[str(path)], step=step)
                elif isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure(f"attention/{kind}", fig, global_step=step)
        log.info("attention maps: %s", out_dir)
