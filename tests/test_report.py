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

from attnlab.report.paper_table3 import paper_deltas
from attnlab.report.tables import main, report

CONFIG = {"seed": 0, "data": {"source": "synthetic"}, "model": {"n_heads": 4, "dropout": 0.1}, "paths": {"x": 1}}


def make_run(run_dir: Path, overrides: list[str], val_loss: list[float], exact: float | list[float],
             status: str = "ok", config: dict | None = None, result: bool = True, test: float | None = None) -> Path:
    """A run directory as attnlab-train leaves it: .hydra/, csv/metrics.csv, result.json.
    `exact`: one val exact match for every epoch, or one per epoch; `test`: a test row's exact match."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config or CONFIG))
    (run_dir / "csv").mkdir()
    exacts = exact if isinstance(exact, list) else [exact] * len(val_loss)
    with open(run_dir / "csv" / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train/loss_epoch", "train/nll", "val/loss", "val/ppl", "val/exact_match",
                    "test/exact_match"])  # fmt: skip
        for epoch, (loss, em) in enumerate(zip(val_loss, exacts)):
            w.writerow([epoch, 10 * (epoch + 1), loss + 0.1, loss, loss, round(2.718281828 ** loss, 6), em, ""])
        if test is not None:
            w.writerow([len(val_loss), 10 * len(val_loss), "", "", "", "", "", test])
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


def test_a_table3_split_over_two_sweeps_compares_test_scores_and_leaves_a_training_row_blank(tmp_path: Path) -> None:
    """The rest of a table run later, with threads=1: threads is no axis (one table, the base is the
    reference), and the row still training gets no score rather than a val score beside test scores."""
    make_run(tmp_path / "first" / "0", ["table3=base"], [1.0], exact=0.8, test=0.7)
    make_run(tmp_path / "rest" / "0", ["table3=C_N2", "threads=1"], [1.5], exact=0.5, test=0.3)
    make_run(tmp_path / "rest" / "1", ["table3=D_ls0", "threads=1"], [1.2], exact=0.85, status="unfinished")
    files = report([str(tmp_path / "first"), str(tmp_path / "rest")], tmp_path / "out", plots=False)
    assert "threads" not in _csv(files["csv"])[0]
    rows = {r["row"]: r for r in _csv(files["table3_csv"])}
    assert float(rows["C_N2"]["our Δexact_match"]) == pytest.approx(0.3 - 0.7)  # test, not val (0.5 - 0.8)
    assert rows["D_ls0"]["our exact_match"] == "" and rows["D_ls0"]["our Δexact_match"] == ""
    assert rows["D_ls0"]["our ppl"] == "" and rows["D_ls0"]["ppl reproduces"] == ""  # its val ppl is mid-training


def test_cli_names_a_missing_directory(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "nope")])
    assert stop.value.code == 2
    assert "nope: no such directory" in capsys.readouterr().err


# -- where each number comes from, and the plots --------------------------------------------------------

CHECKPOINTED = {**CONFIG, "callbacks": {"model_checkpoint": {"monitor": "val/loss", "mode": "min", "save_top_k": 1}}}


def test_headers_say_which_epoch_and_checkpoint_each_number_comes_from(tmp_path: Path) -> None:
    """val columns: the last epoch; best val: its epoch; test: the min-val-loss checkpoint and its epoch."""
    sweep = tmp_path / "sweep"
    make_run(sweep / "0", ["model.positional=sinusoidal"], [2.0, 0.9, 1.1], exact=[0.1, 0.5, 0.4],
             config=CHECKPOINTED, test=0.45)  # fmt: skip
    make_run(sweep / "1", ["model.positional=none"], [2.0, 1.9, 1.8], exact=[0.0, 0.02, 0.01],
             config=CHECKPOINTED, test=0.01)  # fmt: skip
    files = report([str(sweep)], tmp_path / "out", plots=False)
    md = files["markdown"].read_text()
    header = md.splitlines()[2]
    for label in ("val loss, last epoch", "val exact match, last epoch", "best val exact match (epoch)",
                  "test exact match (min val loss ckpt, epoch)"):  # fmt: skip
        assert f"| {label} |" in header, header
    sinusoidal = next(line for line in md.splitlines() if "| sinusoidal |" in line).split(" | ")
    assert "0.5 (ep 2)" in sinusoidal  # best exact match in the 2nd epoch
    assert "0.45 (ep 2)" in sinusoidal  # tested on the 2nd epoch's checkpoint (val loss 0.9)
    assert "0.4" in sinusoidal and "1.1" in sinusoidal  # val: the last epoch's
    assert "Epochs count from 1" in md
    rows = _csv(files["csv"])
    assert [r["test/exact_match_epoch"] for r in rows] == ["2", "3"]
    assert [r["best:val/exact_match_epoch"] for r in rows] == ["2", "2"]


def test_an_averaging_protocol_labels_test_with_its_checkpoints_and_no_epoch(tmp_path: Path) -> None:
    """eval_protocol.checkpoint=average_last (the multi30k and table3 experiments): the test column says
    which checkpoints were averaged, and no single epoch is claimed for it."""
    averaged = {**CHECKPOINTED, "eval_protocol": {"checkpoint": "average_last", "average_last": 5}}
    make_run(tmp_path / "s" / "0", ["model.n_heads=2"], [2.0, 1.0, 1.2], exact=0.5, config=averaged, test=0.5)
    make_run(tmp_path / "s" / "1", ["model.n_heads=4"], [2.0, 1.5, 1.4], exact=0.5, config=averaged, test=0.4)
    files = report([str(tmp_path / "s")], tmp_path / "out", plots=False)
    assert "| test exact match (avg of last 5 ckpts) |" in files["markdown"].read_text()
    assert all(not r.get("test/exact_match_epoch") for r in _csv(files["csv"]))


def test_without_a_best_checkpoint_test_is_labelled_final_weights(tmp_path: Path) -> None:
    make_run(tmp_path / "s" / "0", ["model.n_heads=2"], [2.0, 1.0], exact=0.5, test=0.5)
    make_run(tmp_path / "s" / "1", ["model.n_heads=4"], [2.0, 1.0], exact=0.5, test=0.5)
    files = report([str(tmp_path / "s")], tmp_path / "out", plots=False)
    assert "| test exact match (final weights) |" in files["markdown"].read_text()
    assert [(r["test/exact_match"], r["test/exact_match_epoch"]) for r in _csv(files["csv"])] == [("0.5", "")] * 2


def test_an_all_failed_sweep_writes_no_png_and_says_so(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    make_run(sweep / "0", ["model.positional=sinusoidal"], [], exact=0.0, status="failed")
    make_run(sweep / "1", ["model.positional=none"], [], exact=0.0, status="failed")
    files = report([str(sweep)], tmp_path / "out")
    assert list((tmp_path / "out").glob("*.png")) == []
    assert not [name for name in files if name not in ("markdown", "csv")]
    assert "No plots: no run logged val/loss (every job failed" in files["markdown"].read_text()


def _figures(tmp_path: Path, axis: str, values: list[str], curves: list[list[float]]):
    from attnlab.report.data import load

    for n, (value, losses) in enumerate(zip(values, curves)):
        make_run(tmp_path / "sweep" / str(n), [f"{axis}={value}"], losses, exact=0.5)
    return load([str(tmp_path / "sweep")])


def test_categories_are_points_numbers_are_lines(tmp_path: Path) -> None:
    from attnlab.report.plots import metric_vs_axis_figure

    jobs, keys, rows = _figures(tmp_path / "c", "model.positional", ["sinusoidal", "rope", "none"], [[1.0]] * 3)
    ax = metric_vs_axis_figure(rows, keys, "model.positional", "val/loss").axes[0]
    data = [line for line in ax.lines if line.get_marker() == "o"]  # the means (the rest are std-bar caps)
    assert [len(line.get_xdata()) for line in data] == [3]
    assert data[0].get_linestyle() == "None"  # nothing joins the categories
    jobs, keys, rows = _figures(tmp_path / "n", "model.n_heads", ["2", "16"], [[1.0], [1.2]])
    ax = metric_vs_axis_figure(rows, keys, "model.n_heads", "val/loss").axes[0]
    assert [line.get_linestyle() for line in ax.lines if line.get_marker() == "o"] == ["-"]


def test_log_axis_ticks_are_plain_numbers(tmp_path: Path) -> None:
    from attnlab.report.plots import curves_figure

    jobs, keys, _ = _figures(tmp_path, "model.positional", ["sinusoidal", "none"], [[1.7, 0.9, 0.6], [1.7, 1.6, 1.6]])
    fig = curves_figure(jobs, keys, ["val/loss"])
    fig.canvas.draw()
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    shown = [(t.get_position()[1], t.get_text()) for t in ax.get_yticklabels(which="both") if t.get_text()]
    shown = [(y, text) for y, text in shown if low <= y <= high]
    assert len(shown) >= 3, shown
    for y, text in shown:
        assert "$" not in text and float(text) == pytest.approx(y), text  # "0.6", not "6x10^-1"


def test_identical_curves_do_not_hide_each_other(tmp_path: Path) -> None:
    from attnlab.report.plots import curves_figure

    jobs, keys, _ = _figures(tmp_path, "model.norm", ["post", "pre"], [[1.5, 1.0], [1.5, 1.0]])
    ax = curves_figure(jobs, keys, ["val/loss"]).axes[0]
    a, b = ax.lines
    assert list(a.get_ydata()) == list(b.get_ydata())
    assert (a.get_linestyle(), a.get_marker()) != (b.get_linestyle(), b.get_marker())
    assert a.get_marker() != b.get_marker() and a.get_markerfacecolor() == "none"  # hollow: both show
    assert a.get_alpha() < 1 and b.get_alpha() < 1


def test_a_resumed_runs_time_is_the_sum_of_its_segments(tmp_path: Path) -> None:
    """result.json lists the segments and sums them (attnlab.training.segments): the total, no marker. An
    older result.json timed its last segment only: marked, with metadata.json's count of resumes."""
    sweep = tmp_path / "sweep"
    make_run(sweep / "0", ["model.n_heads=2"], [1.0], exact=0.5)
    resumed = make_run(sweep / "1", ["model.n_heads=4"], [1.0], exact=0.5)
    result = json.loads((resumed / "result.json").read_text())
    result.update(wall_time_s=12.0, segments=[{"wall_time_s": 7.0}, {"wall_time_s": 5.0}])
    (resumed / "result.json").write_text(json.dumps(result))
    old = make_run(sweep / "2", ["model.n_heads=8"], [1.0], exact=0.5)  # wall_time_s 5.0, no segments
    (old / "metadata.json").write_text(json.dumps({"started": "2026-01-01T00:00:00+00:00",
                                                  "resumes": [{"started": "2026-01-01T01:00:00+00:00"}]}))
    files = report([str(sweep)], tmp_path / "out", plots=False)
    rows = _csv(files["csv"])
    assert [(r["segments"], float(r["time_s"])) for r in rows] == [("1", 5.0), ("2", 12.0), ("2", 5.0)]
    md = files["markdown"].read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    at = table[0].split(" | ").index("time s")
    cells = [line.split(" | ")[at] for line in table]  # the time column
    assert cells[1:] == ["5", "12", "≥5"], cells  # header first
    assert "a resumed run's are the sum of its segments" in md
    assert "the time of its last segment only" in md


def test_the_terminal_table_leaves_train_and_compute_columns_to_the_files(tmp_path: Path, capsys) -> None:
    """The terminal shows the comparison (fits a screen); report.md / report.csv keep every column."""
    make_run(tmp_path / "s" / "0", ["model.n_heads=2"], [2.0, 1.0], exact=0.5, test=0.5)
    make_run(tmp_path / "s" / "1", ["model.n_heads=4"], [2.0, 1.1], exact=0.4, test=0.4)
    files = report([str(tmp_path / "s")], tmp_path / "out", plots=False)
    table = capsys.readouterr().out.split("report.md / report.csv: every column")[0]
    assert "train" not in table and "FLOPs" not in table and "val loss" in table
    assert "train loss, last epoch" in files["markdown"].read_text()
    assert "train/loss" in _csv(files["csv"])[0]
