"""Human-readable output at the end of a run: sample translations and a results panel."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

console = Console()


@torch.no_grad()
def print_examples(module, dm, split: str, n: int) -> None:
    """Decode the first n sentences of a split and show source, reference and output."""
    if n <= 0:
        return
    from ..data.batching import collate

    batch = collate(dm.examples[split][:n])
    module.eval()
    hyps = module.best_hypotheses(batch["src"])
    src_text, ref_text = dm.text[split][0][:n], dm.text[split][1][:n]
    table = Table(title=f"{split} examples", show_lines=False)
    for col in ("source", "reference", "output", "ok"):
        table.add_column(col)
    for s, r, h in zip(src_text, ref_text, hyps):
        out = module.tgt_tokenizer.decode(h)
        table.add_row(s, r, out, "yes" if out == r.strip() else "no")
    console.print(table)


def print_summary(metrics: dict, out_dir: Path) -> None:
    table = Table(title="results", show_header=False)
    keys = (
        "val/loss",
        "val/ppl",
        "val/exact_match",
        "test/loss",
        "test/ppl",
        "test/exact_match",
        "parameters",
        "steps",
    )
    for key in keys:
        if key in metrics:
            value = metrics[key]
            table.add_row(key, f"{value:,.0f}" if key in ("parameters", "steps") else f"{value:.4f}")
    table.add_row("run directory", str(out_dir))
    console.print(table)
