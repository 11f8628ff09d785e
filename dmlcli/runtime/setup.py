"""Start-up: rank 0 plans the run (data scan, label encoding, split, partition, output paths);
every worker loads only its own rows and the shared preprocessing is agreed by Allreduce."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import time
from dataclasses import dataclass

import numpy as np

from dmlcli.algorithms import REGISTRY
from dmlcli.data import agree_index_base, open_source, partition, split_test
from dmlcli.data.csvfile import CsvSource
from dmlcli.data.libsvm import LibsvmSource
from dmlcli.data.partition import parse_scheme
from dmlcli.data.synthetic import BLOCK_ROWS, SyntheticSource, parse_synthetic_spec
from dmlcli.errors import DataError, UsageError
from dmlcli.problems import LOSSES, Problem, Shard, make_regularizer
from dmlcli.runtime import heterogeneity
from dmlcli.runtime.config import RunConfig
from dmlcli.sparse import issparse, scipy_sparse

SAMPLER_STREAM = 10  # the data module's split and partition streams use tags 1-4
MEGABYTE = 1e6
READ_BLOCK_BYTES = 8 * 2**20  # dense rows are read into the shard this much at a time (see load_rows)
ROW_BYTES = 40  # rank 0's start-up memory per training row: label, encoded label, split and partition indices
BLOCK_ENTRIES = 2**17  # sparse entries preprocessed at a time (see _entry_blocks): temporaries of about 1 MiB each


@dataclass(frozen=True)
class Plan:
    """What every rank needs to know about the run; made on rank 0, broadcast at start-up."""

    run_id: str
    csv_path: str
    manifest_path: str
    numbered: bool  # --out is a directory: the run takes the first free <run_id>[-N].csv in it
    n_train: int
    n_test: int
    d_features: int
    d_model: int
    batch_sizes: tuple[int, ...]  # samples each client uses per step, for epoch counts
    client_sizes: tuple[int, ...]  # training rows of each client (clients 0..N−1, one per worker by default)
    label_encoder: object
    sparse: bool
    index_base: int | None  # LIBSVM files: the index base agreed for training and test files


@dataclass(frozen=True)
class WorkerRows:
    """The rows one worker loads: indices into the training and test sources, encoded labels.
    Its training rows are those of its clients first_client, first_client + 1, …, in that order."""

    train_index: np.ndarray
    train_y: np.ndarray
    test_index: np.ndarray
    test_y: np.ndarray
    first_client: int
    client_sizes: tuple[int, ...]
    # Rank 0's scanned sources (training, test) where reusing the scan saves a worker reading all the
    # data: text files (row offsets: a worker reads only its rows' bytes instead of parsing the whole
    # file) and synthetic sets (labels: a worker draws only its rows' blocks, not all n rows); None
    # for the other kinds, whose scan reads only labels.
    scanned: tuple = (None, None)


def names_a_directory(out: str) -> bool:
    """--out names a directory (ending in '/' or existing): each run takes a numbered name in it."""
    return out.endswith(("/", os.sep)) or os.path.isdir(out)


def output_paths(config: RunConfig) -> tuple[str, str, str]:
    """(run_id, CSV path, manifest path) as named by --out, checked but not created. For a
    directory --out the run_id is only a first choice: reserve_outputs picks a free one."""
    out = config.out
    if config.resume is not None:  # the run's own outputs, which exist (runtime.checkpoint.resumed_config)
        return os.path.basename(out)[: -len(".csv")], out, config.resume
    numbered = names_a_directory(out)
    if numbered:
        run_id = f"{config.algorithm}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-s{config.seed}"
        csv_path = os.path.join(out, f"{run_id}.csv")
    elif out.endswith(".csv"):
        run_id, csv_path = os.path.basename(out)[: -len(".csv")], out
    else:
        raise UsageError(f"--out must be a .csv file or a directory ending in '/', got {out!r}")
    manifest_path = csv_path[: -len(".csv")] + ".json"
    outputs = {"--out": csv_path, "--out's manifest": manifest_path, "--save-model": config.save_model}
    for option, path in outputs.items():
        if path:
            _check_output(option, path, config, may_exist=config.force or (numbered and option != "--save-model"))
    if config.save_model and any(_same_file(config.save_model, path) for path in (csv_path, manifest_path)):
        raise UsageError(f"--save-model {config.save_model} is the run's own CSV or manifest; choose another --save-model")
    return run_id, csv_path, manifest_path


def _check_output(option: str, path: str, config: RunConfig, may_exist: bool) -> None:
    """An output path must be creatable, must not clobber an input, and must not exist unless
    may_exist (--force, or a numbered name that reserve_outputs will move past)."""
    for input_option, input_path in (("--data", config.data), ("--test-data", config.test_data)):
        if input_path and _same_file(path, input_path):
            raise UsageError(f"{option} {path} is the {input_option} file; choose another output path")
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise UsageError(f"{option} {path}: cannot create it, {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot create it, directory {ancestor} is not writable")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path} is a directory; expected a file name")
    if os.path.exists(path) and not may_exist:
        what = "--out" if option.startswith("--out") else option
        raise UsageError(f"{option} {path} exists; use --force to overwrite it or choose another {what}")


def _same_file(path: str, other: str) -> bool:
    if os.path.realpath(path) == os.path.realpath(other):
        return True
    try:
        return os.path.samefile(path, other)  # hard links too
    except OSError:
        return False


def reserve_outputs(config: RunConfig, plan: Plan) -> Plan:
    """Create the run's CSV file exclusively, so that runs started together never share a name:
    a directory --out gets `<run_id>.csv` with the first free suffix (-2, -3, …); a named file
    that another run created since the check is refused. Returns the plan with the names taken."""
    if config.resume is not None:
        return plan  # a resumed run goes on in its own files
    os.makedirs(os.path.dirname(os.path.abspath(plan.csv_path)), exist_ok=True)
    if not plan.numbered:
        mode = os.O_CREAT | os.O_WRONLY | (os.O_TRUNC if config.force else os.O_EXCL)
        try:
            os.close(os.open(plan.csv_path, mode, 0o644))
        except FileExistsError:
            raise UsageError(f"--out {plan.csv_path} exists (another run just created it); "
                             "use --force to overwrite it or choose another --out") from None
        return plan
    directory = os.path.dirname(plan.csv_path)
    for suffix in itertools.count(1):
        run_id = plan.run_id if suffix == 1 else f"{plan.run_id}-{suffix}"
        csv_path = os.path.join(directory, f"{run_id}.csv")
        manifest_path = os.path.join(directory, f"{run_id}.json")
        if os.path.exists(manifest_path):  # a name is taken by either file of a run
            continue
        try:
            os.close(os.open(csv_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue
        return dataclasses.replace(plan, run_id=run_id, csv_path=csv_path, manifest_path=manifest_path)
    raise AssertionError("unreachable")


def release_outputs(plan: Plan) -> None:
    """Remove the CSV reserve_outputs created for a run that then ended as bad input."""
    with contextlib.suppress(OSError):
        if os.path.getsize(plan.csv_path) == 0:
            os.remove(plan.csv_path)


def check_model_size(d_model: int, config: RunConfig, source: str) -> None:
    """Refuse a model too large to hold: every rank keeps it and several working copies."""
    megabytes = d_model * 8 / MEGABYTE
    if megabytes > config.max_model_mb:
        raise UsageError(f"{source} gives a model of {d_model:,} parameters, {megabytes:,.0f} MB a copy "
                         f"(every rank holds several copies); the limit is --max-model-mb {config.max_model_mb:g}")


def check_dense_rows(rows: int, d: int, source: str) -> None:
    """Refuse dense data that cannot fit in this machine's free memory, before allocating it."""
    needed, available = rows * d * 8, available_memory()
    if needed > available:
        raise UsageError(f"{source}: {rows:,} dense rows of {d:,} features take {needed / MEGABYTE:,.0f} MB, "
                         f"more than the {available / MEGABYTE:,.0f} MB of free memory")


def available_memory() -> int:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_clients(config: RunConfig, workers: int) -> int:
    """The number of clients N: at least one per worker; only synchronous algorithms have them yet."""
    spec = REGISTRY[config.algorithm]
    clients = config.clients or workers
    if clients < workers:
        raise UsageError(f"--clients {clients} is fewer than the {workers} workers; every worker needs a client")
    if spec.family not in ("sync", "async") and clients != workers:
        raise UsageError(f"{config.algorithm}: --clients is for the synchronous and parameter-server algorithms "
                         f"(each client a logical worker); a {spec.family} run has one client per worker")
    if spec.family != "sync" and config.client_fraction < 1.0:
        raise UsageError(f"{config.algorithm}: --client-fraction is for synchronous algorithms; "
                         "the parameter server serves every client in turn")
    if config.client_fraction < 1.0 and not spec.client_sampling:
        raise UsageError(f"{config.algorithm} keeps every client's state in step each round; "
                         "--client-fraction below 1 is not defined for it")
    return clients


def client_blocks(clients: int, workers: int) -> list[np.ndarray]:
    """The clients of each worker: contiguous blocks, in rank order."""
    return np.array_split(np.arange(clients), workers)


def client_owners(clients: int, workers: int) -> np.ndarray:
    """The worker (0-based: rank − 1) holding each client."""
    return np.repeat(np.arange(workers), [block.size for block in client_blocks(clients, workers)])


def check_heterogeneity(config: RunConfig, workers: int) -> None:
    """--delay against the worker count, --dropout for the algorithms that cannot leave a client out,
    and --network for those that send no messages."""
    heterogeneity.check(config.delay, workers)
    spec = REGISTRY[config.algorithm]
    if config.dropout and spec.family == "sync" and not spec.client_sampling:
        raise UsageError(f"{config.algorithm} keeps every client's state in step each round; "
                         "--dropout (workers sitting rounds out) is not defined for it")
    if config.network and spec.family == "shared":
        raise UsageError(f"{config.algorithm}: --network is not defined for it; its workers share one model "
                         "in memory and send no messages")


def check_crash_rank(config: RunConfig, workers: int) -> None:
    if config.crash and config.crash[0] > workers:
        rank, step = config.crash[:2]
        raise UsageError(f"--crash {rank}@{step}: there is no rank {rank}; this run has ranks 0-{workers}")


def _check_synthetic_size(spec: str, config: RunConfig) -> None:
    """Synthetic data say their size before any is drawn: check it before the source allocates w*
    and before rank 0 draws every label (it keeps about ROW_BYTES a row to plan the run)."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        synthetic = parse_synthetic_spec(spec)
        check_model_size(synthetic.d + int(config.fit_intercept), config, f"--data {spec}")
        planning = synthetic.n * ROW_BYTES
        if planning > available_memory():
            raise UsageError(f"--data {spec}: planning {synthetic.n:,} rows takes {planning / MEGABYTE:,.0f} MB on rank 0, "
                             f"more than the {available_memory() / MEGABYTE:,.0f} MB of free memory")
        if not synthetic.sparse:
            check_dense_rows(min(synthetic.n, BLOCK_ROWS), synthetic.d, f"--data {spec}")


def precheck(config: RunConfig) -> None:
    """The input checks that need no data pass, run by the launching process before MPI starts."""
    output_paths(config)
    for spec in (config.data, config.test_data):
        if spec:
            _check_synthetic_size(spec, config)
            open_source(spec)
    parse_scheme(config.partition)
    check_crash_rank(config, config.workers)
    check_clients(config, config.workers)
    check_heterogeneity(config, config.workers)


def plan_run(config: RunConfig, workers: int) -> tuple[Plan, list[WorkerRows]]:
    """Rank 0's start-up work: everything that can be wrong with the input is found here. Writes nothing."""
    run_id, csv_path, manifest_path = output_paths(config)
    check_crash_rank(config, workers)
    check_heterogeneity(config, workers)
    loss = LOSSES[config.loss]
    _check_synthetic_size(config.data, config)
    source = open_source(config.data)
    info = source.scan()
    if config.test_data:
        test_source = open_source(config.test_data)
        test_info = test_source.scan()
        index_base = agree_index_base([source, test_source])
        info, test_info = source.scan(), test_source.scan()  # the agreed base may have moved a file's columns
        train_index, test_index = np.arange(info.n), np.arange(test_info.n)
        d_features = max(info.d, test_info.d) if info.sparse and test_info.sparse else info.d
        if test_info.d != d_features:
            raise DataError(f"{config.test_data} has {test_info.d} features, the training data {info.d}")
        test_labels, training = test_info.y, f"training data {config.data}"
    else:
        index_base = agree_index_base([source])
        train_index, test_index = split_test(info.n, config.held_out_fraction, config.seed)
        d_features, test_labels = info.d, info.y
        training = (f"the training split of {config.data} ({train_index.size} of its {info.n} rows; "
                    f"--test-fraction {config.held_out_fraction:g} held out)")
    d_model = d_features + int(config.fit_intercept)
    check_model_size(d_model, config, f"--data {config.data}")
    encode = _with_context(loss.fit_labels, training)(info.y[train_index])
    train_y = encode(info.y[train_index])
    test_y = _with_context(encode, config.test_data or f"the test split of {config.data}")(test_labels[test_index])
    clients = check_clients(config, workers)
    positions = partition(config.partition, train_index.size, clients, config.seed, train_y)
    test_parts = np.array_split(np.arange(test_index.size), workers)
    rows = []
    for mine, t in zip(client_blocks(clients, workers), test_parts):  # contiguous blocks of clients
        p = np.concatenate([positions[c] for c in mine])
        sizes = tuple(positions[c].size for c in mine)
        rows.append(WorkerRows(train_index[p], train_y[p], test_index[t], test_y[t], int(mine[0]), sizes,
                               (_reusable_scan(source), _reusable_scan(test_source) if config.test_data else None)))
    if not info.sparse:
        largest = max(part.train_index.size + part.test_index.size for part in rows)
        check_dense_rows(largest, d_features, f"--data {config.data}")
    n_train = sum(r.train_index.size for r in rows)
    client_sizes = tuple(part.size for part in positions)
    batch_sizes = tuple(samples_per_step(config.batch_size, size, source.online) for size in client_sizes)
    plan = Plan(run_id, csv_path, manifest_path, names_a_directory(config.out), n_train, int(test_index.size), d_features, d_model,
                batch_sizes, client_sizes, encode, info.sparse, index_base)
    return plan, rows


def _reusable_scan(source):
    """The scanned source, if a worker reusing its scan reads less (see WorkerRows.scanned)."""
    return source if isinstance(source, (LibsvmSource, CsvSource, SyntheticSource)) else None


def _with_context(convert, where: str):
    """convert, with a DataError it raises prefixed by which data it was looking at."""
    def converted(values):
        try:
            return convert(values)
        except DataError as error:
            raise DataError(f"{where}: {error}") from None
    return converted


def samples_per_step(batch_size: int | None, shard_rows: int, online: bool) -> int:
    if batch_size is None:
        return shard_rows
    return batch_size if online else min(batch_size, shard_rows)


class Preprocessor:
    """Standardisation (over the whole training set, agreed by Allreduce) and the intercept column.

    A standardised entry is (x / bound − mean) / scale, with bound the column's largest |x|:
    dividing by it first keeps every intermediate in [−1, 1], so a column's units (1e-200 or
    1e200) change nothing and nothing overflows. Sparse data are not centred (mean is None).
    """

    def __init__(self, bound: np.ndarray | None, mean: np.ndarray | None, scale: np.ndarray | None, fit_intercept: bool):
        self.bound, self.mean, self.scale, self.fit_intercept = bound, mean, scale, fit_intercept

    def __call__(self, X, in_place: bool = False):
        """X preprocessed. With in_place, X is overwritten: dense X, when load_rows left the intercept's
        column beside it (X is a view of its first d columns), becomes that array; sparse X takes the
        intercept's entries in the room the parse cache's reader leaves after its arrays (_with_ones_column)."""
        if issparse(X):
            if not in_place and (self.scale is not None or self.fit_intercept):
                X = scipy_sparse().csr_matrix(X, copy=True)  # both change X's arrays
            if self.scale is not None:
                for entries in _entry_blocks(X):
                    X.data[entries] /= self.bound[X.indices[entries]]
                    X.data[entries] /= self.scale[X.indices[entries]]
            return _with_ones_column(X) if self.fit_intercept else X
        full = _with_spare_column(X) if in_place and self.fit_intercept else None
        if not in_place:
            X = np.array(X, dtype=np.float64)
        if self.scale is not None:
            for block in _row_blocks(X):
                block /= self.bound
                block -= self.mean
                block /= self.scale
        if full is not None:
            full[:, -1] = 1.0
            return full
        if self.fit_intercept:
            X = np.hstack([X, np.ones((X.shape[0], 1))])
        return np.ascontiguousarray(X)


def _with_spare_column(X):
    """The array X is the first columns of, when that array has exactly one column more (load_rows'
    room for the intercept), else None."""
    full = X.base
    if isinstance(full, np.ndarray) and full.ndim == 2 and full.shape == (X.shape[0], X.shape[1] + 1) \
            and full.flags.c_contiguous and full.ctypes.data == X.ctypes.data and full.strides == X.strides:
        return full
    return None


def _row_blocks(X, block_bytes: int = 4 * 2**20):
    """Views of X's rows in blocks of about 4 MiB: column statistics and scaling done a block at a
    time need temporaries of a block, not of the whole shard (the shard is most of a worker's memory)."""
    rows = _rows_per_block(X.shape[1], block_bytes)
    for start in range(0, X.shape[0], rows):
        yield X[start:start + rows]


def _rows_per_block(columns: int, block_bytes: int) -> int:
    """Rows of float64 `columns` wide that fit in block_bytes (at least one)."""
    return max(1, block_bytes // (8 * max(1, columns)))


def _entry_blocks(X):
    """Slices of a CSR matrix's stored entries, BLOCK_ENTRIES each: what _row_blocks is for dense rows.
    Sparse statistics and scaling done a block at a time need no shard-sized temporaries; on the issue-8
    LIBSVM file (18 MiB of CSR a worker) whole-shard copies made a worker's peak 4 times its data."""
    for start in range(0, X.nnz, BLOCK_ENTRIES):
        yield slice(start, start + BLOCK_ENTRIES)


def _with_ones_column(X):
    """CSR X with a column of ones after its last, as scipy.sparse.hstack([X, ones]) gives it. When X's
    arrays are the start of arrays with exactly one entry a row to spare (the parse cache's reader leaves
    that room), it is built in them, the rows moved back a block at a time, so that the shard is not held
    twice; X is not usable afterwards."""
    (rows, columns), nonzeros = X.shape, X.nnz
    starts = X.indptr.astype(np.int64)
    data, indices = _with_room(X.data[:nonzeros], rows), _with_room(X.indices[:nonzeros], rows)
    # Row r moves r places back; from the last block to the first, so nothing is overwritten before it moves.
    rows_per_block = max(1, rows * BLOCK_ENTRIES // max(1, nonzeros))
    for first in reversed(range(0, rows, rows_per_block)):
        stop = min(first + rows_per_block, rows)
        low, high = int(starts[first]), int(starts[stop])
        moved_to = np.arange(low, high) + np.repeat(np.arange(first, stop), np.diff(starts[first:stop + 1]))
        data[moved_to] = data[low:high].copy()
        indices[moved_to] = indices[low:high].copy()
    ones_at = starts[1:] + np.arange(rows)
    data[ones_at] = 1.0
    indices[ones_at] = columns
    return scipy_sparse().csr_matrix((data, indices, starts + np.arange(rows + 1)), shape=(rows, columns + 1))


def _with_room(array: np.ndarray, more: int) -> np.ndarray:
    """`array` with `more` elements after it: the array it is the start of, when that has exactly that many
    more (a reader left them), else a copy."""
    owner = array
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    if (owner.ndim == 1 and owner.dtype == array.dtype and owner.flags.c_contiguous and owner.flags.writeable
            and array.flags.c_contiguous and owner.size == array.size + more and owner.ctypes.data == array.ctypes.data):
        return owner
    grown = np.empty(array.size + more, dtype=array.dtype)
    grown[:array.size] = array
    return grown


def make_preprocessor(config: RunConfig, X, d: int, sparse: bool, allreduce) -> Preprocessor:
    """The preprocessing every rank applies, from statistics over the whole training set.

    X is this rank's training rows (None on rank 0); `allreduce(buf, op)` reduces an array over
    all ranks in place with op "sum" or "max" (a collective, so every rank calls this). Three
    passes: each column's largest |x|, the mean of x / bound, and the variance about that mean
    (a second pass, so a feature with a large mean and a small spread keeps its digits).
    """
    if not config.standardize:
        return Preprocessor(None, None, None, config.fit_intercept)
    bound = np.zeros(d)
    if X is not None and X.shape[0]:
        if issparse(X):
            for entries in _entry_blocks(X):
                np.maximum.at(bound, X.indices[entries], np.abs(X.data[entries]))
        else:
            for block in _row_blocks(X):
                np.maximum(bound, np.abs(block).max(axis=0), out=bound)
    allreduce(bound, "max")
    bound[bound == 0.0] = 1.0  # an all-zero column stays zero
    totals = np.zeros(d + 1)  # [Σ x / bound, count]
    if X is not None:
        if issparse(X):
            # Entry by entry in storage order: the same additions, in the same order, as X.sum(axis=0).
            for entries in _entry_blocks(X):
                np.add.at(totals, X.indices[entries], X.data[entries] / bound[X.indices[entries]])
        else:
            for block in _row_blocks(X):
                totals[:d] += (block / bound).sum(axis=0)
        totals[d] = X.shape[0]
    allreduce(totals, "sum")
    mean = totals[:d] / totals[d]
    squares = np.zeros(d)  # Σ (x / bound − mean)²
    if X is not None:
        squares[:] = centred_squares(X, mean, bound)
    allreduce(squares, "sum")
    scale = np.sqrt(squares / totals[d])
    scale[scale == 0.0] = 1.0  # a constant column stays as it is (centred to 0 when dense)
    # Centring would fill sparse data: scale only (as scikit-learn's StandardScaler(with_mean=False)).
    return Preprocessor(bound, None if sparse else mean, scale, config.fit_intercept)


def centred_squares(X, mean: np.ndarray, bound: np.ndarray | None = None) -> np.ndarray:
    """Σ_i (x_ij / bound_j − mean_j)² per column (no bound: x_ij itself); for CSR, the stored entries
    plus mean² for each implicit zero. Dense rows are taken a block at a time (see _row_blocks)."""
    if not issparse(X):
        total = np.zeros(mean.size)
        for block in _row_blocks(X):
            centred = block / bound if bound is not None else np.array(block, dtype=np.float64)
            centred -= mean
            total += (centred * centred).sum(axis=0)
        return total
    X = scipy_sparse().csr_matrix(X)
    stored, zeros = np.zeros(mean.size), np.full(mean.size, X.shape[0])
    for entries in _entry_blocks(X):
        columns = X.indices[entries]
        centred = X.data[entries] / bound[columns] if bound is not None else X.data[entries].astype(np.float64)
        centred -= mean[columns]
        np.add.at(stored, columns, centred * centred)
        zeros -= np.bincount(columns, minlength=mean.size)
    return stored + zeros * mean * mean


def make_problem(config: RunConfig, plan: Plan) -> Problem:
    reg = make_regularizer(config.reg, config.lam, config.l1_ratio)
    return Problem(LOSSES[config.loss], reg, plan.n_train, plan.d_model)


def load_rows(config: RunConfig, plan: Plan, rows: WorkerRows):
    """(source, X_train, X_test) for this worker: only its rows of each source are read. Dense rows
    are read a block at a time into an array of this rank's own, with a column to spare for the
    intercept when the model has one (X is then a view of the other columns): make_shards
    preprocesses it in place, so the shard is never held twice."""
    scanned, scanned_test = rows.scanned
    source = scanned or open_source(config.data, index_base=plan.index_base)
    X = _read_rows(source, rows.train_index, plan, config.fit_intercept)
    test_source = (scanned_test or open_source(config.test_data, index_base=plan.index_base)) if config.test_data else source
    X_test = _read_rows(test_source, rows.test_index, plan, config.fit_intercept) if rows.test_index.size else None
    return source, X, X_test


def _read_rows(source, index: np.ndarray, plan: Plan, fit_intercept: bool):
    if plan.sparse:
        return source.rows(index, plan.d_features)
    d = plan.d_features
    full = np.empty((index.size, d + int(fit_intercept)))
    block = _rows_per_block(d, READ_BLOCK_BYTES)
    for start in range(0, index.size, block):
        full[start:start + block, :d] = source.rows(index[start:start + block], d)
    return full[:, :d] if fit_intercept else full


def make_shards(config: RunConfig, plan: Plan, rows: WorkerRows, source, X, X_test, prepare: Preprocessor):
    """The worker's client shards (each with its own sampler, seeded by its client number, so one
    client per worker samples as the worker always did) and its test block, preprocessed (in place:
    X and X_test are load_rows' arrays)."""
    X = prepare(X, in_place=True)
    shards, start = [], 0
    for offset, size in enumerate(rows.client_sizes):
        client = rows.first_client + offset
        rng = np.random.default_rng([config.seed, SAMPLER_STREAM, client + 1])
        draw = None
        if source.online:
            def draw(generator, m):
                X_new, y_new = source.draw(generator, m)
                return prepare(X_new), plan.label_encoder(y_new)
        block = X if size == X.shape[0] else X[start:start + size]
        shards.append(Shard(block, rows.train_y[start:start + size], rng, draw, client=client))
        start += size
    test = (prepare(X_test, in_place=True), rows.test_y) if X_test is not None else None
    return shards, test


def smoothness(transport, blocks, problem: Problem, max_iterations: int = 200, rtol: float = 1e-6) -> float:
    """L with F L-smooth: curvature · λmax(XᵀX)/n + l2, λmax by Lanczos iteration over all shards.

    `blocks` are this rank's training matrices (its clients'; none on rank 0). Collective: each
    iteration is one Allreduce of Σ_k X_kᵀX_k q; every rank sees the same iterate, so all stop together.
    Lanczos (the three-term recurrence: three d-vectors, as power iteration held) stops once the
    largest Ritz value, which rises towards λmax, moves by at most rtol of itself in an iteration, or
    its residual bounds its error by that. Without reorthogonalisation the basis loses orthogonality
    only once a Ritz value has converged, which leaves the largest one as it is: reorthogonalising
    against every earlier direction (j d-vectors kept, and copied each iteration) gave the same value
    to 1e-15 and the same iteration count on every case of tests/test_smoothness.py and on the LIBSVM
    set below. Power iteration, used before with the same test, stopped at its 200 iterations 0.6 %
    short of λmax on Gaussian features; on the standardised 200,000 × 2,000 LIBSVM set of issue 8 (top
    eigenvalues clustered) it took 200 iterations, half of a repeated 4-worker run's 4 s, where Lanczos
    takes 41 and ends 4e-6 short (2026-11-25, 2-core development machine).
    """
    d = problem.d
    q = np.random.default_rng(0).standard_normal(d)
    q /= np.linalg.norm(q)
    previous_q = np.zeros(d)
    alphas, betas = [], []
    largest = beta = 0.0
    for _ in range(min(max_iterations, d)):
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, as bad input
            u = sum((X.T @ (X @ q) for X in blocks), np.zeros(d))
        transport.allreduce(u)
        if not np.isfinite(u).all():  # features too large to square: reported as bad input by auto_step
            return float("inf")
        alpha = float(q @ u)
        alphas.append(alpha)
        u -= alpha * q
        u -= beta * previous_q
        beta = float(np.linalg.norm(u))
        values, vectors = _tridiagonal_eigh(np.array(alphas), np.array(betas))
        previous, largest = largest, float(values[-1])
        if largest <= 0.0 or min(largest - previous, beta * abs(vectors[-1, -1])) <= rtol * largest:
            break
        betas.append(beta)
        previous_q, q = q, u / beta
    return problem.loss.curvature * max(largest, 0.0) / problem.n + problem.reg.l2


def _tridiagonal_eigh(diagonal: np.ndarray, off_diagonal: np.ndarray):
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal matrix with this diagonal
    and off-diagonal: the Lanczos matrix, at most a few dozen rows, so a dense solver is plenty."""
    T = np.diag(diagonal) + np.diag(off_diagonal, 1) + np.diag(off_diagonal, -1)
    return np.linalg.eigh(T)


def auto_step(transport, blocks, problem: Problem, family: str, workers: int) -> float:
    """--lr auto: 1/L for synchronous algorithms. Asynchronous ones apply gradients about K − 1
    updates old, and gradient steps with delay τ are stable only for η ≲ 1/(L(1+τ)) (Agarwal &
    Duchi 2011), so they get 1/(L·K); so do shared-memory ones (hogwild), whose K workers each
    write a step computed from a w that the others have changed about K − 1 times since it was
    read. Collective; an L that gives no usable step is bad input."""
    smooth = smoothness(transport, blocks, problem)
    if smooth == 0.0:
        raise UsageError("--lr auto: the objective is flat (every feature is zero and the regulariser has no "
                         "l2 part), so there is nothing to learn and no step size to choose")
    delay_factor = workers if family in ("async", "shared") else 1
    step = 1.0 / (smooth * delay_factor)
    if not np.isfinite(smooth) or step < np.finfo(float).tiny:
        raise UsageError(f"--lr auto: the features are so large that the smoothness constant L is {smooth:.3g} and "
                         "no step size is usable; standardise them (drop --no-standardize) or rescale the data")
    return step


def algorithm_for(config: RunConfig, problem: Problem, workers: int, lr: float):
    from dmlcli.algorithms import Settings

    settings = Settings(lr, config.batch_size, workers, config.seed)
    return REGISTRY[config.algorithm].build(problem, settings, **config.params)


def centralised_problem(config: RunConfig, workers: int = 1):
    """(problem, X, y): the training set of a run on `workers` workers — the union of their
    shards, which for --partition sample depends on the worker count — in one process,
    preprocessed exactly as the workers preprocess their shards, for the reference solver."""
    plan, rows = plan_run(dataclasses.replace(config, force=True), workers)  # it writes nothing
    blocks = [load_rows(config, plan, part)[1] for part in rows]
    X = scipy_sparse().vstack(blocks, format="csr") if plan.sparse else np.vstack(blocks)
    prepare = make_preprocessor(config, X, plan.d_features, plan.sparse, allreduce=lambda buf, op: None)
    return make_problem(config, plan), prepare(X), np.concatenate([part.train_y for part in rows])
