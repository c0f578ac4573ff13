"""TensorBoard's HParams view (attnlab.training.loggers.write_hparams): what a person comparing the runs of a
sweep needs, readable without scrolling. TensorBoard shows the first 5 hyper-parameters (those marked
`differs` first, then by name) and the first 5 metrics at first, about 160 px each: one swept key and
five metrics fill a 1600 px window, so the settings that define a run go beside it as a text table.
The checks below sort with TensorBoard's own function and read the event files with its own loader.

The slow test runs a 2-job `model.positional` sweep, serves it with `tensorboard`, asks TensorBoard's
HParams API what its table holds, and (when Chromium is installed: `apt-get install chromium`) takes
a screenshot of the HParams tab; set ATTNLAB_HPARAMS_PNG=<file> to keep it (docs/reproducibility.md).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import open_dict

import attnlab.config  # noqa: F401 - registers the schema that compose() needs
from attnlab.training import loggers

METRICS = {
    "test/exact_match": 0.91, "test/ppl": 1.1, "test/bleu": 97.0, "test/chrf": 98.0, "test/loss": 0.7,
    "val/exact_match": 0.9, "val/ppl": 1.12, "val/bleu": 96.0, "val/chrf": 97.5, "val/loss": 0.72,
    "lr": 1e-3, "train/grad_norm": 0.5, "parameters": 236544.0, "steps": 445.0,
}  # fmt: skip


def hparams_events(log_dir: Path) -> dict:
    """The HParams experiment, session start values and scalars of one TensorBoard run directory."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    found: dict = {"experiment": None, "hparams": {}, "scalars": {}, "text": {}}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    if data.HasField("experiment"):
                        found["experiment"] = data.experiment
                    if data.HasField("session_start_info"):
                        found["hparams"] = dict(data.session_start_info.hparams)
                elif value.metadata.plugin_data.plugin_name == "text":
                    found["text"][value.tag] = value.tensor.string_val[0].decode()
                elif value.HasField("simple_value"):
                    found["scalars"][value.tag] = value.simple_value
                elif value.HasField("tensor"):
                    found["scalars"][value.tag] = value.tensor.float_val[0] if value.tensor.float_val else None
    return found


def tensorboard_order(experiment) -> tuple[list[str], list[str]]:
    """Hyper-parameter and metric columns in the order TensorBoard 2.x's backend returns them."""
    from tensorboard.plugins.hparams.backend_context import _sort_and_reduce_to_hparams_limit

    copy = type(experiment)()
    copy.CopyFrom(experiment)
    _sort_and_reduce_to_hparams_limit(copy)
    return [h.name for h in copy.hparam_infos], [m.name.tag for m in copy.metric_infos]


@pytest.fixture
def tb_run(compose_train, tmp_path, monkeypatch):
    """A composed `model.positional=none` job of a sweep over model.positional, a TensorBoard logger
    that got the full config at the start (as train.py does), and metadata.json started 42 s ago."""
    cfg = compose_train("model.positional=none", "logger=tensorboard")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    monkeypatch.setattr(loggers, "swept_keys", lambda: ["model.positional"])
    started = (datetime.now().astimezone() - timedelta(seconds=42)).isoformat(timespec="seconds")
    (tmp_path / "metadata.json").write_text(json.dumps({"started": started, "resumes": []}))
    logger = TensorBoardLogger(save_dir=str(tmp_path), name="tensorboard", version="", default_hp_metric=False)
    loggers.log_run_config([logger], cfg, {"parameters": 236544})
    return cfg, logger


def test_hparams_has_the_swept_key_and_final_metrics_and_the_settings_beside(tb_run):
    cfg, logger = tb_run
    loggers.log_final([logger], cfg, METRICS)
    found = hparams_events(Path(logger.log_dir))
    names, metrics = tensorboard_order(found["experiment"])

    assert names == ["model.positional"]  # one column, so five metric columns fit beside it
    assert found["hparams"]["model.positional"].string_value == "none"

    settings = dict(line.strip("| ").split(" | ") for line in found["text"]["settings/text_summary"].splitlines()[2:])
    assert settings["model.positional"] == "none" and settings["model.residual"] == "True"
    assert settings["optim.lr"] == str(cfg.optim.lr) and settings["optim.schedule"] == cfg.optim.schedule
    assert {"model.d_model", "model.n_heads", "optim.warmup_steps", "data.task", "data.train_size",
            "decode.strategy", "seed", "trainer.max_epochs"} <= set(settings)  # fmt: skip
    allowed = ("model.", "optim.", "data.", "decode.", "seed", "trainer.max_epochs", "trainer.max_steps")
    assert all(k.startswith(allowed) for k in settings), settings
    assert not [k for k in settings if "_target_" in k or "root" in k or "dir" in k or "splits" in k]

    # exact match first on a synthetic task; the first five are what TensorBoard shows at first
    assert metrics[:5] == ["final/test/exact_match", "final/test/ppl", "final/val/exact_match",
                           "final/parameters", "final/time_s"]  # fmt: skip
    assert {"final/test/bleu", "final/test/chrf", "final/test/loss"} <= set(metrics)
    assert "final/lr" not in metrics and "final/train/grad_norm" not in metrics
    assert found["scalars"]["final/test/exact_match"] == pytest.approx(0.91)
    assert 41 <= found["scalars"]["final/time_s"] < 120
    labels = {m.name.tag: m.description for m in found["experiment"].metric_infos}
    assert labels["final/test/ppl"] == "test set, checkpoint with the min val/loss"
    assert labels["final/val/exact_match"] == "validation, last epoch"


def test_the_full_config_stays_in_hparams_yaml(tb_run):
    cfg, logger = tb_run
    loggers.log_final([logger], cfg, METRICS)
    logger.save()
    saved = yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text())
    assert saved["callbacks"]["model_checkpoint"]["monitor"] == "val/loss" and saved["parameters"] == 236544
    assert "model.positional" not in saved  # the HParams subset did not leak into it


def test_real_text_puts_bleu_and_chrf_first(compose_train):
    cfg = compose_train()
    with open_dict(cfg):
        cfg.data.source = "parallel"
    assert loggers.final_metric_order(cfg, {**METRICS, "time_s": 1.0})[:5] == [
        "test/bleu", "test/chrf", "test/ppl", "parameters", "time_s"]


# -- a real sweep, served by TensorBoard, seen in Chromium ------------------------------------------------

TINY = ["data.train_size=320", "data.val_size=16", "data.test_size=16", "data.max_tokens=256", "val_decode_size=4",
        "show_examples=0", "threads=1", "trainer.max_epochs=1", "callbacks.attention_maps=null"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_hparams_view_in_chromium(tmp_path):
    """A 2-job model.positional sweep; TensorBoard's HParams API lists the swept key first and one
    session per job with its final metrics; Chromium (if installed) screenshots the table view."""
    from hydra.core.global_hydra import GlobalHydra

    from attnlab.train import main

    saved = sys.argv
    sys.argv = ["attnlab-train", "-m", *TINY, "logger=tensorboard", "model.positional=sinusoidal,none",
                f"paths.log_dir={tmp_path}"]  # fmt: skip
    GlobalHydra.instance().clear()
    try:
        main()
    except SystemExit as stop:
        assert stop.code in (0, None)
    finally:
        sys.argv = saved
    (sweep,) = (tmp_path / "train" / "multiruns").glob("2*")

    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(sweep), "--host", "127.0.0.1",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):  # TensorBoard needs a few seconds to start and read the event files
            try:
                experiment = _post(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
                if experiment.get("metricInfos"):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        names = [h["name"] for h in experiment["hparamInfos"]]
        metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
        assert names == ["model.positional"]
        assert metrics[:5] == ["final/test/exact_match", "final/test/ppl", "final/val/exact_match",
                               "final/parameters", "final/time_s"]  # fmt: skip
        groups = _post(f"{base}/data/plugin/hparams/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 100,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": [{"hparam": n} for n in names] + [{"metric": {"group": "", "tag": m}} for m in metrics]})
        sessions = {g["hparams"]["model.positional"]: g for g in groups["sessionGroups"]}
        assert set(sessions) == {"sinusoidal", "none"}  # one row per job
        for group in sessions.values():
            values = {v["name"]["tag"]: v["value"] for v in group["metricValues"]}
            assert values["final/parameters"] > 0 and 0 <= values["final/test/exact_match"] <= 1

        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            pytest.skip("no chromium (apt-get install chromium): the HParams API checks passed")
        png = Path(os.environ.get("ATTNLAB_HPARAMS_PNG") or tmp_path / "hparams.png").resolve()
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1600,1000", "--virtual-time-budget=20000",
             f"--screenshot={png}", f"{base}/#hparams"], check=True, timeout=180, capture_output=True)  # fmt: skip
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000  # a rendered page, not blank
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_single_runs_overrides_are_the_keys(compose_train, monkeypatch):
    cfg = compose_train("model.n_heads=2")
    monkeypatch.setattr(loggers, "swept_keys", lambda: [])
    monkeypatch.setattr(loggers, "_task_overrides", lambda: ["model.n_heads=2", "paths.log_dir=/x", "logger=many"])
    assert loggers.comparison_hparams(cfg) == {"model.n_heads": 2}  # where it writes is no column
    monkeypatch.setattr(loggers, "_task_overrides", lambda: [])
    assert loggers.comparison_hparams(cfg) == {"seed": 0}  # a run with no overrides still has a row key


def test_time_is_the_whole_runs_when_it_was_resumed(tb_run):
    """result.json lists an earlier 100 s segment and this running one, started 42 s ago."""
    cfg, logger = tb_run
    started = (datetime.now().astimezone() - timedelta(seconds=42)).isoformat(timespec="milliseconds")
    segments = [{"status": "stopped", "wall_time_s": 100.0}, {"status": "running", "started": started}]
    (Path(cfg.paths.output_dir) / "result.json").write_text(json.dumps({"segments": segments}))
    loggers.log_final([logger], cfg, METRICS)
    assert 141 <= hparams_events(Path(logger.log_dir))["scalars"]["final/time_s"] < 220
