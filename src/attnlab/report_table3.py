"""The `table3` sweep beside the paper: for every row, our change against our base row and the
paper's against its base row (perplexity and BLEU; our quality metric stands in for BLEU on a
synthetic task), and whether the direction of the change reproduces."""

from __future__ import annotations

import csv
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .paper_table3 import BY_NAME, ROWS, paper_deltas, reproduces
from .report_data import Row, quality_column

HEAD = ["row", "change (paper)", "paper ppl", "paper BLEU", "paper Δppl", "paper ΔBLEU",
        "our ppl", "our QUALITY", "our Δppl", "our ΔQUALITY", "ppl reproduces", "BLEU reproduces"]


def comparison(rows: list[Row], quality: str) -> list[list]:
    ours = {r.axes["table3"]: r for r in rows if "table3" in r.axes}
    base = ours.get("base")
    out = []
    for paper in ROWS:  # the paper's order
        row = ours.get(paper.name)
        if row is None:
            continue
        dppl, dbleu = paper_deltas(paper.name)
        ppl = row.stats.get("val/ppl", (None,))[0]
        q = row.stats.get(quality, (None,))[0]
        our_dppl = our_dq = None
        if base is not None and ppl is not None and "val/ppl" in base.stats:
            our_dppl = ppl - base.stats["val/ppl"][0]
        if base is not None and q is not None and quality in base.stats:
            our_dq = q - base.stats[quality][0]
        same = paper.name == "base"
        out.append([
            paper.name, BY_NAME[paper.name].change, paper.ppl, paper.bleu, dppl, dbleu, ppl, q, our_dppl, our_dq,
            "" if same or our_dppl is None else reproduces(dppl, our_dppl),
            # higher BLEU is better and so is higher exact match: the signs compare directly
            "" if same or our_dq is None else reproduces(dbleu, our_dq),
        ])
    return out


DELTAS = {4, 5, 8, 9}  # columns shown with their sign


def _cells(line: list) -> list[str]:
    return ["" if v is None else f"{v:+.3g}" if i in DELTAS else f"{v:.4g}" if isinstance(v, float) else str(v)
            for i, v in enumerate(line)]


def table3_report(rows: list[Row], cols, out: Path, console: Console) -> dict[str, Path]:
    quality = quality_column(cols, "val/bleu")
    name = quality.split("/")[-1]
    head = [h.replace("QUALITY", name) for h in HEAD]
    data = comparison(rows, quality)
    table = Table(title="Table 3: ours (scaled, see conf/sweep/table3.yaml) vs Vaswani et al. 2017 (dev set)")
    for h in head:
        table.add_column(h, justify="left" if h in ("row", "change (paper)") else "right")
    for line in data:
        table.add_row(*_cells(line))
    console.print(table)
    md = ["# Table 3 reproduction", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(_cells(line)) + " |" for line in data]
    md += ["", "Deltas are against each side's own base row; `~` means the paper itself saw no change."]
    files = {"table3_markdown": out / "table3.md", "table3_csv": out / "table3.csv"}
    files["table3_markdown"].write_text("\n".join(md) + "\n")
    with open(files["table3_csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(head)
        writer.writerows([["" if v is None else v for v in line] for line in data])
    return files
