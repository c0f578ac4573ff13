"""attnlab-report on hand-made run directories (no training): seed replicates fold into mean/std,
sorting follows the swept values, a run and its reproduction stay apart, partial sweeps show their
status, and the table3 comparison puts the paper's deltas beside ours."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml

from attnlab.paper_table3 import paper_deltas
from attnlab.report import main, report

CONFIG = {"seed": 0, "data": {"source": "synthetic"}, "model": {"n_heads": 4, "dropout": 0.1}, "paths": {"x": 1}}


def make_run(run_dir: Path, overrides: list[str], val_loss: list[float], exact: float, status: str = "ok",
             config: dict | None = None, result: bool = True) -> Path:
    """A run directory as attnlab-train leaves it: .hydra/, csv/metrics.csv, result.json."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config or CONFIG))
    (run_dir / "csv").mkdir()
    with open(run_dir / "csv" / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train/loss_epoch", "train/nll", "val/loss", "val/ppl", "val/exact_match"])
        for epoch, loss in enumerate(val_loss):
            w.writerow([epoch, 10 * (epoch + 1), loss + 0.1, loss, loss, round(2.718281828 ** loss, 6), exact])
    if result:
        (run_dir / "result.json").write_text(json.dumps({
            "status": status, "overrides": overrides, "error": "boom: bad thing" if status == "failed" else None,
            "parameters": 1234, "steps": 10 * len(val_loss), "wall_time_s": 5.0,
            "metrics": {"final": {"val/loss": 99.0}},  # the CSV log must win over this
        }))
    return run_dir


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_seed_replicates_fold_into_mean_and_std_sorted_numerically(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    n = 0
    losses = {"16": [1.0, 1.2, 1.4], "2": [2.0, 2.5, 3.0]}
    for heads in ("16", "2"):  # sweep order 16 then 2: numbers still sort numerically
        for seed, loss in zip((1, 2, 3), losses[heads]):
            make_run(sweep / str(n), [f"model.n_heads={heads}", f"seed={seed}"], [loss + 1, loss], exact=0.5)
            n += 1
    files = report([str(sweep)], tmp_path / "out", plots=False)
    rows = _csv(files["csv"])
    assert [r["model.n_heads"] for r in rows] == ["2", "16"]
    assert [(r["seeds"], r["n"]) for r in rows] == [("1,2,3", "3"), ("1,2,3", "3")]
    assert float(rows[0]["val/loss"]) == pytest.approx(statistics.fmean(losses["2"]))
    assert float(rows[0]["val/loss_std"]) == pytest.approx(statistics.stdev(losses["2"]))
    assert float(rows[1]["val/loss"]) == pytest.approx(1.2)
    md = files["markdown"].read_text()
    assert "| seeds | n |" in md and "2.5 ± 0.5" in md

    unfolded = _csv(report([str(sweep)], tmp_path / "out2", plots=False, by_seed=False)["csv"])
    assert len(unfolded) == 6 and unfolded[0]["val/loss_std"] == ""


def test_partial_sweep_shows_failed_and_unfinished_rows_with_plots(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    make_run(sweep / "0", ["model.positional=sinusoidal"], [2.0, 1.0], exact=0.9)
    make_run(sweep / "1", ["model.positional=none"], [2.0], exact=0.0, status="failed")
    make_run(sweep / "2", ["model.positional=rope"], [2.0], exact=0.1, result=False)  # killed before result.json
    files = report([str(sweep)], tmp_path / "out")
    rows = _csv(files["csv"])
    assert [(r["model.positional"], r["status"]) for r in rows] == [
        ("sinusoidal", "ok"), ("none", "failed"), ("rope", "unfinished")]
    assert float(rows[0]["val/loss"]) == 1.0  # from metrics.csv, not result.json's 99.0
    assert float(rows[0]["val/exact_match"]) == 0.9 and float(rows[0]["parameters"]) == 1234
    assert float(rows[0]["best:val/exact_match"]) == 0.9
    assert float(rows[0]["train/loss"]) == pytest.approx(1.1)
    assert float(rows[2]["steps"]) == 10  # no result.json: the log's last step
    assert "boom: bad thing" in rows[1]["error"] and "boom: bad thing" in files["markdown"].read_text()
    for name in ("curves", "val_exact_match_vs_model_positional", "val_loss_vs_model_positional"):
        assert files[name].read_bytes()[:4] == b"\x89PNG"


def test_a_run_and_its_reproduction_stay_two_rows(tmp_path: Path) -> None:
    """Same seed, different command lines (the reproduction has none): the differing config key shows."""
    a = make_run(tmp_path / "runs" / "a", ["model.dropout=0.1"], [1.0], exact=0.8)
    b = make_run(tmp_path / "runs" / "b", [], [1.05], exact=0.8, config={**CONFIG, "paths": {"x": 2}})
    rows = _csv(report([str(a), str(b)], tmp_path / "out", plots=False)["csv"])
    assert [r["run"] for r in rows] == ["a", "b"]
    assert [float(r["val/loss"]) for r in rows] == [1.0, 1.05]
    assert "model.dropout" in rows[0]  # the override that differs


def test_table3_comparison_puts_paper_deltas_beside_ours(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    make_run(sweep / "0", ["table3=base"], [1.0], exact=0.8)
    make_run(sweep / "1", ["table3=C_N2"], [1.5], exact=0.5)  # worse, as in the paper
    make_run(sweep / "2", ["table3=D_ls0"], [1.2], exact=0.85)
    files = report([str(sweep)], tmp_path / "out", plots=False)
    rows = {r["row"]: r for r in _csv(files["table3_csv"])}
    dppl, dbleu = paper_deltas("C_N2")
    assert float(rows["C_N2"]["paper Δppl"]) == pytest.approx(dppl) == pytest.approx(6.11 - 4.92)
    assert float(rows["C_N2"]["paper ΔBLEU"]) == pytest.approx(dbleu)
    assert float(rows["C_N2"]["our Δppl"]) == pytest.approx(2.718281828 ** 1.5 - 2.718281828, rel=1e-5)
    assert float(rows["C_N2"]["our Δexact_match"]) == pytest.approx(-0.3)
    assert (rows["C_N2"]["ppl reproduces"], rows["C_N2"]["BLEU reproduces"]) == ("yes", "yes")
    # paper: label smoothing 0 lowers ppl and BLEU; ours: ppl up, exact match up -> neither reproduces
    assert (rows["D_ls0"]["ppl reproduces"], rows["D_ls0"]["BLEU reproduces"]) == ("no", "no")
    assert "Table 3 reproduction" in files["table3_markdown"].read_text()


def test_cli_names_a_missing_directory(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "nope")])
    assert stop.value.code == 2
    assert "nope: no such directory" in capsys.readouterr().err
