"""NumPy .npz archives (np.savez or np.savez_compressed): dense `X` and `y`, or CSR parts
`data`, `indices`, `indptr`, `shape` and `y`.

The feature arrays are never loaded whole: each is opened as a zip member, its .npy header read
with numpy.lib.format, and only the byte ranges of the wanted rows are read (seeking forward only,
since seeking back in a compressed member means decompressing again from the start). A stored member
(np.savez) is read with plain file reads at its offset in the archive, straight into the rows' array
(see StoredArray). Labels, the CSR row pointer and the shape are O(n) and read whole.
"""

from __future__ import annotations

import contextlib
import lzma
import math
import struct
import sys
import tokenize
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, NoReturn

import numpy as np
from numpy.lib import format as npy_format

from dmlcli.data.messages import shown, shown_list
from dmlcli.data.source import DatasetInfo, DataSource, row_runs
from dmlcli.errors import DataError
from dmlcli.sparse import scipy_sparse

CSR_PARTS = ("data", "indices", "indptr", "shape")
# Bytes of raw array data read at once while validating or fetching dense rows.
_CHUNK_BYTES = 1 << 22
# Rows of a CSR matrix whose nonzeros are read at once.
_CSR_RUN_ROWS = 4096
_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
_REAL_KINDS = "biuf"
_INTEGER_KINDS = "iu"
_TEXT_KINDS = "SU"
_KIND_NAMES = {_REAL_KINDS: "real numbers", _INTEGER_KINDS: "integers", _TEXT_KINDS: "a string"}
# Bit 0 of a zip entry's general-purpose flags: the entry is encrypted.
_ENCRYPTED_FLAG = 0x1
# A zip local file header: signature, versions, flags, method, times, CRC, sizes, then name and extra lengths.
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"


@dataclass(frozen=True)
class ArrayHeader:
    """What the .npy header of one archive member says about the array after it."""

    key: str
    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype

    @property
    def size(self) -> int:
        # Python integers: a hostile header's shape could overflow int64.
        return math.prod(self.shape)

    @property
    def shown_shape(self) -> str:
        """The shape for an error message, cut short like any other file content."""
        return shown(str(self.shape))


@contextmanager
def open_archive(path: str) -> Iterator[zipfile.ZipFile]:
    """The archive, with zip and decompression failures (also those while reading members) as DataError."""
    try:
        with zipfile.ZipFile(path) as archive:
            yield archive
    # UnicodeDecodeError: a member name flagged UTF-8 that is not; LZMAError: a corrupt LZMA member.
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a readable .npz archive ({shown(str(error), 80)})") from None
    except NotImplementedError as error:  # e.g. an archive that needs a newer zip version than zipfile reads
        raise DataError(f"{path}: uses a zip feature that cannot be read ({shown(str(error), 80)}); "
                        "expected an archive as np.savez writes") from None
    except OSError as error:
        raise DataError(f"cannot read data file {path}: {error.strerror or shown(str(error), 80)}") from None


def array_keys(archive: zipfile.ZipFile) -> set[str]:
    """Names of the arrays stored in the archive (members `name.npy`)."""
    return {name[: -len(".npy")] for name in archive.namelist() if name.endswith(".npy")}


@contextmanager
def open_member(archive: zipfile.ZipFile, path: str, key: str, kinds: str) -> Iterator[tuple[IO[bytes], ArrayHeader]]:
    """Array `key` positioned at its first data byte, with its header.

    Its dtype kind must be in `kinds` (plain, no fields: object arrays, which would need pickles, are
    refused like any other wrong kind), and the member must hold all the data its header declares.
    """
    name = f"{key}.npy"
    try:
        opened = archive.open(name)
    # zipfile's ways of refusing a member: RuntimeError when it needs a password (or a decompression
    # module is missing), NotImplementedError for a compression method such as Deflate64 (9).
    except (RuntimeError, NotImplementedError) as error:
        info = archive.getinfo(name)
        if isinstance(error, RuntimeError) and info.flag_bits & _ENCRYPTED_FLAG:
            raise DataError(f"{path}: array {key} is encrypted; expected an archive without a password") from None
        raise DataError(f"{path}: array {key} uses an unsupported zip compression (method {info.compress_type}: "
                        f"{shown(str(error), 80)}); expected stored or deflated members, as np.savez and "
                        "np.savez_compressed write") from None
    with opened as member:
        try:
            version = npy_format.read_magic(member)
            if version not in _HEADER_READERS:
                raise DataError(f"{path}: array {key} uses .npy format version {version[0]}.{version[1]}; expected 1.0 or 2.0")
            shape, fortran_order, dtype = _HEADER_READERS[version](member)
        # The header is a Python literal parsed by numpy, which lets more than ValueError through on a
        # malformed one: TypeError (keys of mixed types), SyntaxError (a bad dtype string),
        # TokenError (an unclosed bracket), RecursionError (deep nesting).
        except (ValueError, TypeError, SyntaxError, tokenize.TokenError, RecursionError) as error:
            raise DataError(f"{path}: array {key} has no valid .npy header ({shown(str(error), 80)})") from None
        header = ArrayHeader(key, tuple(shape), fortran_order, dtype)
        if any(length < 0 for length in header.shape):
            raise DataError(f"{path}: array {key} has no valid .npy header (shape {header.shown_shape})")
        if dtype.kind not in kinds or dtype.fields is not None:
            raise DataError(f"{path}: array {key} has dtype {shown(str(dtype))}; expected {_KIND_NAMES[kinds]}")
        available = archive.getinfo(name).file_size - member.tell()
        if header.size * dtype.itemsize > available:
            raise_truncated(path, header)
        yield member, header


def raise_truncated(path: str, header: ArrayHeader) -> NoReturn:
    """The error for a member holding less data than its header declares."""
    raise DataError(f"{path}: array {header.key} is truncated; expected {header.size} elements of shape {header.shown_shape}")


def read_values(member: IO[bytes], path: str, header: ArrayHeader, count: int) -> np.ndarray:
    """The next `count` elements of a member, as stored."""
    wanted = count * header.dtype.itemsize
    raw = member.read(wanted)
    if len(raw) != wanted:
        raise_truncated(path, header)
    return np.frombuffer(raw, dtype=header.dtype, count=count)


def read_vector(archive: zipfile.ZipFile, path: str, key: str, kinds: str, length: int, expected: str) -> np.ndarray:
    """A whole 1-D array of `length` elements (only the small ones: y, indptr, shape).

    The length is checked against the header before anything is read; `expected` explains it in the message.
    """
    with open_member(archive, path, key, kinds) as (member, header):
        if len(header.shape) != 1:
            raise DataError(f"{path}: array {key} has shape {header.shown_shape}; expected a 1-D array")
        if header.size != length:
            raise DataError(f"{path}: {key} has {header.size} entries; expected {expected}")
        return read_values(member, path, header, header.size)


@dataclass(frozen=True)
class StoredArray:
    """Where a stored (uncompressed, unencrypted) member's array lies in the archive file, to be read with
    plain file reads: zipfile hands each read out as a new bytes object that numpy then copies, where a
    read can go straight into the array it fills.

    Measured on the 80 MB dense NPZ of issue 8 (100,000 × 100), in CPU seconds of a fresh process (2-core
    development machine, shared with other jobs, 2026-11-24): scan() and rows() of every row took 0.12 s
    through zipfile and take 0.07 s read this way, against numpy.load's 0.056 s. The scan still reads the
    whole member to check its CRC-32 (as zipfile does; numpy.load too) and its values, and rows() reads it
    again: two reads and a CRC against numpy.load's one read and a CRC. With the CRC taken in a second
    thread while the next chunk is read (chunks()), both take 0.055 s (`make bench SECTION=loading`,
    2026-11-25); the CSR archive 0.072 s against 0.056 s, its scan being bound by the reads and the checks
    of indices and values that stay in the reading thread.
    """

    info: zipfile.ZipInfo
    member_start: int  # file offset of the member's first byte (its .npy header)
    data_start: int  # file offset of the array's first element

    @classmethod
    def of(cls, path: str, archive: zipfile.ZipFile, member: IO[bytes], key: str) -> StoredArray | None:
        """The location of array `key`, whose member is open at its first element; None unless it is stored."""
        info = archive.getinfo(f"{key}.npy")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & _ENCRYPTED_FLAG:
            return None
        with open(path, "rb") as raw:
            raw.seek(info.header_offset)
            local_header = raw.read(_LOCAL_HEADER.size)
        if len(local_header) != _LOCAL_HEADER.size or not local_header.startswith(_LOCAL_HEADER_SIGNATURE):
            return None  # zipfile has just read this header: leave anything odd to it
        name_length, extra_length = _LOCAL_HEADER.unpack(local_header)[-2:]
        member_start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
        return cls(info, member_start, member_start + member.tell())

    def read_into(self, raw: IO[bytes], path: str, header: ArrayHeader, first: int, out: np.ndarray) -> None:
        """Elements first, first + 1, … of the array into `out` (C-contiguous, the array's dtype)."""
        raw.seek(self.data_start + first * header.dtype.itemsize)
        if raw.readinto(out.reshape(-1).view(np.uint8)) != out.nbytes:
            raise_truncated(path, header)

    def read(self, raw: IO[bytes], path: str, header: ArrayHeader, first: int, count: int) -> np.ndarray:
        values = np.empty(count, dtype=header.dtype)
        self.read_into(raw, path, header, first, values)
        return values


@contextlib.contextmanager
def element_reader(path: str, archive: zipfile.ZipFile, member: IO[bytes], header: ArrayHeader, key: str):
    """fill(first, target): elements first, first + 1, … of array `key`, whose member is open at its first
    element, into `target` (its size of them, converted to its dtype). A stored member is read with file
    reads, straight into `target` where the dtypes agree (StoredArray); a compressed one by seeking the
    member forward."""
    data_start = member.tell()
    stored = StoredArray.of(path, archive, member, key)
    with open(path, "rb", buffering=0) if stored else contextlib.nullcontext() as raw:

        def fill(first: int, target: np.ndarray) -> None:
            if stored and header.dtype == target.dtype:
                stored.read_into(raw, path, header, first, target)
            elif stored:
                target[...] = stored.read(raw, path, header, first, target.size).reshape(target.shape)
            else:
                member.seek(data_start + first * header.dtype.itemsize)
                target[...] = read_values(member, path, header, target.size).reshape(target.shape)

        yield fill


def chunks(member: IO[bytes], path: str, header: ArrayHeader, unit: int,
           stored: StoredArray | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Stream a member as (index of first element, elements), whole multiples of `unit` elements at a time.

    A stored member is read from the file into two buffers in turn, its CRC-32 checked at the end of the
    array as zipfile checks it at the end of the member (when the array ends it). Each chunk's CRC runs in
    a second thread while the caller checks the chunk and the next one is read: zlib, numpy and file reads
    all release the GIL. The scan of the 80 MB dense NPZ of issue 8 (read 16 ms, CRC-32 19 ms, finite
    check 2.5 ms on their own) took 36 ms in one thread and takes 27 ms so (2-core development machine,
    best of 5, 2026-11-25)."""
    per_chunk = unit * max(1, _CHUNK_BYTES // (unit * header.dtype.itemsize))
    if stored is None:
        for start in range(0, header.size, per_chunk):
            yield start, read_values(member, path, header, min(per_chunk, header.size - start))
        return
    buffers = [np.empty(min(per_chunk, header.size), dtype=header.dtype) for _ in range(2)]
    with open(path, "rb", buffering=0) as raw, ThreadPoolExecutor(max_workers=1) as crc_thread:
        raw.seek(stored.member_start)
        crc = zlib.crc32(raw.read(stored.data_start - stored.member_start))
        summing = None  # the CRC-32 of everything before the chunk being read, once the thread has it
        for number, start in enumerate(range(0, header.size, per_chunk)):
            values = buffers[number % 2][:min(per_chunk, header.size - start)]
            stored.read_into(raw, path, header, start, values)  # the buffer whose CRC was taken a chunk ago
            crc = summing.result() if summing else crc
            summing = crc_thread.submit(zlib.crc32, values, crc)
            yield start, values
        crc = summing.result() if summing else crc
    data_end = stored.data_start + header.size * header.dtype.itemsize
    if data_end == stored.member_start + stored.info.file_size and crc != stored.info.CRC:
        raise zipfile.BadZipFile(f"Bad CRC-32 for file {stored.info.filename!r}")


def first_non_finite(values: np.ndarray) -> int | None:
    """Position of the first value that is not finite as a float64, or None (integers are always finite).

    Besides NaN and infinity this catches a long double beyond the float64 range, which the
    conversion when rows are read would silently turn into an infinity.
    """
    if values.dtype.kind != "f":
        return None
    # A finite sum (one pass, a fraction of isfinite's cost) means every value is finite; an overflowing sum
    # of finite values just takes the exact look. Not for long doubles, which may lie beyond float64's range.
    if values.dtype.itemsize <= 8 and math.isfinite(np.add.reduce(values, dtype=np.float64)):
        return None
    with np.errstate(over="ignore"):
        as_float64 = values.astype(np.float64, copy=False)
    bad = np.flatnonzero(~np.isfinite(as_float64))
    return int(bad[0]) if bad.size else None


def storage_layout(keys: set[str], path: str) -> str:
    """'dense' for X + y, 'csr' for the CSR parts + y; anything else is a DataError listing what is there."""
    expected = "expected arrays X and y (dense) or data, indices, indptr, shape and y (CSR)"
    has_dense = "X" in keys
    has_csr = all(part in keys for part in CSR_PARTS)
    if has_dense == has_csr or "y" not in keys:
        found = shown_list(sorted(keys), "arrays") or "no arrays"
        raise DataError(f"{path}: holds {found}; {expected}")
    return "dense" if has_dense else "csr"


def tag_text(raw: bytes, dtype: np.dtype) -> str:
    """The text of one element of a bytes ('S') or unicode ('U', UTF-32) array, undecodable parts replaced."""
    if dtype.kind == "S":
        return raw.rstrip(b"\0").decode("utf-8", "replace")
    little_endian = dtype.byteorder == "<" or (dtype.byteorder in "=|" and sys.byteorder == "little")
    return raw.decode("utf-32-le" if little_endian else "utf-32-be", "replace").rstrip("\0")


def check_format_tag(archive: zipfile.ZipFile, path: str) -> None:
    """scipy.sparse.save_npz also stores a `format` array; the parts are only CSR if it says csr."""
    with open_member(archive, path, "format", _TEXT_KINDS) as (member, header):
        if header.size != 1:
            raise DataError(f"{path}: array format has shape {header.shown_shape}; expected a single string such as 'csr'")
        name = tag_text(member.read(header.dtype.itemsize), header.dtype)
    if name != "csr":
        raise DataError(f"{path}: sparse format is {shown(name)!r}; expected 'csr' (convert with .tocsr())")


class NpzSource(DataSource):
    """An .npz archive read member by member; see the module docstring for the layouts."""

    def __init__(self, path: str):
        super().__init__(path)
        self._layout = "dense"
        self._indptr: np.ndarray | None = None

    def _scan(self) -> DatasetInfo:
        with open_archive(self.name) as archive:
            keys = array_keys(archive)
            self._layout = storage_layout(keys, self.name)
            if self._layout == "dense":
                n, d = self._check_dense(archive)
            else:
                if "format" in keys:
                    check_format_tag(archive, self.name)
                n, d = self._check_csr(archive)
            labels = read_vector(archive, self.name, "y", _REAL_KINDS, n, f"one per row ({n})")
        bad = first_non_finite(labels)
        if bad is not None:
            raise DataError(f"{self.name}: y[{bad}] is {labels[bad]!s}; expected labels finite as float64")
        return DatasetInfo(n=n, d=d, y=labels.astype(np.float64), sparse=self._layout == "csr")

    def _check_dense(self, archive: zipfile.ZipFile) -> tuple[int, int]:
        """Shape, order and finiteness of X, streamed chunk by chunk."""
        with open_member(archive, self.name, "X", _REAL_KINDS) as (member, header):
            if len(header.shape) != 2 or min(header.shape) < 1:
                raise DataError(f"{self.name}: X has shape {header.shown_shape}; expected a 2-D array with at least one row and column")
            if header.fortran_order:
                raise DataError(f"{self.name}: X is stored in Fortran order; expected C order (save np.ascontiguousarray(X))")
            n, d = header.shape
            for start, values in chunks(member, self.name, header, d, StoredArray.of(self.name, archive, member, "X")):
                bad = first_non_finite(values)
                if bad is not None:
                    row, column = divmod(start + bad, d)
                    raise DataError(f"{self.name}: X[{row}, {column}] is {values[bad]!s}; expected values finite as float64")
        return n, d

    def _check_csr(self, archive: zipfile.ZipFile) -> tuple[int, int]:
        """Consistency of the CSR parts; indices and data are streamed, indptr is kept for rows()."""
        shape = read_vector(archive, self.name, "shape", _INTEGER_KINDS, 2, "2 ([rows, columns])")
        if shape.min() < 1:
            raise DataError(f"{self.name}: shape is {shape.tolist()}; expected [rows, columns], both at least 1")
        n, d = int(shape[0]), int(shape[1])
        indptr = read_vector(archive, self.name, "indptr", _INTEGER_KINDS, n + 1, f"{n + 1} (rows + 1)").astype(np.int64)
        if indptr[0] != 0 or np.any(np.diff(indptr) < 0):
            raise DataError(f"{self.name}: indptr is not a row pointer for {n} rows; expected {n + 1} non-decreasing entries from 0")
        nonzeros = int(indptr[-1])
        with open_member(archive, self.name, "indices", _INTEGER_KINDS) as (member, header):
            self._check_part_length(header, nonzeros)
            for start, columns in chunks(member, self.name, header, 1, StoredArray.of(self.name, archive, member, "indices")):
                if columns.min() >= 0 and columns.max() < d:  # two reductions; the position only for the error
                    continue
                outside = np.flatnonzero((columns < 0) | (columns >= d))
                at = start + int(outside[0])
                raise DataError(f"{self.name}: indices[{at}] is {columns[outside[0]]}; expected a column in [0, {d})")
        with open_member(archive, self.name, "data", _REAL_KINDS) as (member, header):
            self._check_part_length(header, nonzeros)
            for start, values in chunks(member, self.name, header, 1, StoredArray.of(self.name, archive, member, "data")):
                bad = first_non_finite(values)
                if bad is not None:
                    row = int(np.searchsorted(indptr, start + bad, side="right")) - 1
                    raise DataError(f"{self.name}: data[{start + bad}] (row {row}) is {values[bad]!s}; expected values finite as float64")
        self._indptr = indptr
        return n, d

    def _check_part_length(self, header: ArrayHeader, nonzeros: int) -> None:
        if header.shape != (nonzeros,):
            raise DataError(f"{self.name}: {header.key} has shape {header.shown_shape}; expected ({nonzeros},) as indptr[-1] says")

    def _read_sorted(self, rows: np.ndarray, width: int):
        with open_archive(self.name) as archive:
            if self._layout == "dense":
                return self._read_dense(archive, rows)
            return self._read_csr(archive, rows, width)

    def _read_dense(self, archive: zipfile.ZipFile, rows: np.ndarray) -> np.ndarray:
        info = self.scan()
        with open_member(archive, self.name, "X", _REAL_KINDS) as (member, header):
            if header.shape != (info.n, info.d) or header.fortran_order:
                raise DataError(f"{self.name} changed since it was scanned: X has shape {header.shown_shape}, "
                                f"expected ({info.n}, {info.d}) in C order")
            d = info.d
            features = np.empty((rows.size, d), dtype=np.float64)
            position = 0
            with element_reader(self.name, archive, member, header, "X") as fill:
                for first, stop in row_runs(rows, max(1, _CHUNK_BYTES // (d * header.dtype.itemsize))):
                    fill(first * d, features[position:position + stop - first])
                    position += stop - first
        return features

    def _read_csr(self, archive: zipfile.ZipFile, rows: np.ndarray, width: int):
        counts = self._indptr[rows + 1] - self._indptr[rows]
        indptr = np.concatenate(([0], np.cumsum(counts)))
        runs = list(row_runs(rows, _CSR_RUN_ROWS))
        columns = self._gather_part(archive, "indices", _INTEGER_KINDS, runs, int(indptr[-1]), width)
        values = self._gather_part(archive, "data", _REAL_KINDS, runs, int(indptr[-1]))
        if columns.size and (columns.min() < 0 or columns.max() >= width):
            raise DataError(f"{self.name} changed since it was scanned: a column index is now outside [0, {width})")
        matrix = scipy_sparse().csr_matrix((values, columns, indptr), shape=(rows.size, width))
        # Stored parts may have unsorted or repeated columns; CSR semantics sum repeats anyway.
        matrix.sum_duplicates()
        return matrix

    def _gather_part(self, archive: zipfile.ZipFile, key: str, kinds: str, runs: list[tuple[int, int]], total: int,
                     width: int | None = None) -> np.ndarray:
        """The nonzero entries of each row run of CSR part `key`, in order (`total` of them): float64 values, or
        with `width`, column indices. Those are int32 where the stored ones are and fit (the dtype scipy
        would convert them to, in a copy of its own), else int64."""
        with open_member(archive, self.name, key, kinds) as (member, header):
            if header.shape != (int(self._indptr[-1]),):
                raise DataError(f"{self.name} changed since it was scanned: {key} has shape {header.shown_shape}, "
                                f"expected ({int(self._indptr[-1])},)")
            if width is None:
                dtype = np.float64
            else:
                fits = header.dtype.itemsize < 4 or header.dtype == np.dtype(np.int32)
                dtype = np.int32 if fits and width <= np.iinfo(np.int32).max else np.int64
            out = np.empty(total, dtype=dtype)
            position = 0
            with element_reader(self.name, archive, member, header, key) as fill:
                for first, stop in runs:
                    low, high = int(self._indptr[first]), int(self._indptr[stop])
                    fill(low, out[position:position + high - low])
                    position += high - low
        return out
