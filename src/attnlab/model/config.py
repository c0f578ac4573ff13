"""TransformerConfig: every architecture switch of the platform, validated in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, get_args

from .positional import POSITIONAL

Norm = Literal["post", "pre"]
TieEmbeddings = Literal["none", "decoder", "all"]


@dataclass
class TransformerConfig:
    """The `model.*` config keys plus the vocabulary facts the model needs.

    Defaults are the paper's transformer-base (Vaswani et al. 2017, Table 3 "base").
    """

    src_vocab_size: int = 8000
    tgt_vocab_size: int = 8000
    d_model: int = 512
    d_ff: int = 2048
    n_heads: int = 8
    # Per-head query/key width d_k; None: d_model / n_heads. Values keep d_v = d_model / n_heads
    # (Table 3 row B shrinks "the attention key size d_k" alone, so W_O and the output width stay).
    d_head: int | None = None
    encoder_layers: int = 6
    decoder_layers: int = 6
    positional: str = "sinusoidal"  # a key of positional.POSITIONAL
    residual: bool = True
    norm: Norm = "post"
    dropout: float = 0.1
    attention_dropout: float = 0.0
    tie_embeddings: TieEmbeddings = "decoder"
    max_len: int = 256
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        choices = {"positional": tuple(POSITIONAL), "norm": get_args(Norm), "tie_embeddings": get_args(TieEmbeddings)}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"model.{key}={getattr(self, key)!r} is not one of {list(allowed)}")
        for key in ("src_vocab_size", "tgt_vocab_size", "d_model", "d_ff", "n_heads", "max_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("encoder_layers", "decoder_layers"):
            if getattr(self, key) < 0:
                raise ValueError(f"model.{key} must be >= 0, got {getattr(self, key)}")
        if self.decoder_layers < 1:
            raise ValueError("model.decoder_layers must be >= 1: the decoder produces the output")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}: "
                "each head gets d_model / n_heads dimensions"
            )
        if self.d_head is not None and self.d_head < 1:
            raise ValueError(f"model.d_head must be >= 1 (or null for d_model / n_heads), got {self.d_head}")
        POSITIONAL[self.positional].check(self)  # what the kind needs (rope: an even head width)
        for key in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"model.{key} must be in [0, 1), got {getattr(self, key)}")
        if self.tie_embeddings == "all" and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                "model.tie_embeddings=all needs one shared vocabulary, but "
                f"src_vocab_size={self.src_vocab_size} != tgt_vocab_size={self.tgt_vocab_size}; "
                "use tie_embeddings=decoder or a joint tokenizer"
            )
        ids = {"pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id}
        if len(set(ids.values())) != 3:
            raise ValueError(f"pad/bos/eos ids must differ, got {ids}")

    @property
    def d_k(self) -> int:
        """Query/key width per head: model.d_head, or d_model / n_heads by default."""
        return self.d_model // self.n_heads if self.d_head is None else self.d_head

    @property
    def d_v(self) -> int:
        """Value width per head, always d_model / n_heads: the concatenated heads are d_model wide."""
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)
