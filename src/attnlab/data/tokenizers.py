"""Tokenizers turn a sentence into ids and back. Every tokenizer shares the special ids
below and can be stored inside a checkpoint (`to_state`) so translation needs no files."""

from __future__ import annotations

import importlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def content_ids(ids: Iterable[int], pad_id: int = PAD, bos_id: int = BOS, eos_id: int = EOS) -> list[int]:
    """A sentence's own ids: those before the first EOS, without padding or BOS. Tokenizers read
    decoder outputs and references with it, and so do the decoders and the LightningModule (with
    the model's special ids), so "the tokens of an output" means one thing everywhere."""
    out = []
    for i in ids:
        i = int(i)
        if i == eos_id:
            break
        if i not in (pad_id, bos_id):
            out.append(i)
    return out


class Tokenizer:
    """Interface: `encode` gives ids without BOS/EOS; `decode` stops at EOS and drops specials."""

    kind = "abstract"
    pad_id, bos_id, eos_id, unk_id = PAD, BOS, EOS, UNK

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def to_state(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict) -> Tokenizer:
        raise NotImplementedError


class WordTokenizer(Tokenizer):
    """Whitespace-separated words (or symbols), with a vocabulary built from training text."""

    kind = "words"

    def __init__(self, words: Sequence[str]):
        self.itos = SPECIALS + [w for w in words if w not in SPECIALS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, sentences: Iterable[str], max_size: int | None = None, min_freq: int = 1) -> WordTokenizer:
        counts = Counter(w for s in sentences for w in s.split())
        ranked = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls(ranked[: None if max_size is None else max_size - len(SPECIALS)])

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(w, UNK) for w in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.itos[i] for i in content_ids(ids, self.pad_id, self.bos_id, self.eos_id))

    def to_state(self) -> dict:
        return {"kind": self.kind, "words": self.itos[len(SPECIALS) :]}

    @classmethod
    def from_state(cls, state: dict) -> WordTokenizer:
        return cls(state["words"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_state(), ensure_ascii=False))


# Every tokenizer kind a checkpoint may name, as "module:class". Looked up by import when needed, so a
# process that never imported attnlab.data.subword (attnlab-translate) still knows 'sentencepiece'.
TOKENIZERS: dict[str, str] = {
    "words": "attnlab.data.tokenizers:WordTokenizer",
    "sentencepiece": "attnlab.data.subword:SentencePieceTokenizer",
}


def tokenizer_class(kind: str) -> type:
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known: {sorted(TOKENIZERS)}")
    module, name = TOKENIZERS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def tokenizer_from_state(state: dict) -> Tokenizer:
    return tokenizer_class(state.get("kind")).from_state(state)
