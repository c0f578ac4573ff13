"""Score finished runs again under their own eval_protocol: `python -m attnlab.rescore RUN_DIR...`

For when the protocol's code changed after the runs finished (which checkpoints `average_last`
takes, say) and a sweep must compare like with like without training again. Each run's weights,
test sets and decoding come from its own `.hydra/config.yaml` and checkpoints; the test numbers are
made by the same `protocol.run_protocol` that attnlab-train calls, and written where it writes them
(hyps/, refs/, protocol.json, result.json, the CSV log), so attnlab-report reads the new numbers.

Nothing is lost: the files it replaces move to `<run>/rescored-<time>/` first.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
from omegaconf import OmegaConf

from . import config as _registers_resolvers  # noqa: F401  (${attnlab.scaled:...} in table3 configs)
from . import protocol
from .atomic import atomic_write
from .errors import ConfigError
from .training import runlog
from .training.jobs import PROTOCOL_FILE, RESULT_FILE, read_result, write_result

REPLACED = (protocol.HYPS_DIR, protocol.REFS_DIR, PROTOCOL_FILE, RESULT_FILE)


def run_config(run_dir: Path):
    """The run's composed config, its output folder pointed at where the run now is (no Hydra here)."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not an attnlab-train run directory (no .hydra/config.yaml)")
    cfg = OmegaConf.load(path)
    cfg.paths.output_dir = str(run_dir)
    if cfg.eval_protocol.checkpoint == "best":
        # which checkpoint was best is the ModelCheckpoint callback's state during training
        raise ConfigError(f"{run_dir}: eval_protocol.checkpoint=best cannot be re-made after training; "
                          f"score it with attnlab-eval ckpt=<its best checkpoint>")  # fmt: skip
    return cfg


def _append_to_log(run_dir: Path, metrics: dict[str, float], step: int) -> None:
    """One more row in the CSV log: its last values are what attnlab-report reads as the run's."""
    path = runlog.find_metrics_csv(run_dir)
    if path is None:
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows, header = list(reader), list(reader.fieldnames or [])
    header += [k for k in metrics if k not in header]
    rows.append({"step": step, **metrics})
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, out.getvalue().encode())


def rescore(run_dir: Path) -> dict[str, float]:
    """Re-make one run's test numbers; returns them (test/<metric>, test/<set>/<metric>)."""
    run_dir = Path(run_dir).resolve()
    cfg = run_config(run_dir)
    result = read_result(run_dir)
    if not result or result.get("status") != "ok":
        raise ConfigError(f"{run_dir}: only a finished run (result.json status ok) can be re-scored")
    texts = protocol.read_test_sets(cfg)
    kept = run_dir / f"rescored-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
    kept.mkdir()
    for name in REPLACED:
        if (run_dir / name).is_dir():
            shutil.copytree(run_dir / name, kept / name)
        elif (run_dir / name).is_file():
            shutil.copy2(run_dir / name, kept / name)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    metrics = protocol.run_protocol(cfg, trainer, None, texts, run_dir)
    record = json.loads((run_dir / PROTOCOL_FILE).read_text())
    final = result.setdefault("metrics", {}).setdefault("final", {})
    final.update(metrics)
    result["protocol"] = record
    result["rescored"] = {"at": datetime.now(timezone.utc).isoformat(), "previous": kept.name}
    write_result(run_dir, result)
    _append_to_log(run_dir, metrics, record["global_step"])
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m attnlab.rescore", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (a sweep's numbered job folders)")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        try:
            metrics = rescore(run_dir)
        except ConfigError as err:
            sys.exit(f"rescore: error: {err}")
        shown = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k.endswith(("/bleu", "/chrf")))
        print(f"{run_dir}: {shown}")


if __name__ == "__main__":
    main()
