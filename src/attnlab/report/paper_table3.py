"""Table 3 of Vaswani et al. (2017), "Attention Is All You Need": variations on the base model,
English-to-German newstest2013 development set, perplexity per wordpiece and BLEU.

Row names are the files of conf/table3/ (the `table3` sweep runs them scaled by `paper_scale`).
Row (B), a smaller attention key size d_k alone, runs with `model.d_head`. BEYOND lists the sweep's
rows that the paper does not have (they are compared with our base only).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperRow:
    name: str  # conf/table3/<name>.yaml
    group: str  # the paper's row label: base, A, B, C, D, E, big
    change: str  # what differs from base, in the paper's notation
    ppl: float  # dev perplexity (per wordpiece)
    bleu: float  # dev BLEU
    params_m: float | None  # parameters x 10^6 where the paper gives them


ROWS: tuple[PaperRow, ...] = (
    PaperRow("base", "base", "N=6 d_model=512 d_ff=2048 h=8 P_drop=0.1 eps_ls=0.1", 4.92, 25.8, 65),
    PaperRow("A_h1", "A", "h=1 d_k=d_v=512", 5.29, 24.9, None),
    PaperRow("A_h4", "A", "h=4 d_k=d_v=128", 5.00, 25.5, None),
    PaperRow("A_h16", "A", "h=16 d_k=d_v=32", 4.91, 25.8, None),
    PaperRow("A_h32", "A", "h=32 d_k=d_v=16", 5.01, 25.4, None),
    PaperRow("B_dk16", "B", "d_k=16", 5.16, 25.1, 58),
    PaperRow("B_dk32", "B", "d_k=32", 5.01, 25.4, 60),
    PaperRow("C_N2", "C", "N=2", 6.11, 23.7, 36),
    PaperRow("C_N4", "C", "N=4", 5.19, 25.3, 50),
    PaperRow("C_N8", "C", "N=8", 4.88, 25.5, 80),
    PaperRow("C_d256", "C", "d_model=256 d_k=d_v=32", 5.75, 24.5, 28),
    PaperRow("C_d1024", "C", "d_model=1024 d_k=d_v=128", 4.66, 26.0, 168),
    PaperRow("C_ff1024", "C", "d_ff=1024", 5.12, 25.4, 53),
    PaperRow("C_ff4096", "C", "d_ff=4096", 4.75, 26.2, 90),
    PaperRow("D_drop0", "D", "P_drop=0.0", 5.77, 24.6, None),
    PaperRow("D_drop2", "D", "P_drop=0.2", 4.95, 25.5, None),
    PaperRow("D_ls0", "D", "eps_ls=0.0", 4.67, 25.3, None),
    PaperRow("D_ls2", "D", "eps_ls=0.2", 5.47, 25.7, None),
    PaperRow("E_learned", "E", "positional embedding instead of sinusoids", 4.92, 25.7, None),
    PaperRow("big", "big", "N=6 d_model=1024 d_ff=4096 h=16 P_drop=0.3, 300K steps", 4.33, 26.4, 213),
)
BY_NAME = {row.name: row for row in ROWS}
BASE = BY_NAME["base"]
# Rows this model cannot express; the table3 sweep leaves them out.
NOT_RUN: tuple[str, ...] = ()
# The sweep's rows beyond the paper (conf/table3/X_*.yaml): what each changes from the base.
BEYOND: dict[str, str] = {
    "X_pos_none": "no positional information",
    "X_rope": "rotary positions (RoPE) instead of sinusoids",
    "X_nores": "no residual connections",
    "X_nores_N2": "no residual connections, N=2",
    "X_prenorm": "pre-norm (LayerNorm before each sublayer)",
    "X_untied": "no embedding tying",
}


def paper_deltas(name: str) -> tuple[float, float] | None:
    """(ppl, BLEU) of a row minus the paper's base row; None for a name the paper does not have."""
    row = BY_NAME.get(name)
    if row is None:
        return None
    return round(row.ppl - BASE.ppl, 2), round(row.bleu - BASE.bleu, 2)


def reproduces(paper_delta: float, our_delta: float, paper_noise: float = 0.05) -> str:
    """'yes' when our change goes the paper's way, 'no' when it goes against it, and '~' when the
    paper itself saw no change (|delta| within the noise of its own table)."""
    if abs(paper_delta) <= paper_noise:
        return "~"
    return "yes" if (paper_delta > 0) == (our_delta > 0) else "no"
