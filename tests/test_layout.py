"""The layers import one way: data/ knows no Hydra, OmegaConf or model (any of its modules can be
used without the training stack's config machinery), and model/ no Lightning or Hydra (the
transformer is plain PyTorch). Each is imported in a fresh interpreter, so sys.modules holds exactly
what its imports pulled in."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import attnlab

PACKAGE = Path(attnlab.__file__).parent


def modules_of(package: str) -> list[str]:
    """`attnlab.<package>` and every module in it."""
    folder = PACKAGE / package
    inside = sorted(f"attnlab.{package}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__")
    return [f"attnlab.{package}", *inside]


def imported_by(modules: list[str]) -> list[str]:
    """The module names a fresh interpreter holds after importing `modules`."""
    code = "".join(f"import {m}\n" for m in modules) + "import json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def under(names: list[str], *roots: str) -> list[str]:
    return [n for n in names if any(n == r or n.startswith(r + ".") for r in roots)]


def test_the_data_package_imports_no_hydra_omegaconf_or_model():
    modules = modules_of("data")
    assert "attnlab.data.multi30k" in modules and "attnlab.data.datamodule" in modules
    loaded = imported_by(modules)
    assert under(loaded, "hydra", "omegaconf", "attnlab.model") == []
    assert under(loaded, "attnlab.config") == []  # the Hydra schema: where the old cycle ran


def test_the_model_package_imports_no_lightning_or_hydra():
    modules = modules_of("model")
    loaded = imported_by(modules)
    assert "torch" in loaded  # the check itself works: the model did load
    assert under(loaded, "lightning", "pytorch_lightning", "lightning_fabric", "hydra", "omegaconf") == []


def test_the_decoding_package_imports_no_lightning_hydra_or_omegaconf():
    """DecodeConfig (decoding/config.py) is the type the Hydra schema derives from, not the other way:
    the search and its settings load without the training stack."""
    loaded = imported_by(modules_of("decoding"))
    assert "attnlab.decoding.config" in loaded
    assert under(loaded, "lightning", "pytorch_lightning", "hydra", "omegaconf", "attnlab.config") == []


def test_every_class_a_config_file_names_exists():
    """`_target_: attnlab...` in conf/ (callbacks, loggers, Hydra callbacks) names a class that imports."""
    from hydra.utils import get_class

    targets = set()
    for path in (PACKAGE / "conf").rglob("*.yaml"):
        targets |= set(re.findall(r"_target_:\s*(attnlab\.[\w.]+)", path.read_text()))
    assert {"attnlab.training.resume.RandomStateCheckpoint", "attnlab.training.jobs.SweepSummary"} <= targets
    for target in sorted(targets):
        assert isinstance(get_class(target), type), target


def test_a_run_recorded_before_the_training_package_still_reproduces(tmp_path):
    """A run recorded when training's modules stood at the top names its callbacks and loggers by those
    paths (in .hydra/config.yaml and in its overrides): attnlab-reproduce reads them as today's."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from attnlab.reproduce import command_line

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save({"task_name": "train", "paths": {"log_dir": str(tmp_path / "out")},
                    "callbacks": {"nonfinite_loss": {"_target_": "attnlab.faults.NonFiniteLossGuard"}},
                    "logger": {"csv": {"_target_": "attnlab.loggers.ResumableCSVLogger", "name": "csv"}}},
                   run / ".hydra" / "config.yaml")  # fmt: skip
    OmegaConf.save({"hydra": {"runtime": {"choices": {}}}}, run / ".hydra" / "hydra.yaml")
    overrides = ["+callbacks.kill._target_=attnlab.faults.InjectSignal", "seed=3"]
    OmegaConf.save(overrides, run / ".hydra" / "overrides.yaml")
    argv, _ = command_line(run, tmp_path, [])
    config = OmegaConf.load(tmp_path / "reproduce.yaml")
    assert config.callbacks.nonfinite_loss._target_ == "attnlab.training.faults.NonFiniteLossGuard"
    assert config.logger.csv == {"_target_": "attnlab.training.loggers.ResumableCSVLogger", "name": "csv"}
    assert "++callbacks.kill._target_=attnlab.training.faults.InjectSignal" in argv and "seed=3" in argv
    for target in (config.callbacks.nonfinite_loss._target_, config.logger.csv._target_):
        assert isinstance(get_class(target), type)
