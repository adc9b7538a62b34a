"""JSON Lines ends a record at "\n" alone: a raw U+2028, U+2029 or U+0085 inside a string is part of
the string (JSON allows them unescaped; ``str.splitlines`` split at each, so a valid file read as
"malformed JSON"), while "\r\n" line ends and line numbers in errors stay as they were."""

from __future__ import annotations

import json

import pytest

from rlhflab.data import read_records, read_rows
from rlhflab.errors import DataError

BREAKS = ["\u2028", "\u2029", "\u0085"]  # the control characters splitlines also splits at are escaped in JSON


def test_a_raw_line_break_inside_a_string_is_not_a_line_end(tmp_path):
    rows = [{"prompt": f"before{b}after", "completions": [f"a{b}", "b"]} for b in BREAKS]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    assert all(b in path.read_text(encoding="utf-8") for b in BREAKS)  # raw, not escaped
    name, read = read_rows(path)
    assert [number for number, _ in read] == list(range(1, len(BREAKS) + 1))
    assert [row for _, row in read] == rows
    samples = read_records(path, "samples")
    assert [s.prompt for s in samples] == [row["prompt"] for row in rows]


def test_crlf_line_ends_and_error_line_numbers_are_kept(tmp_path):
    path = tmp_path / "samples.jsonl"
    good = json.dumps({"prompt": "p\u2028q", "completions": ["a", "b"]}, ensure_ascii=False)
    path.write_bytes(f"{good}\r\n\r\n{good}\r\n".encode())
    assert [number for number, _ in read_rows(path)[1]] == [1, 3]
    path.write_text(f"{good}\n\u2028{{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r":2: malformed JSON"):
        read_rows(path)
