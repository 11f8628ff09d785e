"""Streaming helpers for line-oriented data files (LIBSVM, CSV).

A scan walks the file once and remembers the byte offset where each data row starts, plus the
end of the last one; reading rows later seeks straight to them and parses only those lines.
Files are read as bytes so that offsets are exact whatever the encoding. `line_blocks` and
`row_texts` hand out many whole lines at once, for readers that parse a block of text with numpy
rather than line by line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import NoReturn

import numpy as np

from dmlcli.data.messages import shown
from dmlcli.data.source import row_runs
from dmlcli.errors import DataError

_BOM = b"\xef\xbb\xbf"
# Consecutive rows fetched with one read.
_RUN_ROWS = 4096
# Bytes of text handed to a block parser at once: large enough that numpy's per-call costs vanish
# (a 4 MB block of LIBSVM text holds about 11,000 rows of 30 nonzeros), small enough to bound memory.
BLOCK_BYTES = 1 << 22
# Longest line accepted, line break included: far beyond any real row (tens of millions of
# characters), but bounded, so that a file without line breaks cannot exhaust memory in one read.
_MAX_LINE_BYTES = 1 << 26

# A plain decimal literal: optional sign, ASCII digits with an optional point, optional exponent.
# Python's float() also takes underscores ("1_0" is 10), surrounding whitespace and "infinity",
# which a data file should not hold. Readers build their whole-line patterns from this one.
PLAIN_NUMBER = rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_PLAIN_NUMBER = re.compile(PLAIN_NUMBER)
_NON_FINITE = re.compile(rb"[+-]?(?:inf|infinity|nan)", re.IGNORECASE)


# Decimals converted by numpy rather than float() (see plain_decimals): at most _EXACT_DIGITS digits, so
# that their digits read as an integer are exact in float64 (below 2**53), at most _FAST_TOKEN_BYTES long
# (the digits, a sign and a point), no exponent.
_EXACT_DIGITS = 15
_FAST_TOKEN_BYTES = _EXACT_DIGITS + 2
_POWERS_OF_TEN = 10.0 ** np.arange(_EXACT_DIGITS + 1)  # all exact in float64
# Tokens converted together: bounds the (token bytes × tokens) temporaries to a few MB.
_DECIMALS_AT_ONCE = 1 << 16
_POINT, _MINUS, _PLUS, _ZERO = ord("."), ord("-"), ord("+"), ord("0")


def plain_decimals(block: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray | None:
    """float(block[starts[i]:ends[i]]) for every token, bit for bit, or None if a token is not a PLAIN_NUMBER.

    A decimal of at most 15 digits, k of them after the point, is m / 10**k with m its digits read as an
    integer: m and 10**k are exact in float64 and one IEEE division rounds their exact quotient correctly,
    which is what float() returns (Clinger's fast path). numpy does that for all such tokens at once; the
    others (more digits, an exponent) are checked against PLAIN_NUMBER and go through float(). On the
    issue-8 LIBSVM file (6 million values like -0.1540) finding the values with a regular expression and
    float() took three fifths of the scan's CPU, and this takes a quarter of that; on the 100-column CSV
    file of issue 8 a block's conversion takes about a third of numpy.loadtxt's time on it (2-core
    development machine, 2026-11-24).
    """
    values = np.empty(starts.size)
    text = np.frombuffer(block, dtype=np.uint8)
    for first in range(0, starts.size, _DECIMALS_AT_ONCE):
        part = slice(first, first + _DECIMALS_AT_ONCE)
        if not _decimals(block, text, starts[part], ends[part], values[part]):
            return None
    return values


def finite_plain_decimals(block: bytes, starts: np.ndarray, ends: np.ndarray) -> bool:
    """Whether every token is a PLAIN_NUMBER whose float() is finite: plain_decimals without the conversion
    of the tokens that are finite by their form, about half of its time (for a scan that keeps a column)."""
    text = np.frombuffer(block, dtype=np.uint8)
    return all(_decimals(block, text, starts[first:first + _DECIMALS_AT_ONCE], ends[first:first + _DECIMALS_AT_ONCE])
               for first in range(0, starts.size, _DECIMALS_AT_ONCE))


def _decimals(block: bytes, text: np.ndarray, starts: np.ndarray, ends: np.ndarray, values: np.ndarray | None = None) -> bool:
    """Whether every token of a batch is a PLAIN_NUMBER, writing their float() into `values` if it is given;
    without `values`, whether every float() would be finite as well.

    The tokens are right-aligned in a (width × tokens) byte matrix, padded with '0' (leading zeros change
    no number); a row per byte position keeps every step a pass over a row.
    """
    lengths = ends - starts
    if lengths.size == 0:
        return True
    if lengths.min() < 1:
        return False
    width = int(min(lengths.max(), _FAST_TOKEN_BYTES))
    from_end = np.arange(width, 0, -1, dtype=np.int32)[:, None]
    chars = text.take(ends.astype(np.int32 if text.size < 2**31 else np.int64) - from_end, mode="clip")
    chars[from_end > lengths] = _ZERO
    digits = chars - _ZERO  # uint8: anything else wraps or is 10 or more
    is_digit = digits <= 9
    points, minus, plus = chars == _POINT, chars == _MINUS, chars == _PLUS
    signs = minus | plus
    # A token other than [+-] digits with at most one point (an exponent, more bytes than the matrix holds,
    # more digits than are exact) is converted by float(), once PLAIN_NUMBER has accepted it.
    point_count, sign_count = points.sum(axis=0), signs.sum(axis=0)
    slow = ((lengths > width) | ~(is_digit | points | signs).all(axis=0)
            | (lengths - point_count - sign_count > _EXACT_DIGITS))
    first_is_sign = signs[np.maximum(width - lengths, 0), np.arange(lengths.size)]
    plain = (point_count <= 1) & (sign_count == first_is_sign) & (lengths - point_count - sign_count >= 1)
    if not np.all(plain | slow):
        return False
    slow_tokens = np.flatnonzero(slow)
    slow_values = []
    for token in slow_tokens.tolist():
        text_of_token = block[starts[token]:ends[token]]
        if _PLAIN_NUMBER.fullmatch(text_of_token) is None:
            return False
        slow_values.append(float(text_of_token))
    if values is None:  # a token of at most 15 digits without an exponent is finite
        return all(map(math.isfinite, slow_values))
    digits *= is_digit
    scales = np.where(points, np.uint8(1), np.uint8(10))  # the point is skipped: its digit is 0, its scale 1
    mantissa = np.zeros(lengths.size, dtype=np.int64)
    for position in range(width):  # Horner's rule
        mantissa *= scales[position]
        mantissa += digits[position]
    after_point = (points * from_end.astype(np.uint8)).sum(axis=0, dtype=np.int64) - point_count
    np.divide(mantissa, _POWERS_OF_TEN[np.minimum(after_point, _EXACT_DIGITS)], out=values)
    values *= 1.0 - 2.0 * minus.any(axis=0)  # -0.0 for "-0" too
    values[slow_tokens] = slow_values
    return True


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


def refuse_long_line(line: bytes, where: str) -> NoReturn:
    """The error for a line longer than _MAX_LINE_BYTES (line break included)."""
    line_content(line[: _MAX_LINE_BYTES + 1], where)  # a file with CR line endings is one long line: say that instead
    raise DataError(f"{where}: line longer than {_MAX_LINE_BYTES} bytes; expected one data row per line")


def line_blocks(path: str, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, int, bytes]]:
    """Yield (number of the block's first line, byte offset of the block, block) over the whole file.

    Each block holds whole lines, each with its LF (only the file's last line may lack one), about
    `block_bytes` at a time; together they are the file without its UTF-8 byte-order mark. A line longer
    than _MAX_LINE_BYTES (its line break included) is a DataError naming its line.
    """
    try:
        with open(path, "rb") as file:
            pending = file.read(block_bytes)
            offset = len(_BOM) if pending.startswith(_BOM) else 0
            pending = pending[offset:]
            number = 1
            while pending:
                more = file.read(block_bytes)
                last_break = pending.rfind(b"\n")
                if more and last_break < 0:  # one line longer than a block: keep reading it
                    if len(pending) > _MAX_LINE_BYTES:
                        refuse_long_line(pending, f"{path}:{number}")
                    pending += more
                    continue
                cut = len(pending) if not more else last_break + 1
                block, pending = pending[:cut], pending[cut:] + more
                if len(block) > _MAX_LINE_BYTES:  # the block's lines need checking one by one
                    for line_number, line in _long_lines(block, number):
                        refuse_long_line(line, f"{path}:{line_number}")
                yield number, offset, block
                number += block.count(b"\n")
                offset += len(block)
    except OSError as error:
        raise DataError(f"cannot read data file {path}: {error.strerror or error}") from None


def block_lines(block: bytes) -> Iterator[tuple[int, int, int]]:
    """(index of the line from 0, start, stop) of each line of a block: block[start:stop] is the line with
    its LF (the block's last line may lack one). For the line-by-line paths; the bulk parsers use numpy."""
    start = index = 0
    while start < len(block):
        stop = block.find(b"\n", start) + 1 or len(block)
        yield index, start, stop
        start, index = stop, index + 1


def _long_lines(block: bytes, first_number: int) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of the lines of a block that are longer than _MAX_LINE_BYTES."""
    for index, start, stop in block_lines(block):
        if stop - start > _MAX_LINE_BYTES:
            yield first_number + index, block[start:stop]


def row_texts(path: str, offsets: np.ndarray, rows: np.ndarray,
              batch_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, bytes]]:
    """Yield (row count, text) for the data rows `rows` (sorted, distinct) of a scanned file, in order.

    `text` holds the next `row count` rows' lines, each ending in LF, and whatever blank or comment lines
    sit between consecutive rows; scattered rows (a shuffled partition) are gathered, run by run, into
    batches of about `batch_bytes`, so a parser's fixed cost is paid per batch rather than per row.
    """
    try:
        with open(path, "rb") as file:
            pieces: list[bytes] = []
            count = size = 0
            for first, stop in row_runs(rows, _RUN_ROWS):
                file.seek(int(offsets[first]))
                text = file.read(int(offsets[stop] - offsets[first]))
                pieces.append(text if text.endswith(b"\n") else text + b"\n")
                count += stop - first
                size += len(text)
                if size >= batch_bytes:
                    yield count, b"".join(pieces)
                    pieces, count, size = [], 0, 0
            if pieces:
                yield count, b"".join(pieces)
    except OSError as error:
        raise DataError(f"cannot read data file {path}: {error.strerror or error}") from None
