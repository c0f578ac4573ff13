"""`attnlab-reproduce <run_dir> [overrides...]`: train again with the configuration a run recorded.

The recorded `.hydra/config.yaml` is laid over today's `train` config (`defaults: [train, _self_]`)
with the run's config group choices, so every value the run used wins while today's Hydra settings
(run directories, callbacks, logging) still apply; a key that no longer exists fails loudly instead
of being dropped. The new run goes to `<log_dir>/<task_name>/runs/<time>_reproduces_<run name>`
(the original's log folder unless `paths.log_dir=` is given), its `metadata.json` says which run it
reproduces, and the final metrics of both runs are printed side by side. Extra overrides (e.g.
`trainer.max_epochs=1` for a quick check) are applied on top, and recorded as such.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from .training import metadata

# Groups whose content is already in the recorded values: choosing them again would only re-apply
# (experiment) or re-launch (sweep: a sweep file turns a single run into a multirun) what they set.
_SKIP_GROUPS = ("experiment", "sweep")
# Keys about where a run starts or writes, not what it trains.
_START_KEYS = ("paths", "resume", "ckpt_path")
# Modules that moved into training/ (they stood at the top of the package before): a run recorded
# earlier names its callbacks and loggers (`_target_`) by the old path, which is read as today's.
_MOVED = re.compile(
    r"\battnlab\.(callbacks|faults|jobs|loggers|metadata|metrics|preflight|resume|runlog|schedule|segments|summary)\."
)


def usage_error(message: str) -> None:
    print(f"attnlab-reproduce: error: {message}", file=sys.stderr)
    sys.exit(2)


def recorded(run_dir: Path) -> tuple[dict, dict, list[str], str]:
    """(the run's job config, config group choices, command-line overrides, log folder made absolute)."""
    hydra_dir = run_dir / ".hydra"
    if not all((hydra_dir / f).is_file() for f in ("config.yaml", "hydra.yaml", "overrides.yaml")):
        usage_error(f"{run_dir} is not an attnlab-train run directory (no .hydra/ with config, hydra, overrides)")
    config = OmegaConf.to_container(OmegaConf.load(hydra_dir / "config.yaml"), resolve=False)
    choices = OmegaConf.to_container(OmegaConf.load(hydra_dir / "hydra.yaml").hydra.runtime.choices)
    overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
    log_dir = Path(str(config.get("paths", {}).get("log_dir", "outputs")))
    if not log_dir.is_absolute():  # relative to where the original ran
        log_dir = Path((metadata.read(run_dir) or {}).get("cwd", ".")) / log_dir
    return config, choices, overrides, str(log_dir)


def _default_choices() -> dict[str, str]:
    defaults = OmegaConf.to_container(OmegaConf.load(Path(__file__).parent / "conf" / "train.yaml").defaults)
    return {k: v for entry in defaults if isinstance(entry, dict) for k, v in entry.items()}


def current_targets(value):
    """A recorded config value (or override) with the module paths of moved classes made today's."""
    if isinstance(value, str):
        return _MOVED.sub(r"attnlab.training.\1.", value)
    if isinstance(value, dict):
        return {k: current_targets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [current_targets(v) for v in value]
    return value


def overrides_for(choices: dict, overrides: list[str]) -> list[str]:
    """The run's own overrides (so names and metadata match the original), with every config group
    choice that differs from train.yaml's defaults (an experiment file's `override /model: ...` too);
    `+key=` becomes `++key=`, since the recorded values already hold the key."""
    defaults = _default_choices()
    groups = [f"{g}={c}" for g, c in choices.items()
              if "/" not in g and g not in _SKIP_GROUPS and c is not None and defaults.get(g) != c]  # fmt: skip
    rest = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in choices or key.split(".")[0] in _START_KEYS or key.startswith("hydra."):
            continue
        override = current_targets(override)
        rest.append("+" + override if override.startswith("+") and not override.startswith("++") else override)
    return groups + rest


def command_line(run_dir: Path, config_dir: Path, extra: list[str]) -> tuple[list[str], Path]:
    """argv for attnlab-train, and the new run's directory; writes the primary config to config_dir."""
    config, choices, overrides, log_dir = recorded(run_dir)
    body = current_targets({k: v for k, v in config.items() if k not in _START_KEYS})
    OmegaConf.save(OmegaConf.create({"defaults": ["train", "_self_"], **body}), config_dir / "reproduce.yaml")
    given = [o.split("=", 1)[1] for o in extra if o.startswith("paths.log_dir=")]
    log_dir = given[-1] if given else log_dir
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    task = str(config.get("task_name", "train"))
    # A sweep job's directory is its number: name it with its sweep's directory.
    name = f"{run_dir.parent.name}-{run_dir.name}" if run_dir.name.isdigit() else run_dir.name
    new_dir = Path(log_dir).resolve() / task / "runs" / f"{stamp}_reproduces_{name}"
    argv = ["attnlab-train", "--config-dir", str(config_dir), "--config-name", "reproduce",
            *overrides_for(choices, overrides), *([] if given else [f"paths.log_dir={log_dir}"]),
            f"hydra.run.dir={new_dir}", *extra]  # fmt: skip
    return argv, new_dir


def compare(old_dir: Path, new_dir: Path) -> str:
    """Final metrics of both runs (metrics.json), one line each, with the difference."""
    def load(d: Path) -> dict:
        try:
            return json.loads((d / "metrics.json").read_text())
        except (OSError, ValueError):
            return {}

    old, new = load(old_dir), load(new_dir)
    lines = [f"{'metric':<24} {'original':>14} {'reproduced':>14} {'difference':>12}"]
    for key in sorted(set(old) & set(new)):
        a, b = float(old[key]), float(new[key])
        diff = b - a if math.isfinite(a) and math.isfinite(b) else float("nan")
        lines.append(f"{key:<24} {a:>14.6g} {b:>14.6g} {diff:>12.3g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if args else 2)
    run_dir, extra = Path(args[0]).resolve(), args[1:]
    from .train import main as train_main  # heavy imports after the usage checks

    with tempfile.TemporaryDirectory(prefix="attnlab-reproduce-") as tmp:
        train_argv, new_dir = command_line(run_dir, Path(tmp), extra)
        saved_argv, sys.argv = sys.argv, train_argv
        os.environ["ATTNLAB_REPRODUCES"] = str(run_dir)  # metadata.json: "reproduces"
        GlobalHydra.instance().clear()
        try:
            train_main()
        finally:
            sys.argv = saved_argv
            os.environ.pop("ATTNLAB_REPRODUCES", None)
    print(f"\nreproduced {run_dir}\n      as {new_dir}\n{compare(run_dir, new_dir)}")


if __name__ == "__main__":
    main()
