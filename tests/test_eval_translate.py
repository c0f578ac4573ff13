"""`attnlab-eval` and `attnlab-translate` on a trained reverse model (tests/fixtures_ckpt.py, trained
once per session): scores and files, stdin -> stdout, n-best output, attention PNG, checkpoint
averaging, and the bad input both commands refuse with one message.

Two tests run the installed commands in a subprocess from a foreign directory (what a shell sees);
the others call the console scripts' `main()` in this process with a patched `sys.argv`: the same
Hydra composition and error reporting, without a Python start-up each.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from matplotlib.image import imread

from attnlab import evaluate, translate
from attnlab.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    average_checkpoints,
    last_checkpoints,
    load_trained,
    read_checkpoint,
)
from attnlab.config import validate
from attnlab.data.datamodule import TranslationDataModule
from attnlab.decoding import DecodeConfig
from attnlab.errors import ConfigError
from attnlab.lit_module import TranslationModule
from attnlab.report.attention_plot import attention_figure
from fixtures_ckpt import DATA, EPOCHS, trained_run  # noqa: F401

BIN = Path(sys.executable).parent
ENV = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": ""}
SENTENCES = ["a b c", "h g f e d", "c c a b", "b d f h a c", "e a g"]


def reverse(sentence: str) -> str:
    return " ".join(reversed(sentence.split()))


@pytest.fixture(scope="module")
def ckpt(trained_run) -> Path:  # noqa: F811
    return trained_run / "checkpoints" / "last.ckpt"


@pytest.fixture
def run_app(monkeypatch, capsys):
    """run_app(module, *overrides, stdin=None) -> (exit status, stdout, stderr) of the console script, in-process."""

    def _run(module, *overrides: str, stdin: str | bytes | None = None) -> tuple[int, str, str]:
        name = "attnlab-eval" if module is evaluate else "attnlab-translate"
        monkeypatch.setattr(sys, "argv", [name, *overrides])
        if stdin is not None:
            raw = stdin.encode() if isinstance(stdin, str) else stdin
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"))
        GlobalHydra.instance().clear()
        status = 0
        try:
            module.main()
        except SystemExit as stop:
            status = stop.code
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err
        return status, out, err

    return _run


# -- the real commands -------------------------------------------------------------------------


def test_eval_command_scores_the_test_set_and_writes_hypotheses(ckpt, tmp_path):
    done = subprocess.run(
        [str(BIN / "attnlab-eval"), f"ckpt={ckpt}", "split=test", f"paths.log_dir={tmp_path / 'logs'}"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for shown in ("BLEU", "chrF", "exact match", "perplexity", "sent/s", "tok:13a", "nc:6"):
        assert shown in done.stdout, shown
    [results_path] = (tmp_path / "logs").glob("eval/runs/*/results.json")
    results = json.loads(results_path.read_text())
    metrics = results["metrics"]
    assert metrics["exact_match"] >= 0.9 and metrics["bleu"] >= 90.0, metrics
    assert metrics["sentences"] == DATA["test_size"]
    assert metrics["sentences_per_sec"] > 0 and metrics["tokens_per_sec"] > metrics["sentences_per_sec"]
    assert 0 < metrics["loss"] < 0.5 and metrics["ppl"] == pytest.approx(2.718281828 ** metrics["loss"])
    assert results["signatures"]["bleu"].startswith("nrefs:1")
    # The run's own decoding (fixtures_ckpt.DECODE: greedy, max_len_b=4), not eval's beam defaults.
    assert results["decode"]["strategy"] == "greedy" and results["decode"]["max_len_b"] == 4
    used = "decoding with strategy=greedy beam_size=4 length_penalty=0.6 max_len_a=1.0 max_len_b=4 n_best=1"
    assert used in done.stdout

    # The hypotheses file sits next to results.json, one line per test sentence, and its
    # exact match against the references is the one reported.
    hyp_path = Path(results["hypotheses"])
    assert hyp_path.parent == results_path.parent
    hyps = hyp_path.read_text().splitlines()
    src, ref = TranslationDataModule(**DATA, seed=0).read_split("test")
    assert len(hyps) == len(ref) == len(src)
    assert sum(h == r for h, r in zip(hyps, ref)) / len(ref) == pytest.approx(metrics["exact_match"])
    assert all(r == reverse(s) for s, r in zip(src, ref))


def test_translate_command_round_trips_stdin_to_stdout(ckpt, tmp_path):
    done = subprocess.run(
        [str(BIN / "attnlab-translate"), f"ckpt={ckpt}"],
        input="".join(s + "\n" for s in SENTENCES), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(SENTENCES)
    assert sum(out == reverse(s) for out, s in zip(lines, SENTENCES)) >= 4, lines
    assert list(tmp_path.iterdir()) == []  # stdout is the only output: no files in the working directory


# -- translate in-process ------------------------------------------------------------------------


def test_translate_reads_a_file_and_writes_a_file(ckpt, tmp_path, run_app):
    (tmp_path / "in.txt").write_text("\n".join(SENTENCES) + "\n")
    status, out, _ = run_app(translate, f"ckpt={ckpt}", f"input={tmp_path / 'in.txt'}",
                             f"output={tmp_path / 'out.txt'}", "decode=greedy")  # fmt: skip
    assert status == 0 and out == ""
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert sum(out == reverse(s) for out, s in zip(lines, SENTENCES)) >= 4 and len(lines) == len(SENTENCES)


def parse_n_best(text: str) -> list[tuple[int, int, float, str]]:
    rows = []
    for line in text.splitlines():
        number, rank, score, hyp = line.split("\t")
        rows.append((int(number), int(rank), float(score), hyp))
    return rows


def test_n_best_output_format(ckpt, run_app):
    """decode.n_best=N: N lines per input line, `line<TAB>rank<TAB>log-prob<TAB>text`, best first."""
    stdin = "".join(s + "\n" for s in SENTENCES[:3])
    status, out, _ = run_app(translate, f"ckpt={ckpt}", "decode.n_best=3", "decode.length_penalty=0", stdin=stdin)
    assert status == 0
    rows = parse_n_best(out)
    assert [(n, r) for n, r, _, _ in rows] == [(n, r) for n in (1, 2, 3) for r in (1, 2, 3)]
    _, one_best, _ = run_app(translate, f"ckpt={ckpt}", stdin=stdin)
    for n in (1, 2, 3):
        hyps = [(score, text) for line, _, score, text in rows if line == n]
        assert len({text for _, text in hyps}) == 3
        assert [s for s, _ in hyps] == sorted((s for s, _ in hyps), reverse=True)  # alpha=0: by log-prob
        assert all(score <= 0 for score, _ in hyps)
        assert hyps[0][1] == one_best.splitlines()[n - 1]


def test_attention_png_has_one_panel_per_head(ckpt, tmp_path, run_app):
    png = tmp_path / "maps" / "attention.png"
    status, out, err = run_app(translate, f"ckpt={ckpt}", f"attention_png={png}", stdin="a b c d\n")
    assert status == 0 and out == "d c b a\n"
    trained = load_trained(ckpt)
    cfg = trained.model.config
    panels = (cfg.encoder_layers + 2 * cfg.decoder_layers) * cfg.n_heads  # encoder self, decoder self, cross
    assert f"({panels} panels)" in err
    height, width, _ = imread(png).shape
    rows, cols = cfg.encoder_layers + 2 * cfg.decoder_layers, cfg.n_heads
    assert (width, height) == (round((1.6 * cols + 1.0) * 150), round((1.6 * rows + 0.5) * 150))

    src = trained.src_tokenizer.encode("a b c d") + [cfg.eos_id]
    tgt_in = [cfg.bos_id] + trained.tgt_tokenizer.encode("d c b a")
    maps = trained.model.attention_maps(torch.tensor([src]), torch.tensor([tgt_in]))
    fig = attention_figure(maps, [str(i) for i in src], [str(i) for i in tgt_in])
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == panels == len(set(titles))
    assert "encoder self L1 H1" in titles and f"cross L{cfg.decoder_layers} H{cfg.n_heads}" in titles
    cross = fig.axes[titles.index("cross L1 H1")].get_images()[0].get_array()
    assert cross.shape == (len(tgt_in), len(src))
    assert torch.allclose(torch.tensor(cross.sum(1)).float(), torch.ones(len(tgt_in)), atol=1e-5)


# -- checkpoint averaging ------------------------------------------------------------------------


def test_averaging_the_last_n_checkpoints_gives_the_mean_weights(trained_run, tmp_path):  # noqa: F811
    paths = last_checkpoints(trained_run / "checkpoints", 3)
    steps = [read_checkpoint(p)["global_step"] for p in paths]
    assert steps == sorted(steps) and len(set(steps)) == 3
    out = average_checkpoints(paths, tmp_path / "avg.ckpt")
    states = [read_checkpoint(p)["state_dict"] for p in paths]
    averaged = read_checkpoint(out)
    for key, value in averaged["state_dict"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(s[key] for s in states) / 3, atol=1e-6, rtol=1e-6)
    weight = "model.encoder.layers.0.feed_forward.w_1.weight"
    assert not torch.equal(states[0][weight], states[-1][weight])  # they did differ
    assert averaged["averaged_from"] == [str(p) for p in paths]
    assert "optimizer_states" not in averaged
    assert load_trained(out).model.config == load_trained(paths[-1]).model.config
    with pytest.raises(CheckpointError, match="fewer than the 9 to average"):
        last_checkpoints(trained_run / "checkpoints", 9)


def test_average_last_takes_the_keep_series_not_the_best_val_checkpoint_between_its_steps(trained_run, tmp_path):  # noqa: F811
    """keep_last every 100 steps plus the best-val checkpoint at step 968 and last.ckpt (step 1200):
    the last 5 are the evenly spaced keep files 800-1200, never the best-val file between them."""
    template = read_checkpoint(next((trained_run / "checkpoints").glob("*.ckpt")))
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    names = {f"keep-step{s:07d}.ckpt": s for s in range(700, 1300, 100)}
    names |= {"epoch003-step968.ckpt": 968, "last.ckpt": 1200}
    for name, step in names.items():
        torch.save({**template, "global_step": step}, folder / name)
    assert [p.name for p in last_checkpoints(folder, 5)] == [f"keep-step{s:07d}.ckpt" for s in range(800, 1300, 100)]
    for path in folder.glob("keep-*.ckpt"):  # no keep series (callbacks=default): the newest steps of any file
        path.unlink()
    assert [p.name for p in last_checkpoints(folder, 2)] == ["epoch003-step968.ckpt", "last.ckpt"]


def test_eval_with_average_last(ckpt, tmp_path, run_app):
    status, out, _ = run_app(evaluate, f"ckpt={ckpt.parent}", "average_last=3", "limit=32", "decode=greedy",
                             f"paths.log_dir={tmp_path}")  # fmt: skip
    assert status == 0
    [results_path] = tmp_path.glob("eval/runs/*/results.json")
    results = json.loads(results_path.read_text())
    assert results["checkpoint"] == str(results_path.parent / "averaged.ckpt")
    assert results["metrics"]["sentences"] == 32 and results["metrics"]["exact_match"] >= 0.8
    assert results["averaged_from"] == [str(p) for p in last_checkpoints(ckpt.parent, 3)]


def test_an_average_in_the_checkpoint_folder_is_never_averaged_again(trained_run, tmp_path):  # noqa: F811
    """An averaged file carries its newest checkpoint's step: counted, it would replace that checkpoint."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for path in (trained_run / "checkpoints").glob("*.ckpt"):
        (folder / path.name).write_bytes(path.read_bytes())
    before = last_checkpoints(folder, 3)
    average_checkpoints(before, folder / "averaged.ckpt")  # sorts before keep-*.ckpt and last.ckpt
    assert [p.name for p in last_checkpoints(folder, 3)] == [p.name for p in before]
    assert "averaged.ckpt" not in {p.name for p in before}


def test_training_counts_the_target_tokens_it_trained_on_and_checkpoints_keep_the_count(trained_run):  # noqa: F811
    """train/target_tokens (the report's FLOP totals) = every epoch's non-pad target tokens; last.ckpt
    carries it, so a resumed run goes on counting from there."""
    dm = TranslationDataModule(**DATA, seed=0)
    dm.setup()
    pad = dm.tgt_tokenizer.pad_id
    per_epoch = sum(int((batch["tgt_out"] != pad).sum()) for batch in dm.train_dataloader())
    logged = json.loads((trained_run / "fit_metrics.json").read_text())
    assert logged["train/target_tokens"] == EPOCHS * per_epoch
    ckpt = read_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    assert ckpt["target_tokens"] == EPOCHS * per_epoch
    module = TranslationModule(**ckpt["hyper_parameters"])
    module.on_load_checkpoint(ckpt)  # what Trainer.fit(ckpt_path=...) calls on resume
    assert module.target_tokens == EPOCHS * per_epoch


def test_validation_bleu_is_logged_during_training(trained_run, compose_train):  # noqa: F811
    logged = json.loads((trained_run / "fit_metrics.json").read_text())
    assert logged["val/bleu"] >= 80.0 and logged["val/exact_match"] >= 0.8 and "val/chrf" in logged
    cfg = compose_train("callbacks=bleu")
    assert cfg.callbacks.model_checkpoint.monitor == "val/bleu" and cfg.callbacks.model_checkpoint.mode == "max"
    assert cfg.callbacks.early_stopping.monitor == "val/bleu"


# -- bad input -----------------------------------------------------------------------------------


def _truncated(ckpt: Path, path: Path) -> None:
    data = ckpt.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _text(ckpt: Path, path: Path) -> None:
    path.write_text("this is not a checkpoint\n")


def _edited(**changes):
    def _write(ckpt: Path, path: Path) -> None:
        data = torch.load(ckpt, weights_only=True)
        for key, value in changes.items():
            if value is None:
                data.pop(key)
            else:
                data[key] = value(data) if callable(value) else value
        torch.save(data, path)

    return _write


def _pickled_object(ckpt: Path, path: Path) -> None:
    torch.save({"state_dict": {}, "attnlab_format": CHECKPOINT_FORMAT, "code": Path("x")}, path)


def _wrong_shape(data: dict) -> dict:
    return {**data["hyper_parameters"], "model": {**data["hyper_parameters"]["model"], "d_model": 64}}


BAD_CHECKPOINTS = {
    "missing": (None, ["checkpoint not found"]),
    "truncated": (_truncated, ["not a checkpoint file, or it is truncated or corrupt"]),
    "not a checkpoint": (_text, ["not a checkpoint file, or it is truncated or corrupt"]),
    "no state_dict": (lambda c, p: torch.save({"weights": torch.zeros(2)}, p), ["not a Lightning checkpoint"]),
    "not from attnlab": (_edited(attnlab_format=None), ["not written by attnlab-train"]),
    "incompatible version": (_edited(attnlab_format=CHECKPOINT_FORMAT + 1), [f"format {CHECKPOINT_FORMAT + 1}",
                                                                             "attnlab version that trained it"]),
    "python objects": (_pickled_object, ["weights_only=True", "refuses to run code"]),
    "config does not fit weights": (_edited(hyper_parameters=_wrong_shape), ["weights do not fit"]),
    "no tokenizers": (_edited(tokenizers=None), ["tokenizers stored in it"]),
}  # fmt: skip


@pytest.mark.faults
@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_refused_with_one_message(case, ckpt, tmp_path, run_app):
    make, expected = BAD_CHECKPOINTS[case]
    path = tmp_path / "model.ckpt"
    if make:
        make(ckpt, path)
    status, out, err = run_app(translate, f"ckpt={path}", stdin="a b c\n")
    assert status == 2 and out == ""
    message = err.strip().splitlines()[-1]
    assert message.startswith("attnlab-translate: error: ") and str(path) in message
    for text in expected:
        assert text in message, message


@pytest.mark.faults
def test_eval_refuses_a_missing_checkpoint_a_folder_and_unknown_data(ckpt, tmp_path, run_app):
    status, _, err = run_app(evaluate, f"ckpt={tmp_path / 'none.ckpt'}", f"paths.log_dir={tmp_path}")
    assert status == 2 and "attnlab-eval: error: checkpoint not found" in err
    status, _, err = run_app(evaluate, f"ckpt={ckpt.parent}", f"paths.log_dir={tmp_path}")
    assert status == 2 and "is a directory; pass one .ckpt file inside it" in err and "last.ckpt" in err
    lone = tmp_path / "lone" / "model.ckpt"  # a checkpoint outside its run directory
    lone.parent.mkdir()
    lone.write_bytes(ckpt.read_bytes())
    status, _, err = run_app(evaluate, f"ckpt={lone}", f"paths.log_dir={tmp_path}")
    assert status == 2 and "cannot tell which data" in err and "data=" in err
    status, _, err = run_app(evaluate, f"ckpt={ckpt}", "split=dev", f"paths.log_dir={tmp_path}")
    assert status == 2 and "split='dev' is not one of" in err
    (tmp_path / "src.txt").write_text("a b\n \n")
    (tmp_path / "ref.txt").write_text("b a\nc\n")
    files = [f"src_file={tmp_path / 'src.txt'}", f"ref_file={tmp_path / 'ref.txt'}"]
    status, _, err = run_app(evaluate, f"ckpt={ckpt}", *files, f"paths.log_dir={tmp_path}")
    assert status == 2 and f"{tmp_path / 'src.txt'}, line 2: empty sentence" in err
    status, _, err = run_app(evaluate, f"ckpt={ckpt}", files[0], f"paths.log_dir={tmp_path}")
    assert status == 2 and "give both src_file=... and ref_file=..." in err


def test_translate_input_with_windows_line_endings_and_a_bom(ckpt, run_app):
    status, out, _ = run_app(translate, f"ckpt={ckpt}", "decode=greedy", stdin="\ufeffa b c\r\nd e f\r\n".encode())
    assert status == 0 and out == "c b a\nf e d\n"


@pytest.mark.faults
@pytest.mark.parametrize(
    "stdin,expected",
    [("", "<stdin>: no input sentences"), ("   \n\t\n", "<stdin>, line 1: empty sentence"),
     ("a b\n\nc d\n", "<stdin>, line 2: empty sentence"), (b"a b\nc \xff d\n", "<stdin>, line 2: invalid UTF-8")],
    ids=["empty", "whitespace only", "blank line", "invalid UTF-8"],
)  # fmt: skip
def test_empty_input_is_refused(ckpt, run_app, stdin, expected):
    status, out, err = run_app(translate, f"ckpt={ckpt}", stdin=stdin)
    assert status == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith(f"attnlab-translate: error: {expected}")


@pytest.mark.faults
def test_sentence_longer_than_max_len_is_truncated_with_a_warning(ckpt, run_app):
    """Documented choice (docs/decoding.md): truncate and warn, keeping one output line per input line."""
    max_len = load_trained(ckpt).model.config.max_len
    long = " ".join("abcdefgh"[i % 8] for i in range(max_len + 5))
    status, out, err = run_app(translate, f"ckpt={ckpt}", "decode=greedy", stdin=f"a b c\n{long}\nd e f\n")
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 3 and lines[0] == "c b a" and lines[2] == "f e d"
    assert f"1 sentence(s) longer than model.max_len={max_len} tokens were truncated (line 2)" in err


@pytest.mark.faults
@pytest.mark.parametrize(
    "overrides,expected",
    [(["decode.n_best=5"], "decode.n_best=5 must be in [1, decode.beam_size=4]"),
     (["decode=greedy", "decode.n_best=2"], "decode.n_best=2 needs decode=beam")],
)  # fmt: skip
def test_impossible_decode_settings_are_refused(ckpt, run_app, overrides, expected):
    status, _, err = run_app(translate, f"ckpt={ckpt}", *overrides, stdin="a b\n")
    assert status == 2 and expected in err


@pytest.mark.faults
@pytest.mark.parametrize(
    "overrides",
    [["decode=beam", "decode.n_best=5"], ["decode=greedy", "decode.n_best=2"], ["decode=beam", "decode.beam_size=0"]],
    ids=["n_best > beam_size", "n_best > 1 under greedy", "beam_size 0"],
)
def test_one_rule_set_refuses_decode_settings_with_one_message(overrides, ckpt, compose_train, run_app, tmp_path):
    """The training schema's validation, attnlab-eval and attnlab-translate (here on a run that decoded
    greedily with beam_size 4) refuse the same decode.* with the same message: one DecodeConfig."""
    with pytest.raises(ConfigError) as refused:
        validate(compose_train(*overrides))
    message = str(refused.value)
    assert message.startswith("decode.") and "Traceback" not in message
    for module, name in ((translate, "attnlab-translate"), (evaluate, "attnlab-eval")):
        where = [f"paths.log_dir={tmp_path}"] if module is evaluate else []
        status, out, err = run_app(module, f"ckpt={ckpt}", *overrides, *where, stdin="a b\n")
        assert status == 2 and f"{name}: error: {message}\n" in err, (name, err)
        assert "decoding with" not in out + err  # refused before anything was decoded


@pytest.mark.faults
@pytest.mark.parametrize("module", [translate, evaluate], ids=["translate", "eval"])
@pytest.mark.parametrize(
    "override,expected",
    [("decode.beam_size=four", "decode.beam_size='four' must be a whole number"),
     ("+decode.beams=4", "decode.beams is not a decode setting; valid keys under decode: strategy, beam_size,")],
)  # fmt: skip
def test_a_bad_decode_key_is_refused_before_the_checkpoint_is_read(module, override, expected, tmp_path, run_app):
    """Each key and value of the command line is checked first: the checkpoint named does not exist."""
    where = [f"paths.log_dir={tmp_path}"] if module is evaluate else []
    status, _, err = run_app(module, f"ckpt={tmp_path / 'missing.ckpt'}", override, *where, stdin="a b\n")
    assert status == 2 and expected in err and "missing.ckpt" not in err, err


def test_eval_translate_and_the_protocol_decode_with_one_typed_config(ckpt, compose_train, run_app, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    """For the same checkpoint and no decode.* on the command line, attnlab-eval, attnlab-translate and a
    run's own test (attnlab.protocol) hand the search the same DecodeConfig: the run's settings
    (fixtures_ckpt.DECODE), n_best 1; result.json's and protocol.json's `decode` record it."""
    from attnlab import protocol
    from attnlab.decoding import batch

    seen = {}

    def spy(name):
        def translate_ids(model, sources, config, batch_size=64):
            seen.setdefault(name, config)
            return batch.translate_ids(model, sources, config, batch_size)

        return translate_ids

    monkeypatch.setattr(translate, "translate_ids", spy("translate"))
    monkeypatch.setattr(evaluate, "translate_ids", spy("eval"))
    status, _, err = run_app(translate, f"ckpt={ckpt}", stdin="a b c\n")
    assert status == 0, err
    status, _, err = run_app(evaluate, f"ckpt={ckpt}", "limit=8", f"paths.log_dir={tmp_path / 'eval'}")
    assert status == 0, err
    [results] = (tmp_path / "eval").glob("eval/runs/*/results.json")

    # The protocol after training, on the same weights (protocol.protocol_weights is tested in test_protocol.py).
    trained = load_trained(ckpt)
    monkeypatch.setattr(protocol, "protocol_weights", lambda *a: trained)
    eval_config = seen.pop("eval")  # the protocol scores through evaluate.score too: it records anew
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device="cpu"), checkpoint_callback=None, global_step=0)
    cfg = compose_train()
    texts = {"test": (["a b c", "d e f"], ["c b a", "f e d"])}
    protocol.run_protocol(cfg, trainer, None, texts, tmp_path / "run")
    protocol_config = seen.pop("eval")

    want = DecodeConfig(strategy="greedy", max_len_b=4)  # fixtures_ckpt.DECODE
    assert type(seen["translate"]) is type(eval_config) is type(protocol_config) is DecodeConfig
    assert seen["translate"] == eval_config == protocol_config == want
    recorded = json.loads((tmp_path / "run" / "protocol.json").read_text())["decode"]
    assert recorded == json.loads(results.read_text())["decode"] == want.to_dict()


def test_decode_keys_reach_the_search(ckpt, run_app):
    """min_len and the a * src_len + b limit given on the command line change the output length."""
    # max_len_b=20 on the command line beats the run's 4 (which would stop at 7 words and EOS).
    status, out, _ = run_app(
        translate, f"ckpt={ckpt}", "decode=greedy", "+decode.min_len=8", "decode.max_len_b=20", stdin="a b c\n"
    )
    assert status == 0 and len(out.split()) >= 8
    # "a b c" is 4 source tokens with EOS: a limit of 0.5 * 4 + 0 = 2 tokens leaves one word before EOS.
    status, out, _ = run_app(translate, f"ckpt={ckpt}", "decode=greedy", "decode.max_len_a=0.5", "decode.max_len_b=0",
                          stdin="a b c\n")
    assert status == 0 and out == "c\n"


# -- the run's decoding, and bad options (issue 18) -----------------------------------------------------


def _beam_alpha_1(data: dict) -> dict:
    decode = {"strategy": "beam", "beam_size": 3, "n_best": 1, "length_penalty": 1.0, "max_len_a": 1.0,
              "max_len_b": 4, "compile": False}  # fmt: skip
    return {**data["hyper_parameters"], "decode": decode}


@pytest.fixture(scope="module")
def beam_run(trained_run, tmp_path_factory) -> Path:  # noqa: F811
    """The fixture run's checkpoint as if trained with decode=beam decode.beam_size=3 decode.length_penalty=1.0."""
    run = tmp_path_factory.mktemp("beam_run")
    (run / "checkpoints").mkdir()
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_bytes((trained_run / ".hydra" / "config.yaml").read_bytes())
    edit = _edited(hyper_parameters=_beam_alpha_1)
    edit(trained_run / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    return run / "checkpoints" / "last.ckpt"


def _decoding_line(text: str) -> str:
    (line,) = [line for line in text.splitlines() if "decoding with strategy=" in line]
    return line


def test_eval_decodes_with_the_runs_settings_unless_given(beam_run, tmp_path, run_app):
    status, out, err = run_app(evaluate, f"ckpt={beam_run}", "limit=8", f"paths.log_dir={tmp_path / 'a'}")
    assert status == 0, err
    line = _decoding_line(out)
    assert "strategy=beam beam_size=3 length_penalty=1.0 max_len_a=1.0 max_len_b=4 n_best=1" in line, line
    assert "from the checkpoint's run)" in line
    [results] = (tmp_path / "a").glob("eval/runs/*/results.json")
    assert json.loads(results.read_text())["decode"]["length_penalty"] == 1.0
    status, out, err = run_app(evaluate, f"ckpt={beam_run}", "limit=8", "decode.length_penalty=0.3",
                               f"paths.log_dir={tmp_path / 'b'}")  # fmt: skip
    assert status == 0, err
    line = _decoding_line(out)
    assert "length_penalty=0.3" in line and "beam_size=3" in line and "command line: length_penalty" in line, line
    [results] = (tmp_path / "b").glob("eval/runs/*/results.json")
    assert json.loads(results.read_text())["decode"]["length_penalty"] == 0.3


def test_translate_decodes_with_the_runs_settings_unless_given(ckpt, beam_run, run_app):
    status, out, err = run_app(translate, f"ckpt={beam_run}", "decode.n_best=3", stdin="a b c\n")
    assert status == 0 and len(out.splitlines()) == 3, err
    assert "strategy=beam beam_size=3 length_penalty=1.0" in _decoding_line(err)
    assert "decoding with" not in out  # stdout holds translations only
    # decode=greedy on the command line beats the run's beam search.
    status, out, err = run_app(translate, f"ckpt={beam_run}", "decode=greedy", stdin="a b c\n")
    assert status == 0 and out == "c b a\n" and "strategy=greedy" in _decoding_line(err)
    # A run that decoded greedily, asked for an n-best list: beam search (nothing else gives one).
    status, out, err = run_app(translate, f"ckpt={ckpt}", "decode.n_best=2", stdin="a b c\n")
    assert status == 0 and len(out.splitlines()) == 2 and "strategy=beam" in _decoding_line(err)


@pytest.mark.faults
@pytest.mark.parametrize("module", [translate, evaluate], ids=["translate", "eval"])
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a torch without CUDA")
def test_cuda_on_a_cpu_only_torch_is_one_message(module, ckpt, tmp_path, run_app):
    where = [f"paths.log_dir={tmp_path}"] if module is evaluate else []
    status, out, err = run_app(module, f"ckpt={ckpt}", "device=cuda", *where, stdin="a b\n")
    message = err.strip().splitlines()[-1]
    assert status == 2 and out == "" and "device=cuda: this torch" in message and "use device=cpu" in message


@pytest.mark.faults
@pytest.mark.parametrize(
    "overrides,expected",
    [(["batch_size=0"], "batch_size=0 must be a whole number >= 1"),
     (["average_last=-3"], "average_last=-3 must be 0"),
     (["output={tmp}"], "output={tmp} is a folder"),
     (["output={tmp}/missing/out.txt"], "output={tmp}/missing/out.txt: the folder {tmp}/missing does not exist")],
)  # fmt: skip
def test_bad_translate_options_are_refused_before_decoding(overrides, expected, ckpt, tmp_path, run_app):
    overrides = [o.format(tmp=tmp_path) for o in overrides]
    status, out, err = run_app(translate, f"ckpt={ckpt}", *overrides, stdin="a b\n")
    assert status == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith(f"attnlab-translate: error: {expected.format(tmp=tmp_path)}"), err
    assert "decoding with" not in err  # refused before the checkpoint was read or anything decoded


@pytest.mark.faults
def test_eval_refuses_negative_average_last_and_a_zero_batch(ckpt, tmp_path, run_app):
    for option, expected in (("average_last=-3", "average_last=-3 must be 0"), ("batch_size=0", "batch_size=0")):
        status, _, err = run_app(evaluate, f"ckpt={ckpt}", option, f"paths.log_dir={tmp_path}")
        assert status == 2 and f"attnlab-eval: error: {expected}" in err


def test_attention_png_into_a_folder_logs_the_file_written(ckpt, tmp_path, run_app):
    status, _, err = run_app(translate, f"ckpt={ckpt}", f"attention_png={tmp_path}", stdin="a b c\n")
    assert status == 0
    assert (tmp_path / "attention.png").read_bytes()[:4] == b"\x89PNG"
    assert f"written to {tmp_path / 'attention.png'}" in err and not Path(f"{tmp_path}.png").exists()


@pytest.mark.faults
def test_average_last_hint_works_as_written(trained_run, compose_train):  # noqa: F811
    with pytest.raises(CheckpointError) as refused:
        last_checkpoints(trained_run / "checkpoints", 9)
    hint = str(refused.value).split("or ", 1)[1].split(" to keep")[0].split()
    assert hint == ["callbacks=keep_last", "callbacks.keep_last.save_top_k=9"]
    cfg = compose_train(*hint)  # the hint's overrides compose, and keep what they say
    assert cfg.callbacks.keep_last.save_top_k == 9


def test_slow_decoding_speed_is_not_rounded_to_zero():
    assert [evaluate.rate(x) for x in (0.0123, 0.5, 47.61, 3479.4)] == ["0.0123", "0.5", "47.6", "3479"]
