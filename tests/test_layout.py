"""The layers import one way: data/ knows no Hydra, OmegaConf or model (any of its modules can be
used without the training stack's config machinery), and model/ no Lightning or Hydra (the
transformer is plain PyTorch). Each is imported in a fresh interpreter, so sys.modules holds exactly
what its imports pulled in."""

from __future__ import annotations

import json
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
