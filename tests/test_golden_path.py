"""The README's paths, each run as a user runs it: the installed console scripts in fresh processes
(next to sys.executable), from a foreign working directory, on a slice of the real Multi30k corpus
with SentencePiece. A fresh process is the point: registries filled by imports, relative paths and
the commands' own defaults differ from what one pytest process sees (docs/../PITFALLS).

One trained run (module fixture) feeds eval, translate, report and reproduce. README_COMMANDS maps
every command of README.md's ```bash blocks to the test that runs it; a README command missing from
it fails `test_every_readme_command_has_a_golden_path_test`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "multi30k"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no local Multi30k copy at {SHARED}")

# README command (whitespace-normalised, as in README.md) -> the test that runs it in a fresh process,
# and how, when the full command cannot run in the default suite.
# fmt: off
README_COMMANDS = {
    "make run": "test_demo_sweep_with_joblib_and_its_report (the demo sweep, size-limited) and "
    "test_make_targets_are_the_documented_commands (`make -n run`)",
    "make test": "test_make_targets_are_the_documented_commands (`make -n test`; the suite itself is the run)",
    "make test-latest": "test_make_targets_are_the_documented_commands (`make -n test-latest`: a new venv)",
    "make lock": "test_make_targets_are_the_documented_commands (`make -n lock`: a new venv, then a lock file)",
    "attnlab-train": "test_train_commands_compose (composed and validated: 20,000 sentences x 10 epochs is minutes)",
    "attnlab-train model.n_heads=1 model.positional=none trainer.max_epochs=2": "test_train_commands_compose",
    "attnlab-train data=copy model=small optim=noam": "test_train_commands_compose",
    "attnlab-train data=parallel data.root=/path/to/corpus data.src_lang=de data.tgt_lang=en":
        "test_readme_parallel_command_runs_as_written (a 200-pair corpus, no other override)",
    "attnlab-train experiment=multi30k_de_en data.root=/path/to/multi30k":
        "the `trained` fixture (the slice, a smaller model and vocabulary, 5 epochs instead of 33 minutes)",
    "attnlab-train experiment=multi30k_en_de": "test_train_commands_compose (composed: no download in tests)",
    "attnlab-train data=parallel data.root=corpus data.src_lang=fr data.tgt_lang=en data.tokenizer=sentencepiece":
        "test_parallel_sentencepiece_fr_en (slow; data.vocab_size=1000 and 2 steps: 8,000 pieces need a bigger "
        "corpus)",
    "attnlab-eval ckpt=<run>/checkpoints average_last=5 split=test": "test_eval_averages_and_uses_the_runs_decoding",
    'echo "Ein Hund läuft." | attnlab-translate ckpt=<run>/checkpoints/last.ckpt decode.n_best=3':
        "test_translate_stdin_n_best_and_attention_map",
    "attnlab-train -m sweep=heads": "test_train_commands_compose (composed: sweep=heads is 5 full runs)",
    "attnlab-train -m sweep=positional hydra/launcher=joblib":
        "test_demo_sweep_with_joblib_and_its_report (the same launcher on sweep=demo, size-limited)",
    "attnlab-report outputs/sweep_heads/multiruns/latest": "test_demo_sweep_with_joblib_and_its_report "
    "(on outputs/demo/multiruns/latest) and test_report_on_the_run",
    "attnlab-train logger=many": "test_killed_run_resumes_with_all_loggers (on the corpus slice)",
    "wandb sync outputs/train/runs/<run>/wandb/offline-run-*":
        "test_killed_run_resumes_with_all_loggers (`wandb sync --dry-run` and `wandb leet inspect`: no upload "
        "from tests)",
    "tensorboard --logdir outputs --host 127.0.0.1":
        "test_killed_run_resumes_with_all_loggers (the event files read by TensorBoard's EventAccumulator, "
        "no server)",
    "tensorboard --logdir outputs/sweep_positional/multiruns/latest --host 127.0.0.1":
        "test_demo_sweep_with_joblib_and_its_report (its sweep of model.positional with logger=tensorboard; the "
        "HParams events read by TensorBoard's own loader, no server; the browser view: "
        "tests/test_hparams.py::test_hparams_view_in_chromium, slow)",
    "attnlab-train -m sweep=table3 experiment=table3_multi30k data.root=/path/to/multi30k":
        "test_train_commands_compose (composed and validated: 26 rows of minutes each)",
    "attnlab-train <same overrides> resume=true": "test_killed_run_resumes_with_all_loggers (SIGKILL at a step)",
    "attnlab-reproduce outputs/train/runs/<run>": "test_reproduce_the_run",
}
# fmt: on

SIZE = ["model.d_model=32", "model.d_ff=64", "model.n_heads=2", "model.encoder_layers=1",
        "model.decoder_layers=1", "threads=1", "show_examples=0", "val_decode_size=8"]  # fmt: skip


def readme_commands() -> list[str]:
    """Every command line of README.md's ```bash blocks, comments removed, whitespace normalised."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def test_every_readme_command_has_a_golden_path_test():
    commands = readme_commands()
    assert len(commands) >= 15, commands  # the parser still finds the blocks
    missing = [c for c in commands if c not in README_COMMANDS]
    assert not missing, f"README commands without a golden-path test (add them to README_COMMANDS): {missing}"
    stale = [c for c in README_COMMANDS if c not in commands]
    assert not stale, f"README_COMMANDS lists commands README.md no longer has: {stale}"
    names = {n for n in globals() if n.startswith("test_")} | {"the `trained` fixture"}
    for command, where in README_COMMANDS.items():
        assert any(where.startswith(n) or f" {n} " in f" {where} " for n in names), (command, where)


# -- the corpus slice and the commands ---------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A working directory with `corpus/`: the first 1,000 train, 50 val and 50 test pairs of
    Multi30k (de, en, fr; test both as test.* for data=parallel and test_2016_flickr.* for
    data=multi30k), and `small/`: 200 / 20 / 20 de-en pairs."""
    work = tmp_path_factory.mktemp("golden")
    for folder, sizes in (("corpus", (1000, 50, 50)), ("small", (200, 20, 20))):
        (work / folder).mkdir()
        for lang in ("de", "en", "fr"):
            for split, name, n in zip(("train", "val", "test"), ("train", "val", "test_2016_flickr"), sizes):
                lines = (SHARED / f"{name}.{lang}").read_text(encoding="utf-8").splitlines(keepends=True)[:n]
                (work / folder / f"{split}.{lang}").write_text("".join(lines), encoding="utf-8")
                if folder == "corpus" and split == "test":
                    (work / folder / f"{name}.{lang}").write_text("".join(lines), encoding="utf-8")
    return work


def run(work: Path, command: str, *args: str, stdin: str | None = None, timeout: int = 300):
    """`command args...` in a fresh process, cwd=work; fails on a traceback on stderr."""
    # WANDB_SERVICE: wandb.init in this pytest process (test_dashboard) points it at this process's wandb-core;
    # a user's shell has none, and a killed child's run id would stay "in use" in that shared service.
    env = {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "", "ATTNLAB_DATA_DIR": str(work / "cache")}  # fmt: skip
    done = subprocess.run([str(BIN / command), *args], cwd=work, env=env, input=stdin, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


def runs_under(folder: Path) -> list[Path]:
    return sorted(p.parent for p in folder.glob("*/runs/*/.hydra"))


@pytest.fixture(scope="module")
def trained(work) -> Path:
    """`attnlab-train experiment=multi30k_de_en data.root=corpus` at a size that trains in seconds.
    The experiment sets beam search with length penalty 1.0; decode.max_len_b=5 keeps an untrained
    model's outputs short, and both settings must reach eval and translate from the checkpoint."""
    done = run(work, "attnlab-train", "experiment=multi30k_de_en", "data.root=corpus", "data.vocab_size=1000",
               "model.max_len=128", "trainer.max_epochs=5", "decode.max_len_b=5", "test=false", *SIZE)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = runs_under(work / "outputs")
    return run_dir


def test_training_on_the_slice_keeps_five_checkpoints(trained):
    keep = sorted((trained / "checkpoints").glob("keep-*.ckpt"))
    assert len(keep) == 5, keep  # callbacks=keep_last: one an epoch
    assert (trained / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["steps"] > 5 and 0 < metrics["val/loss"] < 20


def decoding_line(text: str) -> dict[str, str]:
    (line,) = [line for line in text.splitlines() if "decoding with strategy=" in line]
    return dict(re.findall(r"(\w+)=(\S+)", line.split(" (from ")[0]))


def test_eval_averages_and_uses_the_runs_decoding(work, trained):
    done = run(work, "attnlab-eval", f"ckpt={trained.relative_to(work)}/checkpoints", "average_last=5", "split=test")
    assert done.returncode == 0, done.stderr[-3000:]
    used = decoding_line(done.stdout)
    # The run's decoding (experiment=multi30k_de_en: beam, alpha 1.0; max_len_b=5), not eval's 0.6 / 50.
    assert used == {"strategy": "beam", "beam_size": "4", "length_penalty": "1.0", "max_len_a": "1.0",
                    "max_len_b": "5", "n_best": "1"}, used  # fmt: skip
    (eval_dir,) = (work / "outputs" / "eval" / "runs").iterdir()
    results = json.loads((eval_dir / "results.json").read_text())
    assert 0.0 <= results["metrics"]["bleu"] <= 100.0 and results["metrics"]["sentences"] == 50
    assert results["decode"]["length_penalty"] == 1.0
    assert len((eval_dir / "hypotheses.test.txt").read_text(encoding="utf-8").splitlines()) == 50
    bleu = float(re.search(r"BLEU\s*│\s*([\d.]+)", done.stdout).group(1))
    assert bleu == pytest.approx(results["metrics"]["bleu"], abs=0.01)
    assert (eval_dir / "averaged.ckpt").is_file()
    # A decode.* key on the command line wins: tests/test_eval_translate.py (in-process, cheaper).


def test_translate_stdin_n_best_and_attention_map(work, trained):
    """Fails in a fresh process if SentencePiece tokenizers are found only through an import (ea85707)."""
    text = "Ein Hund läuft.\nZwei Männer stehen am Strand.\n"
    done = run(work, "attnlab-translate", f"ckpt={trained.relative_to(work)}/checkpoints/last.ckpt",
               "decode.n_best=3", "attention_png=maps", stdin=text)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert [(r[0], r[1]) for r in rows] == [(str(i), str(k)) for i in (1, 2) for k in (1, 2, 3)], done.stdout
    assert all(len(r) == 4 and float(r[2]) <= 0 for r in rows)
    assert decoding_line(done.stderr)["length_penalty"] == "1.0"
    png = work / "maps.png"  # attention_png without a suffix: the log names the file really written
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"written to {png}" in done.stderr


def test_report_on_the_run(work, trained):
    done = run(work, "attnlab-report", str(trained.relative_to(work)), "-o", "report_run")
    assert done.returncode == 0, done.stderr[-3000:]
    with open(work / "report_run" / "report.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 1
    assert (work / "report_run" / "report.md").is_file()


def test_reproduce_the_run(work, trained):
    done = run(work, "attnlab-reproduce", str(trained.relative_to(work)), timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    (again,) = [r for r in runs_under(work / "outputs") if "reproduces" in r.name]
    ours, theirs = (json.loads((r / "metrics.json").read_text()) for r in (again, trained))
    # Same config, seed and data on one thread: the same training.
    assert ours["steps"] == theirs["steps"]
    assert ours["val/loss"] == pytest.approx(theirs["val/loss"], rel=1e-4)


# -- the README's other training paths -----------------------------------------------------------------


def test_readme_parallel_command_runs_as_written(work):
    """`attnlab-train data=parallel data.root=<corpus> data.src_lang=de data.tgt_lang=en`, nothing else."""
    done = run(work, "attnlab-train", "data=parallel", "data.root=small", "data.src_lang=de", "data.tgt_lang=en",
               "paths.log_dir=readme_parallel")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = runs_under(work / "readme_parallel")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] >= 10 and "test/bleu" in metrics
    # eval rebuilds the test set from the run's config, whose data.max_sentence_len is ${model.max_len}.
    done = run(work, "attnlab-eval", f"ckpt={run_dir}/checkpoints/last.ckpt", "limit=5", "paths.log_dir=eval_parallel")
    assert done.returncode == 0, done.stderr[-3000:]
    (results,) = (work / "eval_parallel" / "eval" / "runs").glob("*/results.json")
    assert json.loads(results.read_text())["metrics"]["sentences"] == 5


@pytest.mark.slow  # the trained fixture covers SentencePiece in a fresh process; this adds fr and separate vocabularies
def test_parallel_sentencepiece_fr_en(work):
    done = run(work, "attnlab-train", "data=parallel", "data.root=corpus", "data.src_lang=fr", "data.tgt_lang=en",
               "data.tokenizer=sentencepiece", "data.vocab_size=1000", "trainer.max_steps=2", "test=false",
               "paths.log_dir=spm_fr", *SIZE)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    models = {p.name.split("-")[0] for p in (work / "cache" / "tokenizers").glob("*.model")}
    assert {"fr", "en"} <= models, models  # one SentencePiece model a language (data.joint_vocab=false)


def test_killed_run_resumes_with_all_loggers(work):
    """logger=many, SIGKILL at step 7 (attnlab.training.faults.InjectSignal), then the same command with resume=true."""
    args = ["data=parallel", "data.root=small", "data.src_lang=de", "data.tgt_lang=en", "logger=many",
            "trainer.max_epochs=6", "callbacks.last_checkpoint.every_n_train_steps=4", "test=false",
            "paths.log_dir=killed", *SIZE]  # fmt: skip
    kill = ["+callbacks.kill._target_=attnlab.training.faults.InjectSignal", "+callbacks.kill.step=7",
            "+callbacks.kill.name=KILL"]  # fmt: skip
    done = run(work, "attnlab-train", *args, *kill)
    assert done.returncode == -9, done.stderr[-3000:]
    (run_dir,) = runs_under(work / "killed")
    assert not (run_dir / "metrics.json").exists()
    done = run(work, "attnlab-train", *args, *kill, "resume=true")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 6 * 2  # 200 pairs: 2 batches an epoch

    # TensorBoard: the scalars as its server would read them.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [EventAccumulator(str(p.parent)).Reload() for p in run_dir.rglob("events.out.tfevents.*")]
    tags = {t for acc in events for t in acc.Tags()["scalars"]}
    assert "val/loss" in tags, tags
    # W&B: the offline run directory, as `wandb sync` sees it (no upload).
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))  # one a process: the killed one and its resume
    assert len(offline) == 2 and len({p.name.rsplit("-", 1)[1] for p in offline}) == 1, offline  # one W&B run id
    offline = offline[-1]
    wandb = [str(BIN / "wandb")]
    env = {**os.environ, "WANDB_MODE": "offline"}
    dry = subprocess.run(
        [*wandb, "sync", "--dry-run", str(offline)], capture_output=True, text=True, timeout=120, env=env
    )
    assert dry.returncode == 0 and "Would sync 1 run" in dry.stdout + dry.stderr, (dry.stdout, dry.stderr)
    summary = subprocess.run([*wandb, "leet", "inspect", "--summary", "--json", str(offline)], capture_output=True,
                             text=True, timeout=120, env=env)  # fmt: skip
    assert summary.returncode == 0 and '"val/loss"' in summary.stdout, summary.stderr[-2000:]


def test_demo_sweep_with_joblib_and_its_report(work):
    done = run(work, "attnlab-train", "-m", "sweep=demo", "hydra/launcher=joblib", "data.train_size=200", "test=false",
               "data.val_size=16", "data.test_size=16", "trainer.max_epochs=1", "val_decode_size=4",
               "logger=tensorboard", timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = work / "outputs" / "demo" / "multiruns" / "latest"
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1"]
    done = run(work, "attnlab-report", "outputs/demo/multiruns/latest")
    assert done.returncode == 0, done.stderr[-3000:]
    with open(sweep / "report" / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {r.get("model.positional") for r in rows} == {"sinusoidal", "none"}, rows
    assert (sweep / "report" / "report.md").is_file()
    # What `tensorboard --logdir <sweep>` shows in its HParams tab: one session per job, the swept key first.
    from test_hparams import hparams_events

    sessions = [hparams_events(d) for d in sorted(sweep.glob("*/tensorboard"))]
    assert sorted(s["hparams"]["model.positional"].string_value for s in sessions) == ["none", "sinusoidal"]
    assert sessions[0]["experiment"].hparam_infos[0].name == "model.positional"


# -- commands run in a cheap form ----------------------------------------------------------------------------


COMPOSE = """
import sys
from hydra import compose, initialize_config_module
from attnlab.config import validate
for line in sys.argv[1:]:
    with initialize_config_module("attnlab.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=line.split())
    validate(cfg)
    print(line, "->", cfg.task_name, cfg.data.task if cfg.data.source == "synthetic" else cfg.data.tgt_lang,
          cfg.model.positional, cfg.model.d_model, cfg.optim.schedule, sep="|")
"""


def test_train_commands_compose(work):
    """The README's long runs, composed and validated as attnlab-train would (one fresh process for all)."""
    cases = {
        "": "train|reverse|sinusoidal|64|inverse_sqrt",
        "model.n_heads=1 model.positional=none trainer.max_epochs=2": "train|reverse|none|64|",
        "data=copy model=small optim=noam": "train|copy|sinusoidal|256|noam",
        "experiment=multi30k_en_de": "multi30k_en_de|de|sinusoidal|256|",
        "sweep=heads": "sweep_heads|reverse|",  # -m: the sweeper's grid is test_sweeps.py's
        "sweep=table3 experiment=table3_multi30k data.root=corpus": "table3_multi30k|en|sinusoidal|128|",
    }
    done = subprocess.run([sys.executable, "-c", COMPOSE, *cases], cwd=work, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "ATTNLAB_DATA_DIR": str(work / "cache")})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == len(cases)
    for line, (overrides, expected) in zip(lines, cases.items()):
        assert line.startswith(f"{overrides}|->|{expected}"), (line, expected)


def test_make_targets_are_the_documented_commands():
    targets = {"run": "attnlab-train -m sweep=demo", "test": 'pytest -q -m "not slow"', "test-latest": "pytest",
               "lock": "requirements.lock"}  # fmt: skip
    for target, expected in targets.items():
        done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and expected in done.stdout, (target, done.stdout, done.stderr)


def test_parallel_data_limit_follows_the_model_and_an_explicit_one_is_still_checked(compose_train):
    """conf/data/parallel.yaml keeps training pairs up to model.max_len tokens by default, so no model=...
    contradicts it; a data.max_sentence_len the user sets is checked against the model as before."""
    from attnlab.config import ConfigError, validate

    for model, limit in (("tiny", 64), ("small", 256)):
        cfg = compose_train("data=parallel", "data.root=corpus", f"model={model}", "model.tie_embeddings=decoder")
        validate(cfg)
        assert cfg.data.max_sentence_len == cfg.model.max_len == limit
    cfg = compose_train("data=parallel", "data.root=corpus", "data.max_sentence_len=128")
    with pytest.raises(ConfigError, match=r"model.max_len=64 is shorter than the longest training sequence \(128"):
        validate(cfg)
