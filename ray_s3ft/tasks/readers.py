"""Reading data one row at a time, so that a broken row is skipped and named by
``file:line: reason`` instead of failing the whole file. A reader yields (row number, row)
pairs; a row that cannot even be parsed is a ``RowError`` (``loaders`` turns rows into
examples):

    .jsonl     one JSON object a line; line numbers are the file's (blank lines are formatting,
               skipped and not counted as rows)
    .json      a list of objects, or {"data": [...]}; a row is named by the line its element
               starts on. A ``.json`` file whose first line is an object by itself is JSON lines
               (as ``datasets`` reads it). A file that is not valid JSON as a whole is one error.
    .csv       a header line, then one row a record; named by the line the record starts on
    .parquet   named by the 1-based data row

A directory written by ``Dataset.save_to_disk`` or a hub name (network at run time) is read with
``datasets``; its rows are named ``source[split]:N``, N the 1-based row.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

from ray_s3ft.tasks.types import DataError


def kind_of(value) -> str:
    """A value's JSON type, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class RowError(ValueError):
    """One row that cannot be used; the message is the reason."""


Rows = Iterator[tuple[int, object]]
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _not_utf8(raw: bytes, e: UnicodeDecodeError) -> RowError:
    return RowError(f"not UTF-8 (byte 0x{raw[e.start]:02x} at col {e.start + 1})")


def _jsonl_rows(path: Path) -> Rows:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield n, _not_utf8(raw, e)
                continue
            try:
                yield n, json.loads(text.rstrip("\r\n"))  # so an error's column is on the line
            except json.JSONDecodeError as e:
                yield n, RowError(f"invalid JSON: {e.msg} (col {e.colno})")


def _first_line_is_object(data: bytes) -> bool:
    first = next((line for line in data.splitlines() if line.strip()), b"")
    try:
        return isinstance(json.loads(first.removeprefix(codecs.BOM_UTF8)), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def _array_items(text: str, i: int) -> Rows:
    """(line, element) of each element of the valid JSON array that starts at ``text[i]``."""
    line, pos = 1 + text.count("\n", 0, i), i
    i = _WS.match(text, i + 1).end()
    while text[i] != "]":
        line, pos = line + text.count("\n", pos, i), i
        value, i = _DECODER.raw_decode(text, i)
        yield line, value
        i = _WS.match(text, i).end()
        if text[i] == ",":
            i = _WS.match(text, i + 1).end()


def _data_array_start(text: str) -> int:
    """Where the "data" array of a valid top-level JSON object starts (the last, as json.loads)."""
    i, start = _WS.match(text, _WS.match(text).end() + 1).end(), -1
    while text[i] != "}":
        key, i = _DECODER.raw_decode(text, i)
        i = _WS.match(text, _WS.match(text, i).end() + 1).end()  # past the ':'
        start = i if key == "data" else start
        _, i = _DECODER.raw_decode(text, i)
        i = _WS.match(text, i).end()
        if text[i] == ",":
            i = _WS.match(text, i + 1).end()
    return start


def _json_rows(path: Path) -> Rows:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        if _first_line_is_object(data):
            yield from _jsonl_rows(path)
            return
        if isinstance(e, UnicodeDecodeError):
            line = data.count(b"\n", 0, e.start) + 1
            where = f"{line}: not UTF-8 (byte 0x{data[e.start]:02x})"
        else:
            where = f"{e.lineno}: invalid JSON: {e.msg} (col {e.colno})"
        raise DataError(
            f"{path}:{where}; a .json file must be one JSON document (a list of objects or "
            '{"data": [...]}) or JSON lines (use .jsonl to have broken lines skipped)'
        ) from None
    if isinstance(doc, list):
        yield from _array_items(text, _WS.match(text).end())
    elif isinstance(doc, dict) and isinstance(doc.get("data"), list):
        yield from _array_items(text, _data_array_start(text))
    elif isinstance(doc, dict):  # one object: one row
        yield 1 + text.count("\n", 0, _WS.match(text).end()), doc
    else:
        raise DataError(
            f'{path}: a .json file must hold a list of objects or {{"data": [...]}}, '
            f"not {kind_of(doc)}"
        )


_SURROGATE = re.compile("[\udc80-\udcff]")


def _csv_rows(path: Path) -> Rows:
    # undecodable bytes become lone surrogates, so one bad row does not stop the reader
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            start = reader.line_num + 1
            for record in reader:
                n, start = start, reader.line_num + 1
                if not record:  # a blank line
                    continue
                if len(record) != len(header):
                    yield n, RowError(f"{len(record)} fields, the header has {len(header)}")
                    continue
                row = dict(zip(header, record))
                bad = next((k for k, v in row.items() if _SURROGATE.search(v)), None)
                if bad is None:
                    yield n, row
                else:
                    byte = ord(_SURROGATE.search(row[bad]).group()) - 0xDC00
                    yield n, RowError(f"not UTF-8 (byte 0x{byte:02x} in column {bad!r})")
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: not readable as CSV: {e}") from None


def _parquet_rows(path: Path) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except (pa.ArrowException, OSError) as e:
        where = f" after row {n}" if n else ""
        raise DataError(f"{path}: not readable as parquet{where}: {e}") from None


def _dataset_rows(source: str, split: str) -> Rows:
    import datasets

    try:
        if Path(source).is_dir():
            ds = datasets.load_from_disk(source)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{source}: no split {split!r}; it has {', '.join(ds)}")
                ds = ds[split]
        else:  # a hub name such as "openai/gsm8k" (GSM8K's configuration is "main")
            config = "main" if source.endswith("gsm8k") else None
            ds = datasets.load_dataset(source, config, split=split)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types; the user needs the source and reason
        raise DataError(f"{source}: cannot be read as a data set: {e}") from e
    yield from enumerate(ds, start=1)


_FILE_READERS = {
    ".jsonl": _jsonl_rows,
    ".json": _json_rows,
    ".csv": _csv_rows,
    ".parquet": _parquet_rows,
}


def open_rows(source: str, split: str) -> tuple[str, Rows]:
    """The name rows are reported under, and the rows."""
    path = Path(source)
    if not path.is_dir() and path.suffix.lower() in _FILE_READERS:
        if not path.is_file():
            raise DataError(f"{source}: no such file")
        return source, _FILE_READERS[path.suffix.lower()](path)
    return f"{source}[{split}]", _dataset_rows(source, split)
