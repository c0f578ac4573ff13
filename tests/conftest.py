"""Shared fixtures: composed Hydra configs, tiny model configs, and a quiet, offline environment."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from attnlab.model import TransformerConfig

# Tests never reach W&B servers, and each test process stays on one core: several engineers
# (and CI) share two, and tiny models gain nothing from intra-op threads.
os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(1)


def make_tiny_config(**overrides) -> TransformerConfig:
    """A model small enough to build hundreds of times in a test run; no dropout, so outputs are exact."""
    base = dict(
        src_vocab_size=13,
        tgt_vocab_size=13,
        d_model=16,
        d_ff=32,
        n_heads=2,
        encoder_layers=2,
        decoder_layers=2,
        dropout=0.0,
        attention_dropout=0.0,
        max_len=32,
    )
    return TransformerConfig(**{**base, **overrides})


@pytest.fixture
def tiny_config() -> Callable[..., TransformerConfig]:
    """tiny_config(norm="pre", ...) -> a TransformerConfig for a model that builds in milliseconds."""
    return make_tiny_config


@pytest.fixture
def compose_train() -> Callable[..., DictConfig]:
    """compose_train("model=base", ...) -> the composed `train` config, as `attnlab-train` would see it."""

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_module("attnlab.conf", version_base="1.3"):
            return compose(config_name="train", overrides=list(overrides))

    return _compose


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
