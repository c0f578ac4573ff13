"""Reading parallel text: `{root}/{split}.{lang}`, one sentence a line, validated so a
user's mistake is named (file and line) before any training starts."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from ..errors import CorpusError

BOM = b"\xef\xbb\xbf"
_KINDS = (
    (stat.S_ISDIR, "is a directory"),
    (stat.S_ISFIFO, "is not a regular file (a named pipe)"),
    (stat.S_ISCHR, "is not a regular file (a character device)"),
    (stat.S_ISBLK, "is not a regular file (a block device)"),
    (stat.S_ISSOCK, "is not a regular file (a socket)"),
)


def check_corpus_file(path: Path) -> None:
    """`path` is a regular file or a link to one; anything else is named for what it is (a
    directory, a pipe, a device such as /dev/null, a link loop) rather than called missing."""
    link = f" (a symlink to {os.readlink(path)})" if os.path.islink(path) else ""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if link:
            raise CorpusError(f"{path} is a broken symlink: its target {os.readlink(path)} does not exist") from None
        raise CorpusError(f"corpus file not found: {path}") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise CorpusError(f"{path} is a symlink loop: following its links never reaches a file") from None
        raise CorpusError(f"cannot read {path}: {err.strerror}") from None
    for test, kind in _KINDS:
        if test(mode):
            raise CorpusError(f"{path}{link} {kind}; expected a text file, one sentence a line")


def _lines(f) -> Iterator[tuple[int, bytes]]:
    """(file offset, bytes without the line end) of each line of `f`, a file opened with
    encoding latin-1 (each byte one character, so `encode` gives the bytes back) and newline=""
    (LF, CRLF and CR all end a line, and come back untranslated).

    The first line end decides: a file whose first line ends in a lone CR is an old-Mac file and
    every CR ends a line; in any other file a lone CR is a stray character inside a line (kept:
    cleaning turns it into a space), so it cannot shift the file against its translation.
    """
    cr_only, offset, held = None, 0, b""
    for text in f:
        raw = held + text.encode("latin-1")
        if cr_only is None:
            cr_only = raw.endswith(b"\r")
        if raw.endswith(b"\r") and not cr_only:
            held = raw
            continue
        held = b""
        end = 2 if raw.endswith(b"\r\n") else 1 if raw.endswith((b"\n", b"\r")) else 0
        yield offset, raw[: len(raw) - end]
        offset += len(raw)
    if held:  # the file ends in a stray CR: a line end after all
        yield offset, held[:-1]


def read_lines(path: Path) -> list[str]:
    """UTF-8 lines without their line ends (LF, CRLF or CR-only), read as a stream: a NUL byte or
    invalid UTF-8 is named with its line wherever it is in the file, before the rest is read."""
    check_corpus_file(path)
    lines = []
    try:
        with open(path, encoding="latin-1", newline="") as f:
            for number, (offset, raw) in enumerate(_lines(f), start=1):
                if number == 1 and raw.startswith(BOM):
                    raw, offset = raw[len(BOM) :], offset + len(BOM)
                if b"\0" in raw:
                    raise CorpusError(
                        f"{path} looks binary (a NUL byte on line {number}, offset {offset + raw.index(0)}): "
                        "expected UTF-8 text, one sentence a line"
                    )
                try:
                    lines.append(raw.decode("utf-8"))
                except UnicodeDecodeError as err:
                    bad = f"byte {raw[err.start]:#x} at offset {offset + err.start}"
                    raise CorpusError(
                        f"{path}, line {number}: invalid UTF-8 ({bad}); convert the file to UTF-8"
                    ) from None
    except OSError as err:
        raise CorpusError(f"cannot read {path}: {err.strerror}") from None
    return lines


def read_parallel(root: Path, split: str, src_lang: str, tgt_lang: str) -> tuple[list[str], list[str]]:
    """Aligned (source, target) sentences of one split; refuses misaligned or empty files."""
    src_path, tgt_path = root / f"{split}.{src_lang}", root / f"{split}.{tgt_lang}"
    # lexists: a directory, a device or a dangling link at that name is reported for what it is.
    missing = [p for p in (src_path, tgt_path) if not os.path.lexists(p)]
    if missing:
        have = sorted(p.name for p in root.glob(f"{split}.*")) if root.is_dir() else []
        hint = f" (found: {', '.join(have)})" if have else ""
        if root.exists() and not root.is_dir():
            hint = f" ({root} is not a directory)"
        raise CorpusError(f"missing corpus file(s): {', '.join(map(str, missing))}{hint}")
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise CorpusError(
            f"misaligned corpus: {src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
            "line i of each file must be a translation of the other"
        )
    if not src:
        raise CorpusError(f"empty split: {src_path} and {tgt_path} have no lines")
    for i, (s, t) in enumerate(zip(src, tgt), start=1):
        if not s.strip() or not t.strip():
            empty = src_path if not s.strip() else tgt_path
            raise CorpusError(f"{empty}, line {i}: empty sentence; remove the pair from both files")
    return src, tgt
