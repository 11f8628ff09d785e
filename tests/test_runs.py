"""Whole runs on the in-process transport: convergence to the centralised reference solution
and the exact equivalences of the design notes."""

from pathlib import Path

import numpy as np
import pytest

from conftest import objectives, reference_objective
from dmlcli.problems import LOSSES, Problem, make_regularizer
from dmlcli.report import read_csv
from dmlcli.runtime.local_run import run_local
from dmlcli.runtime.setup import centralised_problem


def gradient_descent_objectives(run, step: float, steps: int) -> list[float]:
    """F along centralised proximal gradient descent from 0 on the run's whole training set."""
    problem, X, y = centralised_problem(run)
    w = np.zeros(problem.d)
    values = [problem.objective(w, problem.loss_sum(w, X, y))]
    for _ in range(steps):
        w = problem.reg.prox(w - step * problem.grad_mean(w, X, y), step)
        values.append(problem.objective(w, problem.loss_sum(w, X, y)))
    return values


def test_ssgd_full_batch_reaches_the_reference_solution(config):
    run = config("ssgd", data="breast_cancer", batch_size=None, lam=0.01, rounds=2000)
    assert run_local(run, workers=3) == 0
    final = objectives(run.out)[-1]
    optimum = reference_objective(run)
    assert (final - optimum) / optimum <= 1e-6


def test_ssgd_full_batch_equals_centralised_gradient_descent(config):
    """ssgd with B = all on K shards is proximal gradient descent on F, step for step."""
    run = config("ssgd", data="breast_cancer", batch_size=None, lam=0.05, lr=0.2, rounds=30, eval_every=1,
                 test_fraction=0.0)
    assert run_local(run, workers=4) == 0
    np.testing.assert_allclose(objectives(run.out), gradient_descent_objectives(run, 0.2, 30), rtol=1e-12)


@pytest.mark.parametrize("partition", ["contiguous", "shuffle"])
def test_ssgd_full_batch_does_not_depend_on_the_number_of_workers(config, partition):
    values = []
    for workers in (1, 2, 5):
        run = config("ssgd", batch_size=None, lam=0.01, rounds=100, partition=partition)
        assert run_local(run, workers=workers) == 0
        values.append(objectives(run.out))
    np.testing.assert_allclose(values[1], values[0], rtol=1e-12)
    np.testing.assert_allclose(values[2], values[0], rtol=1e-12)


def test_same_seed_same_csv_for_minibatch_ssgd(config):
    first = config("ssgd", batch_size=16, rounds=50, seed=7)
    second = config("ssgd", batch_size=16, rounds=50, seed=7)
    other = config("ssgd", batch_size=16, rounds=50, seed=8)
    for run in (first, second, other):
        assert run_local(run, workers=3) == 0
    assert objectives(first.out) == objectives(second.out)
    assert objectives(first.out) != objectives(other.out)


def test_asgd_converges_in_process(config):
    run = config("asgd", batch_size=None, lam=0.01, rounds=2000)
    assert run_local(run, workers=3) == 0
    rows = read_csv(run.out)
    optimum = reference_objective(run)
    gaps = [(row["objective"] - optimum) / optimum for row in rows]
    assert min(gaps) <= 1e-3 and gaps[-1] <= 1e-2  # see test_mpi: asgd drifts with the workers' rates
    assert rows[-1]["round"] == 2000
    assert rows[-1]["updates"] >= 2000 and rows[-1]["staleness_max"] >= 0


def test_asgd_with_one_worker_is_sequential_gradient_descent(config):
    """One worker: every gradient is fresh (staleness 0), so asgd is exactly prox-GD."""
    run = config("asgd", batch_size=None, lam=0.05, lr=0.2, rounds=20, eval_every=1, test_fraction=0.0)
    assert run_local(run, workers=1) == 0
    rows = read_csv(run.out)
    np.testing.assert_allclose([r["objective"] for r in rows], gradient_descent_objectives(run, 0.2, 20), rtol=1e-12)
    assert all(r["staleness_max"] == 0 for r in rows)


def test_asgd_drops_stale_gradients_and_counts_them(config):
    run = config("asgd", batch_size=8, rounds=300, params={"max_staleness": 0})
    assert run_local(run, workers=4) == 0
    last = read_csv(run.out)[-1]
    assert last["round"] == 300
    assert last["updates"] == last["round"] + last["dropped"]


@pytest.mark.parametrize("data,loss", [("synthetic:n=400,d=8,sparse=1,density=0.5", "logistic"),
                                       ("synthetic:n=400,d=8,kind=linear", "squared"),
                                       ("synthetic:n=5000,d=8,online=1", "logistic")])
def test_ssgd_on_synthetic_data_approaches_the_reference(config, data, loss):
    run = config("ssgd", data=data, loss=loss, batch_size=None if "online" not in data else 512, rounds=400,
                 lam=0.01)
    assert run_local(run, workers=2) == 0
    final, optimum = objectives(run.out)[-1], reference_objective(run)
    tolerance = 1e-6 if "online" not in data else 1e-2  # online: fresh samples, near the sample optimum
    assert (final - optimum) / optimum <= tolerance


def test_time_limit_stops_a_run(config):
    run = config("ssgd", rounds=10_000_000, time_limit=0.5, eval_every=10_000_000)
    assert run_local(run, workers=2) == 0
    rows = read_csv(run.out)
    assert 0 < rows[-1]["round"] < 10_000_000 and rows[-1]["wall_s"] >= 0.5


@pytest.mark.parametrize("algorithm", ["ssgd", "asgd"])
def test_divergence_exits_3_and_says_so_in_the_manifest(config, algorithm):
    import json

    run = config(algorithm, loss="squared", lr=1000.0, rounds=500)
    assert run_local(run, workers=2) == 3
    manifest = json.loads(Path(run.out).with_suffix(".json").read_text())
    assert manifest["status"] == "diverged"
    assert not np.isfinite(objectives(run.out)[-1])


def test_the_regulariser_value_is_part_of_the_objective():
    problem = Problem(LOSSES["squared"], make_regularizer("l2", 2.0), n=4, d=2)
    assert problem.objective(np.array([1.0, 1.0]), total_loss_sum=8.0) == pytest.approx(2.0 + 2.0)


def write_libsvm(path, X, y):
    with open(path, "w") as handle:
        for row, label in zip(X, y):
            features = " ".join(f"{j + 1}:{v:.17g}" for j, v in enumerate(row) if v != 0.0)
            handle.write(f"{label:g} {features}\n")


def test_ssgd_on_a_libsvm_file_stays_sparse_and_reaches_the_reference(config, tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 12)) * (rng.random((300, 12)) < 0.3)
    y = np.where(X @ rng.normal(size=12) + 0.3 * rng.normal(size=300) > 0, 1, -1)
    write_libsvm(tmp_path / "train.svm", X, y)
    write_libsvm(tmp_path / "test.svm", X[:50], y[:50])
    run = config("ssgd", data=str(tmp_path / "train.svm"), test_data=str(tmp_path / "test.svm"), batch_size=None,
                 lam=0.01, rounds=600)
    assert run_local(run, workers=3) == 0
    problem, X_train, _ = centralised_problem(run)
    assert X_train.format == "csr" and problem.n == 300
    rows = read_csv(run.out)
    optimum = reference_objective(run)
    assert (rows[-1]["objective"] - optimum) / optimum <= 1e-6
    assert 0.5 < rows[-1]["test_metric"] <= 1.0


@pytest.mark.parametrize("partition", ["sample", "dirichlet:0.3"])
def test_other_partitions_run_and_converge(config, partition):
    run = config("ssgd", partition=partition, batch_size=None, lam=0.01, rounds=1500)
    assert run_local(run, workers=3) == 0
    optimum = reference_objective(run, workers=3)  # sampling with replacement: F is over the drawn rows
    assert (objectives(run.out)[-1] - optimum) / optimum <= 1e-5


@pytest.mark.parametrize("kind", ["libsvm", "csv"])
def test_a_text_file_is_scanned_once_and_workers_read_only_their_rows(config, tmp_path, monkeypatch, kind):
    """Rank 0's scan (row offsets included) reaches the workers with their rows: no worker parses the
    whole file again, and every row is read once, by the worker that holds it."""
    from dmlcli.data.csvfile import CsvSource
    from dmlcli.data.libsvm import LibsvmSource

    rng = np.random.default_rng(5)
    X = rng.normal(size=(120, 6))
    y = np.where(X @ rng.normal(size=6) > 0, 1, -1)
    path = tmp_path / f"train.{'svm' if kind == 'libsvm' else 'csv'}"
    if kind == "libsvm":
        write_libsvm(path, X, y)
    else:
        np.savetxt(path, np.column_stack([y, X]), delimiter=",", fmt="%.17g")
    source_class = LibsvmSource if kind == "libsvm" else CsvSource
    scans, read = [], []
    original_scan, original_read = source_class._scan, source_class._read_sorted
    monkeypatch.setattr(source_class, "_scan", lambda self: scans.append(1) or original_scan(self))
    monkeypatch.setattr(source_class, "_read_sorted", lambda self, rows, width: read.append(rows.copy()) or
                        original_read(self, rows, width))
    run = config("ssgd", data=str(path), rounds=5)
    assert run_local(run, workers=3) == 0
    assert len(scans) == 1
    rows_read = np.concatenate(read)
    assert rows_read.size == 120 and np.unique(rows_read).size == 120  # training and test rows, each once
