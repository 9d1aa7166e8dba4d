"""Plain-text tables for the terminal: columns padded to their widest cell, a dashed rule under
the header row."""
from __future__ import annotations

from typing import Sequence


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """``rows`` (the first is the header) as aligned columns, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
