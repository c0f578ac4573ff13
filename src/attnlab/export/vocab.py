"""The tokenizer files `MarianTokenizer` reads, from the SentencePiece models inside a checkpoint.

MarianTokenizer splits text with `source.spm` / `target.spm` into pieces and maps each piece to an
id through `vocab.json` (and `target_vocab.json` when the two sides have their own vocabularies),
then appends `</s>`. attnlab's ids are SentencePiece's own ids (pad 0, <s> 1, </s> 2, <unk> 3, set
when it trains the model) and an attnlab source also ends with EOS (decoding/batch.py, fit_sources),
so writing every piece at its SentencePiece id gives MarianTokenizer attnlab's input ids exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.tokenizers import Tokenizer
from ..errors import ConfigError
from ..model import TransformerConfig


def check_tokenizers(src: Tokenizer, tgt: Tokenizer, cfg: TransformerConfig) -> None:
    """Both sides are SentencePiece models whose special ids are the model's."""
    for side, tok in (("source", src), ("target", tgt)):
        if tok.kind != "sentencepiece":
            raise ConfigError(
                f"the run's {side} tokenizer is data.tokenizer={tok.kind}: MarianTokenizer reads SentencePiece "
                "models only (train with data.tokenizer=sentencepiece)"
            )
        ids = {"pad_id": tok.pad_id, "bos_id": tok.bos_id, "eos_id": tok.eos_id}
        wanted = {"pad_id": cfg.pad_id, "bos_id": cfg.bos_id, "eos_id": cfg.eos_id}
        if ids != wanted:
            raise ConfigError(f"the {side} tokenizer's special ids {ids} are not the model's {wanted}")
    for side, tok, size in (("source", src, cfg.src_vocab_size), ("target", tgt, cfg.tgt_vocab_size)):
        if tok.vocab_size != size:
            raise ConfigError(f"the {side} tokenizer has {tok.vocab_size} pieces but the model {size} embeddings")


def pieces(tok: Tokenizer) -> dict[str, int]:
    """piece -> id for every piece of a SentencePiece tokenizer (vocab.json's content)."""
    return {tok.sp.id_to_piece(i): i for i in range(tok.vocab_size)}


def separate_vocabs(src: Tokenizer, tgt: Tokenizer) -> bool:
    return src.model_proto != tgt.model_proto


def write_tokenizer_files(src: Tokenizer, tgt: Tokenizer, cfg: TransformerConfig, out: Path) -> None:
    """source.spm, target.spm, vocab.json (+ target_vocab.json) and tokenizer_config.json in `out`."""
    (out / "source.spm").write_bytes(src.model_proto)
    (out / "target.spm").write_bytes(tgt.model_proto)
    (out / "vocab.json").write_text(json.dumps(pieces(src), ensure_ascii=False, indent=1), encoding="utf-8")
    separate = separate_vocabs(src, tgt)
    if separate:
        (out / "target_vocab.json").write_text(json.dumps(pieces(tgt), ensure_ascii=False, indent=1), encoding="utf-8")
    piece = src.sp.id_to_piece
    config = {
        "tokenizer_class": "MarianTokenizer",
        "separate_vocabs": separate,
        "eos_token": piece(cfg.eos_id),
        "pad_token": piece(cfg.pad_id),
        "unk_token": piece(src.unk_id),
        # attnlab reads at most max_len source positions, EOS included (fit_sources truncates to that).
        "model_max_length": cfg.max_len,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
