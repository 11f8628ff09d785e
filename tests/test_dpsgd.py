"""dpsgd and the decentralised (gossip) loop: the topologies' mixing matrices, a round by hand, the
exact recursion of the mean model, convergence in process and under mpiexec, refused options."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import LAM, assert_refused_in_one_line, dmlcli_mpi, objectives, reference_objective
from dmlcli.algorithms import REGISTRY, Settings
from dmlcli.errors import UsageError
from dmlcli.problems import Shard
from dmlcli.report import read_csv
from dmlcli.runtime import gossip
from dmlcli.runtime.gossip import TOPOLOGIES, RandomPairs, make_topology, torus_shape
from dmlcli.runtime.local_run import run_local
from dmlcli.runtime.setup import centralised_problem, plan_run

# --- topologies --------------------------------------------------------------------------------

CASES = [("ring", k) for k in (1, 2, 3, 5, 8)] + [("torus", k) for k in (4, 6, 9, 12)] + \
        [("exponential", k) for k in (2, 3, 5, 8, 13)] + [("random-pairs", k) for k in (1, 2, 5, 8)]


@pytest.mark.parametrize(("name", "nodes"), CASES)
def test_mixing_matrices_are_symmetric_and_doubly_stochastic(name, nodes):
    topology = make_topology(name, nodes, seed=3)
    for round_ in (1, 2, 7):
        W = topology.matrix(round_)
        np.testing.assert_allclose(W, W.T, atol=0)
        np.testing.assert_allclose(W.sum(axis=0), 1.0, rtol=1e-15)
        np.testing.assert_allclose(W.sum(axis=1), 1.0, rtol=1e-15)
        assert (W >= 0).all()
        assert topology.messages(round_) == np.count_nonzero(W - np.diag(np.diag(W)))
        assert all(len(topology.neighbours(k, round_)[0]) <= topology.max_degree for k in range(nodes))


def peers(name, nodes, node, round_=1, seed=0):
    return set(make_topology(name, nodes, seed).neighbours(node, round_)[0])


def test_each_topology_has_the_right_neighbours():
    assert peers("ring", 5, 0) == {1, 4} and peers("ring", 5, 3) == {2, 4} and peers("ring", 2, 0) == {1}
    np.testing.assert_allclose(make_topology("ring", 5, 0).matrix()[0], [1 / 3, 1 / 3, 0, 0, 1 / 3])
    np.testing.assert_allclose(make_topology("ring", 2, 0).matrix(), 0.5)  # K = 2: the complete graph
    assert torus_shape(12) == (3, 4) and torus_shape(9) == (3, 3) and torus_shape(6) == (2, 3)
    assert peers("torus", 12, 5) == {1, 9, 4, 6}  # (1, 1) in 3 × 4
    assert peers("torus", 12, 0) == {8, 4, 3, 1}  # wrap-around both ways
    assert peers("torus", 6, 0) == {3, 1, 2}  # 2 × 3: up and down are the same node
    np.testing.assert_allclose(make_topology("torus", 9, 0).matrix()[0].max(), 1 / 5)
    assert peers("exponential", 8, 0) == {1, 2, 4, 6, 7}
    assert peers("exponential", 13, 0) == {1, 2, 4, 8, 12, 11, 9, 5}


def test_random_pairs_are_a_seeded_matching_the_same_on_every_rank():
    one, other, reseeded = RandomPairs(7, seed=5), RandomPairs(7, seed=5), RandomPairs(7, seed=6)
    draws = []
    for round_ in range(1, 30):
        partner = one.partners(round_)
        np.testing.assert_array_equal(partner, other.partners(round_))  # another rank, no message
        assert (partner == -1).sum() == 1  # odd K: one node idles, its row of W is e_k
        paired = partner >= 0
        np.testing.assert_array_equal(partner[partner[paired]], np.flatnonzero(paired))  # an involution
        idle = int(np.flatnonzero(~paired)[0])
        idle_peers, _, idle_weight = one.neighbours(idle, round_)
        assert idle_peers == [] and idle_weight == 1.0
        draws.append(tuple(partner))
    assert len(set(draws)) > 20  # the matching changes from round to round
    assert any(tuple(reseeded.partners(r)) != draws[r - 1] for r in range(1, 30))
    assert (RandomPairs(6, 0).partners(4) >= 0).all()  # even K: a perfect matching


def test_unknown_and_impossible_topologies_are_refused():
    for nodes in (2, 3, 5, 7):
        with pytest.raises(UsageError, match="--topology torus needs a worker count"):
            make_topology("torus", nodes, 0)
    with pytest.raises(UsageError, match="unknown topology"):
        make_topology("star", 4, 0)
    assert set(TOPOLOGIES) == {"ring", "torus", "exponential", "random-pairs"}


# --- rounds by hand ----------------------------------------------------------------------------

def grad(w, X, y):
    return X.T @ (X @ w - y) / y.shape[0]


def prox(v, step):
    return v / (1.0 + step * LAM)  # prox of (λ/2)‖w‖²


def gossip_by_hand(algorithm, topology, shards, w0, rounds):
    """The gossip loop with the algorithm's own functions: yields every node's model after each round."""
    states = [algorithm.init(w0) for _ in shards]
    for round_ in range(1, rounds + 1):
        messages = []
        for k, shard in enumerate(shards):
            message, states[k] = algorithm.local(states[k], shard)
            messages.append(message.copy())
        for k in range(len(shards)):
            peers, weights, own = topology.neighbours(k, round_)
            mixed = own * messages[k] + sum(w * messages[j] for j, w in zip(peers, weights))
            states[k] = algorithm.mix(states[k], mixed)
        yield [algorithm.model(state).copy() for state in states]


def four_shards(same_X: bool):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(5, 3))
    shards = []
    for k in range(4):
        Xk = X if same_X else rng.normal(size=(5, 3))
        shards.append(Shard(Xk, rng.normal(size=5) + k, np.random.default_rng(k)))
    return shards


@pytest.mark.parametrize("name", ["ring", "exponential", "random-pairs"])
def test_one_round_by_hand(problem, name):
    """x_k ← prox_{ηr}(Σ_j W_kj x_j − η ∇f_k(x_k)), with full-batch local gradients."""
    eta = 0.1
    algorithm = REGISTRY["dpsgd"].build(problem, Settings(eta, None, workers=4, seed=0), topology=name)
    topology = make_topology(name, 4, seed=0)
    shards = four_shards(same_X=False)
    x = [np.array([0.3, 0.0, -0.1]) + 0.1 * k for k in range(4)]  # start apart: mixing matters
    states = [(xk.copy(), None) for xk in x]
    W = topology.matrix(1)
    expected = [prox(sum(W[k, j] * x[j] for j in range(4)) - eta * grad(x[k], s.X, s.y), eta)
                for k, s in enumerate(shards)]
    messages = []
    for k, shard in enumerate(shards):
        message, states[k] = algorithm.local(states[k], shard)
        messages.append(message.copy())
    for k in range(4):
        peers, weights, own = topology.neighbours(k, 1)
        states[k] = algorithm.mix(states[k], own * messages[k] + sum(w * messages[j] for j, w in zip(peers, weights)))
        np.testing.assert_allclose(algorithm.model(states[k]), expected[k], rtol=1e-14)


@pytest.mark.parametrize("name", ["ring", "exponential", "random-pairs"])
def test_the_mean_model_follows_gradient_descent_exactly_for_shared_features(problem, name):
    """Squared loss, shards with the same X (their own y), full batches: ∇f_k(x) = A x − b_k with
    one A, so mean_k ∇f_k(x_k) = A x̄ − b̄ = ∇f(x̄), and as W is doubly stochastic and the l2 prox
    linear, x̄_{t+1} = prox_{ηr}(x̄_t − η ∇f(x̄_t)): centralised proximal gradient descent on the
    union of the shards, whatever the topology, though the nodes' models differ."""
    eta = 0.2
    algorithm = REGISTRY["dpsgd"].build(problem, Settings(eta, None, workers=4, seed=0), topology=name)
    shards = four_shards(same_X=True)
    X, y = np.vstack([s.X for s in shards]), np.concatenate([s.y for s in shards])
    w = np.zeros(3)
    spread = []
    for models in gossip_by_hand(algorithm, make_topology(name, 4, 0), shards, np.zeros(3), rounds=20):
        w = prox(w - eta * grad(w, X, y), eta)
        np.testing.assert_allclose(np.mean(models, axis=0), w, rtol=1e-12, atol=1e-15)
        spread.append(np.mean([np.sum((m - w) ** 2) for m in models]))
    assert max(spread) > 1e-4  # the nodes do disagree


@pytest.mark.parametrize(("topology", "workers"), [("ring", 2), ("ring", 4), ("exponential", 5), ("random-pairs", 5)])
def test_the_runtime_runs_the_rounds_by_hand(config, topology, workers):
    """The whole gossip loop (in-process ranks, neighbour exchanges, x̄ and consensus reductions)
    against gossip_by_hand on the same shards (full batches): F(x̄) and mean_k ‖x_k − x̄‖² each round."""
    run = config("dpsgd", {"topology": topology}, batch_size=None, lam=0.01, lr=0.3, rounds=30, eval_every=1)
    assert run_local(run, workers=workers) == 0
    problem, X, y = centralised_problem(run, workers)
    bounds = np.cumsum(plan_run(dataclasses.replace(run, force=True), workers)[0].client_sizes)[:-1]
    shards = [Shard(Xk, yk, np.random.default_rng(0)) for Xk, yk in zip(np.split(X, bounds), np.split(y, bounds))]
    algorithm = REGISTRY["dpsgd"].build(problem, Settings(0.3, None, workers=workers, seed=run.seed), topology=topology)
    expected_F, expected_consensus = [problem.objective(np.zeros(problem.d), problem.loss_sum(np.zeros(problem.d), X, y))], [0.0]
    for models in gossip_by_hand(algorithm, make_topology(topology, workers, run.seed), shards, np.zeros(problem.d), 30):
        mean = np.mean(models, axis=0)
        expected_F.append(problem.objective(mean, problem.loss_sum(mean, X, y)))
        expected_consensus.append(np.mean([np.sum((m - mean) ** 2) for m in models]))
    rows = read_csv(run.out)
    np.testing.assert_allclose(objectives(run.out), expected_F, rtol=1e-10)
    np.testing.assert_allclose([row["consensus"] for row in rows], expected_consensus, rtol=1e-6, atol=1e-18)


# --- whole runs --------------------------------------------------------------------------------

@pytest.mark.parametrize(("topology", "workers", "batch"), [("ring", 4, None), ("torus", 6, None),
                                                            ("exponential", 5, None), ("random-pairs", 5, None),
                                                            ("ring", 4, 32)])
def test_dpsgd_reaches_the_reference_and_consensus_falls(config, topology, workers, batch):
    """breast_cancer, λ = 0.01, --lr auto (1/L): 500 rounds (2000 with B = 32). A constant step
    leaves x̄ O(η)-close to the optimum: measured gaps 4e-4 to 6e-4."""
    rounds = 500 if batch is None else 2000
    run = config("dpsgd", {"topology": topology}, data="breast_cancer", lam=0.01, batch_size=batch, rounds=rounds,
                 eval_every=25)
    assert run_local(run, workers=workers) == 0
    rows = read_csv(run.out)
    optimum = reference_objective(run)
    assert (rows[-1]["objective"] - optimum) / optimum <= 1e-2
    assert rows[0]["consensus"] == 0.0  # every node starts at 0
    assert rows[-1]["consensus"] < rows[1]["consensus"]
    assert rows[-1]["round"] == rounds and rows[-1]["updates"] == rounds * workers


def test_bytes_and_messages_count_neighbour_messages_flags_and_averages(config):
    run = config("dpsgd", {"topology": "ring"}, data="breast_cancer", rounds=10, eval_every=5)
    assert run_local(run, workers=4) == 0
    rows = read_csv(run.out)
    d, ranks = 31, 5  # 30 features and the intercept
    evaluation = 2 * 8 * (d + 1) * ranks
    # A ring of 4: 8 messages of d floats a round; the stop flag in rounds 5 and 10 (evaluations) and 8 (FLAG_EVERY).
    per_round, flag = 8 * 8 * d, 8 * ranks
    assert gossip.FLAG_EVERY == 8
    assert [row["bytes_sent"] for row in rows] == [evaluation, 2 * evaluation + 5 * per_round + flag,
                                                   3 * evaluation + 10 * per_round + 3 * flag]
    assert rows[-1]["messages"] == 3 * 2 * ranks + 10 * 8 + 3 * ranks


def test_same_seed_same_csv(config):
    runs = [config("dpsgd", {"topology": "random-pairs"}, batch_size=16, rounds=60, seed=seed) for seed in (7, 7, 8)]
    for run in runs:
        assert run_local(run, workers=5) == 0
    assert objectives(runs[0].out) == objectives(runs[1].out) != objectives(runs[2].out)


def test_time_limit_stops_a_run(config):
    run = config("dpsgd", rounds=10_000_000, time_limit=0.5, eval_every=10_000_000)
    assert run_local(run, workers=3) == 0
    rows = read_csv(run.out)
    assert 0 < rows[-1]["round"] < 10_000_000 and rows[-1]["wall_s"] >= 0.5
    assert rows[-1]["round"] % gossip.FLAG_EVERY == 0  # the stop flag goes round every FLAG_EVERY rounds


def test_divergence_exits_3(config):
    run = config("dpsgd", loss="squared", lr=1000.0, rounds=500)
    assert run_local(run, workers=3) == 3
    manifest = json.loads(Path(run.out).with_suffix(".json").read_text())
    assert manifest["status"] == "diverged"


@pytest.mark.parametrize(("params", "options", "message"), [
    ({"topology": "torus"}, {}, "--topology torus needs a worker count"),  # 3 workers: not r×c
    ({}, {"clients": 6}, "a gossip run has one client per worker"),
    ({}, {"client_fraction": 0.5}, "--client-fraction is for synchronous algorithms"),
    ({}, {"dropout": 0.2}, "--dropout is not defined for decentralised algorithms"),
])
def test_refused_options(config, params, options, message):
    run = config("dpsgd", params, **options)
    with pytest.raises(UsageError, match=message):
        run_local(run, workers=3)
    assert not Path(run.out).exists()


def test_an_unknown_topology_is_refused_in_one_line(capsys, tmp_path):
    assert_refused_in_one_line(capsys, tmp_path, ["train", "dpsgd", "--topology", "star"])


# --- real MPI ----------------------------------------------------------------------------------

def test_dpsgd_under_mpiexec_reaches_the_reference(tmp_path, config):
    """5 ranks: rank 0 coordinates, 4 workers on a ring."""
    out = tmp_path / "dpsgd.csv"
    result = dmlcli_mpi(5, "train", "dpsgd", "--data", "breast_cancer", "--lam", "0.01", "--batch-size", "all",
                        "--rounds", "500", "--eval-every", "25", "--topology", "ring", "--out", str(out),
                        "--progress", "off", timeout=120)
    assert result.returncode == 0, result.stderr
    rows = read_csv(out)
    optimum = reference_objective(config("dpsgd", data="breast_cancer", lam=0.01, batch_size=None), workers=4)
    assert (rows[-1]["objective"] - optimum) / optimum <= 1e-2
    assert rows[-1]["consensus"] < rows[1]["consensus"]
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["status"] == "completed" and manifest["workers"] == 4

