"""Reading parallel text: `{root}/{split}.{lang}`, one sentence a line, validated so a
user's mistake is named (file and line) before any training starts."""

from __future__ import annotations

from pathlib import Path


class CorpusError(ValueError):
    """A problem with the user's corpus files; the message names the file (and line)."""


def read_lines(path: Path) -> list[str]:
    """UTF-8 lines without the newline; strict about encoding, tolerant of CRLF."""
    if not path.is_file():
        raise CorpusError(f"corpus file not found: {path}")
    raw = path.read_bytes()
    if b"\0" in raw[:4096]:
        raise CorpusError(f"{path} looks binary (NUL bytes): expected UTF-8 text, one sentence a line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        bad = f"byte {raw[err.start]:#x} at offset {err.start}"
        raise CorpusError(f"{path}, line {line}: invalid UTF-8 ({bad}); convert the file to UTF-8") from None
    text = text.removeprefix("\ufeff")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_parallel(root: Path, split: str, src_lang: str, tgt_lang: str) -> tuple[list[str], list[str]]:
    """Aligned (source, target) sentences of one split; refuses misaligned or empty files."""
    src_path, tgt_path = root / f"{split}.{src_lang}", root / f"{split}.{tgt_lang}"
    missing = [p for p in (src_path, tgt_path) if not p.is_file()]
    if missing:
        have = sorted(p.name for p in root.glob(f"{split}.*")) if root.is_dir() else []
        hint = f" (found: {', '.join(have)})" if have else ""
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
