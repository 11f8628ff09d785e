"""Compressed messages in whole runs: the payload exchange, the bytes it logs, error feedback,
diana, and ssgd --overlap."""

import threading

import numpy as np
import pytest
from test_runs import gradient_descent_objectives
from test_sync_family import W0, grad, prox, shard_pair

from conftest import assert_refused_in_one_line, objectives, reference_objective
from dmlcli.algorithms import REGISTRY, Settings
from dmlcli.comm.local import LocalHub
from dmlcli.compressors import parse_compressor, with_error_feedback
from dmlcli.errors import UsageError
from dmlcli.report import read_csv
from dmlcli.runtime.local_run import run_local
from dmlcli.runtime.setup import centralised_problem
from dmlcli.runtime.sync import PayloadExchange

COMMON = dict(data="breast_cancer", lam=0.01, seed=3, eval_every=1, rounds=30)


# --- the exchange itself -----------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["topk:0.3", "filter:0.5"])
def test_every_rank_decodes_the_weighted_sum_of_every_clients_payload(spec):
    """Ranks holding 0, 2 and 1 clients; filter's payloads differ in length (its framing path)."""
    compressor, d = parse_compressor(spec), 12
    vectors = [np.random.default_rng(c).normal(size=d) for c in range(3)]
    weights = np.array([0.2, 0.5, 0.3])
    clients_of_rank = [[], [0, 1], [2]]
    results = [None] * 3

    def rank(transport):
        exchange = PayloadExchange(transport, compressor, d)
        exchange.begin()
        for c in clients_of_rank[transport.rank]:
            exchange.add(compressor.encode(vectors[c], np.random.default_rng(0)), None)
        sent, dense = exchange.start(stop_flag=transport.rank == 0)
        results[transport.rank] = (*exchange.finish(weights), sent, dense)

    threads = [threading.Thread(target=rank, args=(t,)) for t in LocalHub(3).transports()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    decoded = [compressor.decode(compressor.encode(v, np.random.default_rng(0)), d) for v in vectors]
    expected = sum(w * v for w, v in zip(weights, decoded))
    payload_bytes = sum(compressor.encode(v, np.random.default_rng(0)).size for v in vectors)
    framing = 0 if compressor.fixed_size else 4 * 3
    for summed, stop, sent, dense in results:
        np.testing.assert_allclose(summed, expected, rtol=1e-15)
        assert stop  # rank 0's flag reaches every rank
        assert sent == payload_bytes + framing + 16 * 3 and dense == 8 * d * 3
    if spec.startswith("filter"):
        assert len({compressor.encode(v, None).size for v in vectors}) > 1  # the lengths really differ


# --- whole runs --------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm,params", [("ssgd", {}), ("ma", {"local_steps": 3}), ("storm", {})])
@pytest.mark.parametrize("spec", ["topk:1", "filter:0"])
def test_a_lossless_compressor_gives_the_uncompressed_run(config, algorithm, params, spec):
    """topk:1 keeps every coordinate and filter:0 every non-zero one, exactly: the run goes through
    the Allgather, the framing and the weighted decode, and must equal the Allreduce run."""
    plain = config(algorithm, params=params, batch_size=16, **COMMON)
    packed = config(algorithm, params={**params, "compressor": spec}, batch_size=16, **COMMON)
    for run in (plain, packed):
        assert run_local(run, workers=3) == 0
    np.testing.assert_allclose(objectives(packed.out), objectives(plain.out), rtol=1e-12)


def test_sampled_clients_payloads_are_weighted_by_their_own_rows(config):
    """FedAvg with 6 of 20 clients a round: each payload is decoded with its client's share of the
    sampled rows, so the lossless compressor again gives the Allreduce run."""
    sampling = dict(clients=20, client_fraction=0.3, batch_size=8, **COMMON)
    plain, packed = config("ma", **sampling), config("ma", params={"compressor": "topk:1"}, **sampling)
    for run in (plain, packed):
        assert run_local(run, workers=3) == 0
    np.testing.assert_allclose(objectives(packed.out), objectives(plain.out), rtol=1e-12)
    assert {row["active_clients"] for row in read_csv(packed.out)} == {6}


def test_bytes_sent_and_compression_ratio_are_what_mpi_carried(config):
    run = config("ssgd", params={"compressor": "topk:0.1", "error_feedback": True}, batch_size=None, **COMMON)
    assert run_local(run, workers=3) == 0
    rows = read_csv(run.out)
    d = rows and centralised_problem(run)[0].d
    k = int(np.ceil(0.1 * d))
    per_round = 3 * 12 * k + 16 * 4  # three payloads of k indices and values; a [bytes, stop] pair per rank
    assert [row["bytes_sent"] for row in rows] == [per_round * row["round"] for row in rows]
    assert [row["messages"] for row in rows] == [8 * row["round"] for row in rows]
    assert rows[-1]["compression_ratio"] == pytest.approx(3 * 8 * d / per_round, rel=1e-12)
    uncompressed = config("ssgd", batch_size=None, **COMMON)
    assert run_local(uncompressed, workers=3) == 0
    assert read_csv(uncompressed.out)[-1]["compression_ratio"] == 1.0


def test_compressed_ssgd_with_error_feedback_is_the_update_by_hand(problem):
    """Two shards, top-k with error feedback, three rounds against the rule written out."""
    algorithm = REGISTRY["ssgd"].build(problem, Settings(0.1, None, workers=2, seed=0),
                                       compressor="topk:0.34", error_feedback=True)
    compressor = parse_compressor("topk:0.34")
    shards, twins = shard_pair()
    states = [algorithm.init(W0) for _ in range(3)]
    w, memory = W0.copy(), [np.zeros(3), np.zeros(3)]
    for _ in range(3):
        payloads = []
        for k, shard in enumerate(shards, start=1):
            payload, states[k] = algorithm.local(states[k], shard)
            payloads.append(payload)
        summed = sum(s.weight * compressor.decode(p, 3) for s, p in zip(shards, payloads))
        states = [algorithm.combine(state, summed) for state in states]
        sent = []
        for k, twin in enumerate(twins):
            payload, memory[k] = with_error_feedback(compressor, grad(w, twin.X, twin.y), memory[k], None)
            sent.append(twin.weight * compressor.decode(payload, 3))
        w = prox(w - 0.1 * sum(sent), 0.1)
        for state in states:
            np.testing.assert_allclose(algorithm.model(state), w, rtol=1e-14)
    assert np.count_nonzero(compressor.decode(payloads[0], 3)) == 2  # really compressed: 2 of 3 coordinates


def test_clients_keep_their_own_feedback_memory_and_draws(config):
    """--clients 6 on 3 workers gives the 6-worker run: each client's memory and random draws
    belong to the client, not to the rank serving it."""
    params = {"compressor": "randk:0.2"}
    six = config("ma", params=params, batch_size=8, **COMMON)
    packed = config("ma", params=params, batch_size=8, clients=6, **COMMON)
    assert run_local(six, workers=6) == 0
    assert run_local(packed, workers=3) == 0
    # the same to rounding: evaluation and standardisation sum over ranks in another grouping
    np.testing.assert_allclose(objectives(packed.out), objectives(six.out), rtol=1e-10)
    biased = {"compressor": "sign", "error_feedback": True}
    six, packed = (config("storm", params=biased, batch_size=8, **COMMON),
                   config("storm", params=biased, batch_size=8, clients=6, **COMMON))
    assert run_local(six, workers=6) == 0 and run_local(packed, workers=3) == 0
    np.testing.assert_allclose(objectives(packed.out), objectives(six.out), rtol=1e-10)


def test_error_feedback_turns_topk_into_a_converging_method(config):
    """Without memory top-k ssgd stalls short of the optimum; with it the gap keeps falling."""
    gaps = {}
    for feedback in (False, True):
        run = config("ssgd", params={"compressor": "topk:0.1", "error_feedback": feedback}, batch_size=None,
                     data="breast_cancer", lam=0.01, rounds=1500, eval_every=1500)
        assert run_local(run, workers=3) == 0
        gaps[feedback] = (objectives(run.out)[-1] - reference_objective(run)) / reference_objective(run)
    assert gaps[True] < 1e-3 and gaps[True] < gaps[False] / 10


# --- diana -------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [None, 16])
def test_diana_with_the_identity_compressor_is_ssgd(config, batch_size):
    ssgd = config("ssgd", batch_size=batch_size, **COMMON)
    diana = config("diana", params={"compressor": "none"}, batch_size=batch_size, **COMMON)
    for run in (ssgd, diana):
        assert run_local(run, workers=3) == 0
    np.testing.assert_allclose(objectives(diana.out), objectives(ssgd.out), rtol=1e-12)


def test_diana_round_by_hand(problem):
    alpha, eta = 0.4, 0.1
    algorithm = REGISTRY["diana"].build(problem, Settings(eta, None, workers=2, seed=0),
                                        compressor="randk:0.66", alpha=alpha)
    compressor = parse_compressor("randk:0.66")
    shards, _ = shard_pair()
    states = [algorithm.init(W0) for _ in range(3)]
    w, h, h_k = W0.copy(), np.zeros(3), [np.zeros(3), np.zeros(3)]
    for _ in range(3):
        payloads = []
        for k, shard in enumerate(shards, start=1):
            payload, states[k] = algorithm.local(states[k], shard)
            payloads.append(payload)
        deltas = [compressor.decode(p, 3) for p in payloads]
        mean = sum(s.weight * delta for s, delta in zip(shards, deltas))
        states = [algorithm.combine(state, mean) for state in states]
        for k, shard in enumerate(shards):
            g = grad(w, shard.X, shard.y)
            assert np.count_nonzero(deltas[k]) == 2
            # Δ_k agrees with g_k − h_k wherever it was sent, rescaled by d/k = 3/2
            sent = deltas[k] != 0
            np.testing.assert_allclose(deltas[k][sent], 1.5 * (g - h_k[k])[sent], rtol=1e-13)
            h_k[k] = h_k[k] + alpha * deltas[k]
        w, h = prox(w - eta * (h + mean), eta), h + alpha * mean
        for k in (1, 2):
            np.testing.assert_allclose(states[k][2], h_k[k - 1], rtol=1e-14)
        for state in states:
            np.testing.assert_allclose(algorithm.model(state), w, rtol=1e-14)
            np.testing.assert_allclose(state[1], h, rtol=1e-14)
    np.testing.assert_allclose(h, sum(s.weight * hk for s, hk in zip(shards, h_k)), rtol=1e-13)


def test_diana_with_full_gradients_reaches_the_reference(config):
    """The compressed differences vanish at the optimum, so the gap goes to rounding level (randk:
    tests/test_sync_family.py's budgets)."""
    run = config("diana", params={"compressor": "qsgd:2"}, batch_size=None, data="breast_cancer", lam=0.01,
                 rounds=2500, eval_every=2500)
    assert run_local(run, workers=3) == 0
    optimum = reference_objective(run)
    assert (objectives(run.out)[-1] - optimum) / optimum <= 1e-6
    assert read_csv(run.out)[-1]["compression_ratio"] > 2


def test_diana_alpha_defaults_to_one_over_omega_plus_one(problem):
    algorithm = REGISTRY["diana"].build(problem, Settings(0.1, None, workers=2, seed=0), compressor="randk:0.34")
    shards, _ = shard_pair()
    payload, state = algorithm.local(algorithm.init(W0), shards[0])
    sent = parse_compressor("randk:0.34").decode(payload, 3)  # k = 2 of d = 3: ω = 1/2, α = 2/3
    np.testing.assert_allclose(state[2], 2 / 3 * sent, rtol=1e-15)


# --- ssgd --overlap ----------------------------------------------------------------------------

def test_overlap_is_gradient_descent_with_a_one_round_stale_gradient(config):
    """w_1 = w_0, then w_{t+1} = prox(w_t − η g(w_{t−1})): checked against the rule on the whole set."""
    step, rounds = 0.2, 25
    run = config("ssgd", params={"overlap": True}, batch_size=None, lam=0.05, lr=step, rounds=rounds,
                 eval_every=1, data="breast_cancer", test_fraction=0.0)
    assert run_local(run, workers=3) == 0
    whole, X, y = centralised_problem(run)
    w = previous = np.zeros(whole.d)
    expected = [whole.objective(w, whole.loss_sum(w, X, y))] * 2  # round 0, and round 1 applies nothing
    for _ in range(rounds - 1):
        w, previous = whole.reg.prox(w - step * whole.grad_mean(previous, X, y), step), w
        expected.append(whole.objective(w, whole.loss_sum(w, X, y)))
    np.testing.assert_allclose(objectives(run.out), expected, rtol=1e-12)
    assert objectives(run.out)[1:] != gradient_descent_objectives(run, step, rounds)[1:]


def test_overlap_honours_the_time_limit(config):
    run = config("ssgd", params={"overlap": True}, batch_size=8, rounds=10**7, time_limit=1.0, data="breast_cancer")
    assert run_local(run, workers=2) == 0
    assert read_csv(run.out)[-1]["round"] < 10**7


# --- refusals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm,params,match", [
    ("ssgd", {"compressor": "randk:0.5", "error_feedback": True}, "unbiased"),
    ("ma", {"compressor": "qsgd:2", "error_feedback": True}, "unbiased"),
    ("ssgd", {"error_feedback": True}, "needs a --compressor"),
    ("ssgd", {"compressor": "sign", "overlap": True}, "overlap"),
    ("diana", {"compressor": "topk:0.5"}, "unbiased"),
    ("diana", {"compressor": "sign"}, "unbiased"),
])
def test_impossible_combinations_are_refused(problem, algorithm, params, match):
    with pytest.raises(UsageError, match=match):
        REGISTRY[algorithm].build(problem, Settings(0.1, None, workers=2, seed=0), **params)


@pytest.mark.parametrize("args", [
    ["train", "ssgd", "--compressor", "topk:2"],
    ["train", "ma", "--compressor", "zip"],
    ["train", "diana", "--set", "compressor=qsgd:0"],
    ["train", "dadam", "--compressor", "qsgd:1", "--error-feedback"],
])
def test_the_command_line_refuses_bad_compressors_in_one_line(capsys, tmp_path, args):
    assert_refused_in_one_line(capsys, tmp_path, args)
