"""Reading and writing feedback records: JSONL, JSON, Parquet, ``save_to_disk`` folders, ``datasets``.

Validation is strict and every problem is a one-line :class:`~rlhflab.errors.DataError`
``"file:N: field 'x': problem"``. ``N`` is the 1-based line for JSONL, and the 1-based *row* for a
JSON list, a Parquet file or a ``datasets`` dataset (row ``N`` is ``dataset[N - 1]``). Unknown
extra columns are ignored, so TRL datasets with bookkeeping columns load as they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rlhflab.data.records import record_type
from rlhflab.errors import DataError
from rlhflab.files import atomic_path, write_jsonl


def _jsonl_rows(text: str, source: str) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # a trailing newline or a blank separator is not a record
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(source, number, None, f"malformed JSON ({e.msg} at column {e.colno})") from None


def _json_rows(text: str, source: str) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(source, e.lineno, None, f"malformed JSON ({e.msg} at column {e.colno})") from None
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


def _rows(source) -> tuple[str, Iterator[tuple[int, Any]]]:
    if not isinstance(source, (str, os.PathLike)):
        return f"<{type(source).__name__}>", _dataset_rows(source, f"<{type(source).__name__}>")
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


def read_records(source, kind: str) -> list:
    """Read and validate every record of ``kind`` (a key of ``RECORD_TYPES``) from ``source``.

    ``source``: a ``.jsonl`` / ``.json`` (a list of objects) / ``.parquet`` path, a folder written by
    ``Dataset.save_to_disk``, or a ``datasets.Dataset``. The first invalid row raises DataError; a
    source with no records raises DataError too (an empty feedback set is always a mistake).
    """
    cls = record_type(kind)
    name, rows = _rows(source)
    records = [cls.from_dict(row, name, number) for number, row in rows]
    if not records:
        raise DataError(name, None, None, f"no records (expected {kind} rows)")
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
