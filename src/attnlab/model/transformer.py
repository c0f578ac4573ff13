"""The encoder-decoder transformer: embeddings + positions, encoder, decoder, and the
final linear layer whose softmax gives the next-token distribution."""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from .attention import MultiHeadAttention
from .cache import DecoderCache
from .config import TransformerConfig
from .dropout import Dropout
from .layers import Decoder, Encoder
from .loss import generator_loss
from .positional import positional


class Embeddings(nn.Module):
    """Token embedding scaled by sqrt(d_model) (paper 3.4), plus position (the embedding side of
    the model.positional kind; nothing for the kinds that act in attention), plus dropout."""

    def __init__(self, token: nn.Embedding, cfg: TransformerConfig):
        super().__init__()
        self.token = token
        self.position = positional(cfg).embedding()
        self.dropout = Dropout(cfg.dropout)
        self.scale = math.sqrt(cfg.d_model)

    def forward(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        # tokens: (B, T) int64 -> (B, T, d_model)
        return self.dropout(self.position(self.token(tokens) * self.scale, offset))


def _token_embedding(vocab_size: int, cfg: TransformerConfig) -> nn.Embedding:
    emb = nn.Embedding(vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
    # std d^-1/2, so that after the sqrt(d) scale the inputs have unit variance (fairseq).
    nn.init.normal_(emb.weight, std=cfg.d_model**-0.5)
    with torch.no_grad():
        emb.weight[cfg.pad_id].zero_()
    return emb


class Transformer(nn.Module):
    """`model(src, tgt_in)` -> logits (B, T, V). Padding masks come from `config.pad_id`.

    Post-norm (the paper) by default; `norm=pre` moves each LayerNorm before its sublayer
    and adds a final LayerNorm to each stack.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = cfg = config
        src_token = _token_embedding(cfg.src_vocab_size, cfg)
        tgt_token = src_token if cfg.tie_embeddings == "all" else _token_embedding(cfg.tgt_vocab_size, cfg)
        self.src_embed = Embeddings(src_token, cfg)
        self.tgt_embed = Embeddings(tgt_token, cfg)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.generator = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)  # "the Linear layer"
        if cfg.tie_embeddings == "none":
            nn.init.normal_(self.generator.weight, std=cfg.d_model**-0.5)
        else:
            self.generator.weight = tgt_token.weight
        for module in self.modules():
            if isinstance(module, nn.Linear) and module is not self.generator:
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    # -- the two halves -----------------------------------------------------------------
    def src_mask(self, src: torch.Tensor) -> torch.Tensor:
        return (src != self.config.pad_id)[:, None, None, :]  # (B, 1, 1, S): True = real token

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S) -> memory (B, S, d_model) and its mask (B, 1, 1, S)."""
        src_mask = self.src_mask(src)
        return self.encoder(self.src_embed(src), src_mask), src_mask

    def decode_states(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder: tgt_in (B, T) -> the decoder's output (B, T, d_model)."""
        return self.decoder(self.tgt_embed(tgt_in), self.decoder.project_memory(memory), src_mask)

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder: tgt_in (B, T) -> logits (B, T, V)."""
        return self.generator(self.decode_states(tgt_in, memory, src_mask))

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)  # (B, T, V)

    def loss(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor, label_smoothing: float):
        """Teacher-forced label-smoothed loss -> (loss, nll, correct, n_tokens), sums over the
        real target tokens: `label_smoothed_nll(self(src, tgt_in), ...)` without the logits
        tensor (the Linear layer and the loss are fused, see loss.py)."""
        memory, src_mask = self.encode(src)
        states = self.decode_states(tgt_in, memory, src_mask)
        return generator_loss(states, self.generator.weight, tgt_out, label_smoothing, self.config.pad_id)

    # -- incremental decoding -----------------------------------------------------------
    def start_decoding(
        self, memory: torch.Tensor, src_mask: torch.Tensor, capacity: int | None = None, indirect: bool = False
    ) -> DecoderCache:
        """Project the encoder output to keys/values once; the decoder steps reuse them.
        `capacity`: the most steps expected (default model.max_len); more still work.
        `indirect`: reordered rows index the stored keys instead of copying them (cache.py)."""
        # Values contiguous (B, h, S, d_v) and keys stored transposed, (B, h, d_k, S) in memory
        # seen through a (B, h, S, d_k) view, so that Q K^T and P V at every step are plain
        # batched matmuls: with the keys as a transposed view, a sentence's beams (several
        # queries per head) send matmul down a much slower path (docs/performance.md).
        memory_kv = [(k.mT.contiguous().mT, v.contiguous()) for k, v in self.decoder.project_memory(memory)]
        return DecoderCache(memory_kv, src_mask, capacity or self.config.max_len, indirect)

    def decode_step(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """The newest target token of each row (B,) -> next-token logits (B, V); grows the cache."""
        x = self.tgt_embed(tokens[:, None], offset=cache.length)  # (B, 1, d_model)
        x = self.decoder(x, cache.memory_kv, cache.src_mask, cache.self_kv)
        return self.generator(x[:, 0])

    # -- inspection -----------------------------------------------------------------------
    @contextmanager
    def keeping_attention(self):
        """Within the block, attention takes the explicit path and keeps its weights."""
        modules = [m for m in self.modules() if isinstance(m, MultiHeadAttention)]
        for m in modules:
            m.keep_weights = True
        try:
            yield
        finally:
            for m in modules:
                m.keep_weights, m.weights = False, None

    @torch.no_grad()
    def attention_maps(self, src: torch.Tensor, tgt_in: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Weights per layer, each (B, h, Tq, Tk): encoder self, decoder self, and cross attention."""
        with self.keeping_attention():
            self(src, tgt_in)
            return {
                "encoder_self": [layer.self_attn.weights for layer in self.encoder.layers],
                "decoder_self": [layer.self_attn.weights for layer in self.decoder.layers],
                "cross": [layer.src_attn.weights for layer in self.decoder.layers],
            }

    def num_parameters(self) -> int:
        """Distinct trainable parameters (tied matrices counted once)."""
        return sum(p.numel() for p in self.parameters())
