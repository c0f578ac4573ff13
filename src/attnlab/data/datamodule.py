"""The LightningDataModule: text -> ids -> token-budget batches, for every data source."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from ..errors import CorpusError
from . import multi30k, synthetic
from .batching import TokenBucketSampler, collate, make_examples
from .cleaning import clean_lines
from .resumable import ResumableDataLoader
from .subword import cached_sentencepiece
from .text import read_parallel
from .tokenizers import Tokenizer, WordTokenizer

log = logging.getLogger("attnlab")

SPLITS = ("train", "val", "test")


class TranslationDataModule(L.LightningDataModule):
    """Holds raw sentences per split, the source and target tokenizers, and the batches.

    `source` is "synthetic" (data.task copy/reverse/sort), "parallel" ({root}/{split}.{lang})
    or "multi30k" (data.root, or downloaded once into `cache_dir`). Real text is cleaned
    (cleaning.py) and tokenized by `tokenizer`: "words" or "sentencepiece" (trained on the
    training split only, `joint_vocab` one model for both sides, cached in `cache_dir`).
    Sentences longer than `max_sentence_len` tokens are dropped from training only.
    """

    def __init__(
        self,
        source: str = "synthetic",
        task: str = "reverse",
        n_symbols: int = 20,
        min_len: int = 4,
        max_len: int = 12,
        train_size: int = 20000,
        val_size: int = 500,
        test_size: int = 500,
        root: str | None = None,
        src_lang: str = "src",
        tgt_lang: str = "tgt",
        splits: dict | None = None,
        vocab_size: int = 8000,
        tokenizer: str = "words",
        spm_model_type: str = "bpe",
        joint_vocab: bool = False,
        cache_dir: str | None = None,
        max_sentence_len: int = 128,
        max_tokens: int = 4096,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.source, self.task = source, task
        self.n_symbols, self.min_len, self.max_len = n_symbols, min_len, max_len
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.root, self.src_lang, self.tgt_lang = root, src_lang, tgt_lang
        self.split_files = dict(splits or {s: s for s in SPLITS})
        self.vocab_size, self.max_sentence_len = vocab_size, max_sentence_len
        self.tokenizer, self.spm_model_type, self.joint_vocab = tokenizer, spm_model_type, joint_vocab
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.max_tokens, self.num_workers, self.seed = max_tokens, num_workers, seed
        self.text: dict[str, tuple[list[str], list[str]]] = {}
        self.src_tokenizer: Tokenizer | None = None
        self.tgt_tokenizer: Tokenizer | None = None
        self.examples: dict[str, list] = {}

    # -- text -----------------------------------------------------------------------------
    def read_split(self, split: str) -> tuple[list[str], list[str]]:
        if self.source == "synthetic":
            return synthetic.generate(
                self.task, split, self.sizes[split], self.n_symbols, self.min_len, self.max_len, self.seed
            )
        if self.source == "parallel":
            if not self.root:
                raise CorpusError("data=parallel needs data.root=/path/to/folder with {split}.{lang} files")
            src, tgt = read_parallel(Path(self.root), self.split_files[split], self.src_lang, self.tgt_lang)
        elif self.source == "multi30k":
            src, tgt = read_parallel(self.multi30k_root(), self.split_files[split], self.src_lang, self.tgt_lang)
        else:
            raise ValueError(f"unknown data source {self.source!r}")
        name = f"{self.split_files[split]}.{self.src_lang}-{self.tgt_lang}"
        return clean_lines(src, f"{name} ({self.src_lang})")[0], clean_lines(tgt, f"{name} ({self.tgt_lang})")[0]

    def multi30k_root(self) -> Path:
        """data.root when given (a local copy), else the checksummed download cache."""
        multi30k.check_selection(self.split_files, self.src_lang, self.tgt_lang)
        if self.root:
            return Path(self.root)
        if self.cache_dir is None:
            raise CorpusError("data=multi30k needs data.root=/path/to/multi30k or data.cache_dir for the download")
        splits = sorted(set(self.split_files.values()))
        return multi30k.ensure_local(self.cache_dir, splits, [self.src_lang, self.tgt_lang])

    def build_tokenizers(self) -> tuple[Tokenizer, Tokenizer]:
        src, tgt = self.text["train"]
        if self.source == "synthetic":
            shared = WordTokenizer(synthetic.symbols(self.n_symbols))
            return shared, shared
        if self.tokenizer == "sentencepiece":
            if self.joint_vocab:
                shared = cached_sentencepiece(src + tgt, self.vocab_size, self.spm_model_type, self.cache_dir)
                return shared, shared
            return (
                cached_sentencepiece(src, self.vocab_size, self.spm_model_type, self.cache_dir, self.src_lang),
                cached_sentencepiece(tgt, self.vocab_size, self.spm_model_type, self.cache_dir, self.tgt_lang),
            )
        if self.joint_vocab:
            shared = WordTokenizer.build(src + tgt, self.vocab_size)
            return shared, shared
        return WordTokenizer.build(src, self.vocab_size), WordTokenizer.build(tgt, self.vocab_size)

    # -- Lightning hooks ------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.examples:
            return
        self.text = {split: self.read_split(split) for split in SPLITS}
        if self.src_tokenizer is None:
            self.src_tokenizer, self.tgt_tokenizer = self.build_tokenizers()
        for split, (src, tgt) in self.text.items():
            src_ids = [self.src_tokenizer.encode(s) for s in src]
            tgt_ids = [self.tgt_tokenizer.encode(t) for t in tgt]
            examples = make_examples(src_ids, tgt_ids)
            if split == "train":
                examples = [e for e in examples if max(len(e.src), len(e.tgt) + 1) <= self.max_sentence_len]
                self.n_filtered = len(src_ids) - len(examples)
                if not examples:
                    raise CorpusError(self._no_training_pairs(len(src_ids)))
                log.info(
                    "training data: %d of %d sentence pairs longer than data.max_sentence_len=%d tokens left out",
                    self.n_filtered, len(src_ids), self.max_sentence_len,
                )
            self.examples[split] = examples

    def _no_training_pairs(self, n: int) -> str:
        files = f"{self.split_files['train']}.{{{self.src_lang},{self.tgt_lang}}}"
        where = f"{self.root}/{files}" if self.root else files
        if self.source == "synthetic":
            where = f"the generated training split (data.task={self.task})"
        return (
            f"no training pairs left: all {n:,} pairs of {where} are longer than data.max_sentence_len="
            f"{self.max_sentence_len} tokens (the longer side, with EOS), and longer pairs are left out of "
            "training; raise data.max_sentence_len (and model.max_len with it) or split the long sentences"
        )

    def loader(self, split: str, shuffle: bool = False) -> torch.utils.data.DataLoader:
        examples = self.examples[split]
        lengths = [max(len(e.src), len(e.tgt) + 1) for e in examples]
        sampler = TokenBucketSampler(lengths, self.max_tokens, shuffle=shuffle, seed=self.seed)
        # Resumable: a run killed mid-epoch continues with the batches it had not seen (resumable.py).
        return ResumableDataLoader(examples, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers)

    def train_dataloader(self):
        return self.loader("train", shuffle=True)

    def val_dataloader(self):
        return self.loader("val")

    def test_dataloader(self):
        return self.loader("test")
