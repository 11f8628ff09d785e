"""dpsgd with --on-failure continue: a failed node leaves the gossip, the others re-wire over the
survivors and the run completes. The re-wired weights, the rounds by hand, whole runs on three
topologies against the survivors' reference, the edge cases (one survivor, none, rank 0, abort),
the bytes of the grown reductions, and one run under mpiexec."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import dmlcli_mpi, objectives, reference_objective
from dmlcli.algorithms import REGISTRY, GossipAlgorithm, Settings
from dmlcli.problems import Shard
from dmlcli.problems.reference import reference_solution
from dmlcli.report import read_csv
from dmlcli.runtime import gossip, setup
from dmlcli.runtime.context import InjectedCrash
from dmlcli.runtime.gossip import Survivors, make_topology
from dmlcli.runtime.local_run import run_local
from dmlcli.runtime.setup import centralised_problem, plan_run

REPORT = "rank {rank} failed at step {step}: InjectedCrash: injected crash at step {step} (--crash {rank}@{step})"


def manifest_of(run) -> dict:
    return json.loads(Path(run.out).with_suffix(".json").read_text())


def shards_of(run, workers: int) -> tuple:
    """(problem, X, y, the workers' shards (X_k, y_k)) as the run splits them."""
    problem, X, y = centralised_problem(run, workers)
    bounds = np.cumsum(plan_run(dataclasses.replace(run, force=True), workers)[0].client_sizes)[:-1]
    return problem, X, y, list(zip(np.split(X, bounds), np.split(y, bounds)))


# --- the re-wired topology ---------------------------------------------------------------------

@pytest.mark.parametrize(("name", "nodes", "failed", "fallback"), [
    ("ring", 4, [1], False), ("ring", 6, [0, 3], False), ("torus", 4, [2], True), ("torus", 6, [5], True),
    ("torus", 9, [0, 4, 8], False), ("exponential", 5, [3], False), ("exponential", 8, [0, 1, 2, 3, 4, 5, 6], False),
    ("random-pairs", 5, [2], False), ("random-pairs", 7, [0, 6], False), ("ring", 3, [0, 1, 2], False)])
def test_the_rewired_weights_are_symmetric_and_doubly_stochastic(name, nodes, failed, fallback):
    """Over all K nodes: symmetric, doubly stochastic, a failed node's row and column e_k; the
    survivors' block is the topology's own W over them (a ring where a torus cannot be built)."""
    survivors = [k for k in range(nodes) if k not in failed]
    topology = Survivors(name, nodes, survivors, seed=3)
    assert topology.fallback == fallback
    own_rule = make_topology("ring" if fallback else name, len(survivors), 3)
    for round_ in (1, 2, 7):
        W = topology.matrix(round_)
        np.testing.assert_allclose(W, W.T, atol=0)
        np.testing.assert_allclose(W.sum(axis=0), 1.0, rtol=1e-15)
        np.testing.assert_allclose(W.sum(axis=1), 1.0, rtol=1e-15)
        assert (W >= 0).all()
        for k in failed:
            np.testing.assert_array_equal(W[k], np.eye(nodes)[k])
            np.testing.assert_array_equal(W[:, k], np.eye(nodes)[k])
        np.testing.assert_array_equal(W[np.ix_(survivors, survivors)], own_rule.matrix(round_))
        assert topology.messages(round_) == np.count_nonzero(W - np.diag(np.diag(W)))
        assert all(len(topology.neighbours(k, round_)[0]) <= topology.max_degree for k in range(nodes))


def test_the_rewired_weights_by_hand():
    """Metropolis–Hastings over the survivors: a ring or torus of 4 losing one is a triangle (⅓
    everywhere), an exponential graph of 5 losing one the complete graph of 4 (¼), a ring of 6
    losing two a ring of 4 (⅓ to each side, none across)."""
    for name, nodes in (("ring", 4), ("torus", 4)):
        W = Survivors(name, nodes, [0, 1, 3]).matrix()
        np.testing.assert_allclose(W[np.ix_([0, 1, 3], [0, 1, 3])], 1 / 3)
    W = Survivors("exponential", 5, [0, 1, 2, 4]).matrix()
    np.testing.assert_allclose(W[np.ix_([0, 1, 2, 4], [0, 1, 2, 4])], 1 / 4)
    ring = Survivors("ring", 6, [1, 2, 4, 5])
    assert ring.neighbours(1, 1)[0] == [2, 5] and ring.neighbours(4, 1)[0] == [2, 5]
    np.testing.assert_allclose(ring.matrix()[1], [0, 1 / 3, 1 / 3, 0, 0, 1 / 3])
    peers, weights, own = ring.neighbours(0, 1)  # a failed node
    assert peers == [] and weights.size == 0 and own == 1.0


# --- rounds by hand ----------------------------------------------------------------------------

def gossip_with_a_failure(algorithm, name, shards, w0, rounds, failed, at, seed):
    """The promised rounds: node `failed` fails in round `at`, where it sends its unchanged model and
    mixes nothing; from round at + 1 the others gossip over Survivors. Yields the models of the
    nodes taking part in x̄ after each round (the survivors from round `at` on)."""
    nodes = len(shards)
    survivors = [k for k in range(nodes) if k != failed]
    whole, rewired = make_topology(name, nodes, seed), Survivors(name, nodes, survivors, seed)
    states = [algorithm.init(w0) for _ in shards]
    for round_ in range(1, rounds + 1):
        topology = whole if round_ <= at else rewired
        messages, stepped = [], []
        for k, shard in enumerate(shards):
            if round_ >= at and k == failed:
                message, state = algorithm.model(states[k]), None
            else:
                message, state = algorithm.local(states[k], shard)
            messages.append(message.copy())
            stepped.append(state)
        for k in range(nodes):
            if stepped[k] is None:
                continue
            peers, weights, own = topology.neighbours(k, round_)
            states[k] = algorithm.mix(stepped[k], own * messages[k] + sum(w * messages[j] for j, w in zip(peers, weights)))
        taking_part = survivors if round_ >= at else range(nodes)
        yield [algorithm.model(states[k]).copy() for k in taking_part]


@pytest.mark.parametrize(("topology", "workers", "eval_every"), [("ring", 5, 1), ("exponential", 5, 7), ("random-pairs", 5, 4)])
def test_the_runtime_runs_the_rounds_by_hand(config, topology, workers, eval_every):
    """The whole loop against the rounds by hand (full batches, rank 3 = node 2 fails in round 9):
    F(x̄), the consensus distance and the updates at every evaluated round. The others learn of
    the failure from the evaluation of round 9 (eval_every 1) or from round 10's reduction (7 and
    4: no evaluation in round 9); either way they re-wire from round 10."""
    run = config("dpsgd", {"topology": topology}, batch_size=None, lam=0.01, lr=0.3, rounds=30, eval_every=eval_every,
                 crash=(3, 9), on_failure="continue")
    assert run_local(run, workers=workers) == 0
    problem, X, y, parts = shards_of(run, workers)
    shards = [Shard(Xk, yk, np.random.default_rng(0)) for Xk, yk in parts]
    algorithm = REGISTRY["dpsgd"].build(problem, Settings(0.3, None, workers=workers, seed=run.seed), topology=topology)
    expected = {0: (problem.objective(np.zeros(problem.d), problem.loss_sum(np.zeros(problem.d), X, y)), 0.0, 0)}
    by_hand = gossip_with_a_failure(algorithm, topology, shards, np.zeros(problem.d), 30, failed=2, at=9, seed=run.seed)
    for round_, models in enumerate(by_hand, start=1):
        mean = np.mean(models, axis=0)
        updates = workers * round_ if round_ < 9 else workers * 8 + (workers - 1) * (round_ - 8)
        expected[round_] = (problem.objective(mean, problem.loss_sum(mean, X, y)),
                            np.mean([np.sum((m - mean) ** 2) for m in models]), updates)
    rows = read_csv(run.out)
    assert [row["round"] for row in rows] == sorted({0, 30, *range(eval_every, 30, eval_every)})
    np.testing.assert_allclose([row["objective"] for row in rows], [expected[row["round"]][0] for row in rows], rtol=1e-10)
    np.testing.assert_allclose([row["consensus"] for row in rows], [expected[row["round"]][1] for row in rows],
                               rtol=1e-6, atol=1e-18)
    assert [row["updates"] for row in rows] == [expected[row["round"]][2] for row in rows]
    manifest = manifest_of(run)
    assert manifest["heterogeneity"]["worker_steps"] == [30, 30, 8, 30, 30]


# --- whole runs --------------------------------------------------------------------------------

@pytest.mark.parametrize(("topology", "workers", "rank"), [("ring", 4, 2), ("torus", 4, 3), ("exponential", 5, 4)])
def test_continue_goes_on_and_reaches_the_survivors_reference(config, monkeypatch, capsys, topology, workers, rank):
    """breast_cancer, λ = 0.01, full batches, --lr auto, 300 rounds; rank R fails in round 50.
    The lost shard's rows still count in F, and no training can use them any more: the reference
    is F(w_S*), w_S* the minimiser over the survivors' rows. Measured at 300 rounds: F(x̄) within
    1.8e-3 (ring), 1.2e-3 (torus → a ring of 3) and 2.5e-3 (exponential) of it, relative to F*, and
    the survivors' own objective 3.4e-3 to 3.6e-3 above its optimum (1e-2 at 200 rounds; 5e-4 to
    7e-4 at 500). F(w_S*) itself is 1.9e-2, 2.9e-2 and 1.6e-2 above F*: the cost of the lost shard."""
    built = []

    class Recorded(Survivors):  # every rank's re-wired topology, to check the weights the run used
        def __init__(self, *args):
            super().__init__(*args)
            built.append(self)

    monkeypatch.setattr(gossip, "Survivors", Recorded)
    model = str(Path(config("dpsgd").out).with_suffix(".npy"))
    run = config("dpsgd", {"topology": topology}, data="breast_cancer", lam=0.01, batch_size=None, rounds=300,
                 eval_every=25, crash=(rank, 50), on_failure="continue", save_model=model)
    assert run_local(run, workers=workers) == 0
    report = REPORT.format(rank=rank, step=50)
    assert capsys.readouterr().err.splitlines() == [
        f"dmlcli: rank {rank} failed: InjectedCrash: injected crash at step 50 (--crash {rank}@50); the run goes on without it"]
    manifest = manifest_of(run)
    assert manifest["status"] == "completed" and manifest["reason"] is None and manifest["failures"] == [report]
    assert manifest["heterogeneity"]["worker_steps"] == [49 if k == rank - 1 else 300 for k in range(workers)]

    survivors = [k for k in range(workers) if k != rank - 1]
    assert len(built) == workers + 1  # once on every rank, all the same
    for topology_built in built:
        assert topology_built.alive == survivors and topology_built.fallback == (topology == "torus")
        W = topology_built.matrix()
        np.testing.assert_array_equal(W, built[0].matrix())
        np.testing.assert_allclose(W, W.T, atol=0)
        np.testing.assert_allclose(W.sum(axis=1), 1.0, rtol=1e-15)
        np.testing.assert_allclose(W.sum(axis=0), 1.0, rtol=1e-15)

    rows = read_csv(run.out)
    assert rows[-1]["round"] == 300 and rows[-1]["updates"] == 49 * workers + (workers - 1) * 251
    consensus = {row["round"]: row["consensus"] for row in rows}
    assert consensus[300] < consensus[75] < consensus[50]  # it still falls after the failure

    problem, X, y, parts = shards_of(run, workers)
    XS, yS = np.vstack([parts[k][0] for k in survivors]), np.concatenate([parts[k][1] for k in survivors])
    on_survivors = dataclasses.replace(problem, n=yS.size)
    w_S, F_S = reference_solution(on_survivors, XS, yS)
    optimum = reference_objective(run, workers)
    reference = problem.objective(w_S, problem.loss_sum(w_S, X, y))
    assert abs(rows[-1]["objective"] - reference) / optimum <= 1e-2
    x_bar = np.load(model)
    assert (on_survivors.objective(x_bar, on_survivors.loss_sum(x_bar, XS, yS)) - F_S) / F_S <= 1e-2


def test_abort_ends_the_run_at_the_failure_as_before(config):
    run = config("dpsgd", data="breast_cancer", rounds=100, eval_every=10, crash=(2, 30), on_failure="abort")
    with pytest.raises(InjectedCrash):
        run_local(run, workers=4)
    manifest = manifest_of(run)
    assert manifest["status"] == "failed" and manifest["reason"] == REPORT.format(rank=2, step=30)
    assert [row["round"] for row in read_csv(run.out)] == [0, 10, 20]


def test_rank_0_failing_ends_the_run_whatever_the_policy(config):
    with pytest.raises(InjectedCrash):
        run_local(config("dpsgd", rounds=100, crash=(0, 5), on_failure="continue"), workers=3)


def test_one_survivor_goes_on_alone(config):
    """Two nodes, one fails in round 10: the other runs local SGD on its shard, alone (consensus 0)."""
    run = config("dpsgd", data="breast_cancer", batch_size=None, rounds=60, eval_every=5, crash=(1, 10),
                 on_failure="continue")
    assert run_local(run, workers=2) == 0
    rows = read_csv(run.out)
    assert rows[-1]["round"] == 60 and rows[-1]["updates"] == 2 * 9 + 51
    assert all(row["consensus"] == 0.0 for row in rows if row["round"] >= 10)
    assert rows[1]["consensus"] > 0.0
    manifest = manifest_of(run)
    assert manifest["status"] == "completed" and manifest["heterogeneity"]["worker_steps"] == [9, 60]


def test_no_node_left_ends_failed(config):
    run = config("dpsgd", rounds=100, eval_every=2, crash=(1, 5), on_failure="continue")
    assert run_local(run, workers=1) == 1
    manifest = manifest_of(run)
    assert manifest["status"] == "failed" and manifest["reason"] == REPORT.format(rank=1, step=5)
    assert manifest["failures"] == [manifest["reason"]]
    assert [row["round"] for row in read_csv(run.out)] == [0, 2, 4]  # nothing left to evaluate after


@pytest.mark.parametrize("where", ["local", "mix"])
def test_any_exception_of_the_step_is_a_failure_the_run_survives(config, monkeypatch, capsys, where):
    """Not only --crash: an exception from the algorithm's own local step or mixing, on node 1 (rank 2) in its round 12."""
    built = setup.algorithm_for

    def failing(*args):
        algorithm = built(*args)
        calls = {}

        def local(state, shard):
            message, (x, g) = algorithm.local(state, shard)
            calls[shard.client] = calls.get(shard.client, 0) + 1
            if where == "local" and shard.client == 1 and calls[1] == 12:
                raise FloatingPointError("overflow in the gradient")
            return message, (x, g, shard.client, calls[shard.client])

        def mix(state, mixed):
            x, g, client, call = state
            if where == "mix" and client == 1 and call == 12:
                raise FloatingPointError("overflow in the gradient")
            return algorithm.mix((x, g), mixed)

        return algorithm._replace(local=local, mix=mix) if isinstance(algorithm, GossipAlgorithm) else algorithm

    monkeypatch.setattr(setup, "algorithm_for", failing)
    run = config("dpsgd", {"topology": "ring"}, rounds=40, eval_every=10, on_failure="continue")
    assert run_local(run, workers=4) == 0
    assert capsys.readouterr().err.strip() == \
        "dmlcli: rank 2 failed: FloatingPointError: overflow in the gradient; the run goes on without it"
    manifest = manifest_of(run)
    assert manifest["failures"] == ["rank 2 failed at step 12: FloatingPointError: overflow in the gradient"]
    assert manifest["heterogeneity"]["worker_steps"] == [40, 11, 40, 40]
    assert read_csv(run.out)[-1]["round"] == 40


def test_bytes_count_the_grown_reductions(config):
    """continue: the per-round reduction is [stop, f_1 … f_K] (8·(1 + K) bytes per rank) and each
    evaluation Allreduce 8·(d + K); a ring of 4 sends 8 messages a round, the ring of 3 left 6."""
    run = config("dpsgd", {"topology": "ring"}, data="breast_cancer", rounds=10, eval_every=5, crash=(2, 4),
                 on_failure="continue")
    assert run_local(run, workers=4) == 0
    rows = read_csv(run.out)
    d, ranks, K = 31, 5, 4
    evaluation = 2 * 8 * (d + K) * ranks
    flags = 8 * (1 + K) * ranks
    per_round = {r: (8 if r <= 4 else 6) * 8 * d + flags for r in range(1, 11)}
    assert [row["bytes_sent"] for row in rows] == [evaluation, 2 * evaluation + sum(per_round[r] for r in range(1, 6)),
                                                   3 * evaluation + sum(per_round.values())]
    assert rows[-1]["messages"] == 3 * 2 * ranks + 4 * 8 + 6 * 6 + 10 * ranks


def test_without_a_failure_continue_reaches_the_same_models(config):
    """The grown reductions carry zeros: the same objectives as abort, round for round."""
    runs = [config("dpsgd", {"topology": "exponential"}, batch_size=16, rounds=40, eval_every=5, on_failure=policy)
            for policy in ("abort", "continue")]
    for run in runs:
        assert run_local(run, workers=5) == 0
    assert objectives(runs[0].out) == objectives(runs[1].out)


# --- real MPI ----------------------------------------------------------------------------------

def test_under_mpiexec_dpsgd_goes_on_without_a_failed_node(tmp_path):
    """5 ranks, a torus of 4 whose node 2 (rank 3) fails in round 30: the three left gossip on a ring."""
    out = tmp_path / "dpsgd.csv"
    done = dmlcli_mpi(5, "train", "dpsgd", "--data", "breast_cancer", "--lam", "0.01", "--batch-size", "all",
                      "--rounds", "300", "--eval-every", "25", "--topology", "torus", "--crash", "3@30",
                      "--on-failure", "continue", "--progress", "off", "--out", str(out), timeout=60)
    assert done.returncode == 0, done.stderr
    failures = [line for line in done.stderr.splitlines() if "failed" in line]
    assert failures == ["dmlcli: rank 3 failed: InjectedCrash: injected crash at step 30 (--crash 3@30); "
                        "the run goes on without it"]
    rows = read_csv(out)
    assert rows[-1]["round"] == 300 and rows[-1]["updates"] == 29 * 4 + 271 * 3
    assert rows[-1]["consensus"] < rows[2]["consensus"]
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["status"] == "completed" and manifest["failures"] == [REPORT.format(rank=3, step=30)]
    assert manifest["heterogeneity"]["worker_steps"] == [300, 300, 29, 300]
