"""Clients (`--clients N`, `--client-fraction C`): many logical workers on few ranks, FedAvg-style
sampling, checked against the default run and against a centralised step by hand."""

import dataclasses

import numpy as np
import pytest

from conftest import objectives, reference_objective
from dmlcli.errors import UsageError
from dmlcli.report import read_csv
from dmlcli.runtime import setup
from dmlcli.runtime.local_run import run_local
from dmlcli.runtime.run import CollectiveUsageError
from dmlcli.runtime.sync import ClientSampler

TIMES = ("run_id", "wall_s", "eval_s")  # what may differ between two runs of the same configuration


def rows_without_times(path):
    return [{key: value for key, value in row.items() if key not in TIMES} for row in read_csv(path)]


@pytest.mark.parametrize("algorithm,params", [("ssgd", {}), ("ma", {"local_steps": 3}), ("storm", {})])
def test_one_client_per_worker_given_explicitly_is_the_default_run(config, algorithm, params):
    default = config(algorithm, params, batch_size=16, rounds=40, eval_every=5, seed=4)
    explicit = config(algorithm, params, batch_size=16, rounds=40, eval_every=5, seed=4, clients=3)
    for run in (default, explicit):
        assert run_local(run, workers=3) == 0
    assert rows_without_times(explicit.out) == rows_without_times(default.out)
    assert read_csv(default.out)[-1]["active_clients"] == 3


def test_workers_load_contiguous_blocks_of_clients_and_only_their_rows(config):
    plan, rows = setup.plan_run(config("ma", clients=10, partition="contiguous", test_fraction=0.0), 4)
    assert [part.first_client for part in rows] == [0, 3, 6, 8]
    assert [len(part.client_sizes) for part in rows] == [3, 3, 2, 2]
    assert plan.client_sizes == tuple(size for part in rows for size in part.client_sizes)
    for part in rows:
        assert part.train_index.size == sum(part.client_sizes)  # a rank holds its clients' rows, no more
    assert sum(plan.client_sizes) == plan.n_train == 569


def test_the_sampler_draws_the_same_clients_on_every_rank_and_new_ones_each_round():
    draws = [ClientSampler(200, 0.1, seed=5).active(7) for _ in range(3)]
    assert all(np.array_equal(draw, draws[0]) for draw in draws)
    assert draws[0].size == 20 and np.unique(draws[0]).size == 20 and np.all(np.diff(draws[0]) > 0)
    assert not np.array_equal(ClientSampler(200, 0.1, seed=5).active(8), draws[0])
    assert ClientSampler(7, 0.5, seed=0).count == 4 and ClientSampler(10, 0.3, seed=0).count == 3
    np.testing.assert_array_equal(ClientSampler(5, 1.0, seed=0).active(3), np.arange(5))


def test_fedavg_over_many_clients_samples_and_counts_them(config):
    run = config("ma", {"local_steps": 2}, clients=40, client_fraction=0.25, batch_size=8, rounds=30, eval_every=1)
    assert run_local(run, workers=4) == 0
    rows = read_csv(run.out)
    assert {row["active_clients"] for row in rows} == {10}
    assert [row["updates"] for row in rows] == [10 * 2 * r for r in range(31)]
    np.testing.assert_allclose(rows[-1]["epochs"], 30 * 10 * 2 * 8 / 455)  # samples over n_train
    assert rows[-1]["objective"] < 0.6 * rows[0]["objective"]


def test_a_sampled_round_is_a_gradient_step_on_the_clients_taking_part(config):
    """ssgd with B = all weights each taking-part client by n_c over their rows: round 1 is a
    proximal gradient step on the mean loss of exactly those clients' rows."""
    run = config("ssgd", clients=6, client_fraction=0.5, batch_size=None, lr=0.5, rounds=1, eval_every=1,
                 test_fraction=0.0, seed=2)
    assert run_local(run, workers=2) == 0
    plan, _ = setup.plan_run(dataclasses.replace(run, force=True), 2)  # its CSV exists now
    problem, X, y = setup.centralised_problem(run, 2)
    bounds = np.concatenate(([0], np.cumsum(plan.client_sizes)))
    active = ClientSampler(6, 0.5, seed=2).active(1)
    rows = np.concatenate([np.arange(bounds[c], bounds[c + 1]) for c in active])
    w0 = np.zeros(problem.d)
    w1 = problem.reg.prox(w0 - 0.5 * problem.grad_mean(w0, X[rows], y[rows]), 0.5)
    np.testing.assert_allclose(objectives(run.out)[1], problem.objective(w1, problem.loss_sum(w1, X, y)), rtol=1e-12)


@pytest.mark.parametrize("algorithm,options,fragment", [
    ("ssgd", {"clients": 2}, "--clients 2 is fewer than the 3 workers"),
    ("dpsgd", {"clients": 6}, "a gossip run has one client per worker"),
    ("asgd", {"client_fraction": 0.5}, "--client-fraction is for synchronous algorithms"),
    ("easgd", {"clients": 6, "client_fraction": 0.5}, "--client-fraction below 1 is not defined for it"),
])
def test_impossible_client_settings_are_refused_before_the_run(config, algorithm, options, fragment):
    run = config(algorithm, workers=3, **options)
    with pytest.raises(UsageError, match=fragment):
        setup.precheck(run)
    with pytest.raises(CollectiveUsageError, match=fragment):
        run_local(run, workers=3)


def test_easgd_keeps_a_local_model_per_client(config):
    """Six clients on two ranks: the centre still reaches the optimum region, one model per client."""
    run = config("easgd", {"period": 2}, clients=6, batch_size=None, lam=0.01, rounds=150)
    assert run_local(run, workers=2) == 0
    rows = read_csv(run.out)
    assert rows[-1]["active_clients"] == 6 and rows[-1]["updates"] == 6 * 2 * 150
    assert rows[-1]["objective"] < 0.2


def test_scaffold_corrects_the_client_drift_that_sampled_fedavg_keeps(config):
    """Twelve label-skewed clients (dirichlet:0.3) on two ranks, half of them sampled each round,
    full local gradients, 300 rounds. Measured: scaffold 1.7e-7, ma (FedAvg) 2.2e-2."""
    gaps = {}
    for algorithm in ("scaffold", "ma"):
        run = config(algorithm, clients=12, client_fraction=0.5, batch_size=None, lam=0.01, rounds=300,
                     partition="dirichlet:0.3")
        assert run_local(run, workers=2) == 0
        optimum = reference_objective(run)
        gaps[algorithm] = (objectives(run.out)[-1] - optimum) / optimum
    assert gaps["scaffold"] <= 1e-6 < 1e-3 <= gaps["ma"]
