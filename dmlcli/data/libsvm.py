"""LIBSVM / SVMlight text files: `label index:value index:value ...`, kept sparse.

Indices are 1-based (index i is column i-1) unless some line has feature index 0 with a nonzero
value, which makes the whole file 0-based (index i is column i). An explicit zero at index 0
(`0:0`) carries no information and decides nothing; read 1-based it would be column -1, so it is
dropped. A training file and its test file must be read with one base: `agree_index_base` settles
it once both are scanned, and `open_source(spec, index_base=...)` makes later readers (the workers)
use the agreed base instead of deciding again. `#` starts a comment and blank lines are skipped.
"""

from __future__ import annotations

import math
import operator
import re
from array import array
from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from dmlcli.data.messages import shown
from dmlcli.data.source import DatasetInfo, DataSource
from dmlcli.data.textfile import PLAIN_NUMBER, line_content, numbered_lines, parse_number, read_rows
from dmlcli.errors import DataError

# LIBSVM's own limit (its indices are C ints); it also keeps every column count within int64 arithmetic.
MAX_FEATURE_INDEX = 2**31 - 1
_MAX_INDEX_DIGITS = len(str(MAX_FEATURE_INDEX))
INDEX_BASES = (0, 1)


def parse_feature_index(key: bytes, where: str) -> int:
    """A feature index written as plain ASCII digits, at most MAX_FEATURE_INDEX."""
    if key.isdigit():
        significant = key.lstrip(b"0") or b"0"
        # The length test comes first: int() refuses strings of thousands of digits with a ValueError.
        if len(significant) <= _MAX_INDEX_DIGITS and int(significant) <= MAX_FEATURE_INDEX:
            return int(significant)
        raise DataError(f"{where}: feature index {shown(key)} is above {MAX_FEATURE_INDEX}, the largest LIBSVM index")
    if key.startswith(b"-") and key[1:].isdigit():
        raise DataError(f"{where}: feature index {shown(key)} is negative; expected 0 or more")
    raise DataError(f"{where}: feature index {shown(key)!r} is not an integer; expected ASCII digits only")


# A whole well-formed line, comment removed: a label, then index:value pairs. Nearly every line
# matches and is parsed without checking token by token; any other line (blank, or with a fault)
# goes through parse_libsvm_tokens, which accepts the same lines and names the fault of the rest.
_PLAIN_LINE = re.compile(rb"\s*NUMBER(?:\s+[0-9]{1,10}:NUMBER)*\s*".replace(b"NUMBER", PLAIN_NUMBER))


def parse_libsvm_line(line: bytes, where: str) -> tuple[float, list[int], list[float]] | None:
    """(label, feature indices as written, values) of one line, or None for a blank or comment line.

    Indices must be plain non-negative integers up to MAX_FEATURE_INDEX in strictly ascending order;
    values and labels plain finite numbers (see parse_number).
    """
    data = line_content(line, where).split(b"#", 1)[0]
    if _PLAIN_LINE.fullmatch(data):
        tokens = data.split()
        pairs = [token.split(b":") for token in tokens[1:]]
        label = float(tokens[0])
        indices = [int(key) for key, _ in pairs]
        values = [float(text) for _, text in pairs]
        # The pattern fixed the forms; order, range and finiteness (1e999 is a plain number) remain.
        ascending = all(map(operator.lt, indices, indices[1:]))
        in_range = not indices or indices[-1] <= MAX_FEATURE_INDEX
        finite = math.isfinite(label) and math.inf not in values and -math.inf not in values
        if ascending and in_range and finite:
            return label, indices, values
    return parse_libsvm_tokens(data, where)


def parse_libsvm_tokens(data: bytes, where: str) -> tuple[float, list[int], list[float]] | None:
    """parse_libsvm_line for a line without comment, checking token by token to name the first fault."""
    tokens = data.split()
    if not tokens:
        return None
    label = parse_number(tokens[0], where, "label")
    indices: list[int] = []
    values: list[float] = []
    previous = -1
    for token in tokens[1:]:
        key, colon, text = token.partition(b":")
        if key.lower() == b"qid":
            raise DataError(f"{where}: {shown(token)!r} is a ranking query id; qid: tokens are not supported")
        if not colon:
            raise DataError(f"{where}: feature {shown(token)!r} is not of the form index:value")
        index = parse_feature_index(key, where)
        if index <= previous:
            raise DataError(f"{where}: feature index {index} follows {previous}; expected strictly ascending indices")
        values.append(parse_number(text, where, f"value of feature {index}"))
        indices.append(index)
        previous = index
    return label, indices, values


class LibsvmSource(DataSource):
    """A LIBSVM file streamed from disk: the scan keeps labels and row offsets, rows() re-reads lines.

    `index_base` is None (decide from the file, see the module docstring) or 0 or 1 (read with that
    base; a nonzero value at index 0 in a file read 1-based is then a DataError).
    """

    def __init__(self, path: str, index_base: int | None = None):
        super().__init__(path)
        if index_base not in (None, *INDEX_BASES):
            raise ValueError(f"index_base must be None, 0 or 1, got {index_base!r}")
        self.index_base = index_base
        # Line number of the first nonzero value at feature index 0 (what makes a file 0-based), or None.
        self.zero_base_line: int | None = None
        self._largest_index = -1
        self._offsets: np.ndarray | None = None

    def _scan(self) -> DatasetInfo:
        labels = array("d")
        starts = array("q")
        end = 0
        for number, offset, line in numbered_lines(self.name):
            parsed = parse_libsvm_line(line, f"{self.name}:{number}")
            if parsed is None:
                continue
            label, indices, values = parsed
            labels.append(label)
            starts.append(offset)
            end = offset + len(line)
            if indices:
                self._largest_index = max(self._largest_index, indices[-1])
                if indices[0] == 0 and values[0] != 0 and self.zero_base_line is None:
                    self.zero_base_line = number
        if not labels:
            raise DataError(f"{self.name}: no data rows; expected lines of the form 'label index:value ...'")
        if self._largest_index < 0:
            raise DataError(f"{self.name}: no features on any line; expected 'label index:value ...'")
        if self.index_base is None:
            self.index_base = 0 if self.zero_base_line is not None else 1
        self._offsets = np.append(np.frombuffer(starts, dtype=np.int64), end)
        return DatasetInfo(
            n=len(labels),
            d=self._feature_count(self.index_base),
            y=np.frombuffer(labels, dtype=np.float64).copy(),
            sparse=True,
        )

    def use_index_base(self, base: int) -> None:
        """Read the file with index base `base` from now on, scan().d following; the file is not read again."""
        if base not in INDEX_BASES:
            raise ValueError(f"index base must be 0 or 1, got {base!r}")
        info = self.scan()
        # scan() caches its result; replacing the cached one keeps every later scan() and rows() consistent.
        self._info = replace(info, d=self._feature_count(base))
        self.index_base = base

    def _feature_count(self, base: int) -> int:
        """Feature columns when the file is read with `base`, from what the scan saw."""
        if base == 1 and self.zero_base_line is not None:
            raise DataError(f"{self.name}:{self.zero_base_line}: feature index 0 has a nonzero value but the file "
                            "is read 1-based; expected indices from 1")
        if self._largest_index + 1 - base < 1:
            raise DataError(f"{self.name}: the only feature index is 0, always with value 0, which a 1-based file "
                            "drops; expected indices from 1")
        return self._largest_index + 1 - base

    def _read_sorted(self, rows: np.ndarray, width: int) -> sp.csr_matrix:
        counts = array("q")
        columns = array("q")
        values = array("d")
        for _, indices, row_values in read_rows(self.name, self._offsets, rows, parse_libsvm_line):
            if self.index_base == 1 and indices and indices[0] == 0:
                if row_values[0] != 0:
                    raise DataError(f"{self.name} changed since it was scanned: a row now has a nonzero value "
                                    "at feature index 0 but the file is read 1-based")
                indices, row_values = indices[1:], row_values[1:]
            counts.append(len(indices))
            columns.extend(indices)
            values.extend(row_values)
        indptr = np.concatenate(([0], np.cumsum(np.frombuffer(counts, dtype=np.int64))))
        column_array = np.frombuffer(columns, dtype=np.int64) - self.index_base
        if column_array.size and column_array.max() >= width:
            raise DataError(f"{self.name} changed since it was scanned: feature index {column_array.max() + self.index_base} "
                            f"is beyond the {width} columns asked for")
        return sp.csr_matrix((np.frombuffer(values, dtype=np.float64), column_array, indptr), shape=(rows.size, width))


def agree_index_base(sources: Iterable[DataSource]) -> int | None:
    """The one index base for all LIBSVM files among `sources` (training and test), applied to each.

    0 if some LIBSVM source has a nonzero value at feature index 0, else 1 if any source is LIBSVM,
    else None. Each LIBSVM source is scanned if it was not already, then switched to the agreed base
    without reading its file again, so its scan().d counts the columns under that base. The agreement
    follows the files' contents only: a base forced through open_source is overridden.
    """
    libsvm_sources = [source for source in sources if isinstance(source, LibsvmSource)]
    if not libsvm_sources:
        return None
    for source in libsvm_sources:
        source.scan()
    base = 0 if any(source.zero_base_line is not None for source in libsvm_sources) else 1
    for source in libsvm_sources:
        source.use_index_base(base)
    return base
