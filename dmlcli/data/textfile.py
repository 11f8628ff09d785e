"""Streaming helpers for line-oriented data files (LIBSVM, CSV).

A scan walks the file once and remembers the byte offset where each data row starts, plus the
end of the last one; reading rows later seeks straight to them and parses only those lines.
Files are read as bytes so that offsets are exact whatever the encoding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np

from dmlcli.data.source import row_runs
from dmlcli.errors import DataError

Row = TypeVar("Row")

_BOM = b"\xef\xbb\xbf"
# Rows parsed per read when fetching rows; bounds the raw text held at once.
_RUN_ROWS = 4096


def shown(token: bytes) -> str:
    """A token as text for an error message, cut short so the message stays one readable line."""
    text = token.decode("utf-8", "replace")
    return text if len(text) <= 40 else text[:37] + "..."


def parse_number(token: bytes, where: str, what: str) -> float:
    """`token` as a finite float, or a DataError saying where it is and what it should have been."""
    try:
        value = float(token)
    except ValueError:
        raise DataError(f"{where}: {what} {shown(token)!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {what} is {shown(token.strip())}; expected a finite number")
    return value


def numbered_lines(path: str) -> Iterator[tuple[int, int, bytes]]:
    """Yield (line number from 1, byte offset of the line, line bytes) for every line of the file.

    A UTF-8 byte-order mark (spreadsheet exports add one) is skipped, offset included.
    """
    try:
        with open(path, "rb") as file:
            offset = 0
            for number, line in enumerate(file, start=1):
                start = offset
                offset += len(line)
                if number == 1 and line.startswith(_BOM):
                    line = line[len(_BOM):]
                    start += len(_BOM)
                yield number, start, line
    except OSError as error:
        raise DataError(f"cannot read data file {path}: {error.strerror or error}") from None


def read_rows(path: str, offsets: np.ndarray, rows: np.ndarray,
              parse_line: Callable[[bytes, str], Row | None]) -> Iterator[Row]:
    """Parse the data rows `rows` (sorted, distinct) of a scanned file, in that order.

    `offsets` holds the start of every data row and, last, the end of the final one; `parse_line`
    returns None for lines that hold no row (blank, comment), which may sit between data rows.
    """
    try:
        with open(path, "rb") as file:
            for first, stop in row_runs(rows, _RUN_ROWS):
                file.seek(int(offsets[first]))
                text = file.read(int(offsets[stop] - offsets[first]))
                where = f"{path} (data rows {first}-{stop - 1})"
                parsed = [row for row in (parse_line(line, where) for line in text.split(b"\n")) if row is not None]
                # Checked before handing rows out so that a caller filling a fixed-size array cannot overrun it.
                if len(parsed) != stop - first:
                    raise DataError(f"{path} changed since it was scanned: expected {stop - first} data rows "
                                    f"at byte {int(offsets[first])}, found {len(parsed)}")
                yield from parsed
    except OSError as error:
        raise DataError(f"cannot read data file {path}: {error.strerror or error}") from None
