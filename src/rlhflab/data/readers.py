"""Reading and writing feedback records: JSONL, JSON, Parquet, ``save_to_disk`` folders, ``datasets``
objects, lists of dicts and Hugging Face Hub dataset ids.

Validation is strict and every problem is a one-line :class:`~rlhflab.errors.DataError`
``"file:N: field 'x': problem"``. ``N`` is the 1-based line for JSONL, and the 1-based *row* for a
JSON list, a Parquet file or a ``datasets`` dataset (row ``N`` is ``dataset[N - 1]``). Rows are read
as TRL reads its dataset types (:mod:`rlhflab.data.trl_types`) or through the adapter of a public
schema (:mod:`rlhflab.data.schemas`); columns a record kind does not use are named in one line on
stderr, so TRL datasets with bookkeeping columns load as they are, and visibly.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rlhflab.data import trl_types
from rlhflab.data.records import _Invalid, record_type
from rlhflab.data.schemas import detect_schema, read_schema, schema
from rlhflab.errors import DataError
from rlhflab.files import atomic_path, write_jsonl


def _jsonl_rows(text: str, source: str) -> Iterator[tuple[int, Any]]:
    # JSON Lines ends lines with "\n" (a "\r" before it is tolerated); str.splitlines() would also
    # split at U+2028, U+0085 and other breaks that may stand raw inside a JSON string.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue  # a trailing newline or a blank separator is not a record
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(source, number, None, f"malformed JSON ({e.msg} at column {e.colno})") from None
        except (RecursionError, ValueError) as e:  # nested too deep; a number too long to convert
            raise DataError(source, number, None, f"unreadable JSON ({str(e).split(';')[0]})") from None


def _json_rows(text: str, source: str) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(source, e.lineno, None, f"malformed JSON ({e.msg} at column {e.colno})") from None
    except (RecursionError, ValueError) as e:  # nested too deep; a number too long to convert
        raise DataError(source, None, None, f"unreadable JSON ({str(e).split(';')[0]})") from None
    if not isinstance(data, list):
        raise DataError(source, None, None, f"expected a JSON list of records, got {type(data).__name__}")
    yield from enumerate(data, start=1)


def _parquet_rows(path: Path, source: str) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a corrupt file
        raise DataError(source, None, None, f"cannot read Parquet file ({e})") from None
    yield from enumerate(table.to_pylist(), start=1)


def _dataset_rows(dataset, source: str) -> Iterator[tuple[int, Any]]:
    from datasets import DatasetDict

    if isinstance(dataset, DatasetDict):
        if len(dataset) != 1:
            raise DataError(source, None, None, f"holds splits {list(dataset)}; pass one split, e.g. dataset['train']")
        dataset = next(iter(dataset.values()))
    yield from enumerate(dataset, start=1)


# "owner/name" (optionally ":split"): a Hugging Face Hub dataset id, as load_dataset takes it.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")


def _file_like(source: str) -> bool:
    # "data/prefs.jsonl" matches the hub-id pattern too; a missing file must still say so
    return Path(source).suffix.lower() in (".jsonl", ".json", ".parquet", ".csv", ".txt", ".arrow")


def _hub_rows(source: str) -> Iterator[tuple[int, Any]]:
    """The rows of a hub dataset (split after ':', "train" by default), or one line saying why not."""
    import datasets

    name, _, split = source.partition(":")
    if datasets.config.HF_HUB_OFFLINE:
        raise DataError(
            source,
            None,
            None,
            "is no local file and looks like a Hugging Face Hub dataset id, but the hub is "
            "unreachable (HF_HUB_OFFLINE is set); download it where the hub is reachable and pass the local copy",
        )
    try:
        dataset = datasets.load_dataset(name, split=split or "train")
    except (ConnectionError, TimeoutError, OSError) as e:
        raise DataError(source, None, None, f"the Hugging Face Hub is unreachable ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - the hub and datasets raise many types for a missing set or split
        raise DataError(source, None, None, f"cannot load from the Hugging Face Hub ({_first_line(e)})") from None
    return _dataset_rows(dataset, source)


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _rows(source) -> tuple[str, Iterator[tuple[int, Any]]]:
    if isinstance(source, list):
        return "<list>", enumerate(source, start=1)
    if not isinstance(source, (str, os.PathLike)):
        return f"<{type(source).__name__}>", _dataset_rows(source, f"<{type(source).__name__}>")
    if isinstance(source, str) and _HUB_ID.match(source) and not Path(source).exists() and not _file_like(source):
        return source, _hub_rows(source)
    path = Path(source)
    name = str(source)
    if not path.exists():
        raise DataError(name, None, None, "file does not exist")
    if path.is_dir():
        from datasets import load_from_disk

        try:
            dataset = load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - not a save_to_disk folder
            raise DataError(
                name, None, None, f"a directory, but not one written by datasets' save_to_disk ({e})"
            ) from None
        return name, _dataset_rows(dataset, name)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return name, _parquet_rows(path, name)
    if suffix in (".jsonl", ".json"):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(name, None, None, f"not UTF-8 text ({e.reason})") from None
        return name, (_jsonl_rows if suffix == ".jsonl" else _json_rows)(text, name)
    raise DataError(
        name, None, None, f"unsupported file type '{suffix}'; use .jsonl, .json, .parquet or a save_to_disk folder"
    )


def read_rows(source) -> tuple[str, list[tuple[int, Any]]]:
    """The raw rows of ``source`` (any format :func:`read_records` reads) with their 1-based line or
    row numbers, and the name to report errors under: for readers of columns no record type has."""
    name, rows = _rows(source)
    return name, list(rows)


def read_records(source, kind: str, format: str | None = None) -> list:
    """Read and validate every record of ``kind`` (a key of ``RECORD_TYPES``) from ``source``.

    ``source``: a ``.jsonl`` / ``.json`` (a list of objects) / ``.parquet`` path, a folder written by
    ``Dataset.save_to_disk``, a ``datasets.Dataset``, a list of dicts, or a Hub id ``owner/name``
    (``owner/name:split``). ``format``: a public schema of :data:`~rlhflab.data.schemas.SCHEMAS`
    (e.g. ``"hh-rlhf"``); None detects one from the first row, saying so in one line on stderr, and
    otherwise reads rlhflab's columns or TRL's dataset types (:mod:`rlhflab.data.trl_types`). A TRL
    type ``kind`` cannot use faithfully is refused in one line naming the command that takes it.
    The first invalid row raises DataError; a source with no records raises DataError too (an empty
    feedback set is always a mistake).
    """
    cls = record_type(kind)
    found = schema(format) if format is not None else None
    name, numbered = _rows(source)
    rows = list(numbered)
    if not rows:
        raise DataError(name, None, None, f"no records (expected {kind} rows)")
    found = found or detect_schema(rows[0][1])
    unused: set[str] = set()
    if found is not None:
        how = "as asked" if format is not None else "detected"
        print(f"{name}: read as {found.name} rows ({how}) for {kind} records", file=sys.stderr)
        if found.columns is not None:
            unused = {c for _, row in rows if isinstance(row, dict) for c in row} - found.columns
        rows = read_schema(found, rows, kind, name)
    records = _typed_records(cls, kind, name, rows, unused)
    if not records:
        raise DataError(name, None, None, f"no records (expected {kind} rows)")
    return records


def _typed_records(cls, kind: str, name: str, rows: list, unused: set[str]) -> list:
    records = []
    for number, row in rows:
        trl_type = trl_types.row_type(row) if isinstance(row, dict) else None
        problem = trl_types.refusal(kind, trl_type, row) if trl_type is not None else None
        if problem:
            raise DataError(name, number, None, problem)
        if not isinstance(row, dict):
            records.append(cls.from_dict(row, name, number))  # its one-line "expected an object"
            continue
        try:
            record_row, used = trl_types.to_record_row(row, kind, trl_type)
        except _Invalid as e:
            raise DataError(name, number, e.field, e.problem) from None
        record = cls.from_dict(record_row, name, number)
        if trl_type == trl_types.LANGUAGE_MODELING:
            object.__setattr__(record, "origin", (name, number, "messages"))
        records.append(record)
        unused |= set(row) - used
    if unused:
        print(f"{name}: columns not used by {kind} records: {', '.join(sorted(unused))}", file=sys.stderr)
    return records


def write_records(records: Iterable, path: str | os.PathLike) -> None:
    """Write records atomically: JSONL, or Parquet when ``path`` ends in ``.parquet``."""
    rows = [r.to_dict() for r in records]
    if str(path).lower().endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
    else:
        write_jsonl(path, rows)


def records_to_dataset(records: Iterable):
    """The records as a ``datasets.Dataset`` with TRL column names (e.g. for TRL trainers)."""
    from datasets import Dataset

    rows = [r.to_dict() for r in records]
    try:
        return Dataset.from_list(rows)
    except Exception as e:  # noqa: BLE001 - arrow cannot hold a column mixing strings and message lists
        raise DataError("<records>", None, None, f"cannot build a dataset: {e}") from None
