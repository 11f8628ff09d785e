"""LIBSVM / SVMlight text files: `label index:value index:value ...`, kept sparse.

Indices are 1-based unless an index 0 appears anywhere, which makes the whole file 0-based;
`#` starts a comment and blank lines are skipped.
"""

from __future__ import annotations

from array import array

import numpy as np
import scipy.sparse as sp

from dmlcli.data.source import DatasetInfo, DataSource
from dmlcli.data.textfile import numbered_lines, parse_number, read_rows, shown
from dmlcli.errors import DataError


def parse_libsvm_line(line: bytes, where: str) -> tuple[float, list[int], list[float]] | None:
    """(label, feature indices as written, values) of one line, or None for a blank or comment line.

    Indices must be non-negative integers in strictly ascending order; values and labels finite.
    """
    tokens = line.split(b"#", 1)[0].split()
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
        try:
            index = int(key)
        except ValueError:
            raise DataError(f"{where}: feature index {shown(key)!r} is not an integer") from None
        if index < 0:
            raise DataError(f"{where}: feature index {index} is negative; expected 0 or more")
        if index <= previous:
            raise DataError(f"{where}: feature index {index} follows {previous}; expected strictly ascending indices")
        values.append(parse_number(text, where, f"value of feature {index}"))
        indices.append(index)
        previous = index
    return label, indices, values


class LibsvmSource(DataSource):
    """A LIBSVM file streamed from disk: the scan keeps labels and row offsets, rows() re-reads lines."""

    def __init__(self, path: str):
        super().__init__(path)
        self._offsets: np.ndarray | None = None
        self._first_index = 1

    def _scan(self) -> DatasetInfo:
        labels = array("d")
        starts = array("q")
        end = 0
        smallest, largest = None, -1
        for number, offset, line in numbered_lines(self.name):
            parsed = parse_libsvm_line(line, f"{self.name}:{number}")
            if parsed is None:
                continue
            label, indices, _ = parsed
            labels.append(label)
            starts.append(offset)
            end = offset + len(line)
            if indices:
                smallest = indices[0] if smallest is None else min(smallest, indices[0])
                largest = max(largest, indices[-1])
        if not labels:
            raise DataError(f"{self.name}: no data rows; expected lines of the form 'label index:value ...'")
        if smallest is None:
            raise DataError(f"{self.name}: no features on any line; expected 'label index:value ...'")
        self._first_index = 0 if smallest == 0 else 1
        self._offsets = np.append(np.frombuffer(starts, dtype=np.int64), end)
        return DatasetInfo(
            n=len(labels),
            d=largest + 1 - self._first_index,
            y=np.frombuffer(labels, dtype=np.float64).copy(),
            sparse=True,
        )

    def _read_sorted(self, rows: np.ndarray, width: int) -> sp.csr_matrix:
        counts = array("q")
        columns = array("q")
        values = array("d")
        for _, indices, row_values in read_rows(self.name, self._offsets, rows, parse_libsvm_line):
            counts.append(len(indices))
            columns.extend(indices)
            values.extend(row_values)
        indptr = np.concatenate(([0], np.cumsum(np.frombuffer(counts, dtype=np.int64))))
        column_array = np.frombuffer(columns, dtype=np.int64) - self._first_index
        return sp.csr_matrix((np.frombuffer(values, dtype=np.float64), column_array, indptr), shape=(rows.size, width))
