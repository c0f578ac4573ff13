"""The `table3` sweep beside the paper: for every row, our change against our base row and the
paper's against its base row (perplexity and BLEU; our quality metric stands in for BLEU on a
synthetic task), whether the direction of the change reproduces, our p-value against our base, and
over the rows the paper has: the Spearman rank correlation of the deltas and the share of directions
reproduced. Rows beyond the paper (X_*) are listed with blank paper columns."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .data import Row, quality_column
from .paper_table3 import BEYOND, BY_NAME, ROWS, paper_deltas, reproduces
from .stats import spearman

HEAD = ["row", "change (paper)", "paper ppl", "paper BLEU", "paper Δppl", "paper ΔBLEU",
        "our ppl", "our QUALITY", "our Δppl", "our ΔQUALITY", "ppl reproduces", "BLEU reproduces",
        "our p (QUALITY)", "p from"]  # fmt: skip
P_COLUMN = 12


def table3_quality(rows: list[Row], cols) -> str:
    """The test score (the protocol's, the one the p-values test) when a table3 row has one: a row still
    training shows none rather than a validation score beside the others' test scores. The last
    validation's quality metric when no row has a test score (runs with test=false)."""
    val = quality_column(cols, "val/bleu")
    test = "test/" + val.split("/", 1)[1]
    ours = [r for r in rows if "table3" in r.axes and r.stats]
    return test if any(test in r.stats for r in ours) else val


def _p_cell(sig, row: Row, metric: str) -> tuple[float | str | None, str]:
    comp = sig.of(row) if sig is not None else None
    if comp is None or comp.is_reference:
        return None, ""
    if metric not in comp.p_values:
        return None, "none (see report.md)"
    return comp.p_values[metric], comp.test


def comparison(rows: list[Row], quality: str, sig=None) -> list[list]:
    ours = {r.axes["table3"]: r for r in rows if "table3" in r.axes}
    base = ours.get("base")
    metric = quality.split("/")[-1]
    out = []
    names = [p.name for p in ROWS] + list(BEYOND)  # the paper's order, then the rows beyond it
    for name in names:
        row = ours.get(name)
        if row is None:
            continue
        paper = BY_NAME.get(name)
        dppl, dbleu = paper_deltas(name) or (None, None)
        # a row still training (or failed) has only a mid-training perplexity: nothing to compare yet
        finished = row.status == "ok"
        ppl = row.stats.get("val/ppl", (None,))[0] if finished else None
        q = row.stats.get(quality, (None,))[0] if finished else None
        our_dppl = our_dq = None
        if base is not None and ppl is not None and "val/ppl" in base.stats:
            our_dppl = ppl - base.stats["val/ppl"][0]
        if base is not None and q is not None and quality in base.stats:
            our_dq = q - base.stats[quality][0]
        compared = paper is not None and name != "base"
        p_value, p_from = _p_cell(sig, row, metric)
        out.append([
            name, paper.change if paper else BEYOND[name], paper.ppl if paper else None,
            paper.bleu if paper else None, dppl, dbleu, ppl, q, our_dppl, our_dq,
            reproduces(dppl, our_dppl) if compared and our_dppl is not None else "",
            # higher BLEU is better and so is higher exact match: the signs compare directly
            reproduces(dbleu, our_dq) if compared and our_dq is not None else "",
            p_value, p_from,
        ])  # fmt: skip
    return out


def agreement(data: list[list]) -> dict[str, dict]:
    """Per metric (ppl, BLEU), over the paper's rows but base that we have: the deltas' pairs, their
    Spearman correlation (None under two pairs) and the share of directions reproduced (`~` left out)."""
    out = {}
    for name, paper_i, ours_i, verdict_i in (("ppl", 4, 8, 10), ("BLEU", 5, 9, 11)):
        pairs = [(line[0], line[paper_i], line[ours_i]) for line in data
                 if line[0] in BY_NAME and line[0] != "base" and line[ours_i] is not None]  # fmt: skip
        rho = spearman([p for _, p, _ in pairs], [o for _, _, o in pairs]) if len(pairs) >= 2 else None
        verdicts = [line[verdict_i] for line in data if line[verdict_i] in ("yes", "no")]
        share = verdicts.count("yes") / len(verdicts) if verdicts else None
        out[name] = {"pairs": pairs, "spearman": rho, "reproduced": share, "directions": len(verdicts)}
    return out


def summary_lines(stats: dict[str, dict]) -> list[str]:
    lines = []
    for name, s in stats.items():
        rho = "n/a (under two rows)" if s["spearman"] is None else (
            "n/a (a side is constant)" if math.isnan(s["spearman"]) else f"{s['spearman']:.3f}")
        share = "n/a" if s["reproduced"] is None else f"{s['reproduced']:.0%} ({s['directions']} rows)"
        lines.append(f"Δ{name}: Spearman rank correlation of paper vs our deltas {rho} over {len(s['pairs'])} "
                     f"rows; directions reproduced {share}.")  # fmt: skip
    return lines


DELTAS = {4, 5, 8, 9}  # columns shown with their sign


def _cells(line: list, sig=None) -> list[str]:
    out = []
    for i, v in enumerate(line):
        if v is None:
            out.append("")
        elif i == P_COLUMN and isinstance(v, float):
            out.append(f"{v:.3g}" + ("*" if v < 0.05 else ""))
        elif i in DELTAS:
            out.append(f"{v:+.3g}")
        else:
            out.append(f"{v:.4g}" if isinstance(v, float) else str(v))
    return out


def table3_report(rows: list[Row], cols, out: Path, console: Console, sig=None, plots: bool = False) -> dict[str, Path]:
    quality = table3_quality(rows, cols)
    name = quality.split("/")[-1]
    head = [h.replace("QUALITY", name) for h in HEAD]
    data = comparison(rows, quality, sig)
    stats = agreement(data)
    table = Table(title="Table 3: ours (scaled, see conf/sweep/table3.yaml) vs Vaswani et al. 2017 (dev set)")
    for h in head:
        table.add_column(h, justify="left" if h in ("row", "change (paper)", "p from") else "right")
    for line in data:
        table.add_row(*_cells(line))
    console.print(table)
    notes = [
        "Deltas are against each side's own base row; `~` means the paper itself saw no change. X_ rows go "
        "beyond the paper (blank paper columns).",
        f"our {name}: `{quality}`; our ppl: `val/ppl`. our p: against our base row (see report.md for the "
        "test and why a row has none); `*`: p < 0.05.",
        *summary_lines(stats),
    ]
    for line in notes[2:]:
        console.print(line, highlight=False, markup=False)
    md = ["# Table 3 reproduction", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(_cells(line)) + " |" for line in data]
    md += [x for note in notes for x in ("", note)]
    files = {"table3_markdown": out / "table3.md", "table3_csv": out / "table3.csv"}
    files["table3_markdown"].write_text("\n".join(md) + "\n")
    with open(files["table3_csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(head)
        writer.writerows([["" if v is None else v for v in line] for line in data])
    if plots and any(s["pairs"] for s in stats.values()):
        from .plots import paper_vs_ours_figure, save

        files["table3_plot"] = save(paper_vs_ours_figure(stats, name), out / "table3_paper_vs_ours.png")
    return files
