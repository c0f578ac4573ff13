"""Dashboards and reproducibility (docs/reproducibility.md): what W&B (offline), TensorBoard and the CSV
log receive, what `metadata.json` records, that no secret reaches any run file, that a seed fixes the
losses, and that `attnlab-reproduce` re-runs a run with its recorded config.

One small two-job sweep with every logger (`logger=many`, `model.n_heads=2,4`) runs once for the module,
in this process, with a fake WANDB_API_KEY (and another fake secret) in the environment; W&B stays
offline (conftest sets WANDB_MODE=offline). W&B's offline run file (`run-<id>.wandb`) is read with W&B's
own reader (`wandb leet inspect`), so the checks see what `wandb sync` would upload.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from attnlab.train import main
from attnlab.training import runlog
from attnlab.training.loggers import configure_loggers, has_wandb_credentials

FAKE_KEY = "fake0wandb0key0" + "5f3a9c" * 6
FAKE_SECRET = "fake-aws-secret-" + "Zq81" * 5
TINY = [
    "data.train_size=320", "data.val_size=16", "data.test_size=16", "data.max_tokens=256",
    "val_decode_size=4", "show_examples=0", "threads=1", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
]  # fmt: skip


def run_train(*argv: str) -> None:
    """`attnlab-train argv...` in this process; a non-zero exit fails the test."""
    saved = sys.argv
    sys.argv = ["attnlab-train", *argv]
    GlobalHydra.instance().clear()
    try:
        main()
    except SystemExit as stop:
        assert stop.code in (0, None), f"attnlab-train exited with {stop.code}"
    finally:
        sys.argv = saved


# -- W&B's offline run, read with W&B's own reader -------------------------------------------------------


def wandb_inspect(run_dir: Path, *flags: str) -> str:
    """`wandb leet inspect <flags> <run dir>`: W&B's own reader of its offline transaction log (the records
    `wandb sync` would upload), so a wandb or protobuf release cannot break a reader of ours."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    done = subprocess.run([str(wandb_cli), "leet", "inspect", *flags, str(run_dir)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def wandb_run(job_dir: Path) -> dict:
    """The offline W&B run of one job: name, project, tags, state, exit code, config and latest summary (from
    `--summary --json`), and its group and job type (from the run record, `--json`)."""
    (run_dir,) = job_dir.glob("wandb/offline-run-*")
    run = json.loads(wandb_inspect(run_dir, "--summary", "--json"))
    records = [json.loads(line) for line in wandb_inspect(run_dir, "--json").splitlines() if line.strip()]
    (run_record,) = [r["run"] for r in records if r["type"] == "run"]
    return {"id": run["run_id"], "name": run["name"], "group": run_record.get("run_group"),
            "job_type": run_record.get("job_type"), "tags": run["tags"], "project": run["project"],
            "config": run["config"], "summary": run["summary"], "state": run["state"],
            "exit_code": run["exit_code"]}  # fmt: skip


# -- the sweep -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    log_dir = tmp_path_factory.mktemp("dashboard")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_API_KEY", FAKE_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
        mp.setenv("WANDB_MODE", "offline")
        run_train("-m", *TINY, "logger=many", "model.n_heads=2,4", f"paths.log_dir={log_dir}")
    (sweep_dir,) = (log_dir / "train" / "multiruns").glob("2*")
    return sweep_dir


def test_each_sweep_job_is_its_own_finished_wandb_run_in_one_group(sweep):
    runs = [wandb_run(sweep / str(job)) for job in (0, 1)]
    assert runs[0]["id"] != runs[1]["id"]
    for heads, run in zip((2, 4), runs):
        assert run["project"] == "attnlab"
        assert run["group"] == f"train-{sweep.name}"  # one group per sweep
        assert run["job_type"] == "train"
        assert run["tags"] == ["model.n_heads"]  # the swept keys
        assert run["name"] == f"n_heads={heads}"  # from the job's overrides
        # every job called finish: no job logged into another's run
        assert run["state"] == "finished" and run["exit_code"] == 0
        # The full resolved config, and the job's own value in it.
        assert run["config"]["model"]["n_heads"] == heads
        assert run["config"]["model"]["d_model"] == 64 and run["config"]["seed"] == 0
        assert run["config"]["parameters"] > 0
        # Final test metrics in the summary, and the training curves' last values.
        metrics = json.loads((sweep / str(heads // 2 - 1) / "metrics.json").read_text())
        assert run["summary"]["test/loss"] == pytest.approx(metrics["test/loss"])
        for key in ("test/bleu", "test/chrf", "val/bleu", "val/ppl", "train/grad_norm", "lr", "parameters"):
            assert key in run["summary"], key
        # Sample translations (a table) and attention maps (images) were logged as media.
        media = {p.parent.name for p in (sweep / "0").glob("wandb/offline-run-*/files/media/**/*") if p.is_file()}
        assert {"val", "attention"} <= media


def tensorboard_events(job_dir: Path) -> tuple[set[str], set[str], set[str], set[str]]:
    """(scalar tags, image tags, text tags, hparams metric tags) over every event file of a run."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    found: dict[str, set[str]] = {"scalars": set(), "images": set(), "text": set(), "hparams": set()}
    for path in sorted(job_dir.glob("tensorboard/events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "hparams" and value.tag == "_hparams_/experiment":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    found["hparams"] |= {m.name.tag for m in data.experiment.metric_infos}
                elif plugin in found and plugin != "hparams":
                    found[plugin].add(value.tag.removesuffix("/text_summary"))
    return found["scalars"], found["images"], found["text"], found["hparams"]


def test_tensorboard_gets_scalars_hparams_and_attention_images(sweep):
    scalars, images, texts, hparams = tensorboard_events(sweep / "0")
    expected = {"train/loss_step", "train/loss_epoch", "val/loss", "val/ppl", "val/token_acc", "val/bleu",
                "val/chrf", "lr", "train/grad_norm", "train/tokens_per_sec", "test/loss", "test/bleu"}  # fmt: skip
    assert expected <= scalars, expected - scalars
    assert {"attention/encoder_self", "attention/decoder_self", "attention/cross"} <= images
    assert "val/samples" in texts
    assert {"final/test/loss", "final/test/bleu", "final/parameters"} <= hparams  # the HParams view


def test_csv_log_has_every_step(sweep):
    with open(runlog.find_metrics_csv(sweep / "0"), newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    assert {"step", "train/loss_step", "val/loss", "val/bleu", "lr", "train/grad_norm"} <= columns
    steps = [int(r["step"]) for r in rows if r["train/loss_step"]]
    assert steps == list(range(len(steps))) and len(steps) >= 10


def test_no_secret_reaches_any_file_of_the_run(sweep):
    scanned = 0
    for path in sweep.parent.rglob("*"):  # the sweep, every job, their wandb/ and tensorboard/ folders
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert FAKE_KEY.encode() not in data, path
            assert FAKE_SECRET.encode() not in data, path
            scanned += 1
    assert scanned > 40  # the scan did see the run files (wandb logs, events, checkpoints, ...)


def test_metadata_records_what_a_rerun_needs(sweep):
    meta = json.loads((sweep / "1" / "metadata.json").read_text())
    assert meta["status"] == "finished" and meta["started"] <= meta["finished"] and meta["wall_time_s"] > 0
    assert meta["config"]["model"]["n_heads"] == 4 and meta["seed"] == 0
    assert "model.n_heads=4" in meta["overrides"]
    assert len(meta["git"]["revision"]) == 40 and isinstance(meta["git"]["dirty"], bool)
    if meta["git"]["dirty"]:
        assert (sweep / "1" / meta["git"]["diff"]).is_file()
    assert meta["python"]["version"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert meta["packages"]["torch"] and meta["packages"]["lightning"] and meta["packages"]["attnlab"]
    assert meta["hardware"]["cpu_count"] >= 1 and "memory_bytes" in meta["hardware"]
    assert meta["metrics"]["test/loss"] > 0
    assert set(meta["environment"]) <= {"CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "WANDB_MODE", "PYTHONHASHSEED",
                                        "ATTNLAB_DATA_DIR"}  # fmt: skip
    assert (sweep / "1" / ".hydra" / "config.yaml").is_file() and (sweep / "1" / ".hydra" / "overrides.yaml").is_file()


# -- W&B mode without an account -------------------------------------------------------------------------


def test_wandb_is_offline_without_credentials_and_online_with_them(compose_train, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))

    def mode() -> str:
        cfg = compose_train("logger=wandb")
        cfg.paths.output_dir = str(tmp_path)
        configure_loggers(cfg)
        return cfg.logger.wandb.mode

    assert not has_wandb_credentials() and mode() == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + FAKE_KEY + "\n")
    assert has_wandb_credentials() and mode() == "online"  # `wandb login` was run
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_train("logger=wandb")
    cfg.paths.output_dir = str(tmp_path)
    configure_loggers(cfg)
    assert "mode" not in cfg.logger.wandb  # WANDB_MODE always wins


# -- seeds and attnlab-reproduce ---------------------------------------------------------------------------


def first_losses(run: Path, n: int = 8) -> list[tuple[int, float]]:
    return runlog.curve(runlog.read_rows(runlog.find_metrics_csv(run)), "train/loss_step")[:n]


def test_same_seed_same_losses_and_reproduce_reruns_a_run(tmp_path, capsys):
    """Run A (seed 0), `attnlab-reproduce A` (B), and run C with seed 1, each 12 steps on CPU with dropout:
    A and B log bit-identical losses and end with the same metrics; C differs."""
    from attnlab.reproduce import main as reproduce

    quick = [*TINY, "test=false", "callbacks.attention_maps=null", "callbacks.sample_translations=null"]
    run_train(*quick, f"paths.log_dir={tmp_path / 'a'}")
    run_train(*quick, "seed=1", f"paths.log_dir={tmp_path / 'c'}")
    (a,) = (tmp_path / "a" / "train" / "runs").iterdir()
    (c,) = (tmp_path / "c" / "train" / "runs").iterdir()
    capsys.readouterr()
    reproduce([str(a), f"paths.log_dir={tmp_path / 'b'}"])
    printed = capsys.readouterr().out
    (b,) = (tmp_path / "b" / "train" / "runs").iterdir()
    assert b.name.endswith(f"_reproduces_{a.name}")

    assert len(first_losses(a)) == 8
    assert first_losses(a) == first_losses(b)
    assert first_losses(a) != first_losses(c)
    meta_a, meta_b = (json.loads((r / "metadata.json").read_text()) for r in (a, b))
    assert meta_b["reproduces"] == str(a)
    # The same resolved config, apart from where each run writes.
    def where_free(meta: dict, run: Path) -> str:
        config = {k: v for k, v in meta["config"].items() if k != "paths"}
        return json.dumps(config, sort_keys=True).replace(str(run), "<run>")

    assert where_free(meta_a, a) == where_free(meta_b, b)
    assert meta_b["metrics"]["val/loss"] == meta_a["metrics"]["val/loss"]
    assert f"reproduced {a}" in printed
    assert [line.split()[-1] for line in printed.splitlines() if line.startswith("val/loss ")] == ["0"]


def test_csv_logger_keeps_columns_another_process_wrote(tmp_path):
    """ddp_spawn runs fit and test in workers that each hold a copy of the logger made before the
    spawn: the test worker's writer must keep the fit worker's columns and rows, not rewrite them away."""
    import copy

    from attnlab.training.loggers import ResumableCSVLogger

    fit = ResumableCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    assert fit.experiment is not None  # created in the parent, before the workers
    test = copy.deepcopy(fit)
    fit.log_metrics({"train/loss": 2.0, "val/loss": 1.5}, step=10)
    fit.save()
    test.log_metrics({"test/loss": 1.4}, step=10)
    test.save()
    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["train/loss"] == "2.0" and rows[0]["val/loss"] == "1.5"
    assert rows[1]["test/loss"] == "1.4" and set(rows[1]) == {"step", "train/loss", "val/loss", "test/loss"}


def test_a_resume_from_other_code_keeps_the_starts_diff(tmp_path, monkeypatch):
    """Started with local edits A, resumed after edits B: git.diff stays A, the resume's diff is B."""
    from omegaconf import OmegaConf

    from attnlab.training import metadata

    diff = {"text": "edit A\n"}

    def fake_git(*args, cwd):
        return {"rev-parse": "abc123\n", "status": " M model.py\n", "diff": diff["text"]}[args[0]]

    monkeypatch.setattr(metadata, "_git", fake_git)
    cfg = OmegaConf.create({"seed": 1})
    metadata.write_start(tmp_path, cfg)
    metadata.write_end(tmp_path, "failed", error="killed")
    diff["text"] = "edit B\n"
    record = metadata.write_start(tmp_path, cfg, resumed_from=str(tmp_path / "last.ckpt"))
    assert (tmp_path / "git.diff").read_text() == "edit A\n"
    assert record["git"]["diff"] == "git.diff"
    assert record["resumes"][0]["git"]["diff"] == "git.resume-1.diff"
    assert (tmp_path / "git.resume-1.diff").read_text() == "edit B\n"
