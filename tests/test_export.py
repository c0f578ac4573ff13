"""attnlab-export: a checkpoint as a Hugging Face MarianMTModel folder and as a CTranslate2 model.

The model is the real-corpus run of tests/test_protocol.py (its Multi30k slice, joint SentencePiece,
shared embeddings), trained here for a few more steps so that greedy outputs vary. The exports must
compute attnlab's function: equal logits, and greedy outputs equal token for token (Transformers'
`generate` on MarianTokenizer's ids, CTranslate2 on its tokens) with attnlab's on real test sentences.
Other tie/vocabulary layouts are checked on small random models, where a mapping error shows as clearly.
attnlab-bench's real-data part runs on the same run (installed command, fresh process): HF on the export
gives attnlab's hypotheses and BLEU, and the results file carries figures, checks and targets.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import test_protocol
from attnlab import train
from attnlab.checkpoint import TrainedModel, last_checkpoints, load_trained
from attnlab.data.subword import train_sentencepiece
from attnlab.data.tokenizers import WordTokenizer, content_ids
from attnlab.decoding import DecodeConfig, greedy_search
from attnlab.decoding.batch import fit_sources, translate_ids
from attnlab.decoding.greedy import output_limits
from attnlab.errors import ConfigError
from attnlab.export import check_marian, convert_ctranslate2, export_marian, marian
from attnlab.model import Transformer, TransformerConfig
from test_protocol import RUN, call_main

transformers = pytest.importorskip("transformers", reason="the export extra: pip install 'attnlab[export]'")
ctranslate2 = pytest.importorskip("ctranslate2", reason="the export extra: pip install 'attnlab[export]'")

BIN = Path(sys.executable).parent
multi30k_slice = test_protocol.corpus  # the fixture: the first lines of the Multi30k files the run reads
N_SENTENCES = 30  # the slice's test_2016_flickr


@pytest.fixture(scope="module")
def ckpt(multi30k_slice, tmp_path_factory) -> Path:
    """test_protocol's run for 300 steps with a short warm-up (so that greedy outputs vary), without its
    test-set protocol: the last checkpoint (about 12 s)."""
    work = tmp_path_factory.mktemp("export_run")
    run = [a for a in RUN if not a.startswith(("trainer.max_steps", "eval_protocol."))]
    run += ["trainer.max_steps=300", "optim.warmup_steps=30", "optim.lr=5e-3", "test=false",
            f"data.root={multi30k_slice}", f"paths.data_dir={work / 'cache'}",
            f"hydra.run.dir={work / 'run'}"]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        call_main(train, ["attnlab-train", *run], mp)
    return last_checkpoints(work / "run" / "checkpoints", 1)[0]


@pytest.fixture(scope="module")
def trained(ckpt) -> TrainedModel:
    return load_trained(ckpt)


@pytest.fixture(scope="module")
def hf_dir(trained, tmp_path_factory) -> Path:
    return export_marian(trained, tmp_path_factory.mktemp("export") / "marian")


@pytest.fixture(scope="module")
def sentences(multi30k_slice) -> list[str]:
    return (multi30k_slice / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()[:N_SENTENCES]


def attnlab_greedy(trained: TrainedModel, sources: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """attnlab's greedy outputs (content ids) under the run's length limit, and each sentence's limit."""
    settings = DecodeConfig.from_dict({**trained.hparams["decode"], "strategy": "greedy"})
    outputs = [hyps[0][0] for hyps in translate_ids(trained.model, sources, settings)]
    limits = [
        int(output_limits(trained.model, torch.tensor([s]), None, settings.max_len_a, settings.max_len_b)[0])
        for s in sources
    ]
    return outputs, limits


# -- (a) the same function -------------------------------------------------------------------------


def test_marian_folder_has_the_files_transformers_reads(hf_dir, trained):
    names = {p.name for p in hf_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "source.spm", "target.spm",
            "vocab.json", "tokenizer_config.json", "attnlab_export.json"} <= names  # fmt: skip
    generation = json.loads((hf_dir / "generation_config.json").read_text())
    decode, cfg = trained.hparams["decode"], trained.model.config
    assert generation["num_beams"] == decode["beam_size"] == 4 and generation["length_penalty"] == 1.0
    assert generation["decoder_start_token_id"] == cfg.bos_id != cfg.pad_id
    assert (generation["pad_token_id"], generation["eos_token_id"]) == (cfg.pad_id, cfg.eos_id)
    assert generation["max_length"] == cfg.max_len + 1


def test_exported_marian_gives_attnlabs_logits(hf_dir, trained, sentences, multi30k_slice):
    tokenizer = transformers.MarianTokenizer.from_pretrained(hf_dir)
    marian = transformers.MarianMTModel.from_pretrained(hf_dir).eval()
    model, cfg = trained.model, trained.model.config
    batch = tokenizer(sentences, return_tensors="pt", padding=True)
    # MarianTokenizer appends </s> as attnlab does to every source: the same input ids.
    sources = fit_sources([trained.src_tokenizer.encode(s) for s in sentences], model)
    assert [row[row != cfg.pad_id].tolist() for row in batch["input_ids"]] == sources
    references = (multi30k_slice / "test_2016_flickr.en").read_text(encoding="utf-8").splitlines()[:N_SENTENCES]
    tgt = [[cfg.bos_id] + trained.tgt_tokenizer.encode(s) for s in references]  # teacher forcing
    tgt_in = torch.nn.utils.rnn.pad_sequence([torch.tensor(t) for t in tgt], batch_first=True)
    with torch.no_grad():
        ours = model(batch["input_ids"], tgt_in)
        theirs = marian(**batch, decoder_input_ids=tgt_in).logits
    assert ours.shape == theirs.shape
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)

    # Marian rebuilds its position table (the weights file holds none): its halves of sines and cosines
    # are attnlab's interleaved table with the features reordered, as the export reorders the model.
    order = torch.cat([torch.arange(0, cfg.d_model, 2), torch.arange(1, cfg.d_model, 2)])
    table = marian.model.encoder.embed_positions.weight
    torch.testing.assert_close(table, model.src_embed.position.pe[:, order], atol=1e-5, rtol=0)


# -- (b) and (c): greedy outputs, token for token ------------------------------------------------


def test_marian_generate_gives_attnlabs_greedy_outputs(hf_dir, trained, sentences):
    tokenizer = transformers.MarianTokenizer.from_pretrained(hf_dir)
    marian = transformers.MarianMTModel.from_pretrained(hf_dir).eval()
    sources = fit_sources([trained.src_tokenizer.encode(s) for s in sentences], trained.model)
    ours, limits = attnlab_greedy(trained, sources)
    # The test has teeth: varied outputs, most ending with EOS before the limit.
    assert len({tuple(o) for o in ours}) > N_SENTENCES // 2
    assert sum(len(o) < limit - 1 for o, limit in zip(ours, limits)) > N_SENTENCES // 2
    theirs = []
    for sentence, limit in zip(sentences, limits):
        batch = tokenizer([sentence], return_tensors="pt")
        # max_length counts the start token; the run's a * src_len + b is per sentence.
        out = marian.generate(**batch, num_beams=1, max_length=limit + 1)[0].tolist()
        assert out[0] == trained.model.config.bos_id
        theirs.append(content_ids(out[1:]))
    assert theirs == ours
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in theirs]
    assert texts == [trained.tgt_tokenizer.decode(ids) for ids in ours]


def test_marian_batched_generate_with_padding_gives_attnlabs_greedy_outputs(hf_dir, trained, sentences):
    """One padded batch and one length limit: the encoder's padding mask maps too."""
    tokenizer = transformers.MarianTokenizer.from_pretrained(hf_dir)
    marian = transformers.MarianMTModel.from_pretrained(hf_dir).eval()
    batch = tokenizer(sentences, return_tensors="pt", padding=True)
    ours = greedy_search(trained.model, batch["input_ids"], max_len=20)
    theirs = marian.generate(**batch, num_beams=1, max_length=21)
    assert [content_ids(row[1:]) for row in theirs.tolist()] == [content_ids(row) for row in ours.tolist()]


@pytest.fixture(scope="module")
def ct2_dir(hf_dir, tmp_path_factory) -> Path:
    return convert_ctranslate2(hf_dir, tmp_path_factory.mktemp("ct2") / "model", quantization="float32")


def test_ctranslate2_gives_attnlabs_greedy_outputs(hf_dir, ct2_dir, trained, sentences):
    assert {"model.bin", "config.json", "source.spm", "target.spm"} <= {p.name for p in ct2_dir.iterdir()}
    tokenizer = transformers.MarianTokenizer.from_pretrained(hf_dir)
    translator = ctranslate2.Translator(str(ct2_dir), device="cpu", intra_threads=1)
    sources = fit_sources([trained.src_tokenizer.encode(s) for s in sentences], trained.model)
    ours, limits = attnlab_greedy(trained, sources)
    theirs = []
    for source, limit in zip(sources, limits):
        (result,) = translator.translate_batch(
            [tokenizer.convert_ids_to_tokens(source)], beam_size=1, min_decoding_length=0,
            # attnlab's limit counts the EOS it forces there; CTranslate2 stops at its limit without one.
            max_decoding_length=limit - 1, suppress_sequences=[["<pad>"], ["<s>"]],
        )  # fmt: skip
        theirs.append(tokenizer.convert_tokens_to_ids(result.hypotheses[0]))
    assert theirs == ours


# -- other layouts: tied, untied, two vocabularies (random weights) --------------------------------


@pytest.fixture(scope="module")
def spm_models(multi30k_slice) -> dict:
    """Two small SentencePiece models (German, English) and a joint one, from the slice's training text."""
    de = (multi30k_slice / "train.de").read_text(encoding="utf-8").splitlines()
    en = (multi30k_slice / "train.en").read_text(encoding="utf-8").splitlines()
    return {"de": train_sentencepiece(de, 200, "bpe"), "en": train_sentencepiece(en, 180, "bpe"),
            "joint": train_sentencepiece(de + en, 250, "bpe")}  # fmt: skip


def random_trained(tiny_config, src_tok, tgt_tok, **switches) -> TrainedModel:
    """A model whose every weight, LayerNorm and bias included, is random: a mapping error cannot hide
    behind LayerNorm's ones and zeros, which any reordering leaves equal."""
    cfg = tiny_config(src_vocab_size=src_tok.vocab_size, tgt_vocab_size=tgt_tok.vocab_size, max_len=128,
                           **switches)  # fmt: skip
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return TrainedModel(model, src_tok, tgt_tok, {"decode": {"strategy": "greedy"}}, Path("random.ckpt"), 0)


LAYOUTS = [("all", "joint", "joint"), ("decoder", "joint", "joint"), ("decoder", "de", "en"), ("none", "de", "en")]


@pytest.mark.parametrize("tie, src, tgt", LAYOUTS)
def test_every_embedding_layout_exports_to_marian_and_ctranslate2(
    tie, src, tgt, spm_models, sentences, multi30k_slice, tiny_config, tmp_path
):
    trained = random_trained(tiny_config, spm_models[src], spm_models[tgt], tie_embeddings=tie)
    hf = export_marian(trained, tmp_path / "marian")
    assert (hf / "target_vocab.json").is_file() == (src != tgt)
    tokenizer = transformers.MarianTokenizer.from_pretrained(hf)
    marian = transformers.MarianMTModel.from_pretrained(hf).eval()
    references = (multi30k_slice / "test_2016_flickr.en").read_text(encoding="utf-8").splitlines()[:8]
    batch = tokenizer(sentences[:8], text_target=references, return_tensors="pt", padding=True)
    src_ids = [trained.src_tokenizer.encode(s) + [2] for s in sentences[:8]]
    tgt_ids = [trained.tgt_tokenizer.encode(s) + [2] for s in references]
    assert [row[row != 0].tolist() for row in batch["input_ids"]] == src_ids
    assert [row[row != 0].tolist() for row in batch["labels"]] == tgt_ids  # the target vocabulary
    tgt_in = torch.nn.utils.rnn.pad_sequence([torch.tensor([1] + t[:-1]) for t in tgt_ids], batch_first=True)
    with torch.no_grad():
        ours = trained.model(batch["input_ids"], tgt_in).log_softmax(-1)
        theirs = marian(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        decoder_input_ids=tgt_in).logits.log_softmax(-1)  # fmt: skip
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)

    translator = ctranslate2.Translator(str(convert_ctranslate2(hf, tmp_path / "ct2")), intra_threads=1)
    # CTranslate2 reads pieces: each side's own SentencePiece model (MarianTokenizer's convert_ids_to_tokens
    # reads target ids only, when the sides have two vocabularies).
    source_pieces = [[trained.src_tokenizer.sp.id_to_piece(i) for i in s] for s in src_ids]
    target_pieces = [[trained.tgt_tokenizer.sp.id_to_piece(i) for i in t[:-1]] for t in tgt_ids]
    scored = translator.score_batch(source_pieces, target_pieces)
    for row, (result, t) in enumerate(zip(scored, tgt_ids)):
        expected = ours[row, torch.arange(len(t)), torch.tensor(t)]
        torch.testing.assert_close(torch.tensor(result.log_probs), expected, atol=1e-4, rtol=1e-4)


# -- (d) what Marian cannot express ---------------------------------------------------------------


REFUSED = [
    ({"positional": "learned"}, "model.positional=learned cannot be exported to Marian (it has sinusoidal"),
    ({"positional": "rope"}, "model.positional=rope cannot be exported to Marian (it has sinusoidal"),
    ({"positional": "alibi"}, "model.positional=alibi cannot be exported to Marian"),
    ({"positional": "none"}, "model.positional=none cannot be exported to Marian"),
    ({"norm": "pre"}, "model.norm=pre cannot be exported to Marian (it is post-norm"),
    ({"residual": False}, "model.residual=false cannot be exported to Marian"),
    (
        {"d_head": 4},
        "model.d_head=4 cannot be exported to Marian (its query/key width per head is d_model / n_heads = 8)",
    ),
]


@pytest.mark.parametrize(
    "switch, message", REFUSED, ids=[",".join(f"{k}={v}" for k, v in s.items()) for s, _ in REFUSED]
)
def test_each_switch_marian_lacks_is_refused_by_name(switch, message, tiny_config):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_marian(tiny_config(**switch))


def test_the_export_refuses_before_writing_and_names_every_switch(spm_models, tiny_config, tmp_path):
    trained = random_trained(tiny_config, spm_models["joint"], spm_models["joint"], norm="pre", positional="rope")
    with pytest.raises(ConfigError, match=r"model.positional=rope .*; model.norm=pre "):
        export_marian(trained, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_every_model_switch_is_decided():
    """A new TransformerConfig field fails here until marian.py carries it over or checks it."""
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    assert fields == set(marian.CHECKED) | set(marian.CARRIED)


def test_a_word_level_run_is_refused_naming_its_tokenizer(tiny_config, tmp_path):
    words = WordTokenizer(["a", "b", "c"])
    cfg = tiny_config(src_vocab_size=words.vocab_size, tgt_vocab_size=words.vocab_size)
    trained = TrainedModel(Transformer(cfg).eval(), words, words, {}, Path("w.ckpt"), 0)
    with pytest.raises(ConfigError, match="data.tokenizer=words: MarianTokenizer reads SentencePiece models only"):
        export_marian(trained, tmp_path / "out")


def test_out_folders_and_conversion_inputs_are_checked(hf_dir, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is a folder that is not empty"):
        convert_ctranslate2(hf_dir, tmp_path / "busy")
    with pytest.raises(ConfigError, match="holds no attnlab_export.json: overwrite=true replaces an earlier export"):
        convert_ctranslate2(hf_dir, tmp_path / "busy", overwrite=True)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match=r"quantization='int3' is not one of \['int8'"):
        convert_ctranslate2(hf_dir, tmp_path / "new", quantization="int3")
    with pytest.raises(ConfigError, match="is not a folder attnlab-export format=hf wrote"):
        convert_ctranslate2(tmp_path / "busy", tmp_path / "new")


def test_the_export_package_loads_neither_extra_until_it_is_used():
    """`import attnlab.export` (and the command's module) works without the export extra installed."""
    code = (
        "import sys, attnlab.export, attnlab.export.cli\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'transformers', 'ctranslate2'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


# -- (e) the console script, in a fresh process -------------------------------------------------


def export_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": ""}
    return subprocess.run([str(BIN / "attnlab-export"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_console_script_writes_a_marian_folder_and_a_ctranslate2_model(ckpt, tmp_path):
    done = export_command(f"ckpt={ckpt}", "format=hf", "out=marian", cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "hf model written to" in done.stderr and "generation_config.json: strategy=beam" in done.stderr
    assert {"config.json", "model.safetensors", "generation_config.json", "source.spm", "target.spm", "vocab.json",
            "tokenizer_config.json"} <= {p.name for p in (tmp_path / "marian").iterdir()}  # fmt: skip

    done = export_command(f"ckpt={ckpt}", "format=ctranslate2", "quantization=int8", "out=ct2", cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert {"model.bin", "config.json", "source.spm", "target.spm"} <= {p.name for p in (tmp_path / "ct2").iterdir()}
    tokenizer = transformers.MarianTokenizer.from_pretrained(tmp_path / "marian")
    translator = ctranslate2.Translator(str(tmp_path / "ct2"), intra_threads=1)
    source = tokenizer.convert_ids_to_tokens(tokenizer.encode("Ein Hund läuft."))
    (result,) = translator.translate_batch([source], beam_size=1, max_decoding_length=10)
    assert result.hypotheses[0]

    done = export_command(f"ckpt={ckpt}", "format=hf", "out=marian", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"attnlab-export: error: out={tmp_path / 'marian'} is a folder that is not empty; choose a new one, "
        "or overwrite=true"
    )


# -- attnlab-bench's real-data part on the same run (perf/real.py) ---------------------------------

BENCH_SYSTEMS = ["attnlab", "attnlab-int8", "marian", "ctranslate2", "ctranslate2-int8"]


def test_real_data_bench_decodes_the_test_set_in_every_system(ckpt, trained, tmp_path):
    out = tmp_path / "real.json"
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(BIN / "attnlab-bench"), f"real.ckpt={ckpt}", "real.rounds=1", "real.warmup=0", "threads=1",
         "real.beam_size=3", f"real.systems=[{','.join(BENCH_SYSTEMS)}]", f"output={out}", f"paths.log_dir={tmp_path}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "real data: test, 30 sentences" in done.stdout and "real-data targets" in done.stdout
    results = json.loads(out.read_text())["real"]
    assert results["sentences"] == 30 and results["search"]["beam_size"] == 3
    assert set(results["systems"]) == set(BENCH_SYSTEMS)
    for by_strategy in results["systems"].values():
        assert set(by_strategy) == {"greedy", "beam"}
        for f in by_strategy.values():
            assert f["sentences_per_sec"] > 0 and f["tokens_per_sec"] > f["sentences_per_sec"]
            assert 0.0 <= f["bleu"] <= 100.0
    # the same model and search in HF: the same hypotheses, so the same BLEU
    marian = [c for c in results["checks"] if c["check"].startswith("marian")]
    assert len(marian) == 2 and all(c["ok"] and c["identical"] == 1.0 for c in marian), marian
    for strategy in ("greedy", "beam"):
        assert results["systems"]["marian"][strategy]["bleu"] == results["systems"]["attnlab"][strategy]["bleu"]
    targets = {(t["system"], t["peer"], t["strategy"]): t for t in results["targets"]}
    assert ("attnlab", "marian", "beam") in targets and ("attnlab-int8", "ctranslate2-int8", "greedy") in targets
    for t in targets.values():
        assert t["met"] == (t["paired"] >= t["target"]) and t["paired"] > 0


def test_real_data_bench_refuses_unknown_systems_and_unaligned_files(ckpt, tmp_path):
    from omegaconf import OmegaConf

    from attnlab.perf import real
    from attnlab.perf.config import RealSchema

    (tmp_path / "a.de").write_text("ein Hund\nzwei Hunde\n")
    (tmp_path / "a.en").write_text("a dog\n")
    base = OmegaConf.structured(RealSchema(ckpt=str(ckpt)))
    bench = lambda **real_keys: OmegaConf.create({"threads": None, "real": OmegaConf.merge(base, real_keys)})
    with pytest.raises(ConfigError, match=r"real.systems=\['attnlab', 'fairseq'\] must include attnlab"):
        real.run_real(bench(systems=["attnlab", "fairseq"]))
    with pytest.raises(ConfigError, match="has 2 lines but real.ref_file 1"):
        real.run_real(bench(src_file=str(tmp_path / "a.de"), ref_file=str(tmp_path / "a.en")))


def test_eval_decodes_with_int8_weights_on_the_real_corpus_run(ckpt, tmp_path):
    """README's `decode.precision=int8`, through the installed attnlab-eval in a fresh process, on the
    real-corpus run's own test split: the int8 BLEU stays near the fp32 one, and results.json says int8."""
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": ""}
    scores = {}
    for precision in ("fp32", "int8"):
        logs = tmp_path / precision
        done = subprocess.run(
            [str(BIN / "attnlab-eval"), f"ckpt={ckpt}", "split=test", "decode=greedy",
             f"decode.precision={precision}", f"paths.log_dir={logs}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        [path] = logs.glob("eval/runs/*/results.json")
        record = json.loads(path.read_text())
        assert record["decode"].get("precision", "fp32") == precision
        assert record["metrics"]["sentences"] == N_SENTENCES
        scores[precision] = record["metrics"]["bleu"]
    assert "precision=int8" in done.stdout
    assert scores["fp32"] > 1.0 and abs(scores["int8"] - scores["fp32"]) <= 3.0, scores
