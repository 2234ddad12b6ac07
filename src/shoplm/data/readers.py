"""Stream CSV, TSV, JSONL and Parquet files in bounded chunks, keeping row numbers.

Every chunk is a DataFrame of the file's own columns plus the line number each record
starts on, so a problem found later can be reported as ``file:row``. Records the parser
cannot read at all (wrong field count, an unterminated quote, invalid JSON) never reach a
chunk: they are returned as :class:`ParseProblem` values, so the caller counts them.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from tqdm import tqdm

SUPPORTED_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")


class InputError(ValueError):
    """A file that cannot be read at all; the message names the file and the reason."""


@dataclass(frozen=True)
class ParseProblem:
    row: int
    reason: str


@dataclass(frozen=True)
class Chunk:
    frame: pd.DataFrame
    #: 1-based line (CSV/JSONL, header = line 1) or row (Parquet) of each record
    rows: np.ndarray
    problems: list[ParseProblem]


def file_format(path: Path) -> str:
    """The format name from the file suffix, ignoring a trailing ``.gz``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(
            f"{path}: unsupported file type {suffix or '(none)'}; "
            f"use one of {', '.join(SUPPORTED_SUFFIXES)} (optionally .gz)"
        )
    return "jsonl" if suffix == ".ndjson" else suffix[1:]


def read_chunks(path: Path, chunk_rows: int, progress: bool = False) -> Iterator[Chunk]:
    """Yield the file as chunks of at most ``chunk_rows`` records."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    fmt = file_format(path)
    if fmt == "parquet":
        yield from _parquet_chunks(path, chunk_rows, progress)
        return
    with _open_text(path) as handle, _ByteProgress(path, handle, progress) as bar:
        reader = _csv_chunks if fmt in ("csv", "tsv") else _jsonl_chunks
        for chunk in reader(path, handle, chunk_rows, "\t" if fmt == "tsv" else ","):
            bar.update_position()
            yield chunk


def _open_text(path: Path) -> IO[str]:
    raw: IO[bytes] = (
        gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")  # noqa: SIM115
    )
    # utf-8-sig drops a byte-order mark; undecodable bytes become U+FFFD and are reported by
    # the text cleaner instead of aborting the whole file.
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")


def _csv_chunks(path: Path, handle: IO[str], chunk_rows: int, delimiter: str) -> Iterator[Chunk]:
    reader = csv.reader(handle, delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{path}: the file is empty (no header line)") from None
    except csv.Error as exc:
        raise InputError(f"{path}: the header line cannot be parsed: {exc}") from exc
    header = [name.strip() for name in header]
    duplicated = sorted({n for n in header if header.count(n) > 1})
    if duplicated:
        raise InputError(f"{path}: column name(s) {duplicated} appear more than once in the header")
    width = len(header)
    records: list[list[str]] = []
    rows: list[int] = []
    problems: list[ParseProblem] = []
    next_start = reader.line_num + 1
    while True:
        start = next_start
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(ParseProblem(start, f"unreadable record: {exc}"))
            break  # strict csv errors only happen at end of data (an unterminated quote)
        next_start = reader.line_num + 1
        if len(record) != width:
            if record == [] or record == [""]:
                continue  # a blank line is not a record
            problems.append(ParseProblem(start, f"expected {width} fields, found {len(record)}"))
        else:
            records.append(record)
            rows.append(start)
        if len(records) >= chunk_rows:
            yield _chunk_from_records(header, records, rows, problems)
            records, rows, problems = [], [], []
    if records or problems:
        yield _chunk_from_records(header, records, rows, problems)


def _chunk_from_records(
    header: list[str], records: list[list[str]], rows: list[int], problems: list[ParseProblem]
) -> Chunk:
    columns = list(zip(*records, strict=True)) if records else [()] * len(header)
    frame = pd.DataFrame(
        {name: np.array(col, dtype=object) for name, col in zip(header, columns, strict=True)}
    )
    return Chunk(frame, np.asarray(rows, dtype=np.int64), problems)


def _jsonl_chunks(path: Path, handle: IO[str], chunk_rows: int, _: str) -> Iterator[Chunk]:
    records: list[dict] = []
    rows: list[int] = []
    problems: list[ParseProblem] = []
    for line_no, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(ParseProblem(line_no, f"invalid JSON: {exc.msg}"))
            continue
        if not isinstance(record, dict):
            problems.append(ParseProblem(line_no, "a line must hold one JSON object"))
            continue
        records.append(record)
        rows.append(line_no)
        if len(records) >= chunk_rows:
            yield Chunk(pd.DataFrame.from_records(records), np.asarray(rows), problems)
            records, rows, problems = [], [], []
    if records or problems:
        yield Chunk(pd.DataFrame.from_records(records), np.asarray(rows, np.int64), problems)


def _parquet_chunks(path: Path, chunk_rows: int, progress: bool) -> Iterator[Chunk]:
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise InputError(f"{path}: not a readable Parquet file: {exc}") from exc
    start = 1
    with tqdm(
        total=parquet.metadata.num_rows, unit="rows", disable=not progress, desc=path.name
    ) as bar:
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            frame = batch.to_pandas()
            rows = np.arange(start, start + len(frame), dtype=np.int64)
            start += len(frame)
            bar.update(len(frame))
            yield Chunk(frame, rows, [])


class _ByteProgress:
    """A progress bar over the compressed or plain bytes read so far."""

    def __init__(self, path: Path, handle: IO[str], enabled: bool) -> None:
        self._raw = handle.buffer  # type: ignore[attr-defined]
        self._fileobj = getattr(self._raw, "fileobj", None) or self._raw
        self._bar = tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            disable=not enabled,
            desc=path.name,
        )

    def update_position(self) -> None:
        self._bar.update(self._fileobj.tell() - self._bar.n)

    def __enter__(self) -> _ByteProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()
