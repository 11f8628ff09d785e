"""Clients on the parameter server: each client a logical worker (its own staleness, clock and
worker state), a rank stepping for its clients in turn."""

import numpy as np
import pytest

from conftest import objectives, reference_objective
from dmlcli.errors import UsageError
from dmlcli.report import read_csv
from dmlcli.runtime import setup
from dmlcli.runtime.local_run import run_local


class ServerLog:
    """Every server update of the run's algorithm: (client, clocks before, clocks after) for ssp,
    and the client of every worker step with the worker state it was given."""

    def __init__(self, monkeypatch):
        self.updates, self.steps = [], []
        original = setup.algorithm_for

        def algorithm_for(config, problem, workers, lr):
            algorithm = original(config, problem, workers, lr)

            def worker_step(state, w, shard):
                self.steps.append((shard.client, id(state)))
                return algorithm.worker_step(state, w, shard)

            def server_update(state, payload, staleness):
                before = list(getattr(state, "clocks", []))
                state, outcome = algorithm.server_update(state, payload, staleness)
                self.updates.append((int(payload[problem.d + 1]) if before else None, before,
                                     list(getattr(state, "clocks", []))))
                return state, outcome

            return algorithm._replace(worker_step=worker_step, server_update=server_update)

        monkeypatch.setattr(setup, "algorithm_for", algorithm_for)


def test_asgd_with_clients_reaches_the_reference(config, monkeypatch):
    log = ServerLog(monkeypatch)
    run = config("asgd", clients=6, batch_size=None, lam=0.01, rounds=3000)
    assert run_local(run, workers=3) == 0
    optimum = reference_objective(run)
    assert (objectives(run.out)[-1] - optimum) / optimum <= 1e-2
    # each rank steps for its two clients in turn: 0, 1, 0, 1, … on rank 1
    for pair in ((0, 1), (2, 3), (4, 5)):
        turns = [client for client, _ in log.steps if client in pair]
        assert turns[: 2 * (len(turns) // 2)] == list(pair) * (len(turns) // 2)


@pytest.mark.parametrize("bound", [0, 2])
def test_ssp_keeps_a_clock_per_client_within_the_bound(config, monkeypatch, bound):
    log = ServerLog(monkeypatch)
    run = config("ssp", {"staleness_bound": bound}, clients=6, batch_size=8, rounds=100, delay="exp:0.0005")
    assert run_local(run, workers=3) == 0
    assert len(log.updates[0][1]) == 6  # six clocks
    widest = 0
    for client, before, after in log.updates:
        assert after[client] == before[client] + 1
        assert max(after) - min(after) <= bound + 1  # no client more than s + 1 clocks ahead of the slowest
        widest = max(widest, max(after) - min(after))
    assert widest == bound + 1  # the bound was reached, so it held someone back
    rows = read_csv(run.out)
    assert rows[-1]["round"] == 100 and rows[-1]["updates"] == len(log.updates)


def test_aeasgd_keeps_a_local_model_per_client(config, monkeypatch):
    log = ServerLog(monkeypatch)
    run = config("aeasgd", {"period": 2}, clients=4, batch_size=16, lam=0.01, rounds=1500)
    assert run_local(run, workers=2) == 0
    optimum = reference_objective(run)
    assert (objectives(run.out)[-1] - optimum) / optimum <= 1e-2
    states = {}
    for client, state in log.steps[:8]:  # the first steps: each client's own initial model
        states.setdefault(client, set()).add(state)
    assert len({next(iter(ids)) for ids in states.values()}) == 4


@pytest.mark.parametrize("barrier,delay", [(6, 1), (1, 2), (3, 3)])
def test_async_admm_with_clients_reaches_the_reference(config, barrier, delay):
    """A client in Φ waits for the next z, the rank's other clients go on: A = N, τ = 1 is synchronous."""
    run = config("async-admm", {"partial_barrier": barrier, "max_delay": delay}, clients=6, lam=0.01, rounds=150)
    assert run_local(run, workers=3) == 0
    optimum = reference_objective(run)
    assert (objectives(run.out)[-1] - optimum) / optimum <= 1e-2


def test_one_client_per_worker_given_explicitly_is_the_default_run(config):
    default = config("asgd", batch_size=None, lam=0.05, lr=0.2, rounds=30, eval_every=1, test_fraction=0.0)
    explicit = config("asgd", batch_size=None, lam=0.05, lr=0.2, rounds=30, eval_every=1, test_fraction=0.0, clients=1)
    for run in (default, explicit):
        assert run_local(run, workers=1) == 0
    np.testing.assert_array_equal(objectives(explicit.out), objectives(default.out))


@pytest.mark.parametrize("algorithm,params,fragment", [
    ("asgd", {"pull_every": 2}, "--pull-every is a worker rank's and needs one client per worker"),
    ("ssgd", {"backup": 1}, "--clients must equal the 3 workers, got 6"),
])
def test_what_the_server_cannot_do_with_clients_is_refused(config, algorithm, params, fragment):
    with pytest.raises(UsageError, match=fragment):
        run_local(config(algorithm, params, clients=6), workers=3)


def test_workers_gather_each_clients_next_batch_while_they_wait_and_the_run_is_the_same(config, monkeypatch):
    """A worker prefetches its next client's mini-batch before waiting for the model (Shard.prefetch):
    nearly every batch is handed over prefetched, and the run is the one without prefetching."""
    from dmlcli.problems import Shard

    batches, ready = [], []
    batch = Shard.batch

    def counted(shard, size):
        batches.append(shard.client)
        ready.append(shard._prefetched is not None)
        return batch(shard, size)

    monkeypatch.setattr(Shard, "batch", counted)
    runs = [config("asgd", clients=2, batch_size=8, lam=0.01, rounds=300, eval_every=30) for _ in range(2)]
    assert run_local(runs[0], workers=1) == 0
    assert batches[:4] == [0, 1, 0, 1] and sum(ready) >= 0.9 * len(ready)
    monkeypatch.setattr(Shard, "prefetch", lambda shard, size: None)
    assert run_local(runs[1], workers=1) == 0
    np.testing.assert_array_equal(objectives(runs[1].out), objectives(runs[0].out))
