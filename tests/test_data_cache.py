"""The LIBSVM block parser and the parse cache: the numpy path agrees with the line-by-line parser,
and a cache entry gives exactly the file's data or is not used at all."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from dmlcli.data import cache, csvfile, libsvm, open_source, textfile
from dmlcli.errors import DataError


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh cache directory that takes any file, however small or recent."""
    root = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(root))
    monkeypatch.setattr(cache, "MIN_CACHED_BYTES", 0)
    monkeypatch.setattr(cache, "RACY_SECONDS", 0.0)
    return root


def random_libsvm(rng, n=300, d=50, zero_based=False) -> tuple[str, np.ndarray, np.ndarray]:
    """LIBSVM text in assorted plain spellings (signs, exponents, tabs, CRLF, blank lines) and its dense matrix."""
    X = np.where(rng.random((n, d)) < 0.2, rng.standard_normal((n, d)), 0.0)
    y = rng.choice([-1.0, 1.0], n)
    first = 0 if zero_based else 1
    spellings = (repr, lambda v: f"{v:.5g}", lambda v: f"{v:+.3e}", lambda v: f"{v:.4E}")
    lines = []
    for i in range(n):
        spell = spellings[i % len(spellings)]
        X[i] = [float(spell(float(v))) for v in X[i]]
        pairs = [f"{j + first}:{spell(float(X[i, j]))}" for j in np.flatnonzero(X[i])]
        lines.append(("\t" if i % 7 == 0 else " ").join([f"{y[i]:+g}", *pairs]) + ("\r\n" if i % 5 == 0 else "\n"))
        if i % 50 == 0:
            lines.append("\n")
    return "".join(lines), X, y


def parsed_lists(parsed: libsvm.ParsedRows) -> list:
    return [parsed.labels.tolist(), parsed.starts.tolist(), parsed.lines.tolist(), parsed.counts.tolist(),
            parsed.indices.tolist(), parsed.values.tolist(), parsed.end]


def test_plain_blocks_are_parsed_with_numpy_as_line_by_line():
    text, _, _ = random_libsvm(np.random.default_rng(3))
    block = text.encode()
    fast = libsvm.parse_plain_block(block)
    assert fast is not None
    assert parsed_lists(fast) == parsed_lists(libsvm.parse_block_by_line(block, str))
    unterminated = block.rstrip(b"\r\n")
    expected = parsed_lists(libsvm.parse_block_by_line(unterminated, str))
    assert parsed_lists(libsvm.parse_plain_block(unterminated)) == expected


def outcome(block: bytes):
    try:
        return parsed_lists(libsvm.parse_block(block, lambda line: f"here:{line + 1}"))
    except DataError as error:
        return str(error)


@pytest.mark.parametrize("seed", range(4))
def test_block_parser_accepts_and_refuses_exactly_what_the_line_parser_does(seed):
    """Random lines from the characters that matter: the numpy path either declines or agrees exactly."""
    rng = np.random.default_rng(seed)
    alphabet = list(b"0123456789.:+-eE \t#x") + [ord("\r")]
    tokens = [b"1", b"-2.5", b"+.5e-3", b"1.", b"3:", b":4", b"1:1", b"2:-.5e3", b"10:1.", b"7:+1", b"01:2", b"1:1e",
              b"2:3:4", b"0:0", b"0:1", b"9999999999:1", b"1:1e999", b"e5", b"--1", b"1:", b" ", b"\t", b"#"]
    for _ in range(400):
        lines = [b"1 1:2.5 3:-4e1"]
        for _ in range(rng.integers(1, 4)):
            if rng.random() < 0.5:
                line = bytes(rng.choice(alphabet, rng.integers(0, 14)).tolist())
            else:
                line = b" ".join(tokens[k] for k in rng.integers(0, len(tokens), rng.integers(0, 5)))
            lines.append(b"+1 2:0.5 " + line if rng.random() < 0.5 else line)
        block = b"\n".join(lines) + b"\n"
        fast = libsvm.parse_plain_block(block)
        expected = outcome_by_line(block)
        if fast is not None:
            assert parsed_lists(fast) == expected, block
        assert outcome(block) == expected, block


def outcome_by_line(block: bytes):
    try:
        return parsed_lists(libsvm.parse_block_by_line(block, lambda line: f"here:{line + 1}"))
    except DataError as error:
        return str(error)


@pytest.mark.parametrize("block", [b"1 1:1e999\n", b"1 2147483648:1\n", b"1 3:1 2:1\n", b"1 2:1 2:1\n", b"1e999 1:1\n",
                                   b"1 00000000001:1\n", b"1 1:1 # note\n", b"1 qid:2 1:1\n", b"1 1:1\r2 1:1\n"])
def test_unusual_blocks_go_line_by_line(block):
    assert libsvm.parse_plain_block(block) is None
    assert outcome(block) == outcome_by_line(block)


def test_line_blocks_cover_the_file_in_whole_lines(tmp_path, monkeypatch):
    path = tmp_path / "lines.svm"
    text = b"\xef\xbb\xbf" + b"".join(b"%d 1:%d\n" % (i, i) for i in range(500)) + b"-1 2:2"
    path.write_bytes(text)
    blocks = list(textfile.line_blocks(str(path), block_bytes=100))
    assert b"".join(block for _, _, block in blocks) == text[3:]
    for number, offset, block in blocks:
        assert text[offset:offset + len(block)] == block
        assert text[3:offset].count(b"\n") + 1 == number
        assert block.endswith(b"\n") or offset + len(block) == len(text)
    monkeypatch.setattr(textfile, "_MAX_LINE_BYTES", 150)
    path.write_bytes(b"1 1:1\n" + b"1" + b" 1:1" * 100 + b"\n")
    for block_bytes in (40, 1000):  # the long line spread over blocks, or inside one
        with pytest.raises(DataError, match=r"lines.svm:2: line longer than 150 bytes"):
            list(textfile.line_blocks(str(path), block_bytes=block_bytes))
    path.write_bytes(b"1 1:1\n" + b"1" + b" 1:1" * 36 + b"\n")  # 150 bytes with its line break: accepted
    blocks = [block for _, _, block in textfile.line_blocks(str(path), block_bytes=40)]
    assert blocks == path.read_bytes().splitlines(True)


def dense(matrix) -> np.ndarray:
    return np.asarray(matrix.todense())


def read_all(path: str, rows: np.ndarray, **options):
    source = open_source(path, **options)
    info = source.scan()
    return info, source, dense(source.rows(rows))


@pytest.mark.parametrize("zero_based", [False, True])
def test_cache_entry_is_written_then_read_instead_of_the_text(tmp_path, cache_dir, monkeypatch, zero_based):
    text, X, y = random_libsvm(np.random.default_rng(1), zero_based=zero_based)
    path = tmp_path / "data.svm"
    path.write_text(text)
    rows = np.random.default_rng(2).permutation(X.shape[0])[:120]
    info, first, features = read_all(str(path), rows)
    assert first.index_base == (0 if zero_based else 1)
    np.testing.assert_array_equal(info.y, y)
    np.testing.assert_array_equal(features[:, :X.shape[1]], X[rows])
    assert len(os.listdir(cache_dir)) == 1

    def no_parsing(*args):
        raise AssertionError("the text was parsed although the cache holds it")

    monkeypatch.setattr(libsvm, "parse_block", no_parsing)
    again_info, again, again_features = read_all(str(path), rows)
    assert again._entry is not None
    np.testing.assert_array_equal(again_info.y, info.y)
    assert (again_info.d, again.index_base, again.zero_base_line) == (info.d, first.index_base, first.zero_base_line)
    np.testing.assert_array_equal(again_features, features)


def test_cache_keeps_index_zero_rules(tmp_path, cache_dir):
    """An explicit 0:0 in a 1-based file is dropped from cached rows too; a forced 1-base still refuses 0:5."""
    path = tmp_path / "zeros.svm"
    path.write_text("1 0:0 1:1 2:2\n-1 3:3\n")
    for _ in range(2):  # parsed, then from the cache
        info, source, features = read_all(str(path), np.arange(2))
        assert source.index_base == 1 and info.d == 3
        np.testing.assert_array_equal(features, [[1, 2, 0], [0, 0, 3]])
    path.write_text("1 0:5 1:1 2:2\n-1 3:3\n")
    for _ in range(2):
        with pytest.raises(DataError, match="zeros.svm:1: feature index 0 has a nonzero value"):
            open_source(str(path), index_base=1).scan()


def test_a_changed_file_is_parsed_again_and_its_old_entry_removed(tmp_path, cache_dir):
    path = tmp_path / "data.svm"
    path.write_text("1 1:1\n-1 2:2\n")
    read_all(str(path), np.arange(2))
    old_entries = set(os.listdir(cache_dir))
    stat = os.stat(path)
    path.write_text("1 1:7\n-1 2:2\n")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime: ctime still tells
    info, _, features = read_all(str(path), np.arange(2))
    np.testing.assert_array_equal(features, [[7, 0], [0, 2]])
    assert len(os.listdir(cache_dir)) == 1 and not old_entries & set(os.listdir(cache_dir))


@pytest.mark.parametrize("damage", ["truncate values", "garbage meta", "wrong dtype", "bad pointers", "missing labels"])
def test_a_damaged_entry_is_never_used(tmp_path, cache_dir, damage):
    text, X, y = random_libsvm(np.random.default_rng(4))
    path = tmp_path / "data.svm"
    path.write_text(text)
    read_all(str(path), np.arange(5))
    (entry,) = cache_dir.iterdir()
    if damage == "truncate values":
        with open(entry / "values.npy", "r+b") as handle:
            handle.truncate(200)
    elif damage == "garbage meta":
        (entry / "meta.json").write_text("{not json")
    elif damage == "wrong dtype":
        np.save(entry / "indices.npy", np.load(entry / "indices.npy").astype(np.int64))
    elif damage == "bad pointers":
        pointers = np.load(entry / "indptr.npy")
        np.save(entry / "indptr.npy", pointers[::-1].copy())
    else:
        (entry / "labels.npy").unlink()
    rows = np.arange(X.shape[0])
    info, _, features = read_all(str(path), rows)
    np.testing.assert_array_equal(info.y, y)
    np.testing.assert_array_equal(features[:, :X.shape[1]], X)


def test_a_worker_reads_the_text_when_the_entry_is_gone_or_replaced(tmp_path, cache_dir):
    """Rank 0's scan goes to a worker with its cache entry; if the entry has gone by then, the offsets still serve."""
    text, X, _ = random_libsvm(np.random.default_rng(5))
    path = tmp_path / "data.svm"
    path.write_text(text)
    source = open_source(str(path))
    source.scan()
    assert source._entry is not None
    sent = pickle.dumps(source)
    assert len(sent) < 20_000  # labels and offsets, not the nonzeros
    rows = np.arange(10, 200, 3)
    (entry,) = cache_dir.iterdir()
    (entry / "meta.json").write_text((entry / "meta.json").read_text().replace('"rows"', '"rows" ', 1))
    worker = pickle.loads(sent)
    np.testing.assert_array_equal(dense(worker.rows(rows))[:, :X.shape[1]], X[rows])
    for name in os.listdir(entry):
        os.remove(entry / name)
    worker = pickle.loads(sent)
    np.testing.assert_array_equal(dense(worker.rows(rows))[:, :X.shape[1]], X[rows])


def test_no_entry_for_small_recent_or_uncacheable_files(tmp_path, monkeypatch):
    path = tmp_path / "data.svm"
    path.write_text("1 1:1\n-1 2:2\n")
    root = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(root))
    read_all(str(path), np.arange(2))
    assert not root.exists()  # below MIN_CACHED_BYTES
    monkeypatch.setattr(cache, "MIN_CACHED_BYTES", 0)
    read_all(str(path), np.arange(2))
    assert not root.exists() or not os.listdir(root)  # changed less than RACY_SECONDS ago
    monkeypatch.setattr(cache, "RACY_SECONDS", 0.0)
    monkeypatch.setenv(cache.CACHE_ENV, "")
    read_all(str(path), np.arange(2))
    assert not root.exists()  # turned off
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(cache.CACHE_ENV, str(blocker / "cache"))  # cannot be created
    _, _, features = read_all(str(path), np.arange(2))
    np.testing.assert_array_equal(features, [[1, 0], [0, 2]])


def test_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == str(tmp_path / "xdg" / "dmlcli")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == str(tmp_path / "home" / ".cache" / "dmlcli")
    monkeypatch.setenv(cache.CACHE_ENV, "~/elsewhere")
    assert cache.cache_root() == str(tmp_path / "home" / "elsewhere")
    monkeypatch.setenv(cache.CACHE_ENV, "")
    assert cache.cache_root() is None


def csv_outcome(parse, block: bytes, width: int):
    try:
        starts, numbers, end = parse(block, width, lambda line: f"here:{line + 1}")
    except DataError as error:
        return str(error)
    return starts.tolist(), numbers.tolist(), end


@pytest.mark.parametrize("seed", range(3))
def test_csv_blocks_go_to_loadtxt_only_when_the_line_parser_agrees(seed):
    rng = np.random.default_rng(seed)
    good = [b"1", b"-2.5", b" +.5e-3 ", b"1.", b"\t7", b"3E+2", b"-0"]
    bad = [b"", b" ", b"e5", b"1e999", b"1_0", b"inf", b"2 3", b"0x1", b".", b"1e", b"--1"]
    for _ in range(300):
        lines = [b"1,2,3"]
        for _ in range(rng.integers(1, 4)):
            chosen = [good[k] for k in rng.integers(0, len(good), rng.choice([2, 3, 3, 3, 4]))]
            if rng.random() < 0.3:
                chosen[0] = bad[rng.integers(len(bad))]
            lines.append(b",".join(chosen))
        block = b"\r\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
        expected = csv_outcome(csvfile.parse_csv_block_by_line, block, 3)
        fast = csvfile.parse_plain_csv_block(block, 3)
        if fast is not None:
            assert (fast[0].tolist(), fast[1].tolist(), fast[2]) == expected, block
        assert csv_outcome(csvfile.parse_csv_block, block, 3) == expected, block
