"""Tests for dmlcli.data: every source kind, row access, malformed inputs, partitions and test splits."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

from dmlcli.data import (
    BUILTIN_DATASETS,
    PARTITION_SCHEMES,
    DatasetInfo,
    DataSource,
    agree_index_base,
    csvfile,
    libsvm,
    npzfile,
    open_source,
    partition,
    split_test,
    textfile,
)
from dmlcli.errors import DataError, UsageError


def write_libsvm(path, features: np.ndarray, labels: np.ndarray, zero_based: bool = False) -> None:
    first = 0 if zero_based else 1
    lines = []
    for label, row in zip(labels, features):
        tokens = [f"{label:g}"] + [f"{column + first}:{float(value)!r}" for column, value in enumerate(row) if value != 0]
        lines.append(" ".join(tokens))
    path.write_text("\n".join(lines) + "\n")


def sparse_example(rng, n=40, d=9) -> tuple[np.ndarray, np.ndarray]:
    features = rng.standard_normal((n, d)) * (rng.random((n, d)) < 0.3)
    features[:, -1] = np.where(np.arange(n) == 7, 2.5, 0.0)  # only row 7 reaches the last column, so d is known
    return features, rng.integers(0, 2, n).astype(np.float64)


# ---------------------------------------------------------------- builtins


def test_builtin_names():
    assert BUILTIN_DATASETS == ("breast_cancer", "digits")


@pytest.mark.parametrize("name, n, d, classes", [("breast_cancer", 569, 30, {0.0, 1.0}), ("digits", 1797, 64, set(map(float, range(10))))])
def test_builtin_shapes_and_labels(name, n, d, classes):
    source = open_source(name)
    info = source.scan()
    assert isinstance(source, DataSource) and isinstance(info, DatasetInfo)
    assert (info.n, info.d, info.sparse) == (n, d, False)
    assert info.y.dtype == np.float64 and set(np.unique(info.y)) == classes
    block = source.rows(np.array([5, 0, 5]))
    assert block.shape == (3, d) and block.dtype == np.float64 and block.flags.c_contiguous
    np.testing.assert_array_equal(block[0], block[2])
    assert source.name == name and not source.online


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_builtin_sets_are_scikit_learns_exactly(name):
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn (the test extra) is not installed")
    features, labels = getattr(datasets, f"load_{name}")(return_X_y=True)
    source = open_source(name)
    np.testing.assert_array_equal(source.scan().y, labels)
    np.testing.assert_array_equal(source.rows(np.arange(labels.size)), features)


def test_scan_is_cached_and_labels_read_only():
    source = open_source("breast_cancer")
    assert source.scan() is source.scan()
    with pytest.raises(ValueError):
        source.scan().y[0] = 5.0


def test_dense_source_rejects_other_width():
    with pytest.raises(DataError, match="breast_cancer"):
        open_source("breast_cancer").rows(np.arange(3), d=31)


def test_fixed_sources_cannot_draw():
    with pytest.raises(TypeError):
        open_source("digits").draw(np.random.default_rng(0), 5)


# ---------------------------------------------------------------- synthetic


def test_synthetic_defaults_and_canonical_name():
    source = open_source("synthetic")
    info = source.scan()
    assert (info.n, info.d, info.sparse) == (1000, 20, False)
    assert set(np.unique(info.y)) == {-1.0, 1.0}
    assert source.name.startswith("synthetic:n=1000,d=20,kind=logistic,")
    assert open_source(source.name).name == source.name


def test_synthetic_is_deterministic_and_rows_are_independent_of_the_request():
    spec = "synthetic:n=2500,d=6,kind=linear,seed=4"
    whole = open_source(spec).rows(np.arange(2500))
    again = open_source(spec).rows(np.arange(2500))
    np.testing.assert_array_equal(whole, again)
    picked = np.array([2400, 3, 1500, 3, 1023, 1024])
    np.testing.assert_array_equal(open_source(spec).rows(picked), whole[picked])
    other_seed = open_source("synthetic:n=2500,d=6,kind=linear,seed=5").rows(np.arange(5))
    assert not np.allclose(other_seed, whole[:5])


def test_synthetic_smaller_n_is_a_prefix():
    small, large = open_source("synthetic:n=300,d=4"), open_source("synthetic:n=1500,d=4")
    np.testing.assert_array_equal(small.scan().y, large.scan().y[:300])
    np.testing.assert_array_equal(small.rows(np.arange(300)), large.rows(np.arange(300)))


def test_synthetic_labels_follow_the_features():
    """Linear targets with no noise are an exact linear function of the rows."""
    source = open_source("synthetic:n=200,d=5,kind=linear,noise=0")
    features, targets = source.rows(np.arange(200)), source.scan().y
    weights, residual, *_ = np.linalg.lstsq(features, targets, rcond=None)
    assert residual.size == 1 and residual[0] < 1e-18


def test_synthetic_sparse_is_csr_with_fixed_row_density():
    source = open_source("synthetic:n=1100,d=50,sparse=1,density=0.2")
    assert source.scan().sparse
    block = source.rows(np.array([1099, 0, 0]), d=60)
    assert isinstance(block, sp.csr_matrix) and block.shape == (3, 60)
    assert np.all(np.diff(block.indptr) == 10)
    np.testing.assert_array_equal(block[1].toarray(), block[2].toarray())
    np.testing.assert_array_equal(block[0].toarray()[:, :50], source.rows(np.arange(1100))[1099].toarray())


def test_synthetic_online_draws_fresh_samples():
    source = open_source("synthetic:n=100,d=3,online=1")
    assert source.online
    features, labels = source.draw(np.random.default_rng(1), 7)
    assert features.shape == (7, 3) and set(np.unique(labels)) <= {-1.0, 1.0}
    repeat, _ = source.draw(np.random.default_rng(1), 7)
    np.testing.assert_array_equal(features, repeat)
    with pytest.raises(TypeError):
        open_source("synthetic:n=100,d=3").draw(np.random.default_rng(1), 7)


@pytest.mark.parametrize("spec, key", [
    ("synthetic:bogus=1", "bogus"),
    ("synthetic:n=abc", "n"),
    ("synthetic:n=0", "n"),
    ("synthetic:d=-2", "d"),
    ("synthetic:density=0", "density"),
    ("synthetic:density=1.5", "density"),
    ("synthetic:noise=-0.1", "noise"),
    ("synthetic:noise=nan", "noise"),
    ("synthetic:kind=poisson", "kind"),
    ("synthetic:sparse=2", "sparse"),
    ("synthetic:n=5,n=6", "n"),
    ("synthetic:n", "n"),
])
def test_synthetic_bad_specs_name_the_key(spec, key):
    with pytest.raises(DataError, match=rf"\b{key}\b") as caught:
        open_source(spec)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------- LIBSVM


@pytest.mark.parametrize("zero_based", [False, True])
def test_libsvm_round_trip(tmp_path, zero_based):
    features, labels = sparse_example(np.random.default_rng(0))
    path = tmp_path / "train.svm"
    write_libsvm(path, features, labels, zero_based)
    source = open_source(str(path))
    info = source.scan()
    assert (info.n, info.d, info.sparse) == (40, 9, True)
    np.testing.assert_array_equal(info.y, labels)
    everything = source.rows(np.arange(40))
    assert isinstance(everything, sp.csr_matrix)
    np.testing.assert_array_equal(everything.toarray(), features)
    picked = np.array([39, 0, 7, 7, 12])
    np.testing.assert_array_equal(source.rows(picked).toarray(), features[picked])


def test_libsvm_comments_blank_lines_and_padding(tmp_path):
    path = tmp_path / "small.libsvm"
    path.write_text("# header comment\n+1 1:0.5 3:2\n\n-1 2:-1 # trailing comment\n   \n1\n")
    source = open_source(str(path))
    info = source.scan()
    assert (info.n, info.d) == (3, 3)
    np.testing.assert_array_equal(info.y, [1, -1, 1])
    block = source.rows(np.array([2, 1, 0]), d=5)
    assert block.shape == (3, 5)
    np.testing.assert_array_equal(block.toarray(), [[0, 0, 0, 0, 0], [0, -1, 0, 0, 0], [0.5, 0, 2, 0, 0]])
    with pytest.raises(DataError, match="small.libsvm"):
        source.rows(np.arange(3), d=2)


@pytest.mark.parametrize("line, fragment", [
    ("1 qid:3 1:0.5", "qid"),
    ("abc 1:0.5", "label 'abc'"),
    ("1 1:0.5 x:2", "index 'x'"),
    ("1 1:0.5 2", "'2'"),
    ("1 3:0.5 2:1", "ascending"),
    ("1 1:0.5 1:1", "ascending"),
    ("1 1:nan", "finite"),
    ("1 1:abc", "'abc'"),
    ("inf 1:1", "finite"),
    ("1 -1:2", "negative"),
])
def test_libsvm_malformed_lines_name_file_and_line(tmp_path, line, fragment):
    path = tmp_path / "bad.svm"
    path.write_text(f"1 1:1 2:2\n# fine\n{line}\n")
    with pytest.raises(DataError) as caught:
        open_source(str(path)).scan()
    message = str(caught.value)
    assert "bad.svm:3" in message and fragment in message and "\n" not in message


def test_libsvm_without_rows_or_features(tmp_path):
    empty = tmp_path / "empty.svm"
    empty.write_text("# nothing\n\n")
    with pytest.raises(DataError, match="empty.svm: no data rows"):
        open_source(str(empty)).scan()
    labels_only = tmp_path / "labels.svm"
    labels_only.write_text("1\n-1\n")
    with pytest.raises(DataError, match="labels.svm: no features"):
        open_source(str(labels_only)).scan()


def libsvm_file(tmp_path, text: str, name: str = "data.svm") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("zero", ["0", "0.0", "-0", "0e5", "+0.000"])
def test_libsvm_zero_valued_index_zero_decides_nothing_and_is_dropped(tmp_path, zero):
    source = open_source(libsvm_file(tmp_path, f"1 0:{zero} 2:5\n-1 1:2 3:1\n1 0:{zero}\n"))
    info = source.scan()
    assert source.index_base == 1 and info.d == 3
    block = source.rows(np.arange(3))
    np.testing.assert_array_equal(block.toarray(), [[0, 5, 0], [2, 0, 1], [0, 0, 0]])
    assert block.nnz == 3  # the index-0 entries are dropped, not stored as column -1 or 0


def test_libsvm_nonzero_index_zero_anywhere_makes_the_file_zero_based(tmp_path):
    source = open_source(libsvm_file(tmp_path, "1 0:0 2:5\n-1 1:2 3:1\n1 0:0.5 1:1\n"))
    info = source.scan()
    assert source.index_base == 0 and info.d == 4
    np.testing.assert_array_equal(source.rows(np.arange(3)).toarray(), [[0, 0, 5, 0], [0, 2, 0, 1], [0.5, 1, 0, 0]])


def test_libsvm_with_only_zero_valued_index_zero_has_no_features(tmp_path):
    with pytest.raises(DataError, match=r"data\.svm: the only feature index is 0, always with value 0"):
        open_source(libsvm_file(tmp_path, "1 0:0\n-1\n")).scan()


def test_open_source_forces_the_index_base(tmp_path):
    one_based = libsvm_file(tmp_path, "1 1:1 3:2\n-1 2:4\n")
    source = open_source(one_based, index_base=0)
    assert source.scan().d == 4 and source.index_base == 0
    np.testing.assert_array_equal(source.rows(np.arange(2)).toarray(), [[0, 1, 0, 2], [0, 0, 4, 0]])
    zero_based = libsvm_file(tmp_path, "1 1:1\n# comment\n-1 0:3 2:4\n", "zero.svm")
    with pytest.raises(DataError, match=r"zero\.svm:3: feature index 0 has a nonzero value but the file is read 1-based"):
        open_source(zero_based, index_base=1).scan()
    with pytest.raises(ValueError, match="index_base"):
        open_source(one_based, index_base=2)


def test_index_base_is_none_for_every_other_kind_of_data(tmp_path):
    (tmp_path / "table.csv").write_text("label,x\n1,2\n")
    np.savez(tmp_path / "arrays.npz", X=np.ones((2, 2)), y=np.zeros(2))
    for spec in ("breast_cancer", "synthetic:n=5,d=2", str(tmp_path / "table.csv"), str(tmp_path / "arrays.npz")):
        source = open_source(spec, index_base=0)
        source.scan()
        assert source.index_base is None
    assert agree_index_base([open_source("breast_cancer"), open_source(str(tmp_path / "arrays.npz"))]) is None


@pytest.mark.parametrize("zero_based_file", ["train", "test"])
def test_agree_index_base_reads_train_and_test_with_one_base(tmp_path, zero_based_file):
    texts = {"train": "1 1:1 2:2\n-1 3:3\n", "test": "1 2:7\n-1 0:0 1:1\n"}
    texts[zero_based_file] += "1 0:9\n"
    train = open_source(libsvm_file(tmp_path, texts["train"], "train.svm"))
    test = open_source(libsvm_file(tmp_path, texts["test"], "test.svm"))
    # Each file alone decides its own base, and the other one would be shifted by a column.
    alone = {"train": (1, 3), "test": (1, 2), zero_based_file: (0, 4 if zero_based_file == "train" else 3)}
    assert (train.scan().d, test.scan().d) == (alone["train"][1], alone["test"][1])
    assert (train.index_base, test.index_base) == (alone["train"][0], alone["test"][0])
    assert agree_index_base([train, test]) == 0
    assert (train.index_base, test.index_base) == (0, 0)
    assert (train.scan().d, test.scan().d) == (4, 3)
    np.testing.assert_array_equal(train.rows(np.arange(2), d=4).toarray(), [[0, 1, 2, 0], [0, 0, 0, 3]])
    np.testing.assert_array_equal(test.rows(np.arange(2), d=4).toarray(), [[0, 0, 7, 0], [0, 1, 0, 0]])


def test_agree_index_base_keeps_one_based_files_and_skips_other_sources(tmp_path):
    train = open_source(libsvm_file(tmp_path, "1 0:0 1:1 2:2\n-1 3:3\n", "train.svm"))
    test = open_source(libsvm_file(tmp_path, "1 2:7\n", "test.svm"), index_base=0)
    assert agree_index_base([train, open_source("breast_cancer"), test]) == 1
    assert (train.index_base, test.index_base) == (1, 1)
    assert (train.scan().d, test.scan().d) == (3, 2)
    np.testing.assert_array_equal(test.rows(np.arange(1), d=3).toarray(), [[0, 7, 0]])


def test_agree_index_base_does_not_read_the_files_again(tmp_path):
    train_path = libsvm_file(tmp_path, "1 1:1 5:2\n", "train.svm")
    train = open_source(train_path)
    test = open_source(libsvm_file(tmp_path, "1 0:1\n", "test.svm"))
    train.scan(), test.scan()
    labels = train.scan().y
    (tmp_path / "train.svm").unlink()
    assert agree_index_base([train, test]) == 0
    assert train.scan().d == 6 and train.scan().y is labels and not train.scan().y.flags.writeable


def test_libsvm_read_one_based_refuses_a_nonzero_index_zero_that_appeared_after_the_scan(tmp_path):
    path = libsvm_file(tmp_path, "1 0:0 1:1\n-1 2:2\n")
    source = open_source(path)
    source.scan()
    (tmp_path / "data.svm").write_text("1 0:3 1:1\n-1 2:2\n")
    with pytest.raises(DataError, match="changed since it was scanned: a row now has a nonzero value at feature index 0"):
        source.rows(np.arange(2))
    (tmp_path / "data.svm").write_text("1 1:1\n-1 9:2\n")
    with pytest.raises(DataError, match="changed since it was scanned: feature index 9 is beyond the 2 columns"):
        source.rows(np.arange(2))


@pytest.mark.parametrize("text, line", [("1 1:1 2:2\r-1 3:1\r", 1), ("1 1:1\n-1 2:1\r1 3:1\n", 2),
                                        ("1 1:1 # comment\rwith a CR\n", 1), ("1 1:1\n\r\r\n", 2)])
def test_libsvm_carriage_return_inside_a_line(tmp_path, text, line):
    path = tmp_path / "mac.svm"
    path.write_bytes(text.encode())
    with pytest.raises(DataError) as caught:
        open_source(str(path)).scan()
    assert str(caught.value) == (f"{path}:{line}: carriage return inside a line: the file seems to use CR line endings; "
                                 "expected LF or CRLF")


def test_libsvm_crlf_line_endings_are_accepted(tmp_path):
    path = tmp_path / "windows.svm"
    path.write_bytes(b"1 1:1 2:2\r\n\r\n-1 3:1.5 # comment\r\n")
    source = open_source(str(path))
    np.testing.assert_array_equal(source.scan().y, [1, -1])
    np.testing.assert_array_equal(source.rows(np.array([1, 0])).toarray(), [[0, 0, 1.5], [1, 2, 0]])


@pytest.mark.parametrize("token, fragment", [
    ("1_0:1", "feature index '1_0' is not an integer"),
    ("+2:1", "feature index '+2' is not an integer"),
    ("1.0:1", "feature index '1.0' is not an integer"),
    ("0x1:1", "feature index '0x1' is not an integer"),
    ("\u0661:1", "feature index '\u0661' is not an integer"),
    (":1", "feature index '' is not an integer"),
    ("2147483648:1", "feature index 2147483648 is above 2147483647"),
    ("9" * 5000 + ":1", "feature index 99999"),
    ("1:1_0", "value of feature 1 '1_0' is not a number"),
    ("1:0x10", "value of feature 1 '0x10' is not a number"),
    ("1:1.2.3", "value of feature 1 '1.2.3' is not a number"),
    ("1:1e", "value of feature 1 '1e' is not a number"),
    ("1:", "value of feature 1 '' is not a number"),
    ("1:--1", "value of feature 1 '--1' is not a number"),
    ("1:infinity", "value of feature 1 is infinity; expected a finite number"),
    ("1:-Inf", "value of feature 1 is -Inf; expected a finite number"),
    ("1:+nan", "value of feature 1 is +nan; expected a finite number"),
    ("1:1e999", "value of feature 1 is 1e999, beyond the float64 range"),
])
def test_libsvm_numbers_are_parsed_strictly(tmp_path, token, fragment):
    path = tmp_path / "strict.svm"
    path.write_text(f"1 1:1\n-1 {token}\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        open_source(str(path)).scan()
    message = str(caught.value)
    assert message.startswith(f"{path}:2: ") and fragment in message and len(message) < 200


def test_libsvm_labels_are_parsed_strictly(tmp_path):
    with pytest.raises(DataError, match=r"strict\.svm:1: label '1_0' is not a number"):
        open_source(libsvm_file(tmp_path, "1_0 1:1\n", "strict.svm")).scan()
    with pytest.raises(DataError, match=r"strict\.svm:1: label is nan; expected a finite number"):
        open_source(libsvm_file(tmp_path, "nan 1:1\n", "strict.svm")).scan()


def test_libsvm_plain_number_forms_are_accepted(tmp_path):
    source = open_source(libsvm_file(tmp_path, "+1 1:-.5 2:2. 0003:1E+3\n-1.0e0 2:1e-400 4:+7\n"))
    np.testing.assert_array_equal(source.scan().y, [1, -1])
    np.testing.assert_array_equal(source.rows(np.arange(2)).toarray(), [[-0.5, 2, 1000, 0], [0, 0, 0, 7]])


def outcome(parse, *arguments):
    """What a line parser makes of a line: its result (arrays as lists) or its error message."""
    try:
        result = parse(*arguments)
    except DataError as error:
        return str(error)
    return result.tolist() if isinstance(result, np.ndarray) else result


@pytest.mark.parametrize("line", [b"1 1:2", b"+1\t0003:1E+3  7:-.5 # note", b"-2.5", b"  ", b"# only a comment", b"1 00000000001:1",
                                  b"1 2147483647:1", b"1 2147483648:1", b"1 1:1e999", b"1 2:1 1:1", b"1 1:1_0", b"1e999 1:1"])
def test_libsvm_whole_line_fast_path_agrees_with_the_token_checks(line):
    """parse_libsvm_line takes well-formed lines in one match; it must accept and refuse exactly what the token checks do."""
    expected = outcome(libsvm.parse_libsvm_tokens, line.split(b"#")[0], "here")
    assert outcome(libsvm.parse_libsvm_line, line + b"\n", "here") == expected
    assert not isinstance(expected, str) or expected.startswith("here: ")


@pytest.mark.parametrize("line", [b"1,2,3", b" +1 ,\t.5, 2e-3 ", b"1,2", b"1,2,3,4", b"1,,3", b"   ", b"1,1e999,3", b"1,1_0,3",
                                  b"1,inf,3", b"1, 2 3,4"])
def test_csv_whole_line_fast_path_agrees_with_the_field_checks(line):
    """parse_csv_line converts well-formed lines at once; it must accept and refuse exactly what the field checks do."""
    expected = outcome(csvfile.parse_csv_fields, line, "here", 3)
    assert outcome(csvfile.parse_csv_line, line + b"\r\n", "here", 3) == expected


# ---------------------------------------------------------------- CSV


def test_csv_without_header_takes_the_first_column(tmp_path):
    rng = np.random.default_rng(1)
    table = np.column_stack([rng.integers(0, 3, 25), rng.standard_normal((25, 4))])
    path = tmp_path / "plain.csv"
    path.write_text("\n".join(",".join(repr(float(value)) for value in row) for row in table) + "\n\n")
    source = open_source(str(path))
    info = source.scan()
    assert (info.n, info.d, info.sparse) == (25, 4, False)
    np.testing.assert_array_equal(info.y, table[:, 0])
    np.testing.assert_array_equal(source.rows(np.arange(25)), table[:, 1:])
    picked = np.array([24, 3, 3, 0])
    block = source.rows(picked)
    assert block.flags.c_contiguous
    np.testing.assert_array_equal(block, table[picked, 1:])


def test_csv_header_selects_the_label_column_by_name(tmp_path):
    path = tmp_path / "named.csv"
    path.write_text('\ufeffa, b ,"Target",c\r\n1,2,0,3\r\n4,5,1,6\r\n\r\n7,8,1,9\r\n', encoding="utf-8")
    source = open_source(str(path))
    info = source.scan()
    assert (info.n, info.d) == (3, 3)
    np.testing.assert_array_equal(info.y, [0, 1, 1])
    np.testing.assert_array_equal(source.rows(np.array([2, 0])), [[7, 8, 9], [1, 2, 3]])


def test_csv_data_first_row_with_bom_is_data(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_text("\ufeff1,2\n0,3\n", encoding="utf-8")
    source = open_source(str(path))
    np.testing.assert_array_equal(source.scan().y, [1, 0])
    np.testing.assert_array_equal(source.rows(np.array([0, 1])), [[2], [3]])


@pytest.mark.parametrize("text, fragment", [
    ("1,2,3\n4,5\n", "bad.csv:2"),
    ("1,2,3\n4,,6\n", "bad.csv:2: column 2 is empty"),
    ("1,2,3\n4,x5,6\n", "bad.csv:2: column 2 'x5'"),
    ("1,2,3\n\n4,5,nan\n", "bad.csv:3: column 3"),
    ("1,2,inf\n", "bad.csv:1: column 3"),
    ("f1,f2,f3\n1,2,3\n", "bad.csv:1: no label column in header (f1, f2, f3)"),
    ("y,label,x\n1,2,3\n", "several label columns"),
    ("label\n1\n2\n", "bad.csv: only a label column"),
    ("label,x\n", "bad.csv: no data rows"),
])
def test_csv_malformed_inputs(tmp_path, text, fragment):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError) as caught:
        open_source(str(path)).scan()
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_text_file_changed_after_scan_is_reported(tmp_path):
    path = tmp_path / "moving.csv"
    path.write_text("1,2\n3,4\n5,6\n")
    source = open_source(str(path))
    source.scan()
    path.write_text("1,2\n\n\n\n\n")
    with pytest.raises(DataError, match="changed since it was scanned"):
        source.rows(np.array([1, 2]))


@pytest.mark.parametrize("text, line", [("label,x\r1,2\r0,3\r", 1), ("1,2\n3,4\r5,6\n", 2), ("1,2\r\n3,4\r\r\n", 2)])
def test_csv_carriage_return_inside_a_line(tmp_path, text, line):
    path = tmp_path / "mac.csv"
    path.write_bytes(text.encode())
    with pytest.raises(DataError) as caught:
        open_source(str(path)).scan()
    assert str(caught.value) == (f"{path}:{line}: carriage return inside a line: the file seems to use CR line endings; "
                                 "expected LF or CRLF")


@pytest.mark.parametrize("field, fragment", [
    ("1_0", "column 2 '1_0' is not a number"),
    ("0x1", "column 2 '0x1' is not a number"),
    ("1 2", "column 2 '1 2' is not a number"),
    ("\u0661", "column 2 '\u0661' is not a number"),
    ("Infinity", "column 2 is Infinity; expected a finite number"),
    ("-1e400", "column 2 is -1e400, beyond the float64 range"),
])
def test_csv_numbers_are_parsed_strictly(tmp_path, field, fragment):
    path = tmp_path / "strict.csv"
    path.write_text(f"label,a,b\n1,2,3\n0,{field},3\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        open_source(str(path)).scan()
    assert str(caught.value).startswith(f"{path}:3: ") and fragment in str(caught.value)


def test_csv_first_line_with_an_underscore_number_is_data_not_a_header(tmp_path):
    path = tmp_path / "first.csv"
    path.write_text("1,1_0\n0,2\n")
    with pytest.raises(DataError, match=r"first\.csv:1: column 2 '1_0' is not a number"):
        open_source(str(path)).scan()


def test_csv_spaces_around_fields_are_allowed(tmp_path):
    path = tmp_path / "spaced.csv"
    path.write_text(" label , x \n 1 , +2.5 \n0,\t-3e1\t\n")
    source = open_source(str(path))
    np.testing.assert_array_equal(source.scan().y, [1, 0])
    np.testing.assert_array_equal(source.rows(np.arange(2)), [[2.5], [-30]])


def test_csv_wide_header_without_label_is_reported_briefly(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"f{column}" for column in range(5001)) + "\n" + ",".join(["1"] * 5001) + "\n")
    with pytest.raises(DataError) as caught:
        open_source(str(path)).scan()
    message = str(caught.value)
    assert f"{path}:1: no label column in header (5001 columns: f0, f1, f2, ..., f5000); expected" in message
    assert len(message) < 250


def test_csv_many_label_columns_and_long_names_are_reported_briefly(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(",".join(["y"] * 3000) + "\n" + ",".join(["1"] * 3000) + "\n")
    with pytest.raises(DataError) as caught:
        open_source(str(path)).scan()
    assert "several label columns in header (3000 columns: y, y, y, ..., y)" in str(caught.value)
    path.write_text("x" * 100000 + ",\x1b[2Jz\n1,2\n")
    with pytest.raises(DataError) as caught:
        open_source(str(path)).scan()
    message = str(caught.value)
    assert f"no label column in header ({'x' * 37}..., \\x1b[2Jz)" in message and len(message) < 250


def test_csv_header_that_is_not_utf8_still_finds_the_label(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("temp\xe9rature,label\n1.5,1\n2.5,0\n".encode("latin-1"))
    source = open_source(str(path))
    np.testing.assert_array_equal(source.scan().y, [1, 0])
    np.testing.assert_array_equal(source.rows(np.arange(2)), [[1.5], [2.5]])
    path.write_bytes(b"temp\xe9rature,x\n1,2\n")
    with pytest.raises(DataError, match="no label column in header \\(temp\ufffdrature, x\\)"):
        open_source(str(path)).scan()


def test_csv_row_with_only_a_label(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("label,x\n1,2\n0\n")
    with pytest.raises(DataError, match=r"short\.csv:3: 1 fields; expected 2"):
        open_source(str(path)).scan()


@pytest.mark.parametrize("name", ["utf16.csv", "utf16.svm"])
def test_text_files_with_nul_bytes_are_called_binary_or_utf16(tmp_path, name):
    path = tmp_path / name
    path.write_bytes("label,x\n1,2\n".encode("utf-16") if name.endswith(".csv") else b"1 1:1\n-1 2:\x001\n")
    line = 1 if name.endswith(".csv") else 2
    with pytest.raises(DataError, match=rf"{name}:{line}: NUL byte inside a line: the file seems to be binary or UTF-16"):
        open_source(str(path)).scan()


@pytest.mark.parametrize("name, fragment", [("empty.svm", "no data rows"), ("empty.csv", "no data rows"),
                                            ("empty.npz", "not a readable .npz archive")])
def test_empty_files(tmp_path, name, fragment):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataError, match=f"{name}: {fragment}"):
        open_source(str(tmp_path / name)).scan()


@pytest.mark.parametrize("text", ["1 1:1\n-1 " + "2:1 " * 30 + "\n", "label,x\n" + "1," * 40 + "1\n"])
def test_text_lines_longer_than_the_limit(tmp_path, monkeypatch, text):
    monkeypatch.setattr(textfile, "_MAX_LINE_BYTES", 64)
    path = tmp_path / ("long.svm" if text.startswith("1 1:1") else "long.csv")
    path.write_text(text)
    with pytest.raises(DataError, match=rf"{path.name}:2: line longer than 64 bytes; expected one data row per line"):
        open_source(str(path)).scan()
    path.write_text(text.replace("\n", "\r"))
    with pytest.raises(DataError, match=rf"{path.name}:1: carriage return inside a line"):
        open_source(str(path)).scan()


def test_text_file_replaced_by_a_directory_after_opening(tmp_path):
    path = tmp_path / "gone.svm"
    path.write_text("1 1:1\n")
    source = open_source(str(path))
    path.unlink()
    path.mkdir()
    with pytest.raises(DataError, match=r"^cannot read data file .*gone\.svm: "):
        source.scan()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files without read permission")
def test_text_file_without_read_permission(tmp_path):
    path = tmp_path / "locked.csv"
    path.write_text("1,2\n")
    path.chmod(0)
    with pytest.raises(DataError, match=r"cannot read data file .*locked\.csv: Permission denied"):
        open_source(str(path)).scan()


def test_csv_changed_width_after_scan_is_reported(tmp_path):
    path = tmp_path / "moving.csv"
    path.write_text("1,2\n3,4\n")
    source = open_source(str(path))
    source.scan()
    path.write_text("1,2,3\n4,5\n")
    with pytest.raises(DataError, match=r"moving\.csv \(data rows 0-1\): 3 fields; expected 2"):
        source.rows(np.arange(2))


# ---------------------------------------------------------------- NPZ


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_dense_round_trip(tmp_path, save):
    rng = np.random.default_rng(2)
    features, labels = rng.standard_normal((300, 7)), rng.standard_normal(300)
    path = tmp_path / "dense.npz"
    save(path, X=features, y=labels)
    source = open_source(str(path))
    info = source.scan()
    assert (info.n, info.d, info.sparse) == (300, 7, False)
    np.testing.assert_array_equal(info.y, labels)
    np.testing.assert_array_equal(source.rows(np.arange(300)), features)
    picked = np.array([299, 5, 6, 7, 5, 0, 150])
    np.testing.assert_array_equal(source.rows(picked), features[picked])


def test_npz_dense_converts_other_dtypes(tmp_path):
    features = np.arange(12, dtype=">f4").reshape(4, 3)
    path = tmp_path / "small.npz"
    np.savez(path, X=features, y=np.array([0, 1, 1, 0], dtype=np.int32))
    block = open_source(str(path)).rows(np.array([3, 1]))
    assert block.dtype == np.float64
    np.testing.assert_array_equal(block, features[[3, 1]].astype(np.float64))


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_sparse_round_trip(tmp_path, save):
    features, labels = sparse_example(np.random.default_rng(3), n=60, d=11)
    matrix = sp.csr_matrix(features)
    path = tmp_path / "sparse.npz"
    save(path, data=matrix.data, indices=matrix.indices, indptr=matrix.indptr, shape=np.array(matrix.shape), y=labels)
    source = open_source(str(path))
    info = source.scan()
    assert (info.n, info.d, info.sparse) == (60, 11, True)
    np.testing.assert_array_equal(info.y, labels)
    picked = np.array([59, 7, 0, 7, 30, 31, 32])
    block = source.rows(picked, d=13)
    assert isinstance(block, sp.csr_matrix) and block.shape == (7, 13)
    np.testing.assert_array_equal(block.toarray()[:, :11], features[picked])
    np.testing.assert_array_equal(source.rows(np.arange(60)).toarray(), features)


def test_npz_scipy_save_npz_with_labels(tmp_path):
    """scipy.sparse.save_npz output plus y works for CSR and is refused for CSC."""
    features, labels = sparse_example(np.random.default_rng(4), n=10, d=5)
    for kind, matrix in (("csr", sp.csr_matrix(features)), ("csc", sp.csc_matrix(features))):
        path = tmp_path / f"{kind}.npz"
        sp.save_npz(path, matrix)
        parts = dict(np.load(path))
        np.savez(path, y=labels, **parts)
        if kind == "csr":
            np.testing.assert_array_equal(open_source(str(path)).rows(np.arange(10)).toarray(), features)
        else:
            with pytest.raises(DataError, match="csc.npz.*'csc'"):
                open_source(str(path)).scan()


def _csr_parts(features):
    matrix = sp.csr_matrix(features)
    return dict(data=matrix.data, indices=matrix.indices, indptr=matrix.indptr, shape=np.array(matrix.shape))


@pytest.mark.parametrize("arrays, fragment", [
    (dict(y=np.zeros(3)), "expected arrays X and y"),
    (dict(X=np.zeros((3, 2))), "expected arrays X and y"),
    (dict(X=np.zeros(3), y=np.zeros(3)), "X has shape (3,)"),
    (dict(X=np.zeros((3, 2)), y=np.zeros(4)), "y has 4 entries"),
    (dict(X=np.zeros((3, 2)), y=np.zeros((3, 1))), "array y has shape (3, 1)"),
    (dict(X=np.array([[1.0, 2.0], [3.0, np.inf]]), y=np.zeros(2)), "X[1, 1]"),
    (dict(X=np.zeros((2, 2)), y=np.array([0.0, np.nan])), "y[1]"),
    (dict(X=np.asfortranarray(np.ones((3, 2))), y=np.zeros(3)), "Fortran order"),
    (dict(X=np.array([["a", "b"]]), y=np.zeros(1)), "dtype <U1"),
    (dict(X=np.zeros((2, 2), dtype=complex), y=np.zeros(2)), "real numbers"),
    (dict(_csr_parts(np.eye(3)), indptr=np.array([0, 1, 2])), "indptr"),
    (dict(_csr_parts(np.eye(3)), indices=np.array([0, 5, 2])), "indices[1] is 5"),
    (dict(_csr_parts(np.eye(3)), data=np.array([1.0, np.nan, 1.0])), "data[1] (row 1)"),
    (dict(_csr_parts(np.eye(3)), data=np.ones(2)), "data has shape (2,)"),
])
def test_npz_malformed_inputs(tmp_path, arrays, fragment):
    path = tmp_path / "bad.npz"
    if "indptr" in arrays:
        arrays = dict(arrays, y=np.zeros(3))
    np.savez(path, **arrays)
    with pytest.raises(DataError) as caught:
        open_source(str(path)).scan()
    assert "bad.npz" in str(caught.value) and fragment in str(caught.value)


def test_npz_rows_are_streamed_in_chunks(tmp_path, monkeypatch):
    """Tiny read sizes force many chunks and runs; np.load (which would load X whole) must not be used."""
    rng = np.random.default_rng(5)
    features, labels = rng.standard_normal((50, 3)), rng.standard_normal(50)
    sparse_features, _ = sparse_example(rng, n=50, d=6)
    np.savez_compressed(tmp_path / "dense.npz", X=features, y=labels)
    np.savez_compressed(tmp_path / "sparse.npz", y=labels, **_csr_parts(sparse_features))
    monkeypatch.setattr(npzfile, "_CHUNK_BYTES", 40)
    monkeypatch.setattr(npzfile, "_CSR_RUN_ROWS", 2)
    monkeypatch.setattr(np, "load", None)
    picked = np.array([49, 3, 4, 5, 6, 7, 3, 20, 0])
    np.testing.assert_array_equal(open_source(str(tmp_path / "dense.npz")).rows(picked), features[picked])
    np.testing.assert_array_equal(open_source(str(tmp_path / "sparse.npz")).rows(picked).toarray(), sparse_features[picked])


def test_text_rows_are_read_in_short_runs(tmp_path, monkeypatch):
    features, labels = sparse_example(np.random.default_rng(6))
    write_libsvm(tmp_path / "runs.svm", features, labels)
    monkeypatch.setattr(textfile, "_RUN_ROWS", 3)
    picked = np.array([0, 1, 2, 3, 4, 5, 6, 7, 30, 31, 39, 2])
    np.testing.assert_array_equal(open_source(str(tmp_path / "runs.svm")).rows(picked).toarray(), features[picked])


def test_npz_that_is_not_a_zip(tmp_path):
    path = tmp_path / "fake.npz"
    path.write_text("hello")
    with pytest.raises(DataError, match="fake.npz: not a readable .npz"):
        open_source(str(path)).scan()


def patch_zip_headers(path, *, method: int | None = None, flag_bits: int = 0, extract_version: int | None = None) -> None:
    """Rewrite every local and central header of a zip file in place.

    Sets the compression method and/or ORs in general-purpose flag bits (bit 0: encrypted), or sets
    the central "version needed to extract": how archives that zipfile cannot read are made without other tools.
    """
    data = bytearray(path.read_bytes())
    layouts = ((b"PK\x03\x04", 6, 8, None), (b"PK\x01\x02", 8, 10, 6))  # signature, flags, method, version offsets
    for signature, flags_at, method_at, version_at in layouts:
        start = data.find(signature)
        while start != -1:
            flags = int.from_bytes(data[start + flags_at:start + flags_at + 2], "little") | flag_bits
            data[start + flags_at:start + flags_at + 2] = flags.to_bytes(2, "little")
            if method is not None:
                data[start + method_at:start + method_at + 2] = method.to_bytes(2, "little")
            if extract_version is not None and version_at is not None:
                data[start + version_at:start + version_at + 2] = extract_version.to_bytes(2, "little")
            start = data.find(signature, start + 4)
    path.write_bytes(data)


def npy_bytes(header: str, data: bytes) -> bytes:
    """A version 1.0 .npy member with a hand-written header dictionary, to say what np.save never would."""
    text = header.encode("latin-1")
    text += b" " * (15 - (10 + len(text)) % 16) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


def write_members(path, members: dict) -> None:
    """An .npz whose members are arrays (saved with np.save, pickles allowed) or raw .npy bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        for key, content in members.items():
            if not isinstance(content, bytes):
                buffer = io.BytesIO()
                np.save(buffer, content, allow_pickle=True)
                content = buffer.getvalue()
            archive.writestr(f"{key}.npy", content)


@pytest.mark.parametrize("patch, fragment", [
    (dict(method=9), "array X uses an unsupported zip compression (method 9: "),
    (dict(method=99), "array X uses an unsupported zip compression (method 99: "),
    (dict(flag_bits=0x1), "array X is encrypted; expected an archive without a password"),
    (dict(flag_bits=0x40), "array X uses an unsupported zip compression (method 0: strong encryption"),
    (dict(extract_version=114), "uses a zip feature that cannot be read (zip file version 11.4)"),
])
def test_npz_zip_features_that_cannot_be_read(tmp_path, patch, fragment):
    path = tmp_path / "odd.npz"
    np.savez(path, X=np.arange(6.0).reshape(3, 2), y=np.zeros(3))
    patch_zip_headers(path, **patch)
    with pytest.raises(DataError) as caught:
        open_source(str(path)).scan()
    assert str(caught.value).startswith(f"{path}: ") and fragment in str(caught.value)


def test_npz_corrupt_member_data(tmp_path):
    path = tmp_path / "corrupt.npz"
    features = np.arange(40.0).reshape(10, 4)
    np.savez(path, X=features, y=np.zeros(10))
    data = bytearray(path.read_bytes())
    data[data.find(features[5].tobytes())] ^= 1
    path.write_bytes(data)
    with pytest.raises(DataError, match=r"corrupt\.npz: not a readable \.npz archive \(Bad CRC-32 for file 'X\.npy'\)"):
        open_source(str(path)).scan()


_CSR_EYE = dict(data=np.ones(3), indices=np.arange(3), indptr=np.arange(4), shape=np.array([3, 3]), y=np.zeros(3))
_F8_HEADER = "{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}"


@pytest.mark.parametrize("members, fragment", [
    (dict(_CSR_EYE, format=np.array(["csr"], dtype=object)), "array format has dtype object; expected a string"),
    (dict(_CSR_EYE, format=np.array(["csr", "csc"])), "array format has shape (2,); expected a single string"),
    (dict(_CSR_EYE, format=np.array(1.0)), "array format has dtype float64; expected a string"),
    (dict(_CSR_EYE, format=npy_bytes("{'descr': '<U1', 'fortran_order': False, 'shape': (), }", b"\xff" * 4)),
     "sparse format is '\ufffd'; expected 'csr'"),
    (dict(_CSR_EYE, format=np.array(b"\xffcsr")), "sparse format is '\ufffdcsr'"),
    (dict(X=np.array([[1.0, None]], dtype=object), y=np.zeros(1)), "array X has dtype object; expected real numbers"),
    (dict(X=np.ones((3, 2)), y=np.array([1, None, 2], dtype=object)), "array y has dtype object"),
    (dict(_CSR_EYE, indices=np.array([0, 1, 2], dtype=object)), "array indices has dtype object; expected integers"),
    (dict(X=np.zeros((2, 2), dtype="M8[s]"), y=np.zeros(2)), "array X has dtype datetime64[s]"),
    (dict(X=np.zeros((2, 2), dtype=[(f"field{i}", "<f8") for i in range(200)]), y=np.zeros(2)), "array X has dtype [('field0'"),
    (dict(X=np.array(1.0), y=np.zeros(1)), "X has shape (); expected a 2-D array"),
    (dict(X=np.ones((3, 2)), y=np.array(1.0)), "array y has shape (); expected a 1-D array"),
    (dict(_CSR_EYE, shape=np.array(3)), "array shape has shape (); expected a 1-D array"),
    (dict(_CSR_EYE, shape=np.array([3, 3, 1])), "shape has 3 entries; expected 2"),
    (dict(_CSR_EYE, shape=np.array([3.0, 3.0])), "array shape has dtype float64; expected integers"),
    (dict(_CSR_EYE, shape=np.array([2**62, 3])), "indptr has 4 entries; expected 4611686018427387905"),
    (dict(_CSR_EYE, indptr=np.array([0, 1, 2, 2**64 - 1], dtype=np.uint64)), "indptr is not a row pointer"),
    (dict(X=np.ones((3, 2)), y=np.array([b"a", b"b", b"c"])), "array y has dtype |S1; expected real numbers"),
    (dict(_CSR_EYE, data=np.array(["1", "2", "3"])), "array data has dtype <U1; expected real numbers"),
    (dict(X=npy_bytes(_F8_HEADER.format(shape=(2**62, 2**62)), bytes(48)), y=np.zeros(3)), "array X is truncated"),
    (dict(X=np.ones((3, 2)), y=npy_bytes(_F8_HEADER.format(shape=(2**62,)), bytes(24))), "array y is truncated"),
    (dict(X=npy_bytes(_F8_HEADER.format(shape=(3, 2)), bytes(40)), y=np.zeros(3)), "array X is truncated; expected 6 elements"),
    (dict(X=npy_bytes(_F8_HEADER.format(shape=(-1, 2)), bytes(16)), y=np.zeros(3)), "array X has no valid .npy header (shape (-1, 2))"),
    (dict(X=npy_bytes("__import__('os')", bytes(16)), y=np.zeros(3)), "array X has no valid .npy header"),
    (dict(X=npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 2", bytes(48)), y=np.zeros(3)), "no valid .npy header"),
    (dict(X=npy_bytes("{b'descr': '<f8', 'fortran_order': False, 'shape': (3, 2), }", bytes(48)), y=np.zeros(3)), "no valid .npy header"),
    (dict(X=npy_bytes("{'descr': ',f8', 'fortran_order': False, 'shape': (3, 2), }", bytes(48)), y=np.zeros(3)), "no valid .npy header"),
    (dict(X=npy_bytes(_F8_HEADER.format(shape="(1" + "+1" * 3000 + ",)"), bytes(48)), y=np.zeros(3)), "no valid .npy header"),
    (dict(X=b"\x93NUMPY\x03\x00" + bytes(8), y=np.zeros(3)), "array X uses .npy format version 3.0"),
    (dict(X=b"", y=np.zeros(3)), "array X has no valid .npy header"),
    (dict(X=np.array([[np.longdouble(1e300) ** 2]]), y=np.zeros(1)), "X[0, 0] is "),
    (dict(X=np.ones((1, 1)), y=np.array([-np.longdouble(1e300) ** 2])), "y[0] is "),
])
def test_npz_hostile_members(tmp_path, members, fragment):
    path = tmp_path / "hostile.npz"
    write_members(path, members)
    with pytest.raises(DataError) as caught:
        open_source(str(path)).scan()
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and fragment in message and len(message) < 250


def test_npz_listing_many_arrays_is_brief(tmp_path):
    path = tmp_path / "many.npz"
    np.savez(path, **{f"array{index:04d}": np.zeros(1) for index in range(500)})
    with pytest.raises(DataError) as caught:
        open_source(str(path)).scan()
    message = str(caught.value)
    assert "holds 500 arrays: array0000, array0001, array0002, ..., array0499; expected arrays X and y" in message


def test_npz_changed_after_scan_is_reported(tmp_path):
    path = tmp_path / "moving.npz"
    np.savez(path, X=np.ones((4, 2)), y=np.zeros(4))
    source = open_source(str(path))
    source.scan()
    np.savez(path, X=np.ones((4, 3)), y=np.zeros(4))
    with pytest.raises(DataError, match=r"moving\.npz changed since it was scanned: X has shape \(4, 3\), expected \(4, 2\)"):
        source.rows(np.arange(2))
    sparse_path = tmp_path / "moving_sparse.npz"
    np.savez(sparse_path, **_CSR_EYE)
    source = open_source(str(sparse_path))
    source.scan()
    np.savez(sparse_path, **dict(_CSR_EYE, data=np.ones(4), indices=np.array([0, 1, 2, 7]), indptr=np.array([0, 1, 2, 4])))
    with pytest.raises(DataError, match=r"changed since it was scanned: indices has shape \(4,\), expected \(3,\)"):
        source.rows(np.arange(3))


# ---------------------------------------------------------------- specs and row requests


def test_unknown_specs(tmp_path):
    with pytest.raises(DataError, match=r"^unknown data set 'iris': expected a builtin \(breast_cancer, digits\)"):
        open_source("iris")
    with pytest.raises(DataError, match=r"^data file not found: .*foo\.svm$"):
        open_source(str(tmp_path / "foo.svm"))
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    with pytest.raises(DataError, match="folder.csv"):
        open_source(str(folder))
    other = tmp_path / "data.txt"
    other.write_text("1,2\n")
    with pytest.raises(DataError, match=r"unsupported data file type '\.txt'"):
        open_source(str(other))


def test_rows_checks_the_request():
    source = open_source("synthetic:n=10,d=2")
    assert source.rows(np.array([], dtype=np.int64)).shape == (0, 2)
    assert open_source("synthetic:n=10,d=2,sparse=1").rows([], d=4).shape == (0, 4)
    with pytest.raises(IndexError):
        source.rows(np.array([10]))
    with pytest.raises(IndexError):
        source.rows(np.array([-1]))
    with pytest.raises(TypeError):
        source.rows(np.array([0.5]))


# ---------------------------------------------------------------- partitions


def test_scheme_names_for_help():
    assert PARTITION_SCHEMES == ("contiguous", "shuffle", "sample", "dirichlet:ALPHA")


@pytest.mark.parametrize("workers", [1, 3, 7, 10])
def test_contiguous_is_in_order_for_any_worker_count(workers):
    parts = partition("contiguous", 10, workers, 0, np.zeros(10))
    assert len(parts) == workers and all(part.size >= 1 and part.dtype == np.int64 for part in parts)
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(10))
    assert max(p.size for p in parts) - min(p.size for p in parts) <= 1


@pytest.mark.parametrize("workers", [1, 4, 13])
def test_shuffle_covers_every_row_once_sorted_per_worker(workers):
    parts = partition("shuffle", 50, workers, 3, np.zeros(50))
    assert len(parts) == workers and all(np.all(np.diff(part) > 0) for part in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(50))
    assert [p.size for p in parts] == [p.size for p in partition("contiguous", 50, workers, 0, None)]
    again = partition("shuffle", 50, workers, 3, np.zeros(50))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    if workers > 1:
        other = partition("shuffle", 50, workers, 4, np.zeros(50))
        assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def test_sample_draws_block_sized_sets_with_replacement():
    parts = partition("sample", 100, 3, 5, None)
    assert [p.size for p in parts] == [34, 33, 33]
    assert all(p.min() >= 0 and p.max() < 100 for p in parts)
    assert not np.array_equal(parts[1], parts[2])
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition("sample", 100, 3, 5, None)))
    assert any(np.unique(p).size < p.size for p in partition("sample", 100, 1, 5, None))


def _mean_top_label_share(parts, labels) -> float:
    """Average over workers of the share of their most common label (1/4 is an even mix of 4 labels)."""
    return float(np.mean([np.bincount(labels[part].astype(int)).max() / part.size for part in parts]))


def test_dirichlet_small_alpha_skews_labels():
    labels = np.repeat(np.arange(4.0), 50)
    parts = partition("dirichlet:0.05", 200, 4, 1, labels)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(200))
    assert all(part.size >= 1 and np.all(np.diff(part) > 0) for part in parts)
    # Small alpha leaves most workers dominated by one label; a shuffle stays near the even mix.
    assert _mean_top_label_share(parts, labels) > 0.7
    assert _mean_top_label_share(partition("shuffle", 200, 4, 1, labels), labels) < 0.45
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition("dirichlet:0.05", 200, 4, 1, labels)))


def test_dirichlet_gives_every_worker_a_row():
    labels = np.zeros(6)
    for seed in range(10):
        parts = partition("dirichlet:0.01", 6, 6, seed, labels)
        assert all(part.size == 1 for part in parts)
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(6))


def test_dirichlet_large_alpha_is_nearly_even():
    labels = np.repeat([0.0, 1.0], 500)
    parts = partition("dirichlet:1000", 1000, 2, 0, labels)
    for part in parts:
        assert abs(labels[part].mean() - 0.5) < 0.1


@pytest.mark.parametrize("scheme, workers, n, fragment", [
    ("contiguous", 8, 5, "more workers (8) than training samples (5)"),
    ("contiguous", 0, 5, "at least 1 worker"),
    ("random", 2, 5, "unknown partition scheme 'random'; expected one of contiguous, shuffle, sample, dirichlet:ALPHA"),
    ("dirichlet:-1", 2, 5, "expected one of contiguous"),
    ("dirichlet:0", 2, 5, "expected one of contiguous"),
    ("dirichlet:abc", 2, 5, "expected one of contiguous"),
    ("dirichlet", 2, 5, "expected one of contiguous"),
])
def test_partition_usage_errors(scheme, workers, n, fragment):
    with pytest.raises(UsageError) as caught:
        partition(scheme, n, workers, 0, np.zeros(n))
    assert fragment in str(caught.value)


# ---------------------------------------------------------------- test split


def test_split_test_is_seeded_sorted_and_disjoint():
    train, test = split_test(100, 0.2, 7)
    assert (train.size, test.size) == (80, 20)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(100))
    again = split_test(100, 0.2, 7)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(test, split_test(100, 0.2, 8)[1])
    assert not np.array_equal(test, np.arange(80, 100))


def test_split_test_edges():
    train, test = split_test(10, 0.0, 1)
    np.testing.assert_array_equal(train, np.arange(10))
    assert test.size == 0
    assert [part.size for part in split_test(10, 0.01, 1)] == [9, 1]
    assert [part.size for part in split_test(2, 0.99, 1)] == [1, 1]
    for fraction in (1.0, -0.1, float("nan")):
        with pytest.raises(UsageError, match="test fraction"):
            split_test(10, fraction, 1)


@pytest.mark.parametrize("kind", ["logistic", "linear"])
def test_synthetic_rows_drawn_in_pieces_are_the_rows_of_one_draw(monkeypatch, kind):
    """Dense features are drawn DRAW_BYTES at a time and only the wanted rows kept, so a block at large d
    never exists whole; the numbers are those of one (m, d) draw from the block's generator."""
    from dmlcli.data import synthetic

    spec = synthetic.parse_synthetic_spec(f"synthetic:n=300,d=40,seed=5,kind={kind}")
    weights = synthetic.true_weights(spec)
    whole = np.random.default_rng(9)
    X_whole = whole.standard_normal((300, 40))
    y_whole = X_whole @ weights + spec.noise * whole.standard_normal(300)
    monkeypatch.setattr(synthetic, "DRAW_BYTES", 8 * 40 * 7)  # 7 rows at a time
    keep = np.array([0, 6, 7, 13, 200, 299])
    X, y = synthetic.generate(spec, weights, np.random.default_rng(9), 300, keep)
    assert np.array_equal(X, X_whole[keep])
    expected = np.where(y_whole >= 0, 1.0, -1.0) if kind == "logistic" else y_whole
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-12)  # the products x·w* summed in pieces of rows
