"""Multi30k and subword tokenizers: the checksummed download (against a local HTTP server, never
the network), every split and language pair of the local copy with SOURCE.md's line counts,
cleaning, SentencePiece training/caching/reuse, and a short real training run."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import logging
import math
import threading
import unicodedata
from pathlib import Path

import pytest
from omegaconf import open_dict

from attnlab.config import ConfigError
from attnlab.data import multi30k, subword
from attnlab.data.cleaning import clean_line, clean_lines
from attnlab.data.datamodule import TranslationDataModule
from attnlab.data.subword import SentencePieceTokenizer, cached_sentencepiece
from attnlab.data.text import CorpusError, read_lines
from attnlab.data.tokenizers import tokenizer_from_state
from attnlab.train import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no local Multi30k copy at {SHARED}")


# -- download -------------------------------------------------------------------------------------


@pytest.fixture
def upstream(tmp_path):
    """A local HTTP server laid out like the upstream repository: `{name}.gz` for the val files.

    Yields (base_url, folder, requests) where `requests` lists every path the server was asked for."""
    folder = tmp_path / "upstream"
    folder.mkdir()
    for lang in ("en", "de", "fr", "cs"):
        (folder / f"val.{lang}.gz").write_bytes(gzip.compress((SHARED / f"val.{lang}").read_bytes()))
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder, requests
    server.shutdown()


def test_download_verifies_checksums_and_never_downloads_twice(upstream, tmp_path):
    base_url, _, requests = upstream
    cache = tmp_path / "cache"
    root = multi30k.ensure_local(cache, ["val"], ["de", "en"], base_url=base_url)
    assert sorted(requests) == ["/val.de.gz", "/val.en.gz"]
    for lang in ("de", "en"):
        assert (root / f"val.{lang}").read_bytes() == (SHARED / f"val.{lang}").read_bytes()
    assert multi30k.ensure_local(cache, ["val"], ["de", "en"], base_url=base_url) == root
    assert len(requests) == 2, "the second call must use the cache"
    assert not list(root.glob(".*tmp")), "no temporary files left behind"


def test_a_corrupted_download_is_refused_naming_the_file_and_nothing_is_saved(upstream, tmp_path):
    base_url, folder, _ = upstream
    corrupt = (SHARED / "val.fr").read_bytes().replace(b"Un ", b"Une ", 1)
    (folder / "val.fr.gz").write_bytes(gzip.compress(corrupt))
    with pytest.raises(CorpusError, match=r"val\.fr: checksum mismatch"):
        multi30k.fetch("val.fr", tmp_path / "cache", base_url=base_url)
    assert not (tmp_path / "cache" / "val.fr").exists()
    assert not list((tmp_path / "cache").glob("*")) if (tmp_path / "cache").exists() else True


def test_a_tampered_cached_file_is_refused(upstream, tmp_path):
    base_url, _, _ = upstream
    path = multi30k.fetch("val.cs", tmp_path / "cache", base_url=base_url)
    path.write_bytes(path.read_bytes() + b"extra line\n")
    with pytest.raises(CorpusError, match="checksum mismatch.*delete it"):
        multi30k.fetch("val.cs", tmp_path / "cache", base_url=base_url)


def test_an_unreachable_server_says_how_to_use_a_local_copy(tmp_path):
    with pytest.raises(CorpusError, match="cannot download.*data.root"):
        multi30k.fetch("val.en", tmp_path, base_url="http://127.0.0.1:9")


def test_file_urls_work_for_mirrors(upstream, tmp_path):
    _, folder, _ = upstream
    path = multi30k.fetch("val.de", tmp_path / "cache", base_url=folder.as_uri())
    assert multi30k.sha256_of(path) == multi30k.SHA256["val.de"]


def test_the_pinned_checksums_match_the_local_copy():
    for path in sorted(SHARED.glob("*.*")):
        if path.name in multi30k.SHA256:
            assert multi30k.sha256_of(path) == multi30k.SHA256[path.name], path.name


# -- splits, languages, cleaning ------------------------------------------------------------------

PAIRS = [("de", "en"), ("en", "de"), ("fr", "en"), ("en", "fr"), ("cs", "en"), ("en", "cs")]


@pytest.mark.parametrize("split", [s for s in multi30k.SPLITS if s != "test_2017_mscoco"])
def test_every_local_split_has_sourcemd_line_counts(split):
    lines, langs = multi30k.SPLITS[split]
    for lang in langs:
        assert len(read_lines(SHARED / f"{split}.{lang}")) == lines, f"{split}.{lang}"


@pytest.mark.parametrize("src,tgt", PAIRS)
def test_every_language_pair_loads_through_the_datamodule(src, tgt):
    dm = TranslationDataModule(source="multi30k", root=str(SHARED), src_lang=src, tgt_lang=tgt,
                               splits={"train": "val", "val": "test_2016_flickr", "test": "test_2018_flickr"})
    for role, split in dm.split_files.items():
        s, t = dm.read_split(role)
        assert len(s) == len(t) == multi30k.SPLITS[split][0]


@pytest.mark.parametrize(
    "src,tgt,splits,message",
    [
        ("cs", "en", {"test": "test_2017_flickr"}, "has no cs text"),
        ("de", "xx", {"test": "test_2016_flickr"}, "data.tgt_lang='xx'"),
        ("de", "de", {"test": "test_2016_flickr"}, "both 'de'"),
        ("de", "en", {"test": "test_2019"}, "data.splits.test='test_2019'"),
    ],
)
def test_impossible_selections_name_the_key(src, tgt, splits, message):
    with pytest.raises(ConfigError, match=message):
        multi30k.check_selection(splits, src, tgt)


def test_the_unshipped_mscoco_split_is_a_clear_missing_file_error():
    dm = TranslationDataModule(source="multi30k", root=str(SHARED), src_lang="de", tgt_lang="en",
                               splits={"test": "test_2017_mscoco"})
    with pytest.raises(CorpusError, match="test_2017_mscoco.de"):
        dm.read_split("test")


def test_cleaning_unescapes_html_strips_whitespace_and_counts(caplog):
    assert clean_line("  Tom &amp; Jerry\tplay &quot;tag&quot; ") == 'Tom & Jerry play "tag"'
    with caplog.at_level(logging.INFO, logger="attnlab"):
        cleaned, changed = clean_lines(read_lines(SHARED / "train.en"), "train.en")
    assert changed > 0 and "&amp;" not in "".join(cleaned)
    assert f"{changed} of 29000 lines changed" in caplog.text


# -- SentencePiece --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def val_text():
    return read_lines(SHARED / "val.de") + read_lines(SHARED / "val.en")


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_round_trips_raw_text(val_text, model_type):
    tok = subword.train_sentencepiece(val_text, 400, model_type)
    assert tok.vocab_size == 400
    assert [tok.sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    for line in val_text[:200] + val_text[-200:]:
        # Exact after the corpus cleaning and SentencePiece's NFKC (a no-break space becomes a space).
        line = unicodedata.normalize("NFKC", clean_line(line))
        assert tok.decode(tok.encode(line)) == line
    restored = tokenizer_from_state(json.loads(json.dumps(tok.to_state())))  # plain containers only
    assert isinstance(restored, SentencePieceTokenizer) and restored.encode(val_text[0]) == tok.encode(val_text[0])


def test_tokenizer_cache_is_reused_and_keyed_by_settings(val_text, tmp_path, monkeypatch):
    first = cached_sentencepiece(val_text, 500, "bpe", tmp_path)
    files = sorted(p.name for p in (tmp_path / "tokenizers").iterdir())
    assert len(files) == 2 and not any(name.endswith(".tmp") for name in files)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of reusing the cache")

    monkeypatch.setattr(subword, "train_sentencepiece", no_training)
    again = cached_sentencepiece(val_text, 500, "bpe", tmp_path)
    assert again.model_proto == first.model_proto
    with pytest.raises(AssertionError, match="trained again"):  # other settings, other entry
        cached_sentencepiece(val_text, 400, "bpe", tmp_path)
    with pytest.raises(AssertionError, match="trained again"):  # other text, other entry
        cached_sentencepiece(val_text[:-1], 500, "bpe", tmp_path)


def test_a_tokenizer_cache_from_other_settings_is_refused_naming_the_file(val_text, tmp_path):
    cached_sentencepiece(val_text, 500, "bpe", tmp_path)
    meta = next((tmp_path / "tokenizers").glob("*.json"))
    meta.write_text(json.dumps({"settings": {"vocab_size": 123}}))
    with pytest.raises(CorpusError, match=f"{meta.with_suffix('.model').name}.*other settings"):
        cached_sentencepiece(val_text, 500, "bpe", tmp_path)


def test_a_vocabulary_larger_than_the_text_allows_names_the_key(val_text):
    with pytest.raises(ConfigError, match=r"data.vocab_size=50000 .*at most \d+"):
        subword.train_sentencepiece(val_text[:50], 50000, "bpe")


# -- a real, short run -----------------------------------------------------------------------------


def test_a_short_multi30k_run_learns(compose_train, tmp_path):
    """Joint BPE on the first 2,000 training pairs, a small model, eight short epochs (about 70 steps): the
    validation loss must fall well below a uniform guess (log V = 6.9), and the tokenizer lands in the cache."""
    cfg = compose_train(
        "experiment=multi30k_de_en", f"data.root={SHARED}", f"paths.data_dir={tmp_path / 'data'}",
        "data.vocab_size=1000", "model=tiny", "model.max_len=128", "data.max_tokens=2000", "logger=none",
        "callbacks=none", "trainer.max_epochs=8", "trainer.check_val_every_n_epoch=8", "optim.lr=3e-3",
        "optim.warmup_steps=20", "trainer.limit_val_batches=4",
        "trainer.max_time=null", "val_decode_size=0", "test=false", "show_examples=0",
        "data.splits.train=val",  # 1,014 pairs: the tokenizer trains in a second
    )  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")  # outside a Hydra run there is no runtime dir
    metrics = train(cfg)
    assert metrics["val/loss"] < 0.75 * math.log(1000), metrics
    assert list((tmp_path / "data" / "tokenizers").glob("spm-*.model"))


def test_a_fresh_interpreter_knows_every_tokenizer_kind_without_importing_its_module():
    """`attnlab-translate` never imports attnlab.data.subword: the registry must still know 'sentencepiece'
    (issue 18). A new interpreter, so nothing this pytest process imported can fill it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from attnlab.data.tokenizers import TOKENIZERS, tokenizer_class\n"
        "assert 'attnlab.data.subword' not in sys.modules\n"
        "print(sorted(k for k in TOKENIZERS if tokenizer_class(k).kind == k))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['sentencepiece', 'words']"
