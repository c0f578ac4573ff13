"""Run segments: each process that trained a run (its first start, then every resume) is one segment.

A resumed run's `result.json` (attnlab.training.jobs) lists all its segments, and its `wall_time_s` is their sum,
so a report's time column shows what the whole run cost, not only its last process. A segment ends in
one of three ways: the process records it (ok, failed, stopped by SIGTERM / Ctrl-C), or it is killed
without warning (SIGKILL, the OOM killer, a lost node) and records nothing. For the last case a
`Heartbeat` rewrites the record every `HEARTBEAT_S` seconds while the job runs, and the next segment
closes a killed one at its last sign of life: that heartbeat, or the newest checkpoint or log it wrote.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("attnlab")
# Short enough that a killed segment loses little of its time, long enough to cost nothing.
HEARTBEAT_S = 10.0
KILLED = "killed"


def now() -> str:
    """A segment's timestamps: local time with its offset, to the millisecond (times are subtracted)."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def epoch_seconds(stamp: str | None) -> float | None:
    """POSIX seconds of an ISO timestamp (one without an offset is local time, as older records wrote)."""
    try:
        return datetime.fromisoformat(stamp).timestamp() if stamp else None
    except (TypeError, ValueError):
        return None


def _from_old_record(result: dict[str, Any]) -> dict[str, Any]:
    """A result.json written before segments were recorded describes one segment itself."""
    return {key: result.get(key) for key in ("started", "finished", "status", "wall_time_s", "resumed_from")}


def earlier_segments(previous: dict[str, Any] | None, evidence: Iterable[Path | None]) -> list[dict[str, Any]]:
    """The segments a run's previous `result.json` recorded, each one closed.

    A segment still `running` belongs to a process that was killed without warning (a run is only
    continued after its process ended): it becomes `killed`, and its time runs to its last sign of life,
    the later of its last heartbeat and the newest of the `evidence` files (the checkpoint and the CSV
    log it wrote, read before this process touches them)."""
    if not previous:
        return []
    segments = [dict(s) for s in previous.get("segments") or [_from_old_record(previous)]]
    last = segments[-1]
    if last.get("status") in (None, "running"):
        start = epoch_seconds(last.get("started"))
        seen = [p.stat().st_mtime for p in evidence if p is not None and p.is_file()]
        if start is not None and seen:
            last["wall_time_s"] = round(max(last.get("wall_time_s") or 0.0, max(seen) - start), 2)
        last["status"] = KILLED
    return segments


def total_seconds(segments: Iterable[dict[str, Any]]) -> float:
    return round(sum(s.get("wall_time_s") or 0.0 for s in segments), 2)


class Heartbeat:
    """Calls `beat` every `interval` seconds from a daemon thread until the `with` block ends. A
    failing beat (a full disk) is logged at debug level and tried again at the next one: the
    job's own writes report such errors."""

    def __init__(self, beat: Callable[[], None], interval: float | None = None):
        self.beat, self.interval = beat, HEARTBEAT_S if interval is None else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="attnlab-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except OSError as err:
                log.debug("heartbeat: %s", err)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
