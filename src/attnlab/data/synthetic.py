"""Synthetic sequence tasks (copy, reverse, sort): the embedded default, no download.

Each split is generated from its own seed, so a split is the same on every machine and
in every run. `reverse` is the task that needs order: without positions the model sees
a bag of symbols and cannot know which one comes last.
"""

from __future__ import annotations

import random
import string

TASKS = {
    "copy": lambda xs: list(xs),
    "reverse": lambda xs: xs[::-1],
    "sort": sorted,
}
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


def symbols(n: int) -> list[str]:
    """Readable symbols: letters while they last, then w26, w27, ..."""
    letters = list(string.ascii_lowercase)
    return letters[:n] + [f"w{i}" for i in range(len(letters), n)]


def generate(task: str, split: str, size: int, n_symbols: int, min_len: int, max_len: int, seed: int):
    """-> (sources, targets): lists of space-separated symbol strings."""
    if task not in TASKS:
        raise ValueError(f"data.task={task!r} is not one of {sorted(TASKS)}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= data.min_len <= data.max_len, got {min_len}, {max_len}")
    rng = random.Random(f"{seed}-{task}-{SPLIT_SEEDS[split]}")
    alphabet = symbols(n_symbols)
    sources, targets = [], []
    for _ in range(size):
        xs = [rng.choice(alphabet) for _ in range(rng.randint(min_len, max_len))]
        sources.append(" ".join(xs))
        targets.append(" ".join(TASKS[task](xs)))
    return sources, targets
