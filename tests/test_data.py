"""Data: token-budget batching, collation, synthetic tasks, and parallel-corpus validation."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from attnlab.data import synthetic
from attnlab.data.batching import TokenBucketSampler, collate, make_examples
from attnlab.data.datamodule import TranslationDataModule
from attnlab.data.text import CorpusError, read_parallel
from attnlab.data.tokenizers import BOS, EOS, PAD, UNK, WordTokenizer, content_ids

# -- TokenBucketSampler ---------------------------------------------------------------------


@pytest.fixture
def lengths() -> list[int]:
    rng = random.Random(7)
    return [rng.randint(2, 40) for _ in range(500)]


def epoch(sampler: TokenBucketSampler, n: int) -> list[list[int]]:
    sampler.set_epoch(n)
    return list(sampler)


@pytest.mark.parametrize("max_tokens", [40, 100, 333, 4096])
def test_sampler_respects_the_token_budget_and_covers_every_index_once(lengths, max_tokens):
    sampler = TokenBucketSampler(lengths, max_tokens, shuffle=True, seed=3)
    for n in range(3):
        batches = epoch(sampler, n)
        assert all(len(b) * max(lengths[i] for i in b) <= max_tokens for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert len(batches) == len(sampler)


def test_sampler_batches_similar_lengths(lengths):
    # Bucketing by length keeps padding small: padded size vs real tokens, over the epoch.
    batches = list(TokenBucketSampler(lengths, 400, shuffle=True, seed=0))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded / sum(lengths) < 1.1


def test_sampler_order_is_deterministic_per_seed_and_epoch(lengths):
    a, b = (TokenBucketSampler(lengths, 200, shuffle=True, seed=5) for _ in range(2))
    assert epoch(a, 0) == epoch(b, 0)
    assert epoch(a, 4) == epoch(b, 4)
    assert epoch(a, 0) != epoch(a, 1), "a new epoch reshuffles the batches"
    assert epoch(a, 1) == epoch(a, 1)
    other_seed = TokenBucketSampler(lengths, 200, shuffle=True, seed=6)
    assert epoch(other_seed, 0) != epoch(a, 0)


def test_sampler_without_shuffle_goes_shortest_first(lengths):
    batches = epoch(TokenBucketSampler(lengths, 200, shuffle=False), 3)
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest == sorted(longest)


def test_sampler_refuses_a_budget_below_the_longest_sentence():
    with pytest.raises(ValueError, match="data.max_tokens=5"):
        TokenBucketSampler([3, 9], max_tokens=5, shuffle=False)


# -- collate --------------------------------------------------------------------------------


def test_collate_pads_and_adds_bos_eos():
    examples = make_examples([[5, 6, 7], [8]], [[9, 10], [11, 12, 13, 14]])
    batch = collate(examples)
    assert batch["index"].tolist() == [0, 1]
    assert batch["src"].tolist() == [[5, 6, 7, EOS], [8, EOS, PAD, PAD]]
    assert batch["tgt_in"].tolist() == [[BOS, 9, 10, PAD, PAD], [BOS, 11, 12, 13, 14]]
    assert batch["tgt_out"].tolist() == [[9, 10, EOS, PAD, PAD], [11, 12, 13, 14, EOS]]
    assert all(t.dtype == torch.long for t in batch.values())


# -- synthetic tasks ------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["copy", "reverse", "sort"])
def test_synthetic_task_is_correct_and_within_bounds(task):
    sources, targets = synthetic.generate(task, "train", 300, n_symbols=30, min_len=3, max_len=9, seed=1)
    assert len(sources) == len(targets) == 300
    alphabet = set(synthetic.symbols(30))
    for s, t in zip(sources, targets):
        xs = s.split()
        assert 3 <= len(xs) <= 9 and set(xs) <= alphabet
        assert t.split() == {"copy": xs, "reverse": xs[::-1], "sort": sorted(xs)}[task]
    lengths = {len(s.split()) for s in sources}
    assert lengths == set(range(3, 10)), "every length in [min_len, max_len] occurs"


def test_synthetic_splits_are_deterministic_and_distinct():
    make = lambda split, seed=0: synthetic.generate("reverse", split, 200, 20, 4, 12, seed)
    assert make("train") == make("train")
    assert make("val") == make("val")
    assert make("train") != make("val") != make("test")
    assert make("train", seed=1) != make("train")
    # A split does not depend on how many examples another split has, nor on the process.
    assert synthetic.generate("reverse", "val", 50, 20, 4, 12, 0)[0] == make("val")[0][:50]


def test_synthetic_symbols_are_readable_and_distinct():
    assert synthetic.symbols(3) == ["a", "b", "c"]
    names = synthetic.symbols(40)
    assert len(set(names)) == 40 and names[26] == "w26"


@pytest.mark.parametrize(
    "kwargs,message",
    [({"task": "shuffle"}, "data.task='shuffle'"), ({"min_len": 5, "max_len": 4}, "data.min_len")],
)
def test_synthetic_bad_settings_name_the_key(kwargs, message):
    args = {"task": "copy", "split": "train", "size": 3, "n_symbols": 5, "min_len": 1, "max_len": 3, "seed": 0}
    with pytest.raises(ValueError, match=message):
        synthetic.generate(**{**args, **kwargs})


def test_synthetic_datamodule_batches(tmp_path):
    dm = TranslationDataModule(task="reverse", train_size=64, val_size=16, test_size=16, max_tokens=64, seed=0)
    dm.setup()
    assert dm.src_tokenizer.vocab_size == 20 + 4
    assert [len(dm.examples[s]) for s in ("train", "val", "test")] == [64, 16, 16]
    batches = list(dm.train_dataloader())
    assert sum(len(b["index"]) for b in batches) == 64
    for b in batches:
        assert b["src"].numel() <= 64 and b["tgt_in"].shape == b["tgt_out"].shape
        for i, row in zip(b["index"].tolist(), b["tgt_out"].tolist()):
            src_text, tgt_text = dm.text["train"][0][i], dm.text["train"][1][i]
            assert dm.tgt_tokenizer.decode(row) == tgt_text == " ".join(src_text.split()[::-1])


# -- tokenizer ------------------------------------------------------------------------------


def test_word_tokenizer_round_trip_and_unknowns():
    tok = WordTokenizer.build(["a b b", "c b"], max_size=6)
    assert tok.itos[4:] == ["b", "a"]  # by frequency, then alphabetically; cut at max_size
    assert tok.encode("b a c") == [4, 5, UNK]
    assert tok.decode([BOS, 4, 5, EOS, 4, PAD]) == "b a"
    assert WordTokenizer.from_state(tok.to_state()).itos == tok.itos


def test_a_sentences_own_ids_are_one_thing_for_tokenizers_and_decoders():
    """content_ids is the one reading of an output row (the tokenizers', the decoders' and the
    LightningModule's): up to the first EOS, without BOS or padding."""
    row = [BOS, 4, PAD, 5, EOS, 6, PAD]
    assert content_ids(row) == [4, 5]
    assert content_ids([9, 1, 8, 7], pad_id=8, bos_id=9, eos_id=7) == [1]  # a model's own special ids


# -- parallel corpora -----------------------------------------------------------------------


def write(root: Path, name: str, data: bytes | str) -> Path:
    path = root / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def test_parallel_reads_aligned_files(tmp_path):
    write(tmp_path, "train.de", "ein Haus\nzwei Katzen\n")
    write(tmp_path, "train.en", "a house\ntwo cats")  # no final newline: same two lines
    assert read_parallel(tmp_path, "train", "de", "en") == (["ein Haus", "zwei Katzen"], ["a house", "two cats"])


def test_parallel_tolerates_crlf_and_bom(tmp_path):
    write(tmp_path, "train.de", b"\xef\xbb\xbfein Haus\r\nzwei Katzen\r\n")
    write(tmp_path, "train.en", "a house\ntwo cats\n")
    assert read_parallel(tmp_path, "train", "de", "en")[0] == ["ein Haus", "zwei Katzen"]


def test_parallel_missing_file_names_it_and_lists_what_is_there(tmp_path):
    write(tmp_path, "train.de", "x\n")
    write(tmp_path, "train.fr", "y\n")
    with pytest.raises(CorpusError, match="train.en") as err:
        read_parallel(tmp_path, "train", "de", "en")
    assert "found: train.de, train.fr" in str(err.value)


def test_parallel_misaligned_names_both_files_and_counts(tmp_path):
    write(tmp_path, "val.de", "a\nb\nc\n")
    write(tmp_path, "val.en", "a\nb\n")
    with pytest.raises(CorpusError, match=r"val\.de has 3 lines but .*val\.en has 2"):
        read_parallel(tmp_path, "val", "de", "en")


def test_parallel_invalid_utf8_names_file_and_line(tmp_path):
    write(tmp_path, "train.de", b"eins\nzwei\ndr\xe4i\n")  # latin-1 'ä' on line 3
    write(tmp_path, "train.en", "one\ntwo\nthree\n")
    with pytest.raises(CorpusError, match=r"train\.de, line 3: invalid UTF-8"):
        read_parallel(tmp_path, "train", "de", "en")


def test_parallel_empty_line_names_file_and_line(tmp_path):
    write(tmp_path, "train.de", "eins\nzwei\ndrei\n")
    write(tmp_path, "train.en", "one\n  \nthree\n")
    with pytest.raises(CorpusError, match=r"train\.en, line 2: empty sentence"):
        read_parallel(tmp_path, "train", "de", "en")


def test_parallel_binary_file_is_named(tmp_path):
    write(tmp_path, "train.de", b"\x00\x01\x02binary\x00\n")
    write(tmp_path, "train.en", "one\n")
    with pytest.raises(CorpusError, match=r"train\.de looks binary"):
        read_parallel(tmp_path, "train", "de", "en")


def test_parallel_empty_split_is_refused(tmp_path):
    write(tmp_path, "test.de", "")
    write(tmp_path, "test.en", "")
    with pytest.raises(CorpusError, match="empty split"):
        read_parallel(tmp_path, "test", "de", "en")


def test_parallel_datamodule_builds_vocabularies_from_train(tmp_path):
    for split in ("train", "val", "test"):
        write(tmp_path, f"{split}.de", "das Haus\nder Hund bellt\n")
        write(tmp_path, f"{split}.en", "the house\nthe dog barks\n")
    write(tmp_path, "test.en", "the cat\nthe dog barks\n")
    dm = TranslationDataModule(source="parallel", root=str(tmp_path), src_lang="de", tgt_lang="en", max_tokens=64)
    dm.setup()
    assert dm.src_tokenizer.vocab_size == 4 + 5 and dm.tgt_tokenizer.vocab_size == 4 + 4
    batch = next(iter(dm.test_dataloader()))
    assert UNK in batch["tgt_out"].tolist()[0] + batch["tgt_out"].tolist()[1]  # "cat" never seen in train


def test_parallel_datamodule_without_root_says_how_to_fix():
    dm = TranslationDataModule(source="parallel", root=None)
    with pytest.raises(CorpusError, match="data.root="):
        dm.setup()
