"""Numeric comma-separated files, dense.

The first non-blank line is a header when any of its fields is not a number; the label column is
then the one named label, y, target or class (any case), and otherwise the first column.
Blank lines are skipped; there is no quoting, as every data field must be a number (spaces around
it are allowed).

Text is parsed a block of lines at a time: a block whose bytes are all digits, signs, points,
exponents, commas, spaces and line breaks, with the same number of commas on every line, is converted
in bulk; any other block (blank lines, a fault) is parsed line by line, which names the fault and its
line. Without spaces or tabs, the bulk path splits the block at commas and line breaks and converts the
fields with `plain_decimals` (numpy, float()'s numbers bit for bit); with them, numpy.loadtxt does (C,
and the same correctly rounded conversion as float()). The scan checks every field but converts only the
label column. Either way a scan and a read of the rows read the text twice, where numpy.loadtxt reads it
once: on the 75 MB file of issue 8 (100,000 rows × 100 features, no spaces) the block parses of both
took 0.76 s of CPU against 2.0 s through numpy.loadtxt, measured in turn on the same blocks (2-core
development machine, shared with other jobs, 2026-11-24); the whole read against numpy.loadtxt's is in
BENCHMARKS.md, section 7.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np

from dmlcli.data.messages import shown_list
from dmlcli.data.source import DatasetInfo, DataSource
from dmlcli.data.textfile import (
    PLAIN_NUMBER,
    block_lines,
    finite_plain_decimals,
    line_blocks,
    line_content,
    parse_number,
    plain_decimals,
    row_texts,
)
from dmlcli.errors import DataError

LABEL_NAMES = ("label", "y", "target", "class")


def _reads_as_number(field: bytes) -> bool:
    """Whether Python would read the field as a number, even in a form the data rules refuse (`1_0`).

    Such a field does not make its line a header, so the line gets the precise complaint about that field.
    """
    try:
        float(field)
    except ValueError:
        return False
    return True


def is_header(fields: list[bytes]) -> bool:
    """Whether a first line is a header: some field is non-empty and not a number (empty ones are data errors)."""
    return any(field.strip() and not _reads_as_number(field) for field in fields)


def header_names(fields: list[bytes]) -> list[str]:
    """Column names with surrounding spaces and double quotes removed (undecodable bytes replaced)."""
    return [field.decode("utf-8", "replace").strip().strip('"').strip() for field in fields]


def label_column(names: list[str], where: str) -> int:
    """The position of the one column named like a label, or a DataError showing (part of) the header."""
    matches = [position for position, name in enumerate(names) if name.lower() in LABEL_NAMES]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DataError(f"{where}: no label column in header ({shown_list(names, 'columns')}); "
                        f"expected a column named {', '.join(LABEL_NAMES)}")
    clashing = shown_list([names[position] for position in matches], "columns")
    raise DataError(f"{where}: several label columns in header ({clashing}); expected exactly one of {', '.join(LABEL_NAMES)}")


# A whole well-formed data line: plain numbers separated by commas, spaces allowed around each.
# Nearly every line matches and is converted at once; any other line (blank, or with a fault) goes
# through parse_csv_fields, which accepts the same lines and names the fault of the rest.
_PLAIN_LINE = re.compile(rb"\s*NUMBER\s*(?:,\s*NUMBER\s*)*".replace(b"NUMBER", PLAIN_NUMBER))


def parse_csv_line(line: bytes, where: str, width: int) -> np.ndarray | None:
    """The `width` numbers of one data line, or None for a blank line.

    Every field must be a plain number (see parse_number), spaces around it allowed.
    """
    content = line_content(line, where)
    if _PLAIN_LINE.fullmatch(content):
        fields = content.split(b",")
        values = [float(field) for field in fields]
        # The pattern fixed the forms; the count and finiteness (1e999 is a plain number) remain.
        if len(values) == width and math.inf not in values and -math.inf not in values:
            return np.array(values, dtype=np.float64)
    return parse_csv_fields(content, where, width)


def parse_csv_fields(content: bytes, where: str, width: int) -> np.ndarray | None:
    """parse_csv_line for a line without its ending, checking field by field to name the first fault."""
    if not content.strip():
        return None
    fields = content.split(b",")
    if len(fields) != width:
        raise DataError(f"{where}: {len(fields)} fields; expected {width} like the first line")
    numbers = np.empty(width, dtype=np.float64)
    for column, field in enumerate(fields):
        field = field.strip()
        if not field:
            raise DataError(f"{where}: column {column + 1} is empty; expected a number")
        numbers[column] = parse_number(field, where, f"column {column + 1}")
    return numbers


_PLAIN_BYTES = b"0123456789.+-eE, \t\r\n"
# Blocks of only these are split at commas and line breaks and converted by plain_decimals; blocks with
# spaces or tabs around fields go to numpy.loadtxt.
_UNSPACED_BYTES = b"0123456789.+-eE,\r\n"
_NEWLINE, _RETURN, _COMMA = ord("\n"), ord("\r"), ord(",")


def parse_csv_block(block: bytes, width: int, where: Callable[[int], str],
                    column: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(byte offset of each data row's line, the rows' numbers as rows × width, end of the last row's line)
    for a block of whole lines; `where(i)` names line i of the block (from 0) in an error message. With
    `column`, every field is checked as ever but the numbers are only that column's (rows × 1)."""
    parsed = parse_plain_csv_block(block, width, column)
    if parsed is not None:
        return parsed
    starts, numbers, end = parse_csv_block_by_line(block, width, where)
    return starts, numbers if column is None else numbers[:, [column]], end


def parse_plain_csv_block(block: bytes, width: int, column: int | None = None) -> tuple[np.ndarray, np.ndarray, int] | None:
    """parse_csv_block for a block of plain data lines only (see the module docstring); None for any other."""
    unspaced = bool(block) and not block.translate(None, _UNSPACED_BYTES)
    if not block or not unspaced and block.translate(None, _PLAIN_BYTES):
        return None
    text = np.frombuffer(block, dtype=np.uint8)
    returns = np.flatnonzero(text == _RETURN)
    if returns.size and (returns[-1] + 1 == text.size or np.any(text[returns + 1] != _NEWLINE)):
        return None  # a carriage return that does not end a line: line by line says what it is
    breaks = np.flatnonzero(text == _NEWLINE)
    line_starts = np.concatenate(([0], breaks + 1))
    if line_starts[-1] == len(block):
        line_starts = line_starts[:-1]
    if unspaced:
        numbers = _unspaced_fields(block, text, line_starts.size, width, column)
        return None if numbers is None else (line_starts, numbers, len(block))
    commas = np.bincount(np.searchsorted(breaks, np.flatnonzero(text == _COMMA)), minlength=line_starts.size)
    if np.any(commas != width - 1):
        return None
    try:
        lines = block.decode("ascii").splitlines()
        numbers = np.loadtxt(lines, delimiter=",", comments=None, ndmin=2, dtype=np.float64)
    except ValueError:
        return None
    if numbers.shape != (line_starts.size, width) or not np.isfinite(numbers).all():
        return None
    return line_starts, numbers if column is None else numbers[:, [column]], len(block)  # every line is a data row


def _unspaced_fields(block: bytes, text: np.ndarray, lines: int, width: int, column: int | None) -> np.ndarray | None:
    """The numbers (lines × width, or lines × 1 of `column`) of a block of `lines` lines without spaces, all
    finite (see plain_decimals), or None if some line has another number of fields or a field is not a finite
    plain number. Fields end at a comma, at their line's CR LF or LF, or at the block's end; every carriage
    return is known to end a line."""
    separators = np.flatnonzero((text == _COMMA) | (text == _NEWLINE))
    at_newline = text[separators] == _NEWLINE
    line_ends_expected = at_newline[width - 1::width]  # each line's break follows its width - 1 commas
    if (separators.size + (text[-1] != _NEWLINE) != lines * width or not line_ends_expected.all()
            or np.count_nonzero(at_newline) != line_ends_expected.size):
        return None  # some line has more or fewer than `width` fields
    ends = separators - (at_newline & (text[separators - 1] == _RETURN))
    if text[-1] != _NEWLINE:
        ends = np.append(ends, text.size)
    starts = np.concatenate(([0], separators[:ends.size - 1] + 1))
    if column is None:
        numbers = plain_decimals(block, starts, ends)
        return None if numbers is None or not np.isfinite(numbers).all() else numbers.reshape(lines, width)
    if not finite_plain_decimals(block, starts, ends):
        return None
    return plain_decimals(block, starts[column::width], ends[column::width]).reshape(lines, 1)


def parse_csv_block_by_line(block: bytes, width: int,
                            where: Callable[[int], str]) -> tuple[np.ndarray, np.ndarray, int]:
    """parse_csv_block for any block, one line at a time through parse_csv_line, which names the first fault."""
    starts, rows = [], []
    end = 0
    for line, start, stop in block_lines(block):
        numbers = parse_csv_line(block[start:stop], where(line), width)
        if numbers is not None:
            starts.append(start)
            rows.append(numbers)
            end = stop
    return np.array(starts, dtype=np.int64), np.array(rows, dtype=np.float64).reshape(-1, width), end


class CsvSource(DataSource):
    """A CSV file streamed from disk: the scan keeps labels and row offsets, rows() re-reads lines."""

    def __init__(self, path: str):
        super().__init__(path)
        self._offsets: np.ndarray | None = None
        self._width = 0
        self._label_column = 0

    def _scan(self) -> DatasetInfo:
        labels, starts = [], []
        end = 0
        for first_line, offset, block in line_blocks(self.name):
            skipped = 0 if self._width else self._first_line(block, first_line)
            if skipped:
                first_line += block.count(b"\n", 0, skipped)
                offset += skipped
                block = block[skipped:]
            if not self._width:
                continue  # only blank lines so far
            row_starts, numbers, row_end = parse_csv_block(block, self._width,
                                                           lambda line, first=first_line: f"{self.name}:{first + line}",
                                                           column=self._label_column)
            if row_starts.size:
                labels.append(numbers[:, 0])
                starts.append(row_starts + offset)
                end = offset + row_end
        if not labels:
            raise DataError(f"{self.name}: no data rows; expected lines of comma-separated numbers")
        if self._width < 2:
            raise DataError(f"{self.name}: only a label column; expected at least one feature column besides it")
        self._offsets = np.append(np.concatenate(starts), end)
        all_labels = np.concatenate(labels)
        return DatasetInfo(n=all_labels.size, d=self._width - 1, y=all_labels, sparse=False)

    def _first_line(self, block: bytes, first_line: int) -> int:
        """Settle the width and header from the file's first non-blank line, if this block has it.

        Returns the bytes of the block that are done with: the blank lines before that line, and the line
        itself when it is a header (a data line is left for the block parser).
        """
        for line, start, stop in block_lines(block):
            text = block[start:stop]
            if text.strip():
                where = f"{self.name}:{first_line + line}"
                fields = line_content(text, where).split(b",")
                self._width = len(fields)
                if is_header(fields):
                    self._label_column = label_column(header_names(fields), where)
                    return stop
                return start
        return len(block)

    def _read_sorted(self, rows: np.ndarray, width: int) -> np.ndarray:
        features = np.empty((rows.size, width), dtype=np.float64)
        label = self._label_column
        done = 0
        for count, text in row_texts(self.name, self._offsets, rows):
            where = f"{self.name} (data rows {rows[done]}-{rows[done + count - 1]})"
            _, numbers, _ = parse_csv_block(text, self._width, lambda _, where=where: where)
            # Checked before filling `features`, so that a changed file cannot overrun it.
            if numbers.shape[0] != count:
                raise DataError(f"{self.name} changed since it was scanned: expected {count} data rows "
                                f"at byte {int(self._offsets[rows[done]])}, found {numbers.shape[0]}")
            # The columns either side of the label's, copied as two slices: no temporary of the block's size.
            features[done:done + count, :label] = numbers[:, :label]
            features[done:done + count, label:] = numbers[:, label + 1:]
            done += count
        return features
