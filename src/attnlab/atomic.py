"""Writing a file so that no reader ever sees half of it: the new content goes to a temporary file
beside it, which then takes the file's name in one rename (atomic on POSIX). A crash, a kill or a
full disk leaves the old file (or none), and at most a `.NAME.PID-XXXXXXXX.tmp` beside it, whose
writer `writer_pid` names. Imports nothing of attnlab: every layer (data/ too) may use it."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def temporary_name(path: Path) -> Path:
    """A name beside `path` that no other writer (process or thread) picks: `.NAME.PID-XXXXXXXX.tmp`."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def writer_pid(tmp: Path) -> int | None:
    """The process that wrote (or is writing) a temporary file of this module; None for another name."""
    head, _, ext = tmp.name.rpartition(".")
    pid = head.rpartition(".")[2].split("-")[0]
    return int(pid) if ext == "tmp" and pid.isdigit() else None


@contextmanager
def atomic_open(path: str | Path, *, fsync: bool = False) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into. When the block ends without an error, it
    replaces `path` (after an fsync with `fsync=True`: for what a power cut must not lose); on an error
    it is removed and `path` is as it was. The folder must exist."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "xb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes | str, *, fsync: bool = False) -> None:
    """`path` holds `data` (text is written as UTF-8), or, if writing failed, what it held before."""
    with atomic_open(path, fsync=fsync) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def atomic_symlink(link: str | Path, target: str | Path) -> None:
    """`link` points at `target`: two writers racing leave one valid link, never none."""
    link = Path(link)
    tmp = temporary_name(link)
    try:
        tmp.symlink_to(target)
        os.replace(tmp, link)
    finally:
        tmp.unlink(missing_ok=True)
