"""The benchmark's data files, written once into a cache directory and reused by every later bench run.

`make bench` reads the same large files section after section and run after run (loading, memory,
start-up); writing the 72 MB LIBSVM file takes longer than reading it, so each file is generated only if
absent, deterministically (a fixed seed per shape), into `$DMLCLI_BENCH_DATA` or `~/.cache/dmlcli-bench/`.
A file's name carries its shape, so a different shape is a different file, and each file is written
under a temporary name and renamed into place, so a bench killed half-way, or two benches started
together, never leave a truncated file behind under the final name.

- `libsvm_file(rows, features, nonzeros)`: 1-based LIBSVM, `nonzeros` distinct sorted columns a row,
  values N(0, 1) to 4 decimals, labels ±1 from a seeded linear model (learnable, so a run trains on it).
  The default shape is issue 8's file: 200,000 × 2,000 with 30 nonzeros a row, about 75 MB.
- `csv_file(rows, features)`: dense, no header, the label in the first column; values to 4 decimals.
- `npz_file(rows, features, sparse)`: dense (`X`, `y`) or CSR (`data`, `indices`, `indptr`, `shape`,
  `y`), uncompressed, as dmlcli reads them. The dense archive holds the same numbers as the CSV of that
  shape and the CSR one the same matrix as the LIBSVM file of that shape. Members are streamed in
  chunks, so a 10⁶ × 100 archive never sits in memory whole.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from numpy.lib import format as npy_format

# Rows generated at once: bounds the generator's memory (the LIBSVM column draw is chunk × features floats).
CHUNK_ROWS = 2_000
SEED = 8  # issue 8


def cache_dir() -> Path:
    """Where the files live: $DMLCLI_BENCH_DATA, else ~/.cache/dmlcli-bench (created)."""
    directory = Path(os.environ.get("DMLCLI_BENCH_DATA") or Path.home() / ".cache" / "dmlcli-bench")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _written_once(name: str, write) -> str:
    """The cached file `name`, calling `write(temporary_path)` first if it is absent."""
    path = cache_dir() / name
    if not path.exists():
        temporary = path.with_name(f".{name}.{os.getpid()}.partial")
        try:
            write(temporary)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    return str(path)


def _sparse_chunks(rows: int, features: int, nonzeros: int) -> Iterator[tuple[sp.csr_matrix, np.ndarray]]:
    """(CSR chunk, ±1 labels) covering `rows` rows in order; the same stream for the same shape."""
    if not 0 < nonzeros <= features:
        raise ValueError(f"nonzeros must be in 1..{features}, got {nonzeros}")
    rng = np.random.default_rng([SEED, rows, features, nonzeros])
    truth = rng.standard_normal(features)
    for start in range(0, rows, CHUNK_ROWS):
        count = min(CHUNK_ROWS, rows - start)
        # The `nonzeros` smallest of uniform draws give distinct columns, uniformly chosen, without a loop.
        columns = np.sort(np.argpartition(rng.random((count, features), dtype=np.float32), nonzeros - 1,
                                          axis=1)[:, :nonzeros], axis=1)
        values = np.round(rng.standard_normal((count, nonzeros)), 4)
        values[values == 0] = 1e-4  # an explicit zero would be a stored entry LIBSVM readers may drop
        chunk = sp.csr_matrix((values.ravel(), columns.ravel(), np.arange(count + 1) * nonzeros),
                              shape=(count, features))
        labels = np.where(chunk @ truth + rng.standard_normal(count) >= 0, 1.0, -1.0)
        yield chunk, labels


def _dense_chunks(rows: int, features: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(dense chunk, ±1 labels) covering `rows` rows in order; the same stream for the same shape."""
    rng = np.random.default_rng([SEED, rows, features])
    truth = rng.standard_normal(features) / np.sqrt(features)
    for start in range(0, rows, CHUNK_ROWS):
        count = min(CHUNK_ROWS, rows - start)
        chunk = np.round(rng.standard_normal((count, features)), 4)
        labels = np.where(chunk @ truth + 0.5 * rng.standard_normal(count) >= 0, 1.0, -1.0)
        yield chunk, labels


def libsvm_file(rows: int = 200_000, features: int = 2_000, nonzeros: int = 30) -> str:
    """Path of the cached LIBSVM file of this shape (see the module docstring)."""

    def write(path: Path) -> None:
        # One format string a row, applied to a whole chunk at once: far faster than formatting pair by pair.
        line = "%d" + " %d:%.4f" * nonzeros + "\n"
        with open(path, "w") as handle:
            for chunk, labels in _sparse_chunks(rows, features, nonzeros):
                fields = np.empty((chunk.shape[0], 1 + 2 * nonzeros), dtype=object)
                fields[:, 0] = labels.astype(int).tolist()
                fields[:, 1::2] = (chunk.indices.reshape(-1, nonzeros) + 1).tolist()
                fields[:, 2::2] = chunk.data.reshape(-1, nonzeros).tolist()
                handle.write((line * chunk.shape[0]) % tuple(fields.ravel().tolist()))

    return _written_once(f"sparse-{rows}x{features}-nz{nonzeros}.svm", write)


def csv_file(rows: int = 100_000, features: int = 100) -> str:
    """Path of the cached dense CSV file of this shape (see the module docstring)."""

    def write(path: Path) -> None:
        line = "%d" + ",%.4f" * features + "\n"
        with open(path, "w") as handle:
            for chunk, labels in _dense_chunks(rows, features):
                fields = np.column_stack((labels, chunk))
                handle.write((line * chunk.shape[0]) % tuple(fields.ravel().tolist()))

    return _written_once(f"dense-{rows}x{features}.csv", write)


def npz_file(rows: int = 100_000, features: int = 100, sparse: bool = False, nonzeros: int = 30) -> str:
    """Path of the cached .npz archive of this shape, dense or CSR (`nonzeros` a row; see the module docstring)."""

    def write(path: Path) -> None:
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            if sparse:
                # A pass over the seeded stream per member rather than holding the matrix: the memory section's
                # files are large. Every pass draws the same numbers.
                def stream():
                    return _sparse_chunks(rows, features, nonzeros)

                total = rows * nonzeros
                _member(archive, "data", np.dtype(np.float64), (total,), (chunk.data for chunk, _ in stream()))
                _member(archive, "indices", np.dtype(np.int32), (total,), (chunk.indices for chunk, _ in stream()))
                _member(archive, "indptr", np.dtype(np.int64), (rows + 1,), [np.arange(rows + 1) * nonzeros])
                _member(archive, "shape", np.dtype(np.int64), (2,), [np.array([rows, features])])
                _member(archive, "y", np.dtype(np.float64), (rows,), (labels for _, labels in stream()))
            else:
                # Two passes over the seeded stream rather than holding X: the memory section's 10⁶ × 100 is 800 MB.
                _member(archive, "X", np.dtype(np.float64), (rows, features),
                        (chunk for chunk, _ in _dense_chunks(rows, features)))
                _member(archive, "y", np.dtype(np.float64), (rows,),
                        (labels for _, labels in _dense_chunks(rows, features)))

    kind = f"csr-{rows}x{features}-nz{nonzeros}" if sparse else f"dense-{rows}x{features}"
    return _written_once(f"{kind}.npz", write)


def _member(archive: zipfile.ZipFile, key: str, dtype: np.dtype, shape: tuple[int, ...], parts) -> None:
    """Write `key.npy` into the archive from array pieces that together fill `shape` in C order."""
    with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
        npy_format.write_array_header_1_0(member, {"descr": npy_format.dtype_to_descr(dtype),
                                                   "fortran_order": False, "shape": shape})
        for part in parts:
            member.write(np.ascontiguousarray(part, dtype=dtype).tobytes())


if __name__ == "__main__":
    for made in (libsvm_file(), csv_file(), npz_file(sparse=False), npz_file(200_000, 2_000, sparse=True)):
        print(made, f"{os.path.getsize(made) / 1e6:.1f} MB")
