"""Which text the feedback app's database can store, checked before it is asked to.

PostgreSQL refuses a NUL in text (SQLite keeps it, and a page then shows a truncated name); a lone
UTF-16 surrogate (JSON's ``"\\ud800"``, or a command-line argument that was not UTF-8) cannot be
encoded as UTF-8 at all, so a database driver or the response on the way back out fails on it. Both
are refused where they come in, naming the field, never stored.
"""

from __future__ import annotations

import re
from typing import Any

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable_text(text: str) -> str | None:
    """Why ``text`` cannot be stored ("holds a NUL character", ...), or None if it can."""
    found = UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "holds a NUL character"
    return f"holds a lone UTF-16 surrogate (U+{ord(found.group()):04X}), which is not text"


def first_unstorable(value: Any, where: str = "") -> tuple[str, str] | None:
    """``(field path, problem)`` of the first key or string in a JSON-like value (dicts, lists,
    strings, numbers) that cannot be stored, e.g. ``("value.critique", "holds a NUL character")``;
    None if there is none."""
    if isinstance(value, str):
        problem = unstorable_text(value)
        return (where or "(top level)", problem) if problem else None
    if isinstance(value, dict):
        for key, child in value.items():
            problem = unstorable_text(key) if isinstance(key, str) else None
            if problem:  # the name itself is not shown: it is what cannot be printed
                return where or "(top level)", f"has a field name that {problem}"
            found = first_unstorable(child, f"{where}.{key}" if where else str(key))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, child in enumerate(value):
            found = first_unstorable(child, f"{where}[{i}]")
            if found:
                return found
    return None
