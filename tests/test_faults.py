"""Fault injection (docs/reliability.md): kills, signals, NaN losses, a crashing job in a sweep, broken
or malicious checkpoints, a corrupt tokenizer cache, an unwritable or full disk.

Runs are tiny (a 2-layer d_model=64 model, ~12 steps an epoch, a few seconds each). A run that must
really die (SIGKILL, SIGTERM, Ctrl-C) is the installed `attnlab-train` in a subprocess, the signal
sent by `attnlab.training.faults.InjectSignal` at an exact step (the same kill(2) a shell's `kill` makes);
everything else runs in this process through the console script's function. All runs use one
thread and a fixed seed, so an interrupted-and-resumed run can be compared exactly with an
uninterrupted one.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal as signal_module
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from attnlab.checkpoint import CHECKPOINT_FORMAT, CheckpointError, read_checkpoint
from attnlab.report.data import find_run_dirs
from attnlab.train import main
from attnlab.training import runlog

pytestmark = pytest.mark.faults

TRAIN = Path(sys.executable).with_name("attnlab-train")
# 12 training steps an epoch, a mid-epoch last.ckpt every 4 steps, every step logged.
TINY = [
    "data.train_size=320", "data.val_size=16", "data.test_size=16", "data.max_tokens=256",
    "val_decode_size=4", "show_examples=0", "test=false", "threads=1", "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1", "callbacks.last_checkpoint.every_n_train_steps=4",
    "callbacks.sample_translations=null", "callbacks.attention_maps=null",
]  # fmt: skip
STEPS_PER_EPOCH = 12


def kill_at(step: int, name: str = "KILL") -> list[str]:
    return ["+callbacks.fault._target_=attnlab.training.faults.InjectSignal", f"+callbacks.fault.step={step}",
            f"+callbacks.fault.name={name}"]  # fmt: skip


def train(log_dir: Path, *overrides: str, monkeypatch, capsys) -> tuple[int, str]:
    """`attnlab-train overrides... paths.log_dir=log_dir` in this process -> (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["attnlab-train", *overrides, f"paths.log_dir={log_dir}"])
    GlobalHydra.instance().clear()
    code = 0
    try:
        main()
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def train_command(log_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": ""}
    return subprocess.run([str(TRAIN), *overrides, f"paths.log_dir={log_dir}"], env=env, capture_output=True,
                          text=True, timeout=180, cwd=log_dir.parent)  # fmt: skip


def the_run(log_dir: Path) -> Path:
    """The one run directory holding checkpoints under log_dir (a resume adds a run dir without any)."""
    runs = [p.parent.parent for p in log_dir.glob("train/runs/*/checkpoints/last.ckpt")]
    assert len(runs) == 1, runs
    return runs[0]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def step_losses(run: Path) -> list[tuple[int, float]]:
    return runlog.curve(runlog.read_rows(runlog.find_metrics_csv(run)), "train/loss_step")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of TINY (2 epochs, 24 steps): the run every interrupted one must match."""
    log_dir = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["attnlab-train", *TINY, f"paths.log_dir={log_dir}"])
        GlobalHydra.instance().clear()
        main()
    return the_run(log_dir)


def assert_same_training(run: Path, reference: Path) -> None:
    """Same step count, same per-step losses and learning rates, bit-identical final weights."""
    ours, theirs = load(run / "checkpoints" / "last.ckpt"), load(reference / "checkpoints" / "last.ckpt")
    assert ours["global_step"] == theirs["global_step"] == 2 * STEPS_PER_EPOCH
    assert step_losses(run) == step_losses(reference)
    rows = [runlog.read_rows(runlog.find_metrics_csv(r)) for r in (run, reference)]
    assert runlog.curve(rows[0], "lr") == runlog.curve(rows[1], "lr")
    assert len(step_losses(run)) == 2 * STEPS_PER_EPOCH
    for key, value in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][key], value), key


# -- kills -----------------------------------------------------------------------------------------

DYING_SAVE = """
import io, os, signal, sys, torch
real = torch.save
def save(obj, f, *args, **kwargs):
    if not (isinstance(obj, dict) and obj.get("global_step") == int(os.environ["DIE_SAVING_STEP"])):
        return real(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    real(obj, buf)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    f.flush()
    os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = save
from attnlab.train import main
sys.argv = ["attnlab-train", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process loader", "loader with a worker"])
def test_sigkill_while_saving_mid_epoch_then_resume_matches_an_uninterrupted_run(
    workers, tmp_path, reference, monkeypatch, capsys
):
    """SIGKILL lands halfway through writing the step-20 checkpoint (epoch 1, batch 8): last.ckpt is
    still the complete step-16 one, and `resume=true` continues from it (mid-epoch: 4 batches done)
    to the very weights and losses of the uninterrupted run. With a worker process the loader has
    drawn (and prefetched) its batches before the state is restored: the same result is required."""
    log_dir = tmp_path / "out"
    log_dir.mkdir()
    (tmp_path / "dying_save.py").write_text(DYING_SAVE)
    run_args = [*TINY, f"data.num_workers={workers}"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "DIE_SAVING_STEP": "20"}
    killed = subprocess.run([sys.executable, str(tmp_path / "dying_save.py"), *run_args, f"paths.log_dir={log_dir}"],
                            env=env, capture_output=True, text=True, timeout=180)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    run = the_run(log_dir)
    half_written = list((run / "checkpoints").glob(".last.ckpt.*.tmp"))
    assert len(half_written) == 1  # the kill did land in the middle of writing last.ckpt
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(half_written[0])
    last = read_checkpoint(run / "checkpoints" / "last.ckpt")  # complete, and passes every check
    assert last["global_step"] == STEPS_PER_EPOCH + 4
    assert last["callbacks"]["LoaderStateCheckpoint"]["loader"] == {"epoch": 1, "batches_done": 4}

    # The same command plus resume=true finds the killed run by its overrides and continues it in place.
    code, err = train(log_dir, *run_args, "resume=true", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    assert the_run(log_dir) == run
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert_same_training(run, reference)
    # The directory Hydra made for the resuming command is gone (it held only Hydra's files), and the
    # report lists the run once.
    assert list((log_dir / "train" / "runs").iterdir()) == [run]
    assert find_run_dirs([log_dir / "train" / "runs"]) == [run.resolve()]
    result = json.loads((run / "result.json").read_text())  # both segments: tests/test_resume_bookkeeping.py
    assert result["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    assert [s["status"] for s in result["segments"]] == ["killed", "ok"]
    assert result["wall_time_s"] > result["segment_wall_time_s"] > 0


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_resume_matches_an_uninterrupted_run(tmp_path, reference, monkeypatch, capsys):
    """kill -9 at step 18 (epoch 1, batch 6): steps 16-17 are lost and redone from the step-16 checkpoint."""
    log_dir = tmp_path / "out"
    log_dir.mkdir()
    killed = train_command(log_dir, *TINY, *kill_at(STEPS_PER_EPOCH + 6))
    assert killed.returncode == -9, killed.stderr[-2000:]
    run = the_run(log_dir)
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == STEPS_PER_EPOCH + 4
    code, err = train(log_dir, *TINY, *kill_at(STEPS_PER_EPOCH + 6), "resume=true", monkeypatch=monkeypatch,
                      capsys=capsys)  # fmt: skip
    assert code == 0, err
    assert the_run(log_dir) == run
    assert_same_training(run, reference)


def _check_stopped(code: int, err: str, run: Path, name: str, step: int) -> None:
    last = run / "checkpoints" / "last.ckpt"
    assert code == (143 if name == "TERM" else 130), err
    signal = "SIGTERM" if name == "TERM" else "Ctrl-C (SIGINT)"
    assert err.strip().splitlines()[-1] == (f"attnlab-train: stopped by {signal} at step {step}: saved {last}; "
                                            "run the same command with resume=true to continue")  # fmt: skip
    assert read_checkpoint(last)["global_step"] == step


@pytest.mark.parametrize("name, step, loggers", [("TERM", 7, "csv"), ("INT", 6, "many")])
def test_sigterm_and_ctrl_c_save_and_the_run_resumes(name, step, loggers, tmp_path, reference, monkeypatch, capsys):
    """The signal arrives before step 6. SIGTERM (a scheduler's stop) lets step 6 finish, Ctrl-C interrupts
    it before its update (it is redone on resume). Both save last.ckpt and end with 143 / 130; the same
    command with resume=true then ends exactly where an uninterrupted run does, logging into the same
    CSV file and the same W&B run."""
    # Python's own Ctrl-C handler, whatever an earlier test in this process (a W&B session) installed.
    previous = signal_module.signal(signal_module.SIGINT, signal_module.default_int_handler)
    try:
        _stop_and_resume(name, step, loggers, tmp_path, reference, monkeypatch, capsys)
    finally:
        signal_module.signal(signal_module.SIGINT, previous)


def _stop_and_resume(name, step, loggers, tmp_path, reference, monkeypatch, capsys) -> None:
    log_dir = tmp_path / "out"
    command = [*TINY, *kill_at(6, name), f"logger={loggers}"]
    code, err = train(log_dir, *command, monkeypatch=monkeypatch, capsys=capsys)
    run = the_run(log_dir)
    _check_stopped(code, err, run, name, step)
    stopped = json.loads((run / "result.json").read_text())
    assert stopped["status"] == "stopped" and stopped["error"].startswith("Interrupted: stopped by")
    assert stopped["wall_time_s"] == stopped["segments"][0]["wall_time_s"] > 0
    code, err = train(log_dir, *command, "resume=true", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    assert_same_training(run, reference)
    # result.json names the checkpoint, counts both segments, and no second run directory is left.
    result = json.loads((run / "result.json").read_text())
    assert result["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    assert [s["status"] for s in result["segments"]] == ["stopped", "ok"]
    assert result["segments"][0] == {**stopped["segments"][0], "status": "stopped"}
    assert result["wall_time_s"] == round(stopped["wall_time_s"] + result["segment_wall_time_s"], 2)
    assert list((log_dir / "train" / "runs").iterdir()) == [run]
    if loggers == "many":
        segments = list(run.glob("wandb/offline-run-*"))
        assert len(segments) == 2 and len({p.name.rsplit("-", 1)[1] for p in segments}) == 1  # one W&B run id


@pytest.mark.slow
def test_real_command_sigterm_exits_143_without_a_traceback(tmp_path, reference, monkeypatch, capsys):
    """The installed command in its own process, as a cluster scheduler stops it, then requeued."""
    log_dir = tmp_path / "out"
    log_dir.mkdir()
    stopped = train_command(log_dir, *TINY, *kill_at(6, "TERM"))
    assert "Traceback" not in stopped.stderr
    run = the_run(log_dir)
    _check_stopped(stopped.returncode, stopped.stderr, run, "TERM", 7)
    code, err = train(log_dir, *TINY, *kill_at(6, "TERM"), "resume=true", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    assert_same_training(run, reference)


# -- NaN / inf ----------------------------------------------------------------------------------------


def nan_at(step: int) -> list[str]:
    return ["+callbacks.nan._target_=attnlab.training.faults.InjectNonFinite", f"+callbacks.nan.step={step}"]


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    code, err = train(tmp_path / "out", *TINY, *nan_at(10), monkeypatch=monkeypatch, capsys=capsys)
    run = the_run(tmp_path / "out")
    last = run / "checkpoints" / "last.ckpt"
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(
        f"attnlab-train: error: training diverged: loss is nan at step 10 (epoch 0, batch 10); "
        f"the weights were not updated and the last good checkpoint is {last}. Lower optim.lr"
    )
    kept = read_checkpoint(last)
    assert kept["global_step"] == 8
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())
    assert (run / "metadata.json").is_file() and '"status": "failed"' in (run / "metadata.json").read_text()


# -- a sweep with a crashing job and a NaN job --------------------------------------------------------


def test_failing_jobs_do_not_stop_the_sweep(tmp_path, monkeypatch, capsys):
    """Job 0 raises inside training (a bug), job 1 gets a NaN loss in skip mode: job 0 is recorded as
    failed, job 1 skips the bad step and finishes; the sweep then exits 1 naming the failed job."""
    code, err = train(
        tmp_path / "out", "-m", *TINY, "trainer.max_epochs=1", "callbacks.nonfinite_loss.action=skip",
        "+callbacks.fault._target_=attnlab.training.faults.InjectError,attnlab.training.faults.InjectNonFinite",
        "+callbacks.fault.step=3", monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert code == 1
    sweep = next((tmp_path / "out" / "train" / "multiruns").glob("2*"))
    results = [json.loads((sweep / str(job) / "result.json").read_text()) for job in (0, 1)]
    assert results[0]["status"] == "failed"
    assert results[0]["error"] == "RuntimeError: injected error at step 3"
    assert results[1]["status"] == "ok", results[1]
    assert results[1]["steps"] == STEPS_PER_EPOCH  # the skipped update still counts as a step
    assert "1 ok, 1 failed" in err
    weights = read_checkpoint(sweep / "1" / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_a_sweep_job_whose_checkpoint_does_not_fit_is_recorded_and_the_others_run(
    tmp_path, reference, monkeypatch, capsys
):
    """`-m ckpt_path=... model.d_model=64,32`: the d_model=32 job cannot continue that checkpoint. It is
    recorded as failed with the reason, and the d_model=64 job still runs (one bad job never ends a sweep)."""
    ckpt = reference / "checkpoints" / "last.ckpt"
    code, err = train(tmp_path / "out", "-m", *TINY, f"ckpt_path={ckpt}", "trainer.max_epochs=3",
                      "model.d_model=64,32", monkeypatch=monkeypatch, capsys=capsys)  # fmt: skip
    assert code == 1, err
    sweep = next((tmp_path / "out" / "train" / "multiruns").glob("2*"))
    results = [json.loads((sweep / str(job) / "result.json").read_text()) for job in (0, 1)]
    assert results[0]["status"] == "ok" and results[0]["steps"] == 3 * STEPS_PER_EPOCH  # continued to epoch 3
    assert results[1]["status"] == "failed"
    assert "it was trained with model.d_model=64" in results[1]["error"]
    assert "1 ok, 1 failed" in err


def test_reporting_that_fails_after_the_results_are_saved_does_not_fail_the_run(tmp_path, monkeypatch, capsys):
    """A full disk under TensorBoard or a W&B outage after metrics.json is written: a warning, exit 0."""
    import attnlab.train

    def broken(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(attnlab.train, "log_final", broken)
    code, err = train(tmp_path / "out", *TINY, "trainer.max_epochs=1", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    run = next((tmp_path / "out").glob("train/runs/*"))
    assert json.loads((run / "result.json").read_text())["status"] == "ok"
    assert json.loads((run / "metrics.json").read_text())["steps"] == STEPS_PER_EPOCH
    assert "logging the final metrics failed (OSError" in (run / "train.log").read_text()


# -- checkpoints: broken, foreign, old, malicious -----------------------------------------------------


def _truncated(ref: Path, path: Path) -> None:
    data = ref.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _text(ref: Path, path: Path) -> None:
    path.write_text("epoch=3 step=1200\n")


def _plain_tensors(ref: Path, path: Path) -> None:
    torch.save({"weight": torch.zeros(3)}, path)


def _older_format(ref: Path, path: Path) -> None:
    ckpt = load(ref)
    ckpt["attnlab_format"] = CHECKPOINT_FORMAT - 1
    torch.save(ckpt, path)


CHECKPOINT_CASES = {
    "missing": (None, [], "ckpt_path={path}: no such checkpoint file"),
    "truncated": (_truncated, [], "cannot resume: {path} is not a checkpoint file, or it is truncated or corrupt"),
    "not a checkpoint": (_text, [], "cannot resume: {path} is not a checkpoint file, or it is truncated or corrupt"),
    "not a Lightning checkpoint": (_plain_tensors, [], "cannot resume: {path} is not a Lightning checkpoint"),
    "older format version": (_older_format, [], f"has checkpoint format {CHECKPOINT_FORMAT - 1}, but this attnlab"),
    "another model config": (
        shutil.copy, ["model.d_model=32", "model.d_ff=64"],
        "cannot resume from {path}: it was trained with model.d_model=64, model.d_ff=256, "
        "but this run has model.d_model=32, model.d_ff=64",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_bad_checkpoint_to_resume_from_is_refused_before_training(case, tmp_path, reference, monkeypatch, capsys):
    make, overrides, expected = CHECKPOINT_CASES[case]
    path = tmp_path / "model.ckpt"
    if make is not None:
        make(reference / "checkpoints" / "last.ckpt", path)
    code, err = train(tmp_path / "out", *TINY, f"ckpt_path={path}", *overrides, monkeypatch=monkeypatch,
                      capsys=capsys)  # fmt: skip
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("attnlab-train: error: ")
    assert expected.format(path=path) in err, err
    assert not list((tmp_path / "out").glob("train/runs/*/checkpoints"))  # nothing trained


class WritesAFile:
    """Unpickling this object runs `open(target, 'w').write(...)`: what a malicious checkpoint does."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return exec, (f"open({self.target!r}, 'w').write('pwned')",)


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path, reference, monkeypatch, capsys):
    from attnlab.training.resume import AtomicCheckpointIO

    control_target, target = tmp_path / "control-pwned", tmp_path / "pwned"
    ckpt = load(reference / "checkpoints" / "last.ckpt")
    torch.save({**ckpt, "payload": WritesAFile(control_target)}, tmp_path / "control.ckpt")
    torch.save({**ckpt, "payload": WritesAFile(target)}, tmp_path / "evil.ckpt")
    torch.load(tmp_path / "control.ckpt", weights_only=False)  # an unsafe load really does run it
    assert control_target.read_text() == "pwned"

    evil = tmp_path / "evil.ckpt"
    with pytest.raises(CheckpointError, match="refuses to run code"):
        read_checkpoint(evil)  # attnlab-eval / attnlab-translate / averaging
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(evil, weights_only=False)  # Lightning's resume path
    code, err = train(tmp_path / "out", *TINY, f"ckpt_path={evil}", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2
    assert "refuses to run code from a file" in err
    assert not target.exists()


# -- tokenizer cache, output folder, disk ---------------------------------------------------------------


def test_corrupt_tokenizer_cache_is_named_with_the_fix(tmp_path, monkeypatch, capsys):
    from attnlab.data.datamodule import TranslationDataModule

    words = "the a cat dog sat ran on under mat rug red big".split()
    root = tmp_path / "corpus"
    root.mkdir()
    for split, n in (("train", 60), ("val", 6), ("test", 6)):
        for k, lang in enumerate(("de", "en")):
            lines = [" ".join(words[(i * 7 + j * 3 + k) % len(words)] for j in range(6)) for i in range(n)]
            (root / f"{split}.{lang}").write_text("\n".join(lines) + "\n")
    data = dict(source="parallel", root=str(root), src_lang="de", tgt_lang="en", tokenizer="sentencepiece",
                vocab_size=40, joint_vocab=True, max_sentence_len=60)  # fmt: skip
    TranslationDataModule(**data, cache_dir=str(tmp_path / "cache")).setup()  # fills the cache
    capsys.readouterr()  # (logging from an earlier in-process run may complain about pytest's closed streams)
    cached = list((tmp_path / "cache" / "tokenizers").glob("*.model"))
    assert len(cached) == 1
    cached[0].write_bytes(b"\x00garbage from a crash or a full disk\xff" * 8)

    overrides = [f"data.{k}={v}" for k, v in data.items()] + [f"data.cache_dir={tmp_path / 'cache'}"]
    code, err = train(tmp_path / "out", "data=parallel", *overrides, *TINY[4:], monkeypatch=monkeypatch,
                      capsys=capsys)  # fmt: skip
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(f"attnlab-train: error: tokenizer cache {cached[0]} is corrupt")
    assert "delete it" in err


def test_unwritable_output_folder_fails_before_training(tmp_path, monkeypatch, capsys):
    """chmod'ed read-only; as root (who may write anyway) the refusal the OS would give is simulated."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:
        import attnlab.training.preflight

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(attnlab.training.preflight.tempfile, "TemporaryFile", refuse)
    code, err = train(locked / "out", *TINY, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2
    assert err.strip() == (f"attnlab: error: cannot write to {locked} (for the output directory {locked}/out/train/"
                           f"runs/{err.split('/runs/')[1].split(')')[0]}): Permission denied; choose another "
                           "paths.log_dir")  # fmt: skip
    assert list(locked.iterdir()) == []


def test_disk_full_while_saving_keeps_the_last_checkpoint_and_says_so(tmp_path, monkeypatch, capsys):
    """The step-8 checkpoint write fails half way with ENOSPC, as on a disk that just filled up."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("global_step") == 8:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    code, err = train(tmp_path / "out", *TINY, monkeypatch=monkeypatch, capsys=capsys)
    run = the_run(tmp_path / "out")
    last = run / "checkpoints" / "last.ckpt"
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "attnlab-train: error: the disk filled up at step 8 (No space left on device: while writing); checkpoints "
        f"are written atomically, so the newest complete checkpoint is {last}: free some space, then run the "
        "same command with resume=true"
    )
    assert read_checkpoint(last)["global_step"] == 4
    assert not list(last.parent.glob(".*.tmp"))


def test_full_disk_fails_before_training(tmp_path, monkeypatch, capsys):
    import attnlab.training.preflight

    real = attnlab.training.preflight.shutil.disk_usage
    monkeypatch.setattr(attnlab.training.preflight.shutil, "disk_usage", lambda p: real(p)._replace(free=20 * 2**20))
    code, err = train(tmp_path / "out", *TINY, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2
    assert "not enough free disk space" in err and "20 MiB free" in err and "need at least 100 MiB" in err
    assert not (tmp_path / "out").exists()


def test_only_temporary_checkpoints_of_dead_writers_count_as_stale(tmp_path):
    """Resuming clears the `.last.ckpt.<pid>.tmp` a kill left behind, never the save in progress of
    a run still training into the same folder."""
    from attnlab.training.resume import _writer_alive

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    try:
        assert _writer_alive(tmp_path / f".last.ckpt.{alive.pid}.tmp")
        assert not _writer_alive(tmp_path / f".last.ckpt.{finished.pid}.tmp")
        assert not _writer_alive(tmp_path / f".last.ckpt.{os.getpid()}.tmp")  # this process: not saving now
        assert not _writer_alive(tmp_path / ".last.ckpt.tmp")
    finally:
        alive.kill()


def test_an_atomic_write_replaces_the_whole_file_or_nothing(tmp_path):
    """The one write-then-rename of attnlab (result.json, metadata.json, checkpoints, caches, the sweep's
    `latest` link): a write that fails half way leaves the old file and no temporary one; a new file
    gets the permissions of any other (the umask's); a temporary name says whose it is."""
    from attnlab.atomic import atomic_open, atomic_symlink, atomic_write, temporary_name, writer_pid

    target = tmp_path / "result.json"
    atomic_write(target, "old")
    with pytest.raises(OSError, match="No space"), atomic_open(target) as f:
        f.write(b"half of the new")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["result.json"]
    (tmp_path / "plain").write_text("")
    assert target.stat().st_mode == (tmp_path / "plain").stat().st_mode
    assert writer_pid(temporary_name(target)) == os.getpid()
    atomic_symlink(tmp_path / "latest", "result.json")
    atomic_symlink(tmp_path / "latest", "plain")  # replaced in one rename, never missing
    assert os.readlink(tmp_path / "latest") == "plain"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "plain", "result.json"]
