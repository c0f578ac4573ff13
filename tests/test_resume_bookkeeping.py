"""What a resumed run records about itself (issue 18): `result.json` names the checkpoint it resumed
from and counts the time of every segment (first start, each resume), and a `resume=true` command
that continues an earlier run leaves no second run directory behind.

The end-to-end test (slow) runs the installed `attnlab-train` in fresh processes, killed with SIGKILL
and then resumed; in the default run, tests/test_faults.py checks the same after a SIGKILL'ed command
resumed in-process and after SIGTERM / Ctrl-C, and the tests here call the pieces directly
(attnlab.training.jobs.run_job, attnlab.training.resume).
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from attnlab.errors import Interrupted
from attnlab.report.data import find_run_dirs, load_job
from attnlab.training import jobs, segments
from attnlab.training.resume import move_log_files, remove_hydra_dir
from test_faults import TINY, kill_at, the_run, train_command

pytestmark = pytest.mark.faults


@pytest.mark.slow
def test_a_run_killed_and_resumed_in_fresh_processes_records_both_segments_and_leaves_one_directory(tmp_path):
    """SIGKILL before step 6 (last.ckpt is the step-4 one), then the same command with resume=true."""
    log_dir = tmp_path / "out"
    log_dir.mkdir()
    killed = train_command(log_dir, *TINY, *kill_at(6))
    assert killed.returncode == -9, killed.stderr[-2000:]
    run = the_run(log_dir)
    ckpt = run / "checkpoints" / "last.ckpt"
    before = json.loads((run / "result.json").read_text())
    assert before["status"] == "running" and before["resumed_from"] is None
    # The killed process recorded nothing at its end: its last sign of life is the step-4 checkpoint.
    alive_for = ckpt.stat().st_mtime - segments.epoch_seconds(before["segments"][0]["started"])
    assert alive_for > 0

    resumed = train_command(log_dir, *TINY, *kill_at(6), "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Traceback" not in resumed.stderr
    # 3. No stub: the runs folder holds the one run, and the report finds it once.
    assert list((log_dir / "train" / "runs").iterdir()) == [run]
    assert find_run_dirs([log_dir / "train" / "runs"]) == [run.resolve()]
    # 1. result.json names the checkpoint it resumed from.
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "ok" and result["steps"] == 24
    assert result["resumed_from"] == str(ckpt)
    # 2. The killed segment's time (up to its last checkpoint at least) plus the resumed one's.
    first, second = result["segments"]
    assert first["status"] == "killed" and first["started"] == before["started"] == result["started"]
    assert first["resumed_from"] is None and first["finished"] is None
    assert first["wall_time_s"] >= round(alive_for, 2)
    assert second["status"] == "ok" and second["resumed_from"] == str(ckpt) and second["finished"] == result["finished"]
    assert result["segment_wall_time_s"] == second["wall_time_s"] > 0
    assert result["wall_time_s"] == round(first["wall_time_s"] + second["wall_time_s"], 2)
    assert load_job(run).values["time_s"] == result["wall_time_s"]  # the report's time column
    # metadata.json: one resume, from that checkpoint, after a killed segment; Hydra's dir for it is gone.
    meta = json.loads((run / "metadata.json").read_text())
    (resume,) = meta["resumes"]
    assert resume["from_checkpoint"] == str(ckpt) and resume["hydra_dir"] is None
    assert resume["previous_segment"]["status"] == "killed"
    # The resumed command's log was appended to the run's own log.
    log_text = (run / "train.log").read_text()
    assert log_text.count("][attnlab][INFO] - model: ") == 2
    assert log_text.index("model: ") < log_text.index(f"resume=true: continuing {run} from {ckpt}")
    assert "resume=true: removed " in log_text


# -- the directory Hydra made for a resuming command -----------------------------------------------------


def _hydra_dir(path: Path) -> Path:
    (path / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (path / ".hydra" / name).write_text("x: 1\n")
    return path


@pytest.mark.parametrize("extra", [None, "result.json", "checkpoints/last.ckpt", ".hydra/notes.txt"])
def test_only_a_directory_with_nothing_but_hydras_files_is_removed(extra, tmp_path):
    here, run = _hydra_dir(tmp_path / "new"), tmp_path / "run"
    run.mkdir()
    if extra:
        (here / extra).parent.mkdir(exist_ok=True)
        (here / extra).write_text("results\n")
    removed = remove_hydra_dir(here, run)
    assert removed == (extra is None)
    if extra is None:
        assert list(tmp_path.iterdir()) == [run]
    else:  # kept whole, with a note naming the run it continued
        assert (here / extra).read_text() == "results\n"
        assert sorted(p.name for p in (here / ".hydra").iterdir())[:1] == ["config.yaml"]
        assert (here / "resumed_into.txt").read_text() == f"{run}\n"


def test_the_log_file_moves_to_the_run_and_keeps_what_it_had(tmp_path):
    here, run = _hydra_dir(tmp_path / "new"), tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("first segment\n")
    logger = logging.getLogger("attnlab.test_log_move")
    logger.propagate, logger.level = False, logging.INFO
    handler = logging.FileHandler(here / "train.log")
    logger.addHandler(handler)
    try:
        logger.info("resuming")
        move_log_files(here, run)
        logger.info("training")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert (run / "train.log").read_text() == "first segment\nresuming\ntraining\n"
    assert not (here / "train.log").exists()
    assert remove_hydra_dir(here, run)


# -- result.json's segments (run_job without training) ------------------------------------------------------


def _cfg(job_dir: Path, ckpt_path: Path | None = None):
    return OmegaConf.create({"paths": {"output_dir": str(job_dir)}, "ckpt_path": str(ckpt_path) if ckpt_path else None,
                             "optimized_metric": "val/loss", "threads": 1})  # fmt: skip


def _killed_run(job_dir: Path, seconds_ago: float, heartbeat_s: float, ckpt_after_s: float) -> Path:
    """A run whose process died: result.json still says running (its last heartbeat after
    `heartbeat_s`), and its last.ckpt was written `ckpt_after_s` after it started."""
    started = datetime.now().astimezone() - timedelta(seconds=seconds_ago)
    segment = {"started": started.isoformat(timespec="milliseconds"), "finished": None, "status": "running",
               "resumed_from": None, "wall_time_s": heartbeat_s}  # fmt: skip
    job_dir.mkdir(parents=True)
    (job_dir / "result.json").write_text(json.dumps({"status": "running", "started": segment["started"],
                                                     "segments": [segment], "wall_time_s": heartbeat_s}))  # fmt: skip
    ckpt = job_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    os.utime(ckpt, (started.timestamp() + ckpt_after_s,) * 2)
    return ckpt


@pytest.mark.parametrize("heartbeat_s, ckpt_after_s, expected", [(20.0, 30.0, 30.0), (50.0, 30.0, 50.0)],
                         ids=["checkpoint after the last heartbeat", "heartbeat after the checkpoint"])  # fmt: skip
def test_a_killed_segment_counts_until_its_last_sign_of_life(heartbeat_s, ckpt_after_s, expected, tmp_path):
    job_dir = tmp_path / "run"
    ckpt = _killed_run(job_dir, 100.0, heartbeat_s, ckpt_after_s)
    jobs.run_job(_cfg(job_dir, ckpt), lambda cfg: {"val/loss": 1.0})
    result = json.loads((job_dir / "result.json").read_text())
    killed, this = result["segments"]
    assert killed["status"] == "killed" and killed["wall_time_s"] == pytest.approx(expected, abs=0.01)
    assert this["status"] == "ok" and this["resumed_from"] == result["resumed_from"] == str(ckpt)
    assert result["started"] == killed["started"]
    assert result["wall_time_s"] == round(killed["wall_time_s"] + result["segment_wall_time_s"], 2)


def test_a_checkpoint_from_another_run_brings_no_segments_of_that_run(tmp_path):
    other = _killed_run(tmp_path / "other", 100.0, 20.0, 30.0)
    job_dir = tmp_path / "run"
    _killed_run(job_dir, 100.0, 20.0, 30.0)  # this directory's own earlier run is not continued either
    jobs.run_job(_cfg(job_dir, other), lambda cfg: {"val/loss": 1.0})
    result = json.loads((job_dir / "result.json").read_text())
    assert [s["status"] for s in result["segments"]] == ["ok"]
    assert result["resumed_from"] == str(other)
    assert result["wall_time_s"] == result["segment_wall_time_s"] < 30


def test_a_result_from_before_segments_counts_as_one_segment(tmp_path):
    job_dir = tmp_path / "run"
    ckpt = _killed_run(job_dir, 100.0, 0.0, 40.0)
    started = (datetime.now() - timedelta(seconds=100)).isoformat(timespec="seconds")  # the old format
    (job_dir / "result.json").write_text(json.dumps({"status": "running", "started": started, "resumed_from": None}))
    os.utime(ckpt, (datetime.fromisoformat(started).timestamp() + 40,) * 2)
    jobs.run_job(_cfg(job_dir, ckpt), lambda cfg: {"val/loss": 1.0})
    result = json.loads((job_dir / "result.json").read_text())
    assert [s["status"] for s in result["segments"]] == ["killed", "ok"]
    assert result["segments"][0]["wall_time_s"] == pytest.approx(40.0, abs=0.01)
    assert result["started"] == started


def test_the_heartbeat_rewrites_the_time_while_the_job_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(segments, "HEARTBEAT_S", 0.05)
    seen = []

    def train_fn(cfg):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not seen:
            record = json.loads((tmp_path / "result.json").read_text())
            if record["segments"][0]["wall_time_s"] > 0:
                seen.append(record)
            time.sleep(0.02)
        return {"val/loss": 1.0}

    jobs.run_job(_cfg(tmp_path), train_fn)
    (record,) = seen
    assert record["status"] == "running" and record["wall_time_s"] == record["segments"][0]["wall_time_s"] > 0


def test_a_stopped_job_records_its_time_and_status_then_stops(tmp_path):
    def train_fn(cfg):
        time.sleep(0.05)
        raise Interrupted("stopped by SIGTERM at step 7", 143)

    with pytest.raises(Interrupted):
        jobs.run_job(_cfg(tmp_path), train_fn)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "stopped" and result["error"] == "Interrupted: stopped by SIGTERM at step 7"
    assert result["segments"][0]["status"] == "stopped" and result["segments"][0]["finished"] == result["finished"]
    assert result["wall_time_s"] >= 0.05
