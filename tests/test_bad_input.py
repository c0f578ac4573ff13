"""The bad-input inventory (docs/reliability.md): every mistake a user can make with a corpus or a
config ends `attnlab-train` with one clear message (file and line, or key, and the fix), a
non-zero exit status and no traceback, before any training.

Most cases call the console script's function (`attnlab.train:main`) in this process with a
patched `sys.argv`: the same Hydra parsing, composition and error reporting as the installed
command, without paying for a Python start-up each. `test_real_command_*` run the installed
`attnlab-train` to check what a shell sees (stderr, exit status).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from attnlab.data.datamodule import TranslationDataModule
from attnlab.train import main

TRAIN = Path(sys.executable).with_name("attnlab-train")
WORDS = "a b c d e f g h".split()
# Enough to build a model and reach `validate` / data checks, never enough to train for long.
QUICK = ["trainer.max_epochs=1", "show_examples=0", "test=false", "logger=none"]


def write_corpus(root: Path, n: int = 12, langs=("de", "en")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        for k, lang in enumerate(langs):
            lines = [" ".join(WORDS[(i + j + k) % len(WORDS)] for j in range(5)) for i in range(n)]
            (root / f"{split}.{lang}").write_text("\n".join(lines) + "\n")
    return root


def parallel(root: Path) -> list[str]:
    return ["data=parallel", f"data.root={root}", "data.src_lang=de", "data.tgt_lang=en", "data.max_sentence_len=60"]


def in_process(tmp_path, monkeypatch, capsys):
    """The `run_main` fixture's function, for fixtures of other test files."""

    def _run(*overrides: str) -> tuple[int, str]:
        argv = ["attnlab-train", *overrides, f"paths.log_dir={tmp_path / 'out'}"]
        monkeypatch.setattr(sys, "argv", argv)
        GlobalHydra.instance().clear()
        with pytest.raises(SystemExit) as stop:
            main()
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        return stop.value.code, err

    return _run


@pytest.fixture
def run_main(tmp_path, monkeypatch, capsys):
    """run_main(*overrides) -> (exit status, stderr) of `attnlab-train overrides...`, run in-process."""
    return in_process(tmp_path, monkeypatch, capsys)


def run_command(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": ""}
    return subprocess.run(
        [str(TRAIN), *overrides, f"paths.log_dir={cwd / 'out'}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- corpora ------------------------------------------------------------------------------------


def _missing_split(root: Path) -> None:
    (root / "test.en").unlink()


def _misaligned(root: Path) -> None:
    lines = (root / "train.en").read_text().splitlines()
    (root / "train.en").write_text("\n".join(lines[:-1]) + "\n")


def _empty_files(root: Path) -> None:
    (root / "val.de").write_text("")
    (root / "val.en").write_text("")


def _empty_line(root: Path) -> None:
    lines = (root / "train.de").read_text().splitlines()
    lines[4] = "   "
    (root / "train.de").write_text("\n".join(lines) + "\n")


def _invalid_utf8(root: Path) -> None:
    (root / "train.en").write_bytes(b"a b\nc d\ne \xff f\n" + b"g h\n" * 9)


def _binary(root: Path) -> None:
    (root / "train.de").write_bytes(bytes(range(256)) * 4)


def _long_test_line(root: Path) -> None:
    with open(root / "test.de", "a") as f:
        f.write(" ".join(["a"] * 300) + "\n")
    with open(root / "test.en", "a") as f:
        f.write("b\n")


CORPUS_CASES = {
    "missing split file": (_missing_split, [], ["test.en", "found: test.de"]),
    "misaligned line counts": (_misaligned, [], ["misaligned", "train.de has 12 lines", "train.en has 11"]),
    "empty files": (_empty_files, [], ["empty split", "val.de"]),
    "empty line": (_empty_line, [], ["train.de, line 5", "empty sentence"]),
    "invalid UTF-8": (_invalid_utf8, [], ["train.en, line 3", "invalid UTF-8", "0xff"]),
    "binary file": (_binary, [], ["train.de", "binary"]),
    "language with no files": (lambda root: None, ["data.src_lang=fr"], ["train.fr", "found: train.de, train.en"]),
    "no such folder": (lambda root: None, ["data.root=/nonexistent/corpus"], ["/nonexistent/corpus/train.de"]),
    "test line longer than model.max_len": (
        _long_test_line,
        [],
        ["test.de, line 13", "301 tokens", "model.max_len=64"],
    ),
}


def refused_corpus(case: tuple, tmp_path, run_main) -> str:
    """Train on a corpus spoiled by `case` = (spoil, extra overrides, expected parts): the run must end
    with exit 2 and one `attnlab-train: error:` naming every expected part; returns stderr."""
    spoil, extra, expected = case
    root = write_corpus(tmp_path / "corpus")
    spoil(root)
    code, err = run_main(*parallel(root), *QUICK, *extra)
    assert code == 2
    assert "attnlab-train: error:" in err
    for part in expected:
        assert part in err, (part, err)
    return err


@pytest.mark.parametrize("case", list(CORPUS_CASES))
def test_bad_corpus_is_named_with_file_and_line(case, tmp_path, run_main):
    refused_corpus(CORPUS_CASES[case], tmp_path, run_main)


def test_windows_line_endings_and_a_bom_read_like_plain_text(tmp_path):
    plain, crlf = write_corpus(tmp_path / "plain"), write_corpus(tmp_path / "crlf")
    for path in crlf.iterdir():
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    texts = []
    for root in (plain, crlf):
        dm = TranslationDataModule(source="parallel", root=str(root), src_lang="de", tgt_lang="en")
        dm.setup()
        texts.append(dm.text)
    assert texts[0] == texts[1]
    assert all("\r" not in line for src, tgt in texts[1].values() for line in src + tgt)


def test_extremely_long_training_lines_are_left_out_not_fatal(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    with open(root / "train.de", "a") as f:
        f.write(" ".join(["a"] * 5000) + "\n")
    with open(root / "train.en", "a") as f:
        f.write("b\n")
    dm = TranslationDataModule(source="parallel", root=str(root), src_lang="de", tgt_lang="en", max_sentence_len=60)
    dm.setup()
    assert dm.n_filtered == 1
    assert len(dm.examples["train"]) == 12


# -- configs ------------------------------------------------------------------------------------

CONFIG_CASES = {
    "negative dropout": (["model.dropout=-0.1"], 2, ["model.dropout must be in [0, 1)", "-0.1"]),
    "zero heads": (["model.n_heads=0"], 2, ["model.n_heads must be >= 1"]),
    "d_model not divisible by n_heads": (["model.n_heads=3"], 2, ["model.d_model=64", "model.n_heads=3"]),
    "max_len shorter than the data": (["model.max_len=8"], 2, ["model.max_len=8", "raise model.max_len"]),
    "beam_size < 1": (["decode.beam_size=0"], 2, ["decode.beam_size=0 must be >= 1"]),
    "n_best > beam_size": (["decode=beam", "decode.n_best=5", "decode.beam_size=2"], 2,
                           ["decode.n_best=5 must be in [1, decode.beam_size=2]"]),
    "wrong type": (["model.d_model=abc"], 1, ["model.d_model", "'abc'"]),
    "unknown key": (["model.n_head=3"], 1, ["model.n_head", "did you mean model.n_heads?"]),
    "unknown trainer key": (["trainer.max_step=3"], 1, ["did you mean trainer.max_steps?"]),
    "unset trainer argument": (["trainer.detect_anomaly=true"], 1, ["add it with +trainer.detect_anomaly="]),
    "misspelt group": (["modell=tiny"], 1, ["did you mean the config group model"]),
    "unknown group option": (["model=tinyy"], 1, ["did you mean model=tiny?", "Available options"]),
    "unknown launcher": (["hydra/launcher=jobllib"], 1, ["did you mean hydra/launcher=joblib?"]),
    "unknown sweep": (["-m", "sweep=headz"], 2, ["sweep=headz does not exist", "did you mean sweep=heads?"]),
    "sweep parameter typo": (["-m", "model.n_head=1,2"], 1, ["did you mean model.n_heads?"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_names_the_key_and_the_fix(case, run_main):
    overrides, status, expected = CONFIG_CASES[case]
    code, err = run_main(*overrides, *QUICK)
    assert code == status
    for part in expected:
        assert part in err, (part, err)


def test_typo_inside_a_sweep_file_gets_a_did_you_mean(tmp_path, run_main):
    sweeps = tmp_path / "conf" / "sweep"
    sweeps.mkdir(parents=True)
    (sweeps / "mine.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      model.positionl: none,rope\n"
    )
    code, err = run_main("-m", "sweep=mine", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", *QUICK)
    assert code == 1
    assert "did you mean model.positional?" in err


# -- the installed command, as a shell sees it -----------------------------------------------------


def test_real_command_bad_corpus_is_one_line_on_stderr(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    _misaligned(root)
    done = run_command(*parallel(root), *QUICK, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attnlab-train: error: misaligned corpus"), done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_real_command_config_typo_says_did_you_mean(tmp_path):
    done = run_command("model.n_head=4", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "attnlab-train: did you mean model.n_heads?"
    assert "Traceback" not in done.stdout + done.stderr
