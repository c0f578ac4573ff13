"""A small trained checkpoint for the decoding/eval/translate tests, built once per session.

It is a real `attnlab-train` checkpoint (TranslationModule + Lightning ModelCheckpoint) in a
run-directory layout (`run/checkpoints/*.ckpt`, `run/.hydra/config.yaml`), so the commands
find its data config the way they find a user's. Import the fixture in a test module:
`from fixtures_ckpt import trained_run  # noqa: F401`.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from attnlab.data.datamodule import TranslationDataModule
from attnlab.lit_module import TranslationModule

# Reverse over 8 symbols, sentences of 3-6: a 2-layer d_model=32 model learns it in ~1000 steps.
DATA = dict(source="synthetic", task="reverse", n_symbols=8, min_len=3, max_len=6,
            train_size=6000, val_size=64, test_size=128, max_tokens=448)  # fmt: skip
MODEL = dict(d_model=32, d_ff=64, n_heads=2, encoder_layers=2, decoder_layers=2, dropout=0.0,
             attention_dropout=0.0, tie_embeddings="decoder", max_len=16)  # fmt: skip
OPTIM = dict(schedule="inverse_sqrt", lr=5e-3, lr_scale=1.0, warmup_steps=100, betas=[0.9, 0.98], eps=1e-9,
             weight_decay=0.0, label_smoothing=0.0)  # fmt: skip
DECODE = dict(strategy="greedy", beam_size=4, n_best=1, length_penalty=0.6, max_len_a=1.0, max_len_b=4)
EPOCHS = 8


def train_reverse(run_dir: Path, epochs: int = EPOCHS, keep_last: int = 0, **model) -> Path:
    """Train in-process; returns the run directory (checkpoints/ and .hydra/config.yaml inside).
    `model`: keys of MODEL to change (`positional="alibi"`). Greedy decoding of the validation
    set (val/exact_match, val/bleu) runs after the last epoch."""
    L.seed_everything(0)
    dm = TranslationDataModule(**DATA, seed=0)
    dm.setup()
    vocab = {"src_vocab_size": dm.src_tokenizer.vocab_size, "tgt_vocab_size": dm.tgt_tokenizer.vocab_size}
    module = TranslationModule(
        model={**MODEL, **model, **vocab},
        optim=OPTIM,
        decode=DECODE,
        tokenizers={"src": dm.src_tokenizer.to_state(), "tgt": dm.tgt_tokenizer.to_state()},
        val_decode_size=64,
        val_decode_every=epochs,
    )
    callbacks = [L.pytorch.callbacks.ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True)]
    if keep_last:
        callbacks.append(
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=run_dir / "checkpoints", filename="keep-{step}", monitor="step", mode="max",
                save_top_k=keep_last,
            )  # fmt: skip
        )
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, callbacks=callbacks, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False, gradient_clip_val=1.0,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save({"data": DATA, "seed": 0}, run_dir / ".hydra" / "config.yaml")
    module.fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # The last epoch's logged metrics (val/bleu, val/exact_match, ...) for tests to read.
    (run_dir / "fit_metrics.json").write_text(json.dumps(module.fit_metrics, indent=1))
    return run_dir


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A run directory with a reverse model trained for a few seconds (last.ckpt + keep-* files)."""
    torch.set_num_threads(1)
    return train_reverse(tmp_path_factory.mktemp("reverse_run"), keep_last=3)
