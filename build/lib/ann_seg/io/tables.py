"""Markdown tables for every report (benchmarks, head comparison, inference modes)."""

from typing import Optional, Sequence


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], align: Optional[str] = None
) -> str:
    """A GitHub markdown table; ``align`` holds ``l`` or ``r`` per column (default: the first
    left, the others right: a label column, then figures)."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header) or any(len(row) != len(header) for row in rows):
        raise ValueError(
            f"markdown_table: {len(header)} columns in the header, alignment "
            f"{align!r}, row lengths {sorted({len(r) for r in rows})}"
        )
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
