"""From raw timings to the figures, ratios and targets the benchmark reports (JSON and tables)."""

from __future__ import annotations

import statistics

from rich.console import Console
from rich.table import Table

# Per-system figures: (key, column title, higher is better). None where a system lacks the decoder.
METRICS = (
    ("train_tokens_per_s", "train tok/s", True),
    ("train_step_s", "step s", False),
    ("mfu", "MFU", True),
    ("greedy_sentences_per_s", "greedy sent/s", True),
    ("beam_sentences_per_s", "beam sent/s", True),
    ("train_peak_mib", "train MiB", False),
    ("greedy_peak_mib", "greedy MiB", False),
    ("beam_peak_mib", "beam MiB", False),
)
# Ratios attnlab / peer for these; memory ratios below 1 mean attnlab holds less.
RATIO_METRICS = (
    "train_tokens_per_s",
    "greedy_sentences_per_s",
    "beam_sentences_per_s",
    "train_peak_mib",
    "greedy_peak_mib",
    "beam_peak_mib",
)
# The benchmark's targets (docs/performance.md, Targets): (name, peer, metric or special, target, at least?).
TARGETS = (
    ("train tokens/s vs marian", "marian", "train_tokens_per_s", 1.25, True),
    ("attnlab MFU (share of the GEMM ceiling)", None, "mfu", 0.75, True),
    ("Lightning loop overhead", None, "lightning_overhead", 0.05, False),
    ("beam-4 sentences/s vs marian", "marian", "beam_sentences_per_s", 2.0, True),
    ("greedy sentences/s vs marian", "marian", "greedy_sentences_per_s", 1.5, True),
    ("train peak memory vs marian", "marian", "train_peak_mib", 1.0, False),
)
MIB = 2**20
# The decoding targets are also reported for the compiled decoder step, when it was timed.
DECODING = ("greedy_sentences_per_s", "beam_sentences_per_s")
COMPILED = "attnlab+compile"  # the system name of attnlab under torch.compile (peers.CompiledAttnlabSystem)
# The timed task behind each throughput metric (times are keyed "task/system").
TASKS = {"train_tokens_per_s": "train", "greedy_sentences_per_s": "greedy", "beam_sentences_per_s": "beam"}


def system_figures(
    times: dict[str, dict], memory: dict[str, dict], name: str, tokens: int, sentences: int, flops: int, ceiling: float
) -> dict:
    """Median seconds per task -> throughputs, MFU and memory of one system."""

    def median(task: str) -> float | None:
        return times[task]["median_s"] if task in times else None

    step, greedy, beam = median(f"train/{name}"), median(f"greedy/{name}"), median(f"beam/{name}")
    mem = memory.get(name, {})
    return {
        "train_step_s": step,
        "train_tokens_per_s": tokens / step if step else None,
        "train_flops_per_s": flops / step if step else None,
        "mfu": flops / step / ceiling if step else None,
        "greedy_s": greedy,
        "greedy_sentences_per_s": sentences / greedy if greedy else None,
        "beam_s": beam,
        "beam_sentences_per_s": sentences / beam if beam else None,
        **{f"{what}_peak_mib": mem.get(what) for what in ("train", "greedy", "beam")},
    }


def ratios(systems: dict[str, dict], base: str = "attnlab") -> dict[str, dict]:
    """{peer: {metric: base / peer}} (None where either side is missing)."""
    out = {}
    for peer, figures in systems.items():
        if peer == base:
            continue
        out[peer] = {
            m: systems[base][m] / figures[m] if systems[base].get(m) and figures.get(m) else None for m in RATIO_METRICS
        }
    return out


def per_round(times: dict[str, dict], slow: str, fast: str) -> float | None:
    """Median over rounds of time(slow) / time(fast), each round's pair taken together.

    The tasks run interleaved, so the two times of one round met the same state of the host;
    on a machine whose speed swings within a run this ratio is steadier than the ratio of the
    two medians, which may come from different rounds (docs/performance.md, the 12:31 run)."""
    if slow not in times or fast not in times:
        return None
    return statistics.median(s / f for s, f in zip(times[slow]["times_s"], times[fast]["times_s"]))


def paired_ratios(times: dict[str, dict], systems: dict[str, dict], base: str = "attnlab") -> dict[str, dict]:
    """{peer: {metric: per-round ratio}}: how many times faster `base` ran than each peer,
    for the throughput metrics (None where either side was not timed)."""
    return {
        peer: {m: per_round(times, f"{task}/{peer}", f"{task}/{base}") for m, task in TASKS.items()}
        for peer in systems
        if peer != base
    }


def targets(
    systems: dict[str, dict], ratio: dict[str, dict], lightning: dict | None, times: dict | None = None
) -> list[dict]:
    """Each target's value from the medians and, where `times` holds the rounds, `paired`: the
    same ratio taken round by round (for MFU: the GEMM suite's time over the step's)."""
    times = times or {}
    out = []
    for name, peer, metric, target, at_least in TARGETS:
        paired = None
        if metric == "lightning_overhead":
            value = lightning["overhead"] if lightning else None
        elif peer is None:
            value = systems["attnlab"][metric]
            paired = per_round(times, "gemm", "train/attnlab") if metric == "mfu" else None
        else:
            value = ratio.get(peer, {}).get(metric)
            if metric in TASKS:
                paired = per_round(times, f"{TASKS[metric]}/{peer}", f"{TASKS[metric]}/attnlab")
        out.append(_target(name, value, target, at_least, paired))
        compiled = systems.get(COMPILED, {}).get(metric)
        if metric in DECODING and compiled and peer in systems and systems[peer].get(metric):
            paired = per_round(times, f"{TASKS[metric]}/{peer}", f"{TASKS[metric]}/{COMPILED}")
            out.append(_target(f"{name} ({COMPILED})", compiled / systems[peer][metric], target, at_least, paired))
    return out


def _target(name: str, value: float | None, target: float, at_least: bool, paired: float | None = None) -> dict:
    met = None if value is None else (value >= target if at_least else value <= target)
    return {"name": name, "value": value, "paired": paired, "target": target, "at_least": at_least, "met": met}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def print_tables(results: dict, console: Console | None = None) -> None:
    console = console or Console()
    systems = results["systems"]
    table = Table(title="attnlab-bench: medians (same process, interleaved)")
    table.add_column("system", no_wrap=True)
    for _, title, _ in METRICS:
        table.add_column(title, justify="right")
    for name, figures in systems.items():
        table.add_row(name, *(_fmt(figures[key]) for key, _, _ in METRICS))
    console.print(table)

    ratio_table = Table(title="attnlab / peer (throughput: higher is better; memory: lower is better)")
    ratio_table.add_column("peer", no_wrap=True)
    titles = {key: title for key, title, _ in METRICS}
    for metric in RATIO_METRICS:
        ratio_table.add_column(titles[metric], justify="right")
    for peer, row in results["ratios"].items():
        ratio_table.add_row(peer, *(_fmt(row[m]) + ("x" if row[m] else "") for m in RATIO_METRICS))
    console.print(ratio_table)

    gemm, light = results["gemm"], results["lightning"]
    console.print(
        f"GEMM ceiling at the step's shapes: {gemm['ceiling_flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"({gemm['train_flops'] / 1e9:.1f} GFLOP per training step, {gemm['ceiling_s'] * 1e3:.0f} ms of pure GEMM)"
    )
    if light:
        console.print(
            f"Lightning loop: {light['lightning_step_s'] * 1e3:.0f} ms/step vs bare {light['bare_step_s'] * 1e3:.0f} "
            f"ms/step: overhead {light['overhead']:+.1%}"
        )
    target_table = Table(title="targets (value: from the medians; paired: the median of per-round ratios)")
    for column in ("target", "value", "paired", "goal", "met"):
        target_table.add_column(column)
    for t in results["targets"]:
        goal = (">= " if t["at_least"] else "<= ") + _fmt(t["target"])
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "n/a"}[t["met"]]
        # 4 digits, so that 1.4997 does not show as 1.5 beside a "no"
        target_table.add_row(t["name"], _fmt(t["value"], 4), _fmt(t.get("paired"), 4), goal, met)
    console.print(target_table)
