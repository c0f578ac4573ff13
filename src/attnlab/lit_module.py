"""The LightningModule: label-smoothed loss, Adam with warm-up, metrics and logging.

It has no test stage: a run's test score is made after training by attnlab.protocol with
attnlab-eval's own scoring, so the two can never disagree.

It holds the plain `Transformer`; the checkpoint carries the model config, the
tokenizers and a format version, so it rebuilds its model without any config file.
"""

from __future__ import annotations

import math
import time

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from .checkpoint import CHECKPOINT_FORMAT
from .data.tokenizers import Tokenizer, content_ids, tokenizer_from_state
from .decoding import DecodeConfig, generate
from .model import Transformer, TransformerConfig
from .training import metrics
from .training.schedule import learning_rate


class TranslationModule(L.LightningModule):
    def __init__(
        self,
        model: dict,
        optim: dict,
        decode: dict | None = None,
        tokenizers: dict | None = None,
        val_decode_size: int = 200,
        val_decode_every: int = 1,
    ):
        super().__init__()
        # Plain containers only, so checkpoints load with torch.load(weights_only=True).
        # Tokenizers travel in the checkpoint itself (on_save_checkpoint), not in hparams.yaml.
        self.save_hyperparameters(ignore=["tokenizers"])
        self.model = Transformer(TransformerConfig(**model))
        self.optim = dict(optim)
        # decode.*: what the end-of-run examples decode with (hparams keep the plain dict)
        self.decode_config = DecodeConfig.from_dict(decode or {})
        self.tokenizers = {k: tokenizer_from_state(v) for k, v in (tokenizers or {}).items()}
        self._step_start = None
        # Target tokens trained on so far (pads excluded), kept in checkpoints so a resumed run goes
        # on counting: the report's training FLOPs are this times the model's FLOPs per token.
        self.target_tokens = 0
        self.val_outputs: list[tuple[list[int], list[int]]] = []
        # Corpus BLEU / chrF of the decoded sentences (torchmetrics: summed over DDP processes).
        self.bleu, self.chrf = metrics.bleu(), metrics.chrf()

    @property
    def src_tokenizer(self) -> Tokenizer | None:
        return self.tokenizers.get("src")

    @property
    def tgt_tokenizer(self) -> Tokenizer | None:
        return self.tokenizers.get("tgt")

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.model(src, tgt_in)

    # -- steps ----------------------------------------------------------------------------
    def _shared_step(self, batch, stage: str):
        loss, nll, correct, n = self.model.loss(
            batch["src"], batch["tgt_in"], batch["tgt_out"], self.optim["label_smoothing"]
        )
        n_f = n.float()
        if stage == "train" and not torch.isfinite(loss):
            return loss / n_f, nll, n  # not logged: NonFiniteLossGuard stops or skips this step (training/faults.py)
        bs = batch["src"].size(0)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss / n_f, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=bs)
        self.log(f"{stage}/nll", nll / n_f, on_step=False, on_epoch=True, batch_size=bs)
        self.log(f"{stage}/token_acc", correct / n_f, on_step=False, on_epoch=True, batch_size=bs)
        return loss / n_f, nll, n

    def training_step(self, batch, batch_idx):
        loss, _, n = self._shared_step(batch, "train")
        n_tgt = int(n.item())  # one device sync for both the counter and the rate
        self.target_tokens += n_tgt
        # summed over DDP processes: each counts its own batches
        self.log("train/target_tokens", float(self.target_tokens), on_step=True, on_epoch=False,
                 sync_dist=True, reduce_fx="sum")
        now = time.perf_counter()
        if self._step_start is not None:
            tokens = n_tgt + (batch["src"] != self.model.config.pad_id).sum().item()
            self.log("train/tokens_per_sec", tokens / (now - self._step_start), on_step=True, on_epoch=False)
        self._step_start = now
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_start(self):
        self._step_start = None

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "val")
        if self._decode_this_epoch() and len(self.val_outputs) < self.hparams.val_decode_size:
            hyps = self.best_hypotheses(batch["src"], greedy=True)
            for hyp, ref in zip(hyps, batch["tgt_out"].tolist()):
                self.val_outputs.append((hyp, self._content(ref)))

    def _decode_this_epoch(self) -> bool:
        every = self.hparams.val_decode_every
        return every > 0 and (self.current_epoch + 1) % every == 0 and self.hparams.val_decode_size > 0

    def _content(self, ids: list[int]) -> list[int]:
        cfg = self.model.config
        return content_ids(ids, cfg.pad_id, cfg.bos_id, cfg.eos_id)

    def _log_decoded(self, stage: str) -> None:
        """Exact match on ids; BLEU and chrF on text detokenised by the target tokenizer."""
        if not self.val_outputs:
            return
        exact = sum(h == r for h, r in self.val_outputs) / len(self.val_outputs)
        self.log(f"{stage}/exact_match", exact, sync_dist=True)
        if self.tgt_tokenizer is not None:
            hyps = [self.tgt_tokenizer.decode(h) for h, _ in self.val_outputs]
            refs = [self.tgt_tokenizer.decode(r) for _, r in self.val_outputs]
            self.bleu.update(hyps, refs)
            self.chrf.update(hyps, refs)
            self.log(f"{stage}/bleu", float(self.bleu.compute()))
            self.log(f"{stage}/chrf", float(self.chrf.compute()))
            self.bleu.reset()
            self.chrf.reset()
        self.val_outputs.clear()

    def on_validation_epoch_start(self):
        self.val_outputs.clear()

    def on_validation_epoch_end(self):
        nll = self.trainer.callback_metrics.get("val/nll")
        if nll is not None:
            self.log("val/ppl", math.exp(min(float(nll), 50.0)))
        self._log_decoded("val")

    # -- decoding -------------------------------------------------------------------------
    @torch.no_grad()
    def best_hypotheses(self, src: torch.Tensor, greedy: bool = False) -> list[list[int]]:
        """A padded batch of sources (B, S) -> each sentence's best hypothesis as content ids (no
        BOS/EOS/padding), decoded with `decode.*`; `greedy`: greedy search whatever decode.strategy
        says (validation decodes every epoch, and only needs a comparable score)."""
        settings = self.decode_config.replace(n_best=1, **({"strategy": "greedy"} if greedy else {}))
        tokens, _ = generate(self.model, src, settings)
        return [self._content(row) for row in tokens[:, 0].tolist()]

    # -- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.optim
        # fused: one kernel per parameter instead of ~8 (docs/performance.md); CPU and CUDA only.
        # Not under fp16's GradScaler: a fused step unscales inside itself, after the clipping.
        fused = all(p.device.type in ("cpu", "cuda") for p in self.parameters()) and not _grad_scaler(self._trainer)
        opt = torch.optim.Adam(
            self.parameters(), lr=1.0, betas=tuple(o["betas"]), eps=o["eps"], weight_decay=o["weight_decay"],
            fused=fused,
        )  # fmt: skip
        total = self.trainer.estimated_stepping_batches if self.trainer else 0  # inf: max_epochs=-1
        d_model = self.model.config.d_model

        def rate(step: int) -> float:  # LambdaLR multiplies the base lr (1.0) by this
            return learning_rate(step + 1, o["schedule"], o["lr"], o["warmup_steps"], d_model, o["lr_scale"], total)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning's mixed-precision plugin refuses to clip for an optimizer that unscales its own
        # gradients (fused Adam), a rule for fp16's GradScaler. bf16-mixed has no scaler: the
        # gradients are at their true scale and clip as in fp32, by the plugin's parent class.
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None:
            super(MixedPrecision, plugin).clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["attnlab_format"] = CHECKPOINT_FORMAT
        checkpoint["tokenizers"] = {k: t.to_state() for k, t in self.tokenizers.items()}
        checkpoint["target_tokens"] = self.target_tokens

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokenizers = {k: tokenizer_from_state(v) for k, v in checkpoint.get("tokenizers", {}).items()}
        self.target_tokens = int(checkpoint.get("target_tokens", 0))


def _grad_scaler(trainer) -> bool:
    """Whether the trainer scales the loss (fp16 mixed precision): bf16 and fp32 do not."""
    plugin = getattr(trainer, "precision_plugin", None)
    return isinstance(plugin, MixedPrecision) and plugin.scaler is not None
