"""The data-source protocol shared by every kind of data set, and the row-gathering helpers behind it.

A source is scanned once (labels, shape, validation) and then asked for the features of arbitrary
row subsets. Subclasses only implement `_scan` and `_read_sorted`, which reads rows given as a
sorted array without repeats; the base class validates the request and restores the caller's order
(`_read_in_order`, which a source able to read rows in any order overrides).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dmlcli.errors import DataError
from dmlcli.sparse import scipy_sparse


@dataclass(frozen=True)
class DatasetInfo:
    """What one scan of a data set found.

    n: number of rows; d: number of features (no intercept column); y: float64 raw labels or targets,
    length n, in file order (read-only, as it is shared through the scan cache); sparse: whether
    `DataSource.rows` returns a CSR matrix rather than a dense array.
    """

    n: int
    d: int
    y: np.ndarray
    sparse: bool


class DataSource:
    """A data set that can be scanned once and then read row subset by row subset.

    `name` identifies the data set in the run manifest; `online` is True only for synthetic data
    that can draw fresh samples with `draw`; `index_base` is the feature index base of a LIBSVM
    file (0 or 1, set by its scan) and None for every other kind.
    """

    online: bool = False
    index_base: int | None = None

    def __init__(self, name: str):
        self.name = name
        self._info: DatasetInfo | None = None

    def scan(self) -> DatasetInfo:
        """Validate the whole data set in one streaming pass and return its shape and labels (cached)."""
        if self._info is None:
            info = self._scan()
            info.y.flags.writeable = False
            self._info = info
        return self._info

    def rows(self, indices, d: int | None = None):
        """Features of the rows at `indices` (any order, repeats allowed), in the order given.

        `d` is the number of columns to return; a sparse source pads with zero columns up to it
        (a test file may have more features than the training file), a dense one only accepts its own d.
        Returns a float64 CSR matrix for sparse sources and a C-contiguous float64 array otherwise.
        """
        info = self.scan()
        wanted = as_row_indices(indices, info.n)
        width = self._checked_width(info, d)
        if wanted.size == 0:
            return empty_rows(width, info.sparse)
        return self._read_in_order(wanted, width)

    def draw(self, rng: np.random.Generator, m: int):
        """Fresh samples from the generating distribution; only online synthetic sources have one."""
        raise TypeError(f"data set {self.name} is a fixed sample; only synthetic:...,online=1 can draw fresh samples")

    def _checked_width(self, info: DatasetInfo, d: int | None) -> int:
        """The column count to return: scan().d by default, at least scan().d, and exactly it when dense."""
        if d is None or d == info.d:
            return info.d
        if not info.sparse:
            raise DataError(f"{self.name}: asked for {d} feature columns but this dense data set has {info.d}; "
                            "only sparse data can be padded")
        if d < info.d:
            raise DataError(f"{self.name}: asked for {d} feature columns but the data have {info.d} features; expected at least {info.d}")
        return int(d)

    def _scan(self) -> DatasetInfo:
        raise NotImplementedError

    def _read_in_order(self, wanted: np.ndarray, width: int):
        """Features of `wanted` (in range, any order, repeats allowed, not empty), in that order: the sorted
        distinct rows read once, then put in order (a copy, unless they already were). A source that can
        place rows where they belong as it reads them overrides this."""
        if np.all(wanted[1:] > wanted[:-1]):  # sorted without repeats already (all rows, contiguous parts)
            return self._read_sorted(wanted, width)
        unique, inverse = np.unique(wanted, return_inverse=True)
        return self._read_sorted(unique, width)[inverse]

    def _read_sorted(self, rows: np.ndarray, width: int):
        """Features of `rows` (sorted ascending, no repeats, in range, not empty) with `width` columns."""
        raise NotImplementedError


def as_row_indices(indices, n: int) -> np.ndarray:
    """Check that `indices` is a 1-D integer array of row numbers in [0, n) and return it as int64."""
    wanted = np.asarray(indices)
    if wanted.ndim != 1:
        raise ValueError(f"row indices must be a 1-D array, got shape {wanted.shape}")
    if wanted.size == 0:
        return np.empty(0, dtype=np.int64)
    if wanted.dtype.kind not in "iu":
        raise TypeError(f"row indices must be integers, got dtype {wanted.dtype}")
    wanted = wanted.astype(np.int64, copy=False)
    low, high = int(wanted.min()), int(wanted.max())
    if low < 0 or high >= n:
        raise IndexError(f"row index {low if low < 0 else high} out of range for a data set of {n} rows")
    return wanted


def row_runs(rows: np.ndarray, max_rows: int) -> Iterator[tuple[int, int]]:
    """Split sorted distinct row numbers into ranges [first, stop) of consecutive rows, each at most `max_rows` long.

    Readers then seek once per range and read it in one piece, which keeps sequential access sequential.
    """
    if rows.size == 0:
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [rows.size]))
    for start, end in zip(starts.tolist(), ends.tolist()):
        for chunk_start in range(start, end, max_rows):
            chunk_end = min(chunk_start + max_rows, end)
            yield int(rows[chunk_start]), int(rows[chunk_end - 1]) + 1


def csr_with_width(matrix, width: int):
    """The same CSR rows with `width` columns (width >= current column count): extra columns are zero."""
    return scipy_sparse().csr_matrix((matrix.data, matrix.indices, matrix.indptr), shape=(matrix.shape[0], width))


def empty_rows(width: int, sparse: bool):
    """A matrix with no rows, of the type a source of that kind returns."""
    if sparse:
        return scipy_sparse().csr_matrix((0, width), dtype=np.float64)
    return np.empty((0, width), dtype=np.float64)
