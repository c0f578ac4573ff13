"""Timing and memory measurements.

Timing: every task runs once per round, rounds repeat, and the first `warmup` rounds are
dropped; the figure is the median of the rest. Interleaving the systems round by round means
a burst of load from another process hits all of them alike, so same-run ratios stay fair on
a shared machine even when absolute numbers move.

Memory (CPU): torch.profiler's memory events carry the running total of bytes held in
tensors, so the peak of one call is exact and independent of the allocator's caching; it
excludes the Python interpreter and library code. On CUDA, the allocator's peak counter.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> Callable[[], float]:
    """fn -> a call that returns its wall time in seconds."""

    def run() -> float:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - start

    return run


def interleaved_medians(tasks: dict[str, Callable[[], float]], warmup: int, repeats: int) -> dict[str, dict]:
    """{name: seconds-returning call} -> {name: {"median_s", "times_s"}} over `repeats` timed rounds."""
    times: dict[str, list[float]] = {name: [] for name in tasks}
    for round_ in range(warmup + repeats):
        for name, task in tasks.items():
            seconds = task()
            if round_ >= warmup:
                times[name].append(seconds)
    return {name: {"median_s": statistics.median(t), "times_s": t} for name, t in times.items()}


def tensor_bytes(*objects) -> int:
    """Bytes of the distinct tensor storages in modules, optimisers (their state) and tensors."""
    seen, total = set(), 0
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            tensors = [*obj.parameters(), *obj.buffers()]
        elif isinstance(obj, torch.optim.Optimizer):
            tensors = [t for state in obj.state.values() for t in state.values() if torch.is_tensor(t)]
        else:
            tensors = [obj]
        for t in tensors:
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


@contextlib.contextmanager
def _native_stderr_silenced():
    """Kineto prints start/stop lines straight to file descriptor 2 whatever KINETO_LOG_LEVEL says."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_call_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Most bytes `fn` holds in tensors at once, beyond what existed before the call."""
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("name") == "[memory]"]
    events = [e["args"] for e in sorted(events, key=lambda e: e["ts"])]
    if not events:
        return 0
    # "Total Allocated" counts the bytes allocated since profiling began, after each event.
    start = events[0]["Total Allocated"] - events[0]["Bytes"]
    return max(e["Total Allocated"] for e in events) - start
