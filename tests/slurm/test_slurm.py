"""Sweeps through a real SLURM: a single-node cluster (munged, slurmctld, slurmd from Debian's packages)
started for this session by scripts/slurm/local_cluster.py, and `attnlab-train -m ... hydra/launcher=
submitit_slurm` against it. A sweep submitted from a batch job (the command returns at once); a job
requeued by the scheduler mid-training (`scontrol requeue`: SIGTERM, then the job runs again); a job
warned before its time limit and requeued by submitit; a DDP job of 2 SLURM tasks. Each job is a few
seconds of the demo sweep's task (`make test-slurm`, docs/cluster.md). Skipped without SLURM or root."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from attnlab.training.loggers import wandb_run_id

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "scripts" / "slurm"))
from local_cluster import LocalSlurm  # noqa: E402

# The demo sweep's task at a few seconds a job: 96 training pairs in 3 batches an epoch, no pictures.
TINY = [
    "data.train_size=96", "data.val_size=16", "data.test_size=16", "data.max_tokens=512", "val_decode_size=8",
    "show_examples=0", "callbacks.attention_maps=null", "callbacks.sample_translations=null",
]  # fmt: skip
SLURM = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1"]
# Each training step takes at least this long (tests/slurm/pace.py), so the scheduler can interrupt a job.
PACE = ["+callbacks.pace._target_=pace.Pace"]


@pytest.fixture(scope="module")
def cluster():
    missing = [d for d in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(d) is None]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)}): apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM runs its daemons as root")
    state = Path(tempfile.mkdtemp(prefix="attnlab-slurm-"))  # not pytest's tmp: munged wants open parents
    slurm = LocalSlurm(state)
    slurm.start()
    try:
        yield slurm
    finally:
        slurm.stop()
        shutil.rmtree(state, ignore_errors=True)


def _env(slurm: LocalSlurm) -> dict[str, str]:
    """What a user's shell has: SLURM_CONF, offline W&B, no W&B service of this process; pace.py importable
    (before any PYTHONPATH already set: a scratch copy of attnlab can be put first to check the tests)."""
    env = slurm.env()
    env.pop("WANDB_SERVICE", None)
    env.update(WANDB_MODE="offline", PYTHONPATH=os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p))
    return env


def _train(slurm: LocalSlurm, tmp_path: Path, *overrides: str) -> tuple[subprocess.Popen, Path]:
    """`attnlab-train -m ...` through submitit_slurm, in the background (it waits for its jobs)."""
    log = tmp_path / "launcher.log"
    proc = subprocess.Popen([str(BIN / "attnlab-train"), "-m", *overrides], cwd=tmp_path, env=_env(slurm),
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    return proc, log


def _finish(proc: subprocess.Popen, log: Path, slurm: LocalSlurm, sweep: Path, timeout: float) -> str:
    """Wait for the launcher; past `timeout`, stop it and its jobs and fail with every log."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the launcher this test started, and its children
        proc.wait(30)
        slurm.run("scancel", "--user", "root", check=False)
        pytest.fail(f"the sweep did not end in {timeout:.0f} s\n{_logs(log, slurm, sweep)}")
    return log.read_text(errors="replace")


def _logs(log: Path | None, slurm: LocalSlurm, sweep: Path) -> str:
    parts = [f"--- {log}\n{log.read_text(errors='replace')[-4000:]}"] if log and log.is_file() else []
    for path in sorted(sweep.glob(".submitit/*/*_log.*")) + sorted(sweep.glob("*/train.log")):
        parts.append(f"--- {path}\n{path.read_text(errors='replace')[-3000:]}")
    parts.append(f"--- squeue\n{slurm.run('squeue', check=False).stdout}")
    parts.append(f"--- slurmctld.log\n{(slurm.state / 'log' / 'slurmctld.log').read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)


def _result(job_dir: Path) -> dict:
    return json.loads((job_dir / "result.json").read_text())


def _job_id(slurm: LocalSlurm, timeout: float = 120) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ids = slurm.run("squeue", "-h", "-t", "RUNNING", "-o", "%i", check=False).stdout.split()
        if ids:
            return ids[0]
        time.sleep(1)
    raise AssertionError("no job started")


def _wait_for(pattern: Path, timeout: float) -> Path:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = sorted(Path(pattern.anchor).glob(str(pattern.relative_to(pattern.anchor))))
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"nothing matched {pattern} in {timeout:.0f} s")


def _validated_epochs(job_dir: Path) -> list[int]:
    """The epoch of every validation row of the run's CSV log, in file order."""
    with open(job_dir / "csv" / "metrics.csv", newline="") as f:
        return [int(float(r["epoch"])) for r in csv.DictReader(f) if r.get("val/loss")]


def _run_dirs(sweep: Path) -> list[str]:
    return sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_a_sweep_submitted_from_a_batch_job_returns_at_once_and_the_report_reads_it(cluster, tmp_path):
    """The pattern of docs/cluster.md for logging out: the launcher itself is a small batch job."""
    sweep = tmp_path / "sweep"
    command = " ".join([str(BIN / "attnlab-train"), "-m", "sweep=demo", *SLURM, "hydra.launcher.timeout_min=5",
                        "trainer.max_epochs=1", *TINY, f"hydra.sweep.dir={sweep}"])  # fmt: skip
    start = time.monotonic()
    submitted = subprocess.run(["sbatch", "--parsable", "-J", "sweep", "-c", "1", "-t", "20",
                                "-o", str(tmp_path / "launcher-%j.log"), "--wrap", command],
                               env=_env(cluster), cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    assert time.monotonic() - start < 30  # back at the prompt; the sweep runs on
    launcher = submitted.stdout.strip()
    end = time.monotonic() + 300
    while cluster.run("squeue", "-h", "-j", launcher, check=False).stdout.strip() and time.monotonic() < end:
        time.sleep(2)
    log = next(tmp_path.glob("launcher-*.log"), None)
    assert not cluster.run("squeue", "-h", "-j", launcher, check=False).stdout.strip(), _logs(log, cluster, sweep)
    results = [_result(sweep / str(n)) for n in range(2)]
    assert [r["status"] for r in results] == ["ok", "ok"], _logs(log, cluster, sweep)
    # two tasks of one array job, submitted by the launcher job
    jobs = [r["segments"][0]["slurm"]["job_id"] for r in results]
    assert jobs[0].split("_")[0] == jobs[1].split("_")[0] != launcher and {j.split("_")[1] for j in jobs} == {"0", "1"}
    assert "sweep " in log.read_text() and "2 jobs, 2 ok" in log.read_text()
    report = subprocess.run([str(BIN / "attnlab-report"), str(sweep), "--no-plots"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    with open(sweep / "report" / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["model.positional"] for r in rows) == ["none", "sinusoidal"]


def test_a_requeued_job_resumes_in_its_run_directory(cluster, tmp_path):
    """`scontrol requeue` (what preemption with PreemptMode=REQUEUE does): SIGTERM to every process of
    the job, last.ckpt at the end of the batch, exit; the job runs again, in the same directory, from
    that checkpoint, into the same W&B run."""
    sweep = tmp_path / "sweep"
    epochs = 10
    proc, log = _train(cluster, tmp_path, "sweep=demo", "model.positional=sinusoidal", *SLURM,
                       "hydra.launcher.timeout_min=10", "logger=many", f"trainer.max_epochs={epochs}", *TINY,
                       *PACE, "+callbacks.pace.seconds=0.5", f"hydra.sweep.dir={sweep}")  # fmt: skip
    job_dir = sweep / "0"
    try:
        _wait_for(job_dir / "checkpoints" / "epoch*.ckpt", 240)  # training is under way
        job = _job_id(cluster)
        cluster.run("scontrol", "requeue", job)
    except AssertionError as err:
        os.killpg(proc.pid, signal.SIGTERM)
        pytest.fail(f"{err}\n{_logs(log, cluster, sweep)}")
    out = _finish(proc, log, cluster, sweep, 300)
    assert proc.returncode == 0, _logs(log, cluster, sweep)
    assert "1 jobs, 1 ok" in out
    assert _run_dirs(sweep) == ["0"]  # one run directory, continued: nothing new beside it

    result = _result(job_dir)
    first, *rest = result["segments"]
    assert result["status"] == "ok" and rest, result
    assert first["status"] == "stopped" and "SIGTERM" in first["error"], first
    assert f"saved {job_dir / 'checkpoints' / 'last.ckpt'}" in first["error"]
    stopped_at = int(re.search(r"at step (\d+)", first["error"]).group(1))
    assert rest[0]["resumed_from"] == result["resumed_from"] == str(job_dir / "checkpoints" / "last.ckpt")
    assert rest[-1]["status"] == "ok"
    assert [s["slurm"]["job_id"] for s in result["segments"]] == [job] * len(result["segments"])
    assert [s["slurm"]["restart_count"] for s in result["segments"]] == list(range(len(result["segments"])))
    # it continued from the checkpoint: one log, every epoch validated once, the full number of steps
    assert _validated_epochs(job_dir) == list(range(epochs))
    assert 0 < stopped_at < result["steps"] == 3 * epochs, stopped_at
    assert len(json.loads((job_dir / "metadata.json").read_text())["resumes"]) == len(rest)
    # one W&B run: every segment's offline folder carries the id derived from the run directory
    runs = sorted((job_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == len(result["segments"]), runs
    assert {r.name.rsplit("-", 1)[-1] for r in runs} == {wandb_run_id(job_dir)}


def test_a_job_at_its_time_limit_is_requeued_by_submitit_and_finishes(cluster, tmp_path):
    """2 minutes of time limit, warned 60 s before (SLURM sends the signal up to 30 s early): the first
    attempt is slow (1 s a step, 120 steps), gets SIGUSR2 mid-training, saves last.ckpt at the end of the
    batch, and submitit requeues it (max_num_timeout); the second attempt finishes the remaining steps."""
    sweep = tmp_path / "sweep"
    epochs = 40
    proc, log = _train(cluster, tmp_path, "sweep=demo", "model.positional=sinusoidal", *SLURM,
                       "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=60",
                       "hydra.launcher.max_num_timeout=2", f"trainer.max_epochs={epochs}", *TINY,
                       *PACE, "+callbacks.pace.seconds=1.0", "+callbacks.pace.attempts=1",
                       f"hydra.sweep.dir={sweep}")  # fmt: skip
    out = _finish(proc, log, cluster, sweep, 420)
    assert proc.returncode == 0 and "1 jobs, 1 ok" in out, _logs(log, cluster, sweep)
    job_dir = sweep / "0"
    result = _result(job_dir)
    first, *rest = result["segments"]
    assert result["status"] == "ok" and rest, result
    assert first["status"] == "stopped" and "SIGUSR2" in first["error"], first
    assert rest[0]["resumed_from"] == str(job_dir / "checkpoints" / "last.ckpt")
    assert [s["slurm"]["restart_count"] for s in result["segments"]] == list(range(len(result["segments"])))
    assert result["steps"] == 3 * epochs
    assert _validated_epochs(job_dir) == list(range(epochs))
    submitit_log = "".join(p.read_text(errors="replace") for p in sweep.glob(".submitit/*/*_log.*"))
    assert "Requeued job" in submitit_log  # submitit, the one owner of this requeue


def test_ddp_across_two_slurm_tasks_is_one_run(cluster, tmp_path):
    """2 tasks of one job (`tasks_per_node=2`), Lightning's SLURM environment (no process launched by
    Lightning), gloo on CPU: one run directory, one result.json, both ranks trained."""
    sweep = tmp_path / "sweep"
    proc, log = _train(cluster, tmp_path, "sweep=demo", "model.positional=sinusoidal", *SLURM,
                       "hydra.launcher.timeout_min=5", "hydra.launcher.tasks_per_node=2", "trainer.strategy=ddp",
                       "trainer.devices=2", "trainer.max_epochs=2", *TINY, f"hydra.sweep.dir={sweep}")  # fmt: skip
    out = _finish(proc, log, cluster, sweep, 300)
    assert proc.returncode == 0 and "1 jobs, 1 ok" in out, _logs(log, cluster, sweep)
    assert _run_dirs(sweep) == ["0"]
    result = _result(sweep / "0")
    assert result["status"] == "ok" and len(result["segments"]) == 1
    assert result["segments"][0]["slurm"]["tasks"] == 2
    assert "test/exact_match" in result["metrics"]["final"]
    errs = [p.read_text(errors="replace") for p in sorted(sweep.glob(".submitit/*/*_log.err"))]
    assert len(errs) == 2
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in errs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in errs[1]


def test_a_single_run_in_a_batch_script_resumes_in_its_run_directory_when_requeued(cluster, tmp_path):
    """Without a launcher: `sbatch --requeue` a script whose `srun attnlab-train ... resume=true` is the
    whole job. Requeued, the script runs again and resume=true continues the run it finds (same overrides)."""
    out = tmp_path / "outputs"
    script = tmp_path / "train.sbatch"
    script.write_text("\n".join([
        "#!/bin/bash", "#SBATCH --job-name=reverse", "#SBATCH --cpus-per-task=1", "#SBATCH --time=10",
        "#SBATCH --requeue", f"#SBATCH --output={tmp_path}/slurm-%j.out",
        " ".join(["srun", str(BIN / "attnlab-train"), f"paths.log_dir={out}", "resume=true", "threads=1",
                  "trainer.max_epochs=10", *TINY, *PACE, "+callbacks.pace.seconds=0.5"]),
    ]) + "\n")  # fmt: skip
    job = subprocess.run(["sbatch", "--parsable", str(script)], env=_env(cluster), cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip()  # fmt: skip
    _wait_for(out / "train" / "runs" / "*" / "checkpoints" / "epoch*.ckpt", 240)
    cluster.run("scontrol", "requeue", job)
    end = time.monotonic() + 300
    while cluster.run("squeue", "-h", "-j", job, check=False).stdout.strip() and time.monotonic() < end:
        time.sleep(2)
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("slurm-*.out"))
    runs = sorted((out / "train" / "runs").iterdir())
    assert len(runs) == 1, (runs, logs[-3000:])  # the directory Hydra made for the second attempt is gone
    result = _result(runs[0])
    assert [s["status"] for s in result["segments"]] == ["stopped", "ok"], logs[-3000:]
    assert [s["slurm"]["restart_count"] for s in result["segments"]] == [0, 1]
    assert result["resumed_from"] == str(runs[0] / "checkpoints" / "last.ckpt")
    assert result["steps"] == 30 and _validated_epochs(runs[0]) == list(range(10))
