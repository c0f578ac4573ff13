"""One evaluation protocol per run (`eval_protocol.*`): a run's own test score is the score
`attnlab-eval` gives the same weights with the same settings, on every test set the protocol names,
with the hypotheses saved for paired comparisons; and a protocol the run cannot follow is refused
before anything is built.

The real-corpus run is a slice of Multi30k (data=multi30k with a local root: joint SentencePiece, two
test sets) through `experiment=multi30k_de_en`, at a size that trains in seconds: checkpoints every
10 steps, the last 2 kept and averaged. Both commands run in this process (their Hydra `main()`), as
tests/test_eval_translate.py does.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import attnlab.train
from attnlab import evaluate, protocol, rescore, train
from attnlab.config import ConfigError
from attnlab.report import tables as report
from attnlab.training import runlog
from test_bad_input import QUICK, in_process

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "multi30k"
SLICE = {"train": 400, "val": 20, "test_2016_flickr": 30, "test_2017_flickr": 20}
RUN = [
    "experiment=multi30k_de_en", "data.vocab_size=500", "model.d_model=32", "model.d_ff=64", "model.n_heads=2",
    "model.encoder_layers=1", "model.decoder_layers=1", "model.max_len=128", "data.max_tokens=1500",
    "trainer.max_steps=30", "trainer.max_time=null",
    "callbacks.keep_last.every_n_epochs=null", "+callbacks.keep_last.every_n_train_steps=10",
    "callbacks.keep_last.save_top_k=2", "eval_protocol.average_last=2", "decode.max_len_b=5",
    "val_decode_size=0", "show_examples=0", "logger=csv", "threads=1",
]  # fmt: skip


def call_main(module, argv: list[str], monkeypatch) -> None:
    """A console script's Hydra main() in this process; a SystemExit is a failure here."""
    monkeypatch.setattr(sys, "argv", argv)
    GlobalHydra.instance().clear()
    module.main()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The first lines of each Multi30k file the run reads, under their Multi30k names."""
    if not SHARED.is_dir():
        pytest.skip(f"no local Multi30k copy at {SHARED}")
    root = tmp_path_factory.mktemp("multi30k_slice")
    for name, n in SLICE.items():
        for lang in ("de", "en"):
            lines = (SHARED / f"{name}.{lang}").read_text(encoding="utf-8").splitlines(keepends=True)[:n]
            (root / f"{name}.{lang}").write_text("".join(lines), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("protocol_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        call_main(train, ["attnlab-train", *RUN, f"data.root={corpus}", f"paths.data_dir={work / 'cache'}",
                          f"hydra.run.dir={work / 'run'}"], mp)  # fmt: skip
    return work / "run"


def eval_run(run_dir: Path, split: str, tmp_path: Path, monkeypatch) -> Path:
    """`attnlab-eval ckpt=<run>/checkpoints average_last=2 split=<split>`; returns its output folder."""
    out = tmp_path / f"eval_{split}"
    call_main(evaluate, ["attnlab-eval", f"ckpt={run_dir / 'checkpoints'}", "average_last=2", f"split={split}",
                         f"hydra.run.dir={out}"], monkeypatch)  # fmt: skip
    return out


def test_the_runs_test_score_is_attnlab_evals_on_every_test_set(run_dir, tmp_path, monkeypatch):
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "ok", result.get("error")
    final, protocol = result["metrics"]["final"], result["protocol"]
    assert protocol["checkpoint"] == "average_last" and protocol["average_last"] == 2
    averaged = [Path(p).name for p in protocol["averaged_from"]]
    assert len(averaged) == 2 and averaged[-1] == "keep-step0000030.ckpt", averaged
    assert protocol["global_step"] == 30 and protocol["decode"]["strategy"] == "beam"
    assert list(protocol["test_sets"]) == ["test_2016_flickr", "test_2017_flickr"]
    assert json.loads((run_dir / "protocol.json").read_text()) == protocol
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for name, prefix in (("test_2016_flickr", "test/"), ("test_2017_flickr", "test/test_2017_flickr/")):
        evaluated = eval_run(run_dir, name, tmp_path, monkeypatch)
        results = json.loads((evaluated / "results.json").read_text())
        scores = results["metrics"]
        assert [Path(p).name for p in results["averaged_from"]] == averaged  # the same checkpoints
        # The same weights, decoding and batches: equal numbers, not merely close ones.
        assert metrics[prefix + "bleu"] == final[prefix + "bleu"] == scores["bleu"], name
        assert metrics[prefix + "chrf"] == scores["chrf"] and metrics[prefix + "nll"] == scores["loss"], name
        assert metrics[prefix + "loss"] == scores["label_smoothed_loss"] != scores["loss"]  # label smoothing 0.1
        assert protocol["test_sets"][name]["bleu"] == scores["bleu"]
        hyps = (run_dir / protocol["test_sets"][name]["hypotheses"]).read_text(encoding="utf-8")
        assert protocol["test_sets"][name]["hypotheses"] == f"hyps/{name}.txt"
        assert len(hyps.splitlines()) == SLICE[name] == scores["sentences"]
        assert hyps == (evaluated / f"hypotheses.{name}.txt").read_text(encoding="utf-8")


def test_the_protocol_names_the_command_that_repeats_it(run_dir):
    protocol = json.loads((run_dir / "protocol.json").read_text())
    assert protocol["eval_command"] == (
        f"attnlab-eval ckpt={run_dir / 'checkpoints'} average_last=2 split=test_2016_flickr batch_size=64"
    )
    # The averaged weights are not left in checkpoints/, where a later average would count them.
    assert not list(run_dir.rglob("averaged*.ckpt"))


def test_too_few_checkpoints_after_training_names_the_command_for_those_kept(run_dir, tmp_path):
    """max_time or early stopping can end a run before it saved the checkpoints validation counted on."""
    cfg = OmegaConf.create({"eval_protocol": {"checkpoint": "average_last", "average_last": 9},
                            "callbacks": {"model_checkpoint": {"dirpath": str(run_dir / "checkpoints")}}})  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        protocol.protocol_weights(cfg, None, None, tmp_path)
    message = str(refused.value)
    assert "keep-*.ckpt checkpoints of 2 distinct steps, fewer than the 9 to average" in message, message
    assert f"score them with attnlab-eval ckpt={run_dir / 'checkpoints'} average_last=N" in message


def test_the_default_protocol_tests_the_best_checkpoint(tmp_path, monkeypatch):
    """Synthetic runs keep the protocol they had: the best validation-loss checkpoint, test split."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    tiny = ["data.train_size=64", "data.val_size=8", "data.test_size=12", "data.max_tokens=256", "trainer.max_epochs=2",
            "val_decode_size=0", "show_examples=0", "logger=none", "threads=1"]  # fmt: skip
    call_main(train, ["attnlab-train", *tiny, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch)
    protocol = json.loads((tmp_path / "run" / "protocol.json").read_text())
    assert (protocol["checkpoint"], protocol["monitor"], protocol["mode"]) == ("best", "val/loss", "min")
    assert protocol["weights"].startswith("checkpoints/epoch") and protocol["averaged_from"] == []
    assert len((tmp_path / "run" / "hyps" / "test.txt").read_text(encoding="utf-8").splitlines()) == 12
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test/exact_match"] == protocol["test_sets"]["test"]["exact_match"]


# -- protocols a run cannot follow: one message, exit 2, nothing built ----------------------------------

REFUSED = {
    "average of 5, 2 kept": (
        ["callbacks=keep_last", "callbacks.keep_last.save_top_k=2", "eval_protocol.checkpoint=average_last"],
        ["eval_protocol.checkpoint=average_last averages the last 5 checkpoints", "keeps at most 1",
         "callbacks.keep_last: 1", "eval_protocol.average_last=1"],  # max_epochs=1 saves one
    ),
    "average without kept checkpoints": (
        ["eval_protocol.checkpoint=average_last", "eval_protocol.average_last=2"],
        ["keeps at most 1 (only last.ckpt)", "use callbacks=keep_last"],
    ),
    "unknown checkpoint": (["eval_protocol.checkpoint=best_bleu"], ["eval_protocol.checkpoint='best_bleu'", "'last'"]),
    "zero average": (["eval_protocol.average_last=0"], ["eval_protocol.average_last=0", ">= 1"]),
    "a test set synthetic data lacks": (
        ["eval_protocol.test_sets=[test,test_2017]"],
        ["eval_protocol.test_sets=['test', 'test_2017']", "train, val and test"],
    ),
    "a test set Multi30k lacks": (
        ["data=multi30k", "data.root=/nowhere", "model.max_len=128", "eval_protocol.test_sets=[test_2019_flickr]"],
        ["eval_protocol.test_sets has 'test_2019_flickr'", "test_2018_flickr"],
    ),
}  # fmt: skip


@pytest.fixture
def nothing_built(monkeypatch):
    def refuse(cfg):
        raise AssertionError("the data module was built before the protocol was refused")

    monkeypatch.setattr(attnlab.train, "build_datamodule", refuse)


@pytest.mark.faults
@pytest.mark.parametrize("case", list(REFUSED))
def test_a_protocol_the_run_cannot_follow_is_refused_before_training(case, nothing_built, tmp_path, monkeypatch,
                                                                     capsys):
    overrides, expected = REFUSED[case]
    code, err = in_process(tmp_path, monkeypatch, capsys)(*QUICK, "test=true", *overrides)
    assert code == 2, err
    assert err.count("attnlab-train: error:") == 1
    for part in expected:
        assert part in err, (part, err)


def test_a_missing_test_set_file_fails_before_training(corpus, tmp_path, monkeypatch, capsys):
    """A Multi30k name the local copy does not hold: the run stops before it trains, naming the file."""
    (tmp_path / "copy").mkdir()
    for path in corpus.glob("*"):
        if not path.name.startswith("test_2017"):
            (tmp_path / "copy" / path.name).write_bytes(path.read_bytes())
    fit = []
    monkeypatch.setattr(attnlab.train.faults, "fit_resumably", lambda *a, **k: fit.append(1))
    code, err = in_process(tmp_path, monkeypatch, capsys)(
        *QUICK, "test=true", "experiment=multi30k_de_en", f"data.root={tmp_path / 'copy'}", "data.vocab_size=500",
        "model.max_len=128", f"paths.data_dir={tmp_path / 'cache'}", "callbacks=default",
        "eval_protocol.checkpoint=best",
    )  # fmt: skip
    assert code == 2 and not fit, err
    assert "test_2017_flickr.de" in err, err


def test_rescore_remakes_a_runs_test_numbers_and_keeps_the_ones_it_replaces(run_dir, tmp_path):
    """`python -m attnlab.rescore <run>`: the run's own protocol again (here on a copy whose test numbers
    and hypotheses were spoiled); the numbers come back, attnlab-report reads them, the old files are kept."""
    run = shutil.copytree(run_dir, tmp_path / "sweep" / "0")
    before = json.loads((run / "result.json").read_text())
    first = next(iter(before["protocol"]["test_sets"]))
    hyps = run / before["protocol"]["test_sets"][first]["hypotheses"]
    good_hyps = hyps.read_text(encoding="utf-8")
    spoiled = {**before, "metrics": {**before["metrics"], "final": {**before["metrics"]["final"], "test/bleu": -1.0}}}
    (run / "result.json").write_text(json.dumps(spoiled))
    hyps.write_text("spoiled\n" * len(good_hyps.splitlines()), encoding="utf-8")
    log = runlog.find_metrics_csv(run)
    columns = log.read_text().splitlines()[0].split(",")
    with open(log, "a") as f:  # and what the log says last
        f.write(",".join("-1" for _ in columns) + "\n")
    done = subprocess.run([sys.executable, "-m", "attnlab.rescore", str(run)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    after = json.loads((run / "result.json").read_text())
    for key, value in before["metrics"]["final"].items():
        if key.startswith("test/"):
            assert after["metrics"]["final"][key] == pytest.approx(value), key
    assert hyps.read_text(encoding="utf-8") == good_hyps
    [kept] = run.glob("rescored-*")
    assert after["rescored"]["previous"] == kept.name
    assert json.loads((kept / "result.json").read_text())["metrics"]["final"]["test/bleu"] == -1.0
    assert (kept / hyps.relative_to(run)).read_text(encoding="utf-8").startswith("spoiled\n")
    rows = _report_rows(run.parent)
    assert float(rows[0]["test/bleu"]) == pytest.approx(before["metrics"]["final"]["test/bleu"])


def test_rescore_refuses_what_it_cannot_remake(run_dir, tmp_path):
    unfinished = shutil.copytree(run_dir, tmp_path / "unfinished")
    result = json.loads((unfinished / "result.json").read_text())
    (unfinished / "result.json").write_text(json.dumps({**result, "status": "failed"}))
    with pytest.raises(ConfigError, match="only a finished run"):
        rescore.rescore(unfinished)
    best = shutil.copytree(run_dir, tmp_path / "best")
    cfg = OmegaConf.load(best / ".hydra" / "config.yaml")
    cfg.eval_protocol.checkpoint = "best"
    OmegaConf.save(cfg, best / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError, match="checkpoint=best cannot be re-made"):
        rescore.rescore(best)
    with pytest.raises(ConfigError, match="not an attnlab-train run directory"):
        rescore.rescore(tmp_path)


def _report_rows(sweep: Path) -> list[dict[str, str]]:
    files = report.report([str(sweep)], sweep.parent / "report", plots=False)
    with open(files["csv"], newline="") as f:
        return list(csv.DictReader(f))
