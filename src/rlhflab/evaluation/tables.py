"""Markdown tables for summaries and command output (no torch: the feedback app uses them too)."""

from __future__ import annotations


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table: one row per dict, columns as (key, header, format spec); None shows as "–".
    A "|" or a line break inside a cell is escaped or flattened, so the table keeps its shape."""

    def cell(value, fmt):
        text = "–" if value is None else format(value, fmt) if fmt else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k), f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join(lines)
