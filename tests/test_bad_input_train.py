"""More of the bad-input inventory (docs/reliability.md): `trainer.*`, `seed`, `data.*` values,
corpus files that are not files, and models too large for the machine. Each ends `attnlab-train`
with one message and exit status 2 (Hydra's own composition errors: 1), and the config checks
fail before the data, the model or Lightning's Trainer is built.

The helpers (`in_process`: the console script's function in this process) come from test_bad_input.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator
from omegaconf import OmegaConf

import attnlab.train
from attnlab.config import model_config
from attnlab.data.datamodule import TranslationDataModule
from attnlab.lit_module import TranslationModule
from attnlab.model import Transformer
from attnlab.training import preflight
from attnlab.training.schedule import learning_rate
from test_bad_input import QUICK, in_process, refused_corpus, run_command, write_corpus


@pytest.fixture
def run_main(tmp_path, monkeypatch, capsys):
    """run_main(*overrides) -> (exit status, stderr) of `attnlab-train overrides...`, run in-process."""
    return in_process(tmp_path, monkeypatch, capsys)


@pytest.fixture
def nothing_built(monkeypatch):
    """Building the data (the first thing `train` builds) fails the test: checks must come first."""

    def refuse(cfg):
        raise AssertionError("the data module was built before the config was refused")

    monkeypatch.setattr(attnlab.train, "build_datamodule", refuse)


# -- config values: refused before anything is built ------------------------------------------

CASES = {
    "max_epochs below -1": (["trainer.max_epochs=-2"], ["trainer.max_epochs=-2", "-1 to train until stopped"]),
    "max_epochs 0": (["trainer.max_epochs=0"], ["trainer.max_epochs=0 would train nothing"]),
    "max_steps 0": (["trainer.max_steps=0"], ["trainer.max_steps=0 would train nothing", "attnlab-eval"]),
    "max_steps below -1": (["trainer.max_steps=-5"], ["trainer.max_steps=-5", "-1 for no limit"]),
    "cosine without an end": (
        ["trainer.max_epochs=-1", "optim.schedule=cosine"],
        ["optim.schedule=cosine", "trainer.max_epochs=-1", "set trainer.max_steps=N"],
    ),
    "zero devices": (["trainer.devices=0"], ["trainer.devices=0", "-1 (all of them)", "auto"]),
    "unknown precision": (["trainer.precision=banana"], ["trainer.precision='banana'", "bf16-mixed", "32-true"]),
    "zero accumulation": (["trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches=0", ">= 1"]),
    "unknown accelerator": (["trainer.accelerator=gpus"], ["trainer.accelerator='gpus'", "'cuda'"]),
    "negative seed": (["seed=-1"], ["seed=-1", "from 0 to 4294967295"]),
    "seed above 2**32-1": ([f"seed={2**32}"], [f"seed={2**32}", "from 0 to 4294967295"]),
    "min_len above max_len": (
        ["data.min_len=10", "data.max_len=5"],
        ["data.min_len=10", "data.max_len=5", "need 1 <= data.min_len <= data.max_len"],
    ),
    "max_tokens 0": (["data.max_tokens=0"], ["data.max_tokens=0", ">= 1"]),
    "max_tokens below one pair": (["data.max_tokens=5"], ["data.max_tokens=5", "raise data.max_tokens to at least 13"]),
    "no training pairs": (["data.train_size=0"], ["data.train_size=0", ">= 1"]),
    "no symbols": (["data.n_symbols=0"], ["data.n_symbols=0"]),
    "n_best with greedy": (["decode=greedy", "decode.n_best=3"], ["decode.n_best=3 needs decode=beam"]),
    "an added key nothing reads": (
        ["+data.batch_size=64"],
        ["data.batch_size is not a config key", "did you mean data.max_tokens?", "valid keys under data"],
    ),
    "model too large for the memory": (
        ["model.d_model=100000"],
        ["does not fit in the memory", "parameters", "model.d_model=100000", "TiB"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_value_is_refused_before_anything_is_built(case, run_main, nothing_built):
    overrides, expected = CASES[case]
    code, err = run_main(*QUICK, *overrides)
    assert code == 2, err
    assert "attnlab-train: error:" in err
    for part in expected:
        assert part in err, (part, err)


def test_batch_size_typo_points_to_max_tokens(run_main):
    code, err = run_main("data.batch_size=64", *QUICK)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("attnlab-train: did you mean data.max_tokens?"), err
    assert "val_size" not in err.strip().splitlines()[-1]


def test_gpu_trainer_on_a_machine_without_one(run_main, nothing_built, monkeypatch):
    for kind in (CUDAAccelerator, MPSAccelerator):
        monkeypatch.setattr(kind, "is_available", staticmethod(lambda: False))
    code, err = run_main(*QUICK, "trainer=gpu")
    assert code == 2
    assert "trainer.accelerator=gpu but this machine has no GPU" in err
    assert "trainer=cpu" in err


def test_more_gpus_than_the_machine_has(run_main, nothing_built, monkeypatch):
    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: True))
    monkeypatch.setattr(CUDAAccelerator, "auto_device_count", staticmethod(lambda: 1))
    code, err = run_main(*QUICK, "trainer=gpu", "trainer.devices=2")
    assert code == 2
    assert "trainer.devices=2 but this machine has 1 GPU device(s)" in err


def test_model_memory_estimate_counts_weights_gradients_and_adam(compose_train):
    cfg = compose_train("model=tiny")
    params = preflight.parameter_count(cfg)
    # data=reverse: 20 symbols + 4 specials; counted on the meta device, the same as the real model.
    assert params == Transformer(model_config(cfg, 24, 24)).num_parameters()
    need = params * 4 * preflight.TRAINING_COPIES
    preflight.check_model_memory(cfg, memory=(need, "a box"))  # exactly enough: accepted
    with pytest.raises(preflight.PreflightError, match=rf"{params:,} parameters.*but a box has 1\.0 KiB"):
        preflight.check_model_memory(cfg, memory=(1024, "a box"))


def test_running_out_of_memory_while_building_is_one_message(tmp_path, run_main, monkeypatch):
    def allocate(**kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: 4 GB")

    monkeypatch.setattr(attnlab.train, "TranslationModule", allocate)
    code, err = run_main(*QUICK, "data.train_size=50", "data.val_size=10")
    assert code == 2
    assert "out of memory while building the model (model.d_model=64" in err
    assert "can't allocate memory" in err


def test_a_trainer_value_lightning_refuses_is_one_message(run_main):
    code, err = run_main(*QUICK, "data.train_size=50", "data.val_size=10", "trainer.val_check_interval=-1")
    assert code == 2
    assert "attnlab-train: error: trainer: You have passed invalid value -1 for val_check_interval" in err


# -- training until stopped -------------------------------------------------------------------


def test_schedules_take_an_endless_run():
    """max_epochs=-1 makes Lightning's estimated step count infinite; no schedule may turn it into an error."""
    for schedule in ("noam", "inverse_sqrt", "constant", "cosine"):
        rate = learning_rate(50, schedule, 1e-3, 100, 64, total_steps=math.inf)
        assert rate == learning_rate(50, schedule, 1e-3, 100, 64, total_steps=10**12), schedule
        assert math.isfinite(rate) and rate > 0


def test_configure_optimizers_with_an_endless_trainer():
    module = TranslationModule(
        model=dict(src_vocab_size=8, tgt_vocab_size=8, d_model=16, d_ff=32, n_heads=2, encoder_layers=1,
                   decoder_layers=1, max_len=16),
        optim=dict(schedule="inverse_sqrt", lr=1e-3, lr_scale=1.0, warmup_steps=10, betas=[0.9, 0.98], eps=1e-9,
                   weight_decay=0.0, label_smoothing=0.0),
        decode=dict(strategy="greedy", n_best=1, max_len_a=1.0, max_len_b=4),
        tokenizers={},
    )  # fmt: skip

    class Endless:  # what Lightning's Trainer reports for max_epochs=-1, max_steps=-1
        estimated_stepping_batches = math.inf

    module._trainer = Endless()
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert scheduler.get_last_lr()[0] == pytest.approx(learning_rate(1, "inverse_sqrt", 1e-3, 10, 16))


@pytest.mark.slow
def test_max_epochs_minus_one_trains_until_max_time(tmp_path, monkeypatch):
    argv = ["attnlab-train", *QUICK, "trainer.max_epochs=-1", "trainer.max_time=00:00:00:02",
            "data.train_size=200", "data.val_size=20", f"paths.log_dir={tmp_path}"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    GlobalHydra.instance().clear()
    attnlab.train.main()
    (metrics,) = tmp_path.glob("train/runs/*/metrics.json")
    assert '"steps": ' in metrics.read_text() and '"steps": 0' not in metrics.read_text()


# -- corpora -----------------------------------------------------------------------------------


def _replace_with(make):
    def spoil(root):
        (root / "train.de").unlink()
        make(root / "train.de")

    return spoil


CORPUS_CASES = {
    "a directory": (_replace_with(os.mkdir), [], ["train.de is a directory"]),
    "a named pipe": (_replace_with(os.mkfifo), [], ["train.de is not a regular file (a named pipe)"]),
    "a symlink loop": (_replace_with(lambda p: os.symlink(p.name, p)), [], ["train.de is a symlink loop"]),
    "a link to /dev/null": (
        _replace_with(lambda p: os.symlink("/dev/null", p)),
        [],
        ["train.de (a symlink to /dev/null) is not a regular file (a character device)"],
    ),
    "a dangling link": (
        _replace_with(lambda p: os.symlink("gone.de", p)),
        [],
        ["train.de is a broken symlink: its target gone.de does not exist"],
    ),
    "NUL bytes after the first 4 KB": (
        lambda root: (root / "train.de").write_bytes((b"a b c\n" * 1000) + b"d \x00\x00\x00 e\n" + b"f g\n" * 11),
        ["data.max_sentence_len=60"],
        ["train.de looks binary (a NUL byte on line 1001, offset 6002)"],
    ),
    "every training pair too long": (
        lambda root: None,
        ["data.max_sentence_len=3"],
        ["no training pairs left: all 12 pairs", "train.{de,en}", "data.max_sentence_len=3", "raise"],
    ),
    "a val pair larger than a batch": (
        lambda root: [(root / f"val.{lang}").open("a").write(" ".join(["a"] * 20) + "\n") for lang in ("de", "en")],
        ["data.max_tokens=10"],
        ["val.de, line 13: 21 tokens", "data.max_tokens=10", "at least 21"],
    ),
}


@pytest.mark.parametrize("case", list(CORPUS_CASES))
def test_bad_corpus_file_is_named_for_what_it_is(case, tmp_path, run_main):
    assert "missing corpus file" not in refused_corpus(CORPUS_CASES[case], tmp_path, run_main)


def test_old_mac_line_endings_read_like_plain_text(tmp_path):
    plain, cr = write_corpus(tmp_path / "plain"), write_corpus(tmp_path / "cr")
    for path in cr.iterdir():
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r"))
    texts = []
    for root in (plain, cr):
        dm = TranslationDataModule(source="parallel", root=str(root), src_lang="de", tgt_lang="en")
        dm.setup()
        texts.append(dm.text)
    assert texts[0] == texts[1]
    assert len(texts[1]["train"][0]) == 12


def test_a_stray_carriage_return_does_not_split_a_line(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    lines = (root / "train.de").read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b" ", b"\r", 1)
    (root / "train.de").write_bytes(b"\n".join(lines))
    dm = TranslationDataModule(source="parallel", root=str(root), src_lang="de", tgt_lang="en")
    dm.setup()
    assert len(dm.text["train"][0]) == 12
    assert dm.text["train"][0][3] == lines[3].decode().replace("\r", " ")


# -- the installed command, as a shell sees it ---------------------------------------------------


@pytest.mark.slow  # a fresh interpreter; test_bad_input's real-command tests cover the same path by default
def test_real_command_bad_trainer_value_is_one_line_without_a_traceback(tmp_path):
    done = run_command("trainer.accumulate_grad_batches=0", *QUICK, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attnlab-train: error: trainer.accumulate_grad_batches=0"), (
        done.stderr
    )
    assert "Traceback" not in done.stdout + done.stderr
    assert not list((tmp_path / "out").glob("train/runs/*/checkpoints"))


@pytest.mark.parametrize("has_bf16", [True, False])
def test_bf16_training_on_a_cpu_without_bf16_instructions_is_warned(monkeypatch, has_bf16):
    """bf16-mixed is the faster choice only where the CPU multiplies bf16 (docs/performance.md);
    elsewhere torch emulates it: the run goes ahead with a warning naming the key and the way back."""
    monkeypatch.setattr(preflight, "cpu_has_bf16", lambda: has_bf16)
    cpu = OmegaConf.create({"accelerator": "cpu", "precision": "bf16-mixed"})
    warning = preflight.check_cpu_precision(cpu)
    if has_bf16:
        assert warning is None
    else:
        assert "trainer.precision=bf16-mixed" in warning and "trainer.precision=null" in warning
    for other in ({"accelerator": "cpu", "precision": None}, {"accelerator": "gpu", "precision": "bf16-mixed"}):
        assert preflight.check_cpu_precision(OmegaConf.create(other)) is None
