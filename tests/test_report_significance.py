"""attnlab-report's statistics on hand-made run directories with hypotheses files: p-values equal
report_stats' own on the same files, CIs equal seed_summary's, Table 3's Spearman equals spearman() on
the deltas, the FLOPs columns equal perf.flops' count times the tokens, and a row without hypotheses
gets no p-value and a note saying why."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from attnlab.model import TransformerConfig
from attnlab.perf.flops import total_flops, train_gemms
from attnlab.report.paper_table3 import paper_deltas
from attnlab.report.stats import paired_bootstrap, read_lines, seed_summary, seed_test, spearman
from attnlab.report.tables import report
from test_report import _csv, make_run

TEXT = {"seed": 0, "data": {"source": "multi30k", "vocab_size": 100}, "model": {"n_heads": 4}}
REFS = [f"a small dog number {i} runs over the green grass" for i in range(40)]
MODEL = {"d_model": 16, "d_ff": 32, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1,
         "src_vocab_size": 50, "tgt_vocab_size": 60}  # fmt: skip


def _hyps(drop_every: int) -> list[str]:
    """The references with the last word dropped from every `drop_every`-th sentence: worse the smaller."""
    return [" ".join(r.split()[:-1]) if i % drop_every == 0 else r for i, r in enumerate(REFS)]


def text_run(run_dir: Path, overrides: list[str], hyps: list[str] | None, bleu: float = 30.0,
             tokens_per_sec: float = 1000.0, val_loss: float = 1.0, target_tokens: float | None = None) -> Path:
    """A real-text run: val loss/ppl and test BLEU/chrF in the log, and hyps/ + refs/ + result.json's
    protocol as attnlab.protocol leaves them (none of them when `hyps` is None: an older run).
    `target_tokens`: the token counter the LightningModule logs (None: a run from before it existed)."""
    make_run(run_dir, overrides, [val_loss], exact=0.5, config=TEXT)
    with open(run_dir / "csv" / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train/loss_epoch", "val/loss", "val/ppl", "test/bleu", "test/chrf",
                    "train/target_tokens"])
        w.writerow([0, 10, val_loss + 0.1, val_loss, 2.718281828**val_loss, "", "", ""])
        w.writerow([1, 20, "", "", "", bleu, bleu + 20, "" if target_tokens is None else target_tokens])
    result = json.loads((run_dir / "result.json").read_text())
    result["tokens_per_sec"] = tokens_per_sec
    if hyps is not None:
        (run_dir / "hyps").mkdir()
        (run_dir / "refs").mkdir()
        (run_dir / "hyps" / "test_2016_flickr.txt").write_text("".join(h + "\n" for h in hyps))
        (run_dir / "refs" / "test_2016_flickr.txt").write_text("".join(r + "\n" for r in REFS))
        result["protocol"] = {"model": MODEL, "test_sets": {"test_2016_flickr": {
            "hypotheses": "hyps/test_2016_flickr.txt", "references": "refs/test_2016_flickr.txt"}}}
    (run_dir / "result.json").write_text(json.dumps(result))
    return run_dir


def assert_bootstrapped(row: dict, reference: Path, run: Path) -> dict:
    """The row's p-values and deltas are sacreBLEU's paired bootstrap of `run`'s hypotheses against
    `reference`'s (BLEU and chrF); returns that bootstrap's result."""
    refs, theirs, mine = read_lines(reference / "refs/test_2016_flickr.txt", reference / "hyps/test_2016_flickr.txt",
                                    run / "hyps/test_2016_flickr.txt")  # fmt: skip
    expected = paired_bootstrap(theirs, {"x": mine}, refs, n_samples=1000)
    for metric in ("bleu", "chrf"):
        assert float(row[f"test/{metric}_p"]) == pytest.approx(expected["x"][metric].p_value)
        delta = expected["x"][metric].score - expected["reference"][metric].score
        assert float(row[f"Δtest/{metric}"]) == pytest.approx(delta)
    return expected


def test_one_seed_a_side_gets_sacrebleus_paired_bootstrap_on_the_saved_hypotheses(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    base = text_run(sweep / "0", ["model.n_heads=8"], _hyps(7))
    worse = text_run(sweep / "1", ["model.n_heads=1"], _hyps(2))
    old = text_run(sweep / "2", ["model.n_heads=4"], None)  # no hyps/: no p-value
    files = report([str(sweep)], tmp_path / "out", plots=False, ref="model.n_heads=8")
    rows = {r["model.n_heads"]: r for r in _csv(files["csv"])}

    expected = assert_bootstrapped(rows["1"], base, worse)
    assert float(rows["1"]["Δtest/bleu"]) < 0
    assert rows["1"]["p_test"] == "paired bootstrap" and rows["8"]["p_test"] == "reference"
    assert rows["1"]["ref"] == "model.n_heads=8"

    assert rows["4"]["test/bleu_p"] == "" and rows["4"]["p_test"] == ""
    assert "no hyps/ file" in rows["4"]["p_note"]
    md = files["markdown"].read_text()
    assert f"no p-value: no hyps/ file for {old.name}" in md and "paired bootstrap: sacreBLEU's, 1,000" in md
    p = expected["x"]["bleu"].p_value
    marker = "*" if p < 0.05 else ""
    assert f"(p {p:.3g}){marker}" in md


def test_seeds_a_side_get_welch_and_the_ci_is_seed_summarys(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    scores = {"8": [30.0, 31.5, 29.0], "1": [26.0, 27.5, 24.0]}
    n = 0
    for heads, values in scores.items():
        for seed, bleu in enumerate(values, 1):
            text_run(sweep / str(n), [f"model.n_heads={heads}", f"seed={seed}"], _hyps(3), bleu=bleu)
            n += 1
    files = report([str(sweep)], tmp_path / "out", plots=False, ref="8")
    rows = {r["model.n_heads"]: r for r in _csv(files["csv"])}
    for heads, values in scores.items():
        s = seed_summary(values)
        row = rows[heads]
        assert (float(row["test/bleu"]), float(row["test/bleu_std"])) == pytest.approx((s.mean, s.std))
        assert (float(row["test/bleu_ci_low"]), float(row["test/bleu_ci_high"])) == pytest.approx((s.ci_low, s.ci_high))
        assert int(row["test/bleu_n"]) == 3
    assert rows["1"]["p_test"] == "Welch t over seeds"
    assert float(rows["1"]["test/bleu_p"]) == pytest.approx(seed_test(scores["8"], scores["1"]))
    assert float(rows["1"]["Δtest/bleu"]) == pytest.approx(sum(scores["1"]) / 3 - sum(scores["8"]) / 3)
    s = seed_summary(scores["1"])
    assert f"[{s.ci_low:.4g}, {s.ci_high:.4g}]" in files["markdown"].read_text()


def test_flops_columns_are_the_models_count_times_the_tokens(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    text_run(sweep / "0", ["model.n_heads=8"], REFS, tokens_per_sec=1000.0, target_tokens=1234.0)
    text_run(sweep / "1", ["model.n_heads=1"], REFS, tokens_per_sec=500.0)  # an older run: no counter
    files = report([str(sweep)], tmp_path / "out")
    rows = {r["model.n_heads"]: r for r in _csv(files["csv"])}
    length = round(sum(len(r.split()) for r in REFS) / len(REFS) + 1)  # mean words of the references + EOS
    per_token = total_flops(train_gemms(TransformerConfig(**MODEL), 1, length, length)) / length
    # the counted tokens where the run logged them; else the rate x wall time (5 s) / 2 estimate, marked
    for heads, rate, tokens, estimated in (("8", 1000.0, 1234.0, "0"), ("1", 500.0, 500.0 * 5.0 / 2, "1")):
        assert float(rows[heads]["flops_per_token"]) == pytest.approx(per_token)
        assert float(rows[heads]["train_tokens"]) == pytest.approx(tokens)
        assert float(rows[heads]["train_flops"]) == pytest.approx(per_token * tokens)
        assert float(rows[heads]["tokens_per_sec"]) == rate
        assert rows[heads]["tokens_estimated"] == estimated
    md = files["markdown"].read_text()
    assert f"~{1250:.3g}" in md and f"~{1234:.3g}" not in md and f"{1234:.3g}" in md
    assert files["test_bleu_vs_train_flops"].read_bytes()[:4] == b"\x89PNG"


def test_flops_of_an_older_run_come_from_its_config(tmp_path: Path) -> None:
    """No protocol record: the model from `.hydra/config.yaml`, the synthetic vocabulary, its mean length."""
    from attnlab.data.tokenizers import SPECIALS

    config = {"seed": 0, "data": {"source": "synthetic", "n_symbols": 20, "min_len": 4, "max_len": 12},
              "model": {k: v for k, v in MODEL.items() if "vocab" not in k}}  # fmt: skip
    make_run(tmp_path / "s" / "0", ["model.n_heads=2"], [1.0], exact=0.5, config=config)
    rows = _csv(report([str(tmp_path / "s")], tmp_path / "out", plots=False)["csv"])
    shape = TransformerConfig(**{**MODEL, "src_vocab_size": 24, "tgt_vocab_size": 20 + len(SPECIALS)})
    assert float(rows[0]["flops_per_token"]) == pytest.approx(total_flops(train_gemms(shape, 1, 9, 9)) / 9)
    assert "train_flops" not in rows[0]  # no tokens/s logged: no estimate, no column


def test_a_synthetic_single_seed_row_gets_no_p_value_and_says_why(tmp_path: Path) -> None:
    make_run(tmp_path / "s" / "0", ["model.n_heads=2"], [1.0], exact=0.5, test=0.5)
    make_run(tmp_path / "s" / "1", ["model.n_heads=4"], [1.0], exact=0.5, test=0.4)
    files = report([str(tmp_path / "s")], tmp_path / "out", plots=False)
    rows = _csv(files["csv"])
    assert rows[1]["test/exact_match_p"] == "" and "synthetic task" in rows[1]["p_note"]
    assert "give seeds (seed=1,2,3) for Welch's test: 1." in files["markdown"].read_text()


def test_table3_spearman_share_and_p_values(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    bleus = {"base": 30.0, "C_N2": 25.0, "A_h1": 29.0, "D_ls0": 31.0, "X_nores": 10.0}
    ppls = {"base": 1.0, "C_N2": 1.5, "A_h1": 1.1, "D_ls0": 0.9, "X_nores": 2.0}
    drops = {"base": 9, "C_N2": 2, "A_h1": 5, "D_ls0": 11, "X_nores": 1}
    for n, name in enumerate(bleus):
        text_run(sweep / str(n), [f"table3={name}"], _hyps(drops[name]), bleu=bleus[name], val_loss=ppls[name])
    files = report([str(sweep)], tmp_path / "out")
    table = {r["row"]: r for r in _csv(files["table3_csv"])}
    assert list(table) == ["base", "A_h1", "C_N2", "D_ls0", "X_nores"]  # the paper's order, then beyond
    assert table["X_nores"]["paper ΔBLEU"] == "" and float(table["X_nores"]["our Δbleu"]) == -20.0

    paper_rows = ["A_h1", "C_N2", "D_ls0"]
    ours = [bleus[r] - bleus["base"] for r in paper_rows]
    assert [float(table[r]["our Δbleu"]) for r in paper_rows] == pytest.approx(ours)  # test BLEU
    rho = spearman([paper_deltas(r)[1] for r in paper_rows], ours)
    md = files["table3_markdown"].read_text()
    assert f"ΔBLEU: Spearman rank correlation of paper vs our deltas {rho:.3f} over 3 rows" in md
    our_ppl = [2.718281828 ** ppls[r] - 2.718281828 ** ppls["base"] for r in paper_rows]
    rho_ppl = spearman([paper_deltas(r)[0] for r in paper_rows], our_ppl)
    assert f"Δppl: Spearman rank correlation of paper vs our deltas {rho_ppl:.3f} over 3 rows" in md
    # paper BLEU: A_h1 -0.9, C_N2 -2.1, D_ls0 -0.5; ours -1, -5, +1: 2 of 3 directions
    assert "directions reproduced 67% (3 rows)" in md

    base, row = tmp_path / "sweep" / "0", tmp_path / "sweep" / "1"  # C_N2
    refs, a, b = read_lines(base / "refs/test_2016_flickr.txt", base / "hyps/test_2016_flickr.txt",
                            row / "hyps/test_2016_flickr.txt")  # fmt: skip
    p = paired_bootstrap(a, {"x": b}, refs)["x"]["bleu"].p_value
    assert float(table["C_N2"]["our p (bleu)"]) == pytest.approx(p)
    assert table["C_N2"]["p from"] == "paired bootstrap" and table["base"]["our p (bleu)"] == ""
    assert files["table3_plot"].read_bytes()[:4] == b"\x89PNG"


def test_an_unknown_ref_is_refused_with_the_choices(tmp_path: Path, capsys) -> None:
    from attnlab.report.tables import main

    make_run(tmp_path / "s" / "0", ["model.n_heads=2"], [1.0], exact=0.5)
    make_run(tmp_path / "s" / "1", ["model.n_heads=4"], [1.0], exact=0.5)
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "s"), "--ref", "7", "--no-plots", "-o", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert "choose from model.n_heads=2, model.n_heads=4" in capsys.readouterr().err


def test_one_seed_against_several_is_bootstrapped_against_the_same_seed(tmp_path: Path) -> None:
    """A row run once (seed 2) beside a base rerun with seeds 1-3: the p-value is the paired bootstrap
    against the base's seed-2 run, not a missing value; a row whose seed the base lacks gets a note."""
    sweep = tmp_path / "sweep"
    base_drops = {1: 9, 2: 5, 3: 11}  # the seed-2 base is the worst: a mean would hide which run is paired
    for n, (seed, drop) in enumerate(base_drops.items()):
        text_run(sweep / str(n), ["table3=base", f"seed={seed}"], _hyps(drop))
    row = text_run(sweep / "3", ["table3=A_h1", "seed=2"], _hyps(3))
    text_run(sweep / "4", ["table3=A_h4", "seed=7"], _hyps(3))
    files = report([str(sweep)], tmp_path / "out", plots=False)
    rows = {r["table3"]: r for r in _csv(files["csv"])}

    assert_bootstrapped(rows["A_h1"], sweep / "1", row)
    assert rows["A_h1"]["p_test"] == "paired bootstrap vs the same seed (seed=2)"
    assert rows["A_h4"]["test/bleu_p"] == "" and "none of them the same seed" in rows["A_h4"]["p_note"]
    assert "its Δ is against that run, not the mean" in files["markdown"].read_text()
