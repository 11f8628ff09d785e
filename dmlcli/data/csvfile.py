"""Numeric comma-separated files, dense.

The first non-blank line is a header when any of its fields is not a number; the label column is
then the one named label, y, target or class (any case), and otherwise the first column.
Blank lines are skipped; there is no quoting, as every data field must be a number (spaces around
it are allowed).
"""

from __future__ import annotations

import math
import re
from array import array
from functools import partial

import numpy as np

from dmlcli.data.messages import shown_list
from dmlcli.data.source import DatasetInfo, DataSource
from dmlcli.data.textfile import PLAIN_NUMBER, line_content, numbered_lines, parse_number, read_rows
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


class CsvSource(DataSource):
    """A CSV file streamed from disk: the scan keeps labels and row offsets, rows() re-reads lines."""

    def __init__(self, path: str):
        super().__init__(path)
        self._offsets: np.ndarray | None = None
        self._width = 0
        self._label_column = 0

    def _scan(self) -> DatasetInfo:
        labels = array("d")
        starts = array("q")
        end = 0
        for number, offset, line in numbered_lines(self.name):
            where = f"{self.name}:{number}"
            if not self._width and line.strip():
                fields = line_content(line, where).split(b",")
                self._width = len(fields)
                if is_header(fields):
                    self._label_column = label_column(header_names(fields), where)
                    continue
            numbers = parse_csv_line(line, where, self._width)
            if numbers is None:
                continue
            labels.append(numbers[self._label_column])
            starts.append(offset)
            end = offset + len(line)
        if not labels:
            raise DataError(f"{self.name}: no data rows; expected lines of comma-separated numbers")
        if self._width < 2:
            raise DataError(f"{self.name}: only a label column; expected at least one feature column besides it")
        self._offsets = np.append(np.frombuffer(starts, dtype=np.int64), end)
        return DatasetInfo(n=len(labels), d=self._width - 1, y=np.frombuffer(labels, dtype=np.float64).copy(), sparse=False)

    def _read_sorted(self, rows: np.ndarray, width: int) -> np.ndarray:
        features = np.empty((rows.size, width), dtype=np.float64)
        feature_columns = np.delete(np.arange(self._width), self._label_column)
        parse = partial(parse_csv_line, width=self._width)
        for position, numbers in enumerate(read_rows(self.name, self._offsets, rows, parse)):
            features[position] = numbers[feature_columns]
        return features
