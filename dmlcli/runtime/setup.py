"""Start-up: rank 0 plans the run (data scan, label encoding, split, partition, output paths);
every worker loads only its own rows and the shared preprocessing is agreed by Allreduce."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from dmlcli.algorithms import REGISTRY
from dmlcli.data import open_source, partition, split_test
from dmlcli.data.partition import parse_scheme
from dmlcli.errors import DataError, UsageError
from dmlcli.problems import LOSSES, Problem, Shard, make_regularizer
from dmlcli.runtime.config import RunConfig

SAMPLER_STREAM = 10  # the data module's split and partition streams use tags 1-4


@dataclass(frozen=True)
class Plan:
    """What every rank needs to know about the run; made on rank 0, broadcast at start-up."""

    run_id: str
    csv_path: str
    manifest_path: str
    n_train: int
    n_test: int
    d_features: int
    d_model: int
    batch_sizes: tuple[int, ...]  # samples each worker uses per step, for epoch counts
    label_encoder: object
    sparse: bool


@dataclass(frozen=True)
class WorkerRows:
    """The rows one worker loads: indices into the training and test sources, encoded labels."""

    train_index: np.ndarray
    train_y: np.ndarray
    test_index: np.ndarray
    test_y: np.ndarray


def output_paths(config: RunConfig) -> tuple[str, str, str]:
    """(run_id, CSV path, manifest path). A directory --out gets a fresh <run_id>.csv; a named
    file, or a --save-model file, that exists is refused unless --force."""
    stamp = f"{config.algorithm}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-s{config.seed}"
    out = config.out
    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        run_id, suffix = stamp, 1
        while any(os.path.exists(os.path.join(out, run_id + ext)) for ext in (".csv", ".json")):
            suffix += 1
            run_id = f"{stamp}-{suffix}"
        csv_path = os.path.join(out, f"{run_id}.csv")
    elif out.endswith(".csv"):
        run_id, csv_path = os.path.basename(out)[: -len(".csv")], out
    else:
        raise UsageError(f"--out must be a .csv file or a directory ending in '/', got {out!r}")
    manifest_path = csv_path[: -len(".csv")] + ".json"
    if not config.force:
        for path in (csv_path, manifest_path, config.save_model):
            if path and os.path.exists(path):
                raise UsageError(f"{path} exists; use --force to overwrite it or choose another --out")
    return run_id, csv_path, manifest_path


def precheck(config: RunConfig) -> None:
    """The input checks that need no data pass, run by the launching process before MPI starts."""
    output_paths(config)
    for spec in (config.data, config.test_data):
        if spec:
            open_source(spec)
    parse_scheme(config.partition)


def plan_run(config: RunConfig, workers: int) -> tuple[Plan, list[WorkerRows]]:
    """Rank 0's start-up work: everything that can be wrong with the input is found here."""
    run_id, csv_path, manifest_path = output_paths(config)
    loss = LOSSES[config.loss]
    source = open_source(config.data)
    info = source.scan()
    if config.test_data:
        test_source = open_source(config.test_data)
        test_info = test_source.scan()
        train_index, test_index = np.arange(info.n), np.arange(test_info.n)
        d_features = max(info.d, test_info.d) if info.sparse and test_info.sparse else info.d
        if test_info.d != d_features:
            raise DataError(f"{config.test_data} has {test_info.d} features, the training data {info.d}")
        test_labels = test_info.y
    else:
        train_index, test_index = split_test(info.n, config.held_out_fraction, config.seed)
        d_features, test_labels = info.d, info.y
    encode = loss.fit_labels(info.y[train_index])
    train_y, test_y = encode(info.y[train_index]), encode(test_labels[test_index])
    positions = partition(config.partition, train_index.size, workers, config.seed, train_y)
    test_parts = np.array_split(np.arange(test_index.size), workers)
    rows = [WorkerRows(train_index[p], train_y[p], test_index[t], test_y[t]) for p, t in zip(positions, test_parts)]
    n_train = sum(r.train_index.size for r in rows)
    batch_sizes = tuple(samples_per_step(config.batch_size, r.train_index.size, source.online) for r in rows)
    plan = Plan(run_id, csv_path, manifest_path, n_train, int(test_index.size), d_features,
                d_features + int(config.fit_intercept), batch_sizes, encode, info.sparse)
    return plan, rows


def samples_per_step(batch_size: int | None, shard_rows: int, online: bool) -> int:
    if batch_size is None:
        return shard_rows
    return batch_size if online else min(batch_size, shard_rows)


class Preprocessor:
    """Standardisation (over the whole training set, agreed by Allreduce) and the intercept column."""

    def __init__(self, mean: np.ndarray | None, scale: np.ndarray | None, fit_intercept: bool):
        self.mean, self.scale, self.fit_intercept = mean, scale, fit_intercept

    def __call__(self, X):
        if sp.issparse(X):
            X = sp.csr_matrix(X.multiply(1.0 / self.scale)) if self.scale is not None else X
            if self.fit_intercept:
                X = sp.hstack([X, np.ones((X.shape[0], 1))], format="csr")
            return X
        if self.scale is not None:
            X = (X - self.mean) / self.scale
        if self.fit_intercept:
            X = np.hstack([X, np.ones((X.shape[0], 1))])
        return np.ascontiguousarray(X)


def make_preprocessor(config: RunConfig, X, d: int, sparse: bool, allreduce) -> Preprocessor:
    """The preprocessing every rank applies, from statistics over the whole training set.

    X is this rank's training rows (None on rank 0); `allreduce` sums an array over all ranks
    in place (a collective, so every rank calls this). The variance takes a second pass over
    the centred values, so a feature with a large mean and a small spread keeps its digits.
    """
    if not config.standardize:
        return Preprocessor(None, None, config.fit_intercept)
    totals = np.zeros(d + 1)  # [Σ x, count]
    if X is not None:
        totals[:d] = np.asarray(X.sum(axis=0)).ravel()
        totals[d] = X.shape[0]
    allreduce(totals)
    mean = totals[:d] / totals[d]
    squares = np.zeros(d)  # Σ (x − mean)²
    if X is not None:
        squares[:] = centred_squares(X, mean)
    allreduce(squares)
    scale = np.sqrt(squares / totals[d])
    scale[scale == 0.0] = 1.0  # a constant column stays as it is (centred to 0 when dense)
    # Centring would fill sparse data: scale only (as scikit-learn's StandardScaler(with_mean=False)).
    return Preprocessor(None if sparse else mean, scale, config.fit_intercept)


def centred_squares(X, mean: np.ndarray) -> np.ndarray:
    """Σ_i (x_ij − mean_j)² per column; for CSR, the stored entries plus mean² for each implicit zero."""
    if not sp.issparse(X):
        return ((X - mean) ** 2).sum(axis=0)
    X = sp.csr_matrix(X)
    stored = np.bincount(X.indices, weights=(X.data - mean[X.indices]) ** 2, minlength=mean.size)
    zeros = X.shape[0] - np.bincount(X.indices, minlength=mean.size)
    return stored + zeros * mean * mean


def make_problem(config: RunConfig, plan: Plan) -> Problem:
    reg = make_regularizer(config.reg, config.lam, config.l1_ratio)
    return Problem(LOSSES[config.loss], reg, plan.n_train, plan.d_model)


def load_rows(config: RunConfig, plan: Plan, rows: WorkerRows):
    """(X_train, X_test) for this worker: only its rows of each source are read."""
    source = open_source(config.data)
    X = source.rows(rows.train_index, plan.d_features)
    test_source = open_source(config.test_data) if config.test_data else source
    X_test = test_source.rows(rows.test_index, plan.d_features) if rows.test_index.size else None
    return source, X, X_test


def make_shards(config: RunConfig, plan: Plan, rows: WorkerRows, source, X, X_test, prepare: Preprocessor, rank: int):
    """The worker's training shard (with its sampler) and test block, preprocessed."""
    rng = np.random.default_rng([config.seed, SAMPLER_STREAM, rank])
    draw = None
    if source.online:
        def draw(generator, m):
            X_new, y_new = source.draw(generator, m)
            return prepare(X_new), plan.label_encoder(y_new)
    shard = Shard(prepare(X), rows.train_y, rng, draw)
    test = (prepare(X_test), rows.test_y) if X_test is not None else None
    return shard, test


def smoothness(transport, X, problem: Problem, max_iterations: int = 200, rtol: float = 1e-6) -> float:
    """L with F L-smooth: curvature · λmax(XᵀX)/n + l2, λmax by power iteration over all shards.

    Collective: each iteration is one Allreduce of Σ_k X_kᵀX_k v; every rank sees the same
    iterate, so all stop together.
    """
    v = np.random.default_rng(0).standard_normal(problem.d)
    v /= np.linalg.norm(v)
    u = np.empty(problem.d)
    largest = 0.0
    for _ in range(max_iterations):
        u[:] = X.T @ (X @ v) if X is not None else 0.0
        transport.allreduce(u)
        previous, largest = largest, float(np.linalg.norm(u))
        if largest == 0.0:
            break
        v = u / largest
        if abs(largest - previous) <= rtol * largest:
            break
    return problem.loss.curvature * largest / problem.n + problem.reg.l2


def auto_step(transport, X, problem: Problem, family: str, workers: int) -> float:
    """--lr auto: 1/L for synchronous algorithms. Asynchronous ones apply gradients about K − 1
    updates old, and gradient steps with delay τ are stable only for η ≲ 1/(L(1+τ)) (Agarwal &
    Duchi 2011), so they get 1/(L·K). Collective."""
    delay_factor = workers if family == "async" else 1
    return 1.0 / (smoothness(transport, X, problem) * delay_factor)


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
    X = sp.vstack(blocks, format="csr") if plan.sparse else np.vstack(blocks)
    prepare = make_preprocessor(config, X, plan.d_features, plan.sparse, allreduce=lambda total: None)
    return make_problem(config, plan), prepare(X), np.concatenate([part.train_y for part in rows])
