"""The loaders' fast paths agree exactly with the slow ones: numpy's conversion of plain decimals with
float(), unspaced CSV blocks with the line parser, stored NPZ members read from the file with compressed
ones read through zipfile, rows gathered from the parse cache in any order with the text; and a worker's
rows from the parse cache are read and preprocessed without holding its shard twice."""

from __future__ import annotations

import pickle
import re
import tracemalloc
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp
from test_data_cache import csv_outcome

from dmlcli.data import cache, csvfile, npzfile, open_source, textfile
from dmlcli.errors import DataError
from dmlcli.runtime import setup
from dmlcli.runtime.config import make_config

PLAIN = re.compile(textfile.PLAIN_NUMBER)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh cache directory that takes any file, however small or recent (as in test_data_cache)."""
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "MIN_CACHED_BYTES", 0)
    monkeypatch.setattr(cache, "RACY_SECONDS", 0.0)


def tokens_at(tokens: list[bytes]) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The tokens joined by spaces, with each one's start and end."""
    lengths = np.array([len(token) for token in tokens], dtype=np.int64)
    ends = np.cumsum(lengths + 1) - 1
    return b" ".join(tokens), ends - lengths, ends


def decimal_spellings(rng, count: int) -> list[bytes]:
    """Numbers as data files write them: repr, fixed and scientific, long digit runs, signs, '5.' and '.5'."""
    digits = list("0123456789")
    spellings = [
        lambda: repr(float(rng.standard_normal() * 10.0 ** rng.integers(-30, 30))),
        lambda: f"{rng.standard_normal():.{rng.integers(0, 19)}f}",
        lambda: str(rng.integers(-10**18, 10**18)),
        lambda: "".join(rng.choice(digits, rng.integers(1, 21))),
        lambda: str(rng.choice(["+", "-", ""])) + "".join(rng.choice(digits, rng.integers(0, 9))) + "."
        + "".join(rng.choice(digits, rng.integers(1, 10))),
        lambda: "".join(rng.choice(digits, rng.integers(1, 9))) + ".",
        lambda: str(rng.choice(["-0", "+0.0", "-0.000", "9007199254740993", "123456789012345", "1234567890123456",
                                "-999999999999999.", "1e308", "4.9e-324", "-.5e+3", "1E-5", "0.1", "1e999"])),
    ]
    return [spellings[rng.integers(len(spellings))]().encode() for _ in range(count)]


@pytest.mark.parametrize("seed", range(3))
def test_plain_decimals_are_float_bit_for_bit(seed):
    tokens = decimal_spellings(np.random.default_rng(seed), 20_000)
    block, starts, ends = tokens_at(tokens)
    converted = textfile.plain_decimals(block, starts, ends)
    expected = np.array([float(token) for token in tokens])
    np.testing.assert_array_equal(converted.view(np.int64), expected.view(np.int64))  # -0.0 and 0.0 differ here
    assert textfile.finite_plain_decimals(block, starts, ends) == bool(np.isfinite(expected).all())


@pytest.mark.parametrize("seed", range(3))
def test_plain_decimals_refuse_exactly_what_plain_number_refuses(seed):
    rng = np.random.default_rng(seed)
    alphabet = list(b"0123456789.+-eE")
    for _ in range(2_000):
        tokens = [b"1", *(bytes(rng.choice(alphabet, rng.integers(1, 8)).tolist()) for _ in range(rng.integers(1, 4)))]
        block, starts, ends = tokens_at(tokens)
        plain = all(PLAIN.fullmatch(token) for token in tokens)
        converted = textfile.plain_decimals(block, starts, ends)
        assert (converted is not None) == plain, tokens
        if plain:
            expected = np.array([float(token) for token in tokens])
            np.testing.assert_array_equal(converted.view(np.int64), expected.view(np.int64))
        assert textfile.finite_plain_decimals(block, starts, ends) == (plain and bool(np.isfinite(converted).all()))
    assert textfile.plain_decimals(b"1  2", np.array([0, 2]), np.array([1, 2])) is None  # an empty token


@pytest.mark.parametrize("seed", range(3))
def test_unspaced_csv_blocks_agree_with_the_line_parser(seed):
    """Blocks without spaces are converted by plain_decimals; they decline or agree exactly, also for one column."""
    rng = np.random.default_rng(seed)
    good = [b"1", b"-2.5", b"+.5e-3", b"1.", b"7", b"3E+2", b"-0", b"12345678901234567", b"0.1"]
    bad = [b"", b"e5", b"1e999", b"1_0", b".", b"1e", b"--1", b"1.2.3", b"+-1"]
    for _ in range(300):
        lines = [b"1,2,3"]
        for _ in range(rng.integers(1, 4)):
            chosen = [good[k] for k in rng.integers(0, len(good), rng.choice([2, 3, 3, 3, 4]))]
            if rng.random() < 0.3:
                chosen[rng.integers(len(chosen))] = bad[rng.integers(len(bad))]
            lines.append(b",".join(chosen))
        block = (b"\r\n" if rng.random() < 0.5 else b"\n").join(lines) + (b"\n" if rng.random() < 0.5 else b"")
        expected = csv_outcome(csvfile.parse_csv_block_by_line, block, 3)
        fast = csvfile.parse_plain_csv_block(block, 3)
        if fast is not None:
            assert (fast[0].tolist(), fast[1].tolist(), fast[2]) == expected, block
        assert csv_outcome(csvfile.parse_csv_block, block, 3) == expected, block
        label_only = csv_outcome(lambda *args: csvfile.parse_csv_block(*args, column=1), block, 3)
        if isinstance(expected, str):
            assert label_only == expected
        else:
            assert label_only == (expected[0], [[row[1]] for row in expected[1]], expected[2])


def npz_pair(tmp_path, **arrays) -> tuple[str, str]:
    """The arrays saved twice: members stored (np.savez) and deflated (np.savez_compressed)."""
    stored, deflated = tmp_path / "stored.npz", tmp_path / "deflated.npz"
    np.savez(stored, **arrays)
    np.savez_compressed(deflated, **arrays)
    return str(stored), str(deflated)


def counting_stored_reads(monkeypatch) -> list[int]:
    """Count the reads that go straight to the file (StoredArray.read_into)."""
    calls = []
    original = npzfile.StoredArray.read_into

    def counted(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(npzfile.StoredArray, "read_into", counted)
    return calls


@pytest.mark.parametrize("dtype", ["<f8", ">f8", "<f4", "<i2"])
def test_stored_and_deflated_dense_npz_read_the_same_rows(tmp_path, monkeypatch, dtype):
    rng = np.random.default_rng(4)
    X = (rng.standard_normal((700, 9)) * 100).astype(dtype)
    stored, deflated = npz_pair(tmp_path, X=X, y=rng.choice([-1.0, 1.0], 700))
    monkeypatch.setattr(npzfile, "_CHUNK_BYTES", 1000)  # many chunks and runs
    rows = np.concatenate([rng.permutation(700)[:300], [5, 5, 699, 0]])
    stored_reads = counting_stored_reads(monkeypatch)
    read = {}
    for path in (stored, deflated):
        source = open_source(path)
        source.scan()
        read[path] = (source.rows(rows), source.rows(np.arange(700)))
    assert stored_reads  # the stored archive was read from the file
    for features, everything in read.values():
        np.testing.assert_array_equal(features, X[rows].astype(np.float64))
        np.testing.assert_array_equal(everything, X.astype(np.float64))


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64, np.uint16])
def test_stored_and_deflated_csr_npz_read_the_same_rows(tmp_path, monkeypatch, index_dtype):
    rng = np.random.default_rng(5)
    matrix = sp.random(500, 40, density=0.1, format="csr", random_state=6)
    parts = dict(data=matrix.data, indices=matrix.indices.astype(index_dtype), indptr=matrix.indptr,
                 shape=np.array(matrix.shape), y=rng.standard_normal(500))
    stored, deflated = npz_pair(tmp_path, **parts)
    rows = np.concatenate([rng.permutation(500)[:200], [3, 3, 499]])
    stored_reads = counting_stored_reads(monkeypatch)
    for path in (stored, deflated):
        source = open_source(path)
        source.scan()
        read = source.rows(rows)
        np.testing.assert_array_equal(read.toarray(), matrix[rows].toarray())
        assert read.indices.dtype == np.int32
    assert stored_reads


@pytest.mark.parametrize("part", ["indices", "data"])
def test_a_corrupt_stored_csr_part_is_caught_by_its_crc(tmp_path, part):
    matrix = sp.random(50, 30, density=0.2, format="csr", random_state=7)
    path = tmp_path / "corrupt.npz"
    np.savez(path, data=matrix.data + 1.0, indices=matrix.indices, indptr=matrix.indptr, shape=np.array(matrix.shape),
             y=np.zeros(50))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:  # the member's last byte, inside its array
        info = archive.getinfo(f"{part}.npy")
        local = npzfile._LOCAL_HEADER.unpack(bytes(data[info.header_offset:info.header_offset + npzfile._LOCAL_HEADER.size]))
    last = info.header_offset + npzfile._LOCAL_HEADER.size + local[-2] + local[-1] + info.file_size - 1
    # The last value's exponent byte (it stays finite), or the last index's low bit (it stays a column below 30).
    data[last if part == "data" else last - 3] ^= 1
    path.write_bytes(data)
    with pytest.raises(DataError, match=rf"corrupt\.npz: not a readable \.npz archive \(Bad CRC-32 for file '{part}\.npy'\)"):
        open_source(str(path)).scan()


def test_cache_ranges_are_read_in_any_order_window_by_window(tmp_path, cache_dir, monkeypatch):
    rng = np.random.default_rng(8)
    lines = [f"{i % 2} " + " ".join(f"{j}:{rng.integers(1, 9)}" for j in sorted(rng.choice(np.arange(1, 60), rng.integers(1, 12),
                                                                                          replace=False)))
             for i in range(400)]
    path = tmp_path / "rows.svm"
    path.write_text("\n".join(lines) + "\n")
    source = open_source(str(path))
    source.scan()
    entry = source._entry
    values = np.asarray(entry.array("values"))
    pointers = np.asarray(entry.array("indptr"))
    monkeypatch.setattr(cache, "WINDOW_ELEMENTS", 7)
    rows = np.concatenate([rng.permutation(400), rng.integers(0, 400, 50)])
    read = entry.read_ranges("values", pointers[rows], pointers[rows + 1], room=3)
    np.testing.assert_array_equal(read, np.concatenate([values[pointers[r]:pointers[r + 1]] for r in rows]))
    assert read.base.size == read.size + 3
    # rows() in that order, from the cache, equals the text's rows
    from_cache = source.rows(rows).toarray()
    source._entry = None
    np.testing.assert_array_equal(from_cache, source.rows(rows).toarray())


def test_a_worker_reads_only_its_rows_bytes_of_the_cache(tmp_path, cache_dir, monkeypatch):
    """A contiguous quarter of the rows reads about a quarter of the entry (its rows and at most a window more)."""
    rng = np.random.default_rng(9)
    path = tmp_path / "quarter.svm"
    path.write_text("".join(f"1 {j}:0.5 {j + 1}:-1\n" for j in rng.integers(1, 50, 8_000)))
    source = open_source(str(path))
    source.scan()
    monkeypatch.setattr(cache, "WINDOW_ELEMENTS", 256)
    read_bytes = []

    class CountingFile:
        """A file whose readinto() calls are counted."""

        def __init__(self, *args, **options):
            self.file = open(*args, **options)  # noqa: SIM115  (closed by __exit__)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def __getattr__(self, name):
            return getattr(self.file, name)

        def readinto(self, buffer):
            read_bytes.append(self.file.readinto(buffer))
            return read_bytes[-1]

    monkeypatch.setattr(cache, "open", CountingFile, raising=False)
    source.rows(np.arange(2_000, 4_000))
    nonzeros, window_bytes = 2 * 2_000, 256 * (4 + 8)
    assert nonzeros * (4 + 8) <= sum(read_bytes) <= nonzeros * (4 + 8) + 2 * window_bytes


def test_sparse_preprocessing_in_place_equals_the_copying_one():
    """Standardising CSR rows in place and adding the intercept column in the reader's spare room gives
    exactly what dividing copies and scipy.sparse.hstack give."""
    rng = np.random.default_rng(10)
    matrix = sp.random(3_000, 50, density=0.1, format="csr", random_state=11)
    matrix.data = rng.standard_normal(matrix.nnz) * 10.0 ** rng.integers(-3, 3, matrix.nnz)
    bound = np.asarray(abs(matrix).max(axis=0).todense()).ravel()
    bound[bound == 0] = 1.0
    scale = rng.random(50) + 0.5
    divided = matrix.copy()
    divided.data = divided.data / bound[divided.indices] / scale[divided.indices]
    expected = sp.hstack([divided, np.ones((3_000, 1))], format="csr")
    prepare = setup.Preprocessor(bound, None, scale, fit_intercept=True)
    for room in (0, 3_000):  # a copy, or built in the spare room
        data, indices = np.empty(matrix.nnz + room), np.empty(matrix.nnz + room, dtype=np.int32)
        data[:matrix.nnz], indices[:matrix.nnz] = matrix.data, matrix.indices
        rows = sp.csr_matrix((data[:matrix.nnz], indices[:matrix.nnz], matrix.indptr.copy()), shape=matrix.shape)
        for result in (prepare(rows.copy()), prepare(rows, in_place=True)):
            assert result.shape == expected.shape
            np.testing.assert_array_equal(result.indptr, expected.indptr)
            np.testing.assert_array_equal(result.indices, expected.indices)
            np.testing.assert_array_equal(result.data.view(np.int64), expected.data.view(np.int64))
        assert (np.shares_memory(result.data, data)) == (room > 0)


def test_sparse_statistics_are_the_whole_matrix_formulas():
    """make_preprocessor's bound, mean and spread, block by block, are bit for bit those of the whole-matrix formulas."""
    rng = np.random.default_rng(12)
    matrix = sp.random(20_000, 30, density=0.3, format="csr", random_state=13)  # several blocks of entries
    matrix.data = rng.standard_normal(matrix.nnz) * 10.0 ** rng.integers(-5, 5, matrix.nnz)
    config = make_config("ssgd", data="synthetic:n=10,d=30", standardize=True)
    prepare = setup.make_preprocessor(config, matrix, 30, True, allreduce=lambda buffer, op: None)
    bound = np.asarray(abs(matrix).max(axis=0).todense()).ravel()
    np.testing.assert_array_equal(prepare.bound, bound)
    divided = matrix.copy()
    divided.data /= bound[divided.indices]
    mean = np.asarray(divided.sum(axis=0)).ravel() / matrix.shape[0]
    stored = np.bincount(divided.indices, weights=(divided.data - mean[divided.indices]) ** 2, minlength=30)
    zeros = matrix.shape[0] - np.bincount(divided.indices, minlength=30)
    np.testing.assert_array_equal(prepare.scale, np.sqrt((stored + zeros * mean * mean) / matrix.shape[0]))


def test_a_worker_holds_its_sparse_shard_once(tmp_path, cache_dir, monkeypatch):
    """Reading a worker's rows from the parse cache, the statistics, standardising and the intercept column:
    the peak of numpy's allocations stays within 1.5 times the shard it ends with (issue 8's target)."""
    rng = np.random.default_rng(14)
    path = tmp_path / "worker.svm"
    with open(path, "w") as handle:
        for _ in range(20_000):
            columns = np.sort(rng.choice(np.arange(1, 500), 20, replace=False))
            handle.write(f"{rng.choice([-1, 1])} " + " ".join(f"{j}:{v:.4f}" for j, v in zip(columns, rng.standard_normal(20)))
                         + "\n")
    # The cache's read window and the preprocessing's blocks are a MiB or so each, whatever the shard: scaled
    # down with the data here.
    monkeypatch.setattr(cache, "WINDOW_ELEMENTS", 4096)
    monkeypatch.setattr(setup, "BLOCK_ENTRIES", 4096)
    config = make_config("ssgd", data=str(path), workers=2, out=str(tmp_path / "run.csv"))
    plan, rows = setup.plan_run(config, 2)
    plan, mine = pickle.loads(pickle.dumps((plan, rows[0])))  # as a worker receives them
    tracemalloc.start()
    try:
        source, X, X_test = setup.load_rows(config, plan, mine)
        prepare = setup.make_preprocessor(config, X, plan.d_features, plan.sparse, allreduce=lambda buffer, op: None)
        shards, test = setup.make_shards(config, plan, mine, source, X, X_test, prepare)
        del X, X_test
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    held = sum(part.data.nbytes + part.indices.nbytes + part.indptr.nbytes for part in [*(s.X for s in shards), test[0]])
    assert shards[0].X.shape[1] == plan.d_model and test[0].shape[1] == plan.d_model
    assert peak <= 1.5 * held, (peak, held)


@pytest.mark.parametrize("row", [None, 0, 7, 19])
def test_the_crc_runs_beside_the_reads_over_many_chunks(tmp_path, monkeypatch, row):
    """Chunks alternate between two buffers while another thread takes each one's CRC-32: a clean archive
    must still pass (no buffer refilled before its CRC was taken), and a bit flipped in the first, a
    middle or the last chunk must fail."""
    monkeypatch.setattr(npzfile, "_CHUNK_BYTES", 3 * 4 * 8)  # three rows of four float64 a chunk: seven chunks
    features = np.arange(80.0).reshape(20, 4) + 0.5
    path = tmp_path / "chunks.npz"
    np.savez(path, X=features, y=np.zeros(20))
    if row is not None:
        data = bytearray(path.read_bytes())
        data[data.find(features[row].tobytes())] ^= 1  # the lowest mantissa bit: the value stays finite
        path.write_bytes(data)
        with pytest.raises(DataError, match=r"Bad CRC-32 for file 'X\.npy'"):
            open_source(str(path)).scan()
    else:
        source = open_source(str(path))
        assert source.scan().n == 20
        np.testing.assert_array_equal(source.rows(np.arange(20)), features)
