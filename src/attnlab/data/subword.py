"""SentencePiece subword tokenizers (BPE or unigram), trained on the training split only.

A trained model is cached under `{cache_dir}/tokenizers/` by a hash of its training text
and settings, so every run with the same data and settings reuses it; the serialized
model proto also travels inside each checkpoint (`to_state`), so translation needs no files.
Special ids match `tokenizers.SPECIALS` (pad 0, <s> 1, </s> 2, <unk> 3).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from ..atomic import atomic_write
from ..errors import ConfigError, CorpusError
from .tokenizers import BOS, EOS, PAD, UNK, Tokenizer, content_ids

log = logging.getLogger("attnlab")
MODEL_TYPES = ("bpe", "unigram")


class SentencePieceTokenizer(Tokenizer):
    """Subword pieces from a SentencePiece model; `decode` gives detokenised text."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(content_ids(ids, self.pad_id, self.bos_id, self.eos_id))

    def to_state(self) -> dict:
        # base64 text, so the checkpoint stays plain containers (torch.load(weights_only=True)).
        return {"kind": self.kind, "model_proto": base64.b64encode(self.model_proto).decode("ascii")}

    @classmethod
    def from_state(cls, state: dict) -> SentencePieceTokenizer:
        return cls(base64.b64decode(state["model_proto"]))


def train_sentencepiece(sentences: list[str], vocab_size: int, model_type: str) -> SentencePieceTokenizer:
    """Train on `sentences`; a vocabulary the text cannot fill is a ConfigError naming data.vocab_size."""
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"data.spm_model_type={model_type!r} is not one of {list(MODEL_TYPES)}")
    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=proto,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,  # small alphabets (de/fr/cs accents): keep every character
            pad_id=PAD,
            bos_id=BOS,
            eos_id=EOS,
            unk_id=UNK,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as err:
        limit = re.search(r"value <= (\d+)", str(err))
        if limit:
            raise ConfigError(
                f"data.vocab_size={vocab_size} is larger than the training text allows for {model_type} "
                f"(at most {limit.group(1)}); lower data.vocab_size"
            ) from None
        raise
    return SentencePieceTokenizer(proto.getvalue())


def settings_key(sentences: list[str], settings: dict) -> str:
    """Hash of the training text and every setting that shapes the model."""
    h = hashlib.sha256(json.dumps({**settings, "sentencepiece": spm.__version__}, sort_keys=True).encode())
    for line in sentences:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:20]


def cached_sentencepiece(
    sentences: list[str], vocab_size: int, model_type: str, cache_dir: Path | None, name: str = "spm"
) -> SentencePieceTokenizer:
    """Train, or reuse the model a run with the same text and settings trained before.

    Each cache entry is `{name}-{hash}.model` plus a `.json` with its settings; an entry
    whose settings do not match is refused (naming the file) rather than silently used.
    """
    settings = {"vocab_size": vocab_size, "model_type": model_type, "character_coverage": 1.0}
    if cache_dir is None:
        return train_sentencepiece(sentences, vocab_size, model_type)
    key = settings_key(sentences, settings)
    folder = Path(cache_dir) / "tokenizers"
    model_path, meta_path = folder / f"{name}-{key}.model", folder / f"{name}-{key}.json"
    if model_path.is_file():
        try:
            tokenizer = SentencePieceTokenizer(model_path.read_bytes())
        except RuntimeError as err:  # sentencepiece's parse error: a crash or a full disk while it was copied
            raise CorpusError(
                f"tokenizer cache {model_path} is corrupt ({str(err).strip()[:80]}); delete it and its .json "
                "to retrain the tokenizer"
            ) from None
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if meta.get("settings") != settings or tokenizer.vocab_size != vocab_size:
            raise CorpusError(
                f"tokenizer cache {model_path} was made with other settings "
                f"({meta.get('settings')}, {tokenizer.vocab_size} pieces; this run wants {settings}); "
                "delete it and its .json to retrain"
            )
        log.info("reusing tokenizer %s", model_path)
        return tokenizer
    tokenizer = train_sentencepiece(sentences, vocab_size, model_type)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(meta_path, json.dumps({"settings": settings, "sentences": len(sentences)}).encode())
    atomic_write(model_path, tokenizer.model_proto)  # last: a model file means a complete entry
    log.info("trained tokenizer %s (%d pieces)", model_path, tokenizer.vocab_size)
    return tokenizer
