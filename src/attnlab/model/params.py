"""Parameter count from the configuration alone, to check the model against the formula."""

from __future__ import annotations

from .config import TransformerConfig
from .positional import positional


def expected_num_parameters(cfg: TransformerConfig) -> int:
    d, f = cfg.d_model, cfg.d_ff
    qk, v = cfg.n_heads * cfg.d_k, cfg.n_heads * cfg.d_v  # h*d_k shrinks with model.d_head; h*d_v = d
    attention = 2 * (d * qk + qk) + (d * v + v) + (v * d + d)  # W_Q, W_K, W_V, W_O with biases
    ffn = d * f + f + f * d + d
    layer_norm = 2 * d
    encoder_layer = attention + ffn + 2 * layer_norm
    decoder_layer = 2 * attention + ffn + 3 * layer_norm
    final_norms = 2 * layer_norm if cfg.norm == "pre" else 0
    src_emb, tgt_emb = cfg.src_vocab_size * d, cfg.tgt_vocab_size * d
    embeddings = {"none": src_emb + 2 * tgt_emb, "decoder": src_emb + tgt_emb, "all": src_emb}[cfg.tie_embeddings]
    positions = positional(cfg).num_parameters()  # learned: a max_len x d table per embedding
    return (
        cfg.encoder_layers * encoder_layer + cfg.decoder_layers * decoder_layer + final_norms + embeddings + positions
    )
