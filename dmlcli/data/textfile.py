"""Streaming helpers for line-oriented data files (LIBSVM, CSV).

A scan walks the file once and remembers the byte offset where each data row starts, plus the
end of the last one; reading rows later seeks straight to them and parses only those lines.
Files are read as bytes so that offsets are exact whatever the encoding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np

from dmlcli.data.messages import shown
from dmlcli.data.source import row_runs
from dmlcli.errors import DataError

Row = TypeVar("Row")

_BOM = b"\xef\xbb\xbf"
# Rows parsed per read when fetching rows; bounds the raw text held at once.
_RUN_ROWS = 4096
# Longest line accepted, line break included: far beyond any real row (tens of millions of
# characters), but bounded, so that a file without line breaks cannot exhaust memory in one read.
_MAX_LINE_BYTES = 1 << 26

# A plain decimal literal: optional sign, ASCII digits with an optional point, optional exponent.
# Python's float() also takes underscores ("1_0" is 10), surrounding whitespace and "infinity",
# which a data file should not hold. Readers build their whole-line patterns from this one.
PLAIN_NUMBER = rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_PLAIN_NUMBER = re.compile(PLAIN_NUMBER)
_NON_FINITE = re.compile(rb"[+-]?(?:inf|infinity|nan)", re.IGNORECASE)


def parse_number(token: bytes, where: str, what: str) -> float:
    """`token` as a finite float, or a DataError saying where it is and what it should have been.

    The token must be a PLAIN_NUMBER (`-1`, `.5`, `2.`, `+3e-4`); infinities, NaN and values
    beyond the float64 range are refused.
    """
    if _PLAIN_NUMBER.fullmatch(token) is None:
        if _NON_FINITE.fullmatch(token):
            raise DataError(f"{where}: {what} is {shown(token)}; expected a finite number")
        raise DataError(f"{where}: {what} {shown(token)!r} is not a number; expected a decimal like 3, -0.5 or 1e-3")
    value = float(token)
    if not math.isfinite(value):
        raise DataError(f"{where}: {what} is {shown(token)}, beyond the float64 range; expected a finite number")
    return value


def line_content(line: bytes, where: str) -> bytes:
    """A line without its LF or CRLF ending; a DataError if a carriage return or NUL byte is left inside it.

    A carriage return inside a line means CR-only (classic Mac) line endings, which make the whole
    file read as one line; a NUL byte means a binary or UTF-16 file. Both would otherwise surface as
    a puzzling complaint about some token.
    """
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    if b"\r" in line:
        raise DataError(f"{where}: carriage return inside a line: the file seems to use CR line endings; expected LF or CRLF")
    if b"\0" in line:
        raise DataError(f"{where}: NUL byte inside a line: the file seems to be binary or UTF-16; expected ASCII or UTF-8 text")
    return line


def numbered_lines(path: str) -> Iterator[tuple[int, int, bytes]]:
    """Yield (line number from 1, byte offset of the line, line bytes) for every line of the file.

    A UTF-8 byte-order mark (spreadsheet exports add one) is skipped, offset included. A line longer
    than _MAX_LINE_BYTES is a DataError.
    """
    try:
        with open(path, "rb") as file:
            offset = 0
            number = 0
            while line := file.readline(_MAX_LINE_BYTES + 1):
                number += 1
                start = offset
                offset += len(line)
                if len(line) > _MAX_LINE_BYTES:
                    where = f"{path}:{number}"
                    line_content(line, where)  # a file with CR line endings is one long line: say that instead
                    raise DataError(f"{where}: line longer than {_MAX_LINE_BYTES} bytes; expected one data row per line")
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
