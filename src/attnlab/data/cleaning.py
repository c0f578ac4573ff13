"""The cleaning raw corpora need before tokenization (Multi30k's quirks, SOURCE.md):
leading/trailing whitespace and tabs, and HTML entities such as `&amp;` left by the
original crawl. The count of changed lines is logged so the effect is never silent."""

from __future__ import annotations

import html
import logging

log = logging.getLogger("attnlab")


def clean_line(line: str) -> str:
    """Unescape HTML entities, turn runs of whitespace (a tab too) into one space, strip the ends."""
    return " ".join(html.unescape(line).split())


def clean_lines(lines: list[str], name: str = "") -> tuple[list[str], int]:
    """-> (cleaned lines, number of lines that changed); logs the count when it is not zero."""
    cleaned = [clean_line(line) for line in lines]
    changed = sum(a != b for a, b in zip(lines, cleaned))
    if changed:
        log.info("cleaning %s: %d of %d lines changed (whitespace, HTML entities)", name, changed, len(lines))
    return cleaned, changed
