"""Heterogeneity (`--delay`, `--network`, `--dropout`): the parsers, the seeded models on their own,
and whole runs of both families in process (sleeps recorded by replacing heterogeneity.pause, or
real with generous tolerances) and under mpiexec."""

import dataclasses
import json
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import dmlcli_mpi, objectives, reference_objective
from dmlcli.cli import main
from dmlcli.errors import UsageError
from dmlcli.report import read_csv
from dmlcli.runtime import heterogeneity, setup
from dmlcli.runtime.heterogeneity import (
    Heterogeneity,
    Network,
    message_delay,
    parse_delay,
    parse_network,
    round_participants,
    straggler_count,
    stragglers,
)
from dmlcli.runtime.local_run import run_local
from dmlcli.runtime.run import CollectiveUsageError

TIMES = ("run_id", "wall_s", "eval_s")


def manifest_of(run) -> dict:
    return json.loads(Path(run.out).with_suffix(".json").read_text())


def without_times(path):
    return [{key: value for key, value in row.items() if key not in TIMES} for row in read_csv(path)]


@pytest.fixture
def pauses(monkeypatch):
    """Replace the sleep of every heterogeneity wait: record (thread, seconds), sleep nothing."""
    recorded = []
    lock = threading.Lock()

    def pause(seconds):
        with lock:
            recorded.append((threading.current_thread().name, seconds))

    monkeypatch.setattr(heterogeneity, "pause", pause)
    return recorded


def slow_compute(monkeypatch, seconds: float) -> None:
    """Make every local step (sync) and worker step (async) take at least `seconds` of compute time,
    so that waits proportional to it dominate the thread scheduling noise of in-process runs."""
    original = setup.algorithm_for

    def algorithm_for(config, problem, workers, lr):
        algorithm = original(config, problem, workers, lr)

        def slowed(step):
            def run(*args):
                time.sleep(seconds)
                return step(*args)
            return run

        if hasattr(algorithm, "worker_step"):
            return algorithm._replace(worker_step=slowed(algorithm.worker_step))
        return algorithm._replace(local=slowed(algorithm.local))

    monkeypatch.setattr(setup, "algorithm_for", algorithm_for)


# --- the parsers -------------------------------------------------------------------------------

@pytest.mark.parametrize("text,canonical", [
    ("const:1,3", "const:1,3"),
    (" const: 1.0, 2.5 ,1 ", "const:1,2.5,1"),
    ("exp:0.01", "exp:0.01"),
    ("exp:1e-3", "exp:0.001"),
    ("lognormal:-6,0.5", "lognormal:-6,0.5"),
    ("lognormal:-6,0", "lognormal:-6,0"),
    ("straggler:0.25,3", "straggler:0.25,3"),
    ("straggler:1,1.5", "straggler:1,1.5"),
])
def test_good_delay_specs_parse_to_their_canonical_text(text, canonical):
    assert heterogeneity.DelaySpec().convert(text, None, None) == canonical
    assert heterogeneity.DelaySpec().convert(canonical, None, None) == canonical  # recipes convert twice


@pytest.mark.parametrize("text,fragment", [
    ("", "is not a delay model"),
    ("const", "is not a delay model"),
    ("EXP:1", "is not a delay model"),
    ("gauss:1", "is not a delay model"),
    ("const:", "plain decimal numbers"),
    ("const:1,,2", "plain decimal numbers"),
    ("const:1_0", "plain decimal numbers"),
    ("const:0x1", "plain decimal numbers"),
    ("const:1,nan", "plain decimal numbers"),
    ("const:1,inf", "plain decimal numbers"),
    ("const:1,1e999", "finite numbers"),
    ("const:1,0.5", "every factor must be 1 or more"),
    ("exp:0", "exp takes one MEAN"),
    ("exp:-1", "exp takes one MEAN"),
    ("exp:1,2", "exp takes one MEAN"),
    ("lognormal:1", "lognormal takes MU,SIGMA"),
    ("lognormal:0,-1", "lognormal takes MU,SIGMA"),
    ("straggler:0,3", "0 < FRACTION ≤ 1"),
    ("straggler:1.5,3", "0 < FRACTION ≤ 1"),
    ("straggler:0.5,0.5", "SLOWDOWN 1 or more"),
    ("straggler:0.5", "straggler takes FRACTION,SLOWDOWN"),
])
def test_bad_delay_specs_are_refused_with_a_reason(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_delay(text)


@pytest.mark.parametrize("text,latency_s,mbps,canonical", [
    ("wifi", 0.005, 100.0, "wifi"),
    ("lte", 0.05, 10.0, "lte"),
    ("3g", 0.15, 1.0, "3g"),
    ("20,50", 0.02, 50.0, "20,50"),
    ("0, 1000", 0.0, 1000.0, "0,1000"),
    ("0.5,2.5", 0.0005, 2.5, "0.5,2.5"),
])
def test_good_network_specs(text, latency_s, mbps, canonical):
    network = parse_network(text)
    assert network.latency_s == pytest.approx(latency_s) and network.mbps == pytest.approx(mbps)
    assert heterogeneity.NetworkSpec().convert(text, None, None) == canonical


@pytest.mark.parametrize("text", ["5g", "WIFI", "5", "5,0", "-1,10", "a,b", "5,100,3", "nan,1", "5,inf", ""])
def test_bad_network_specs_are_refused(text):
    with pytest.raises(ValueError, match="is not a network; give LATENCY_MS,MBPS"):
        parse_network(text)


# --- the models on their own ---------------------------------------------------------------------

def delays(spec: str, seed: int, rank: int, workers: int = 4, steps: int = 50) -> list[float]:
    worker = Heterogeneity(spec, None, 0.0, seed, workers).worker(rank)
    return [worker.delay_after_compute(0.01) for _ in range(steps)]


@pytest.mark.parametrize("spec", ["exp:0.01", "lognormal:-5,0.7"])
def test_the_same_seed_gives_the_same_delays_and_another_seed_others(spec):
    first = delays(spec, seed=3, rank=2)
    assert first == delays(spec, seed=3, rank=2)
    assert first != delays(spec, seed=4, rank=2)
    assert first != delays(spec, seed=3, rank=1)  # each worker has its own generator
    assert all(value > 0 for value in first)


def test_exp_and_lognormal_waits_have_their_distributions():
    exp = delays("exp:0.02", seed=0, rank=1, steps=20_000)
    assert np.mean(exp) == pytest.approx(0.02, rel=0.03)  # mean 0.02 s; the mean of 20,000 draws: ±0.7 %
    lognormal = delays("lognormal:-5,0.5", seed=0, rank=1, steps=20_000)
    assert np.median(lognormal) == pytest.approx(math.exp(-5), rel=0.03)  # median exp(MU)
    assert np.std(np.log(lognormal)) == pytest.approx(0.5, rel=0.03)


def test_const_stretches_each_step_by_its_factor(pauses):
    run = Heterogeneity("const:1,3", None, 0.0, seed=0, workers=2)
    first, second = run.worker(1), run.worker(2)
    assert first.wait_after_compute(0.01) == 0.0
    assert second.wait_after_compute(0.01) == pytest.approx(0.02)  # (3 − 1) × its 10 ms of compute
    assert second.wait_after_compute(0.004, new_step=False) == pytest.approx(0.008)  # every phase's compute
    assert [seconds for _, seconds in pauses] == pytest.approx([0.02, 0.008])  # worker 1 never sleeps


@pytest.mark.parametrize("fraction,workers,count", [(0.25, 4, 1), (0.5, 4, 2), (0.5, 3, 2), (0.3, 10, 3),
                                                    (1.0, 5, 5), (0.1, 4, 0), (0.125, 4, 1)])
def test_straggler_count_is_fraction_times_workers_rounded_half_up(fraction, workers, count):
    assert straggler_count(fraction, workers) == count


def test_stragglers_are_drawn_with_the_seed():
    assert stragglers(0.5, 8, seed=1) == stragglers(0.5, 8, seed=1)
    assert len(stragglers(0.5, 8, seed=1)) == 4 and all(1 <= k <= 8 for k in stragglers(0.5, 8, seed=1))
    assert len({stragglers(0.25, 4, seed) for seed in range(20)}) > 1  # not always the same worker
    run = Heterogeneity("straggler:0.25,5", None, 0.0, seed=7, workers=4)
    slow = stragglers(0.25, 4, seed=7)
    assert run.factors == tuple(5.0 if k in slow else 1.0 for k in range(1, 5))


def test_a_straggler_fraction_that_picks_no_worker_and_a_const_of_the_wrong_length_are_refused():
    with pytest.raises(UsageError, match="no straggler at all"):
        heterogeneity.check("straggler:0.1,3", 4)
    with pytest.raises(UsageError, match="gives 2 factors for 3 workers"):
        heterogeneity.check("const:1,2", 3)
    heterogeneity.check("const:1,2,1", 3)


def test_the_network_delay_is_latency_plus_bytes_over_bandwidth():
    wifi = parse_network("wifi")
    assert message_delay(wifi, 8000) == pytest.approx(0.005 + 8000 / 12.5e6)  # 100 Mbit/s = 12.5 MB/s
    assert message_delay(Network(0.0, 1e6), 250_000) == pytest.approx(0.25)
    assert message_delay(parse_network("3g"), 0) == pytest.approx(0.15)
    assert message_delay(None, 10**9) == 0.0


def test_dropout_takes_each_worker_out_with_probability_p_and_keeps_one():
    """K = 4, p = 0.3, 20,000 rounds: the fraction taking part is 1 − p plus the rounds where all
    four dropped and one came back (p⁴/K): 0.702; the mean of 20,000 rounds is within ±0.002 (1σ)."""
    owners, clients = np.arange(4), np.arange(4)
    taking_part = [round_participants(clients, owners, seed=5, round_=r, p=0.3) for r in range(1, 20_001)]
    assert min(part.size for part in taking_part) == 1
    assert np.mean([part.size / 4 for part in taking_part]) == pytest.approx(0.7 + 0.3**4 / 4, abs=0.01)
    again = [round_participants(clients, owners, seed=5, round_=r, p=0.3) for r in range(1, 101)]
    assert all(np.array_equal(a, b) for a, b in zip(again, taking_part))
    lonely = [part for part in (round_participants(clients, owners, 5, r, 0.95) for r in range(1, 200))]
    assert all(part.size >= 1 for part in lonely)


def test_dropout_takes_out_every_client_of_a_dropped_worker():
    owners = setup.client_owners(10, 4)  # clients 0-2, 3-5, 6-7, 8-9
    assert owners.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    for round_ in range(1, 50):
        kept = round_participants(np.arange(10), owners, seed=2, round_=round_, p=0.5)
        for worker in range(4):
            mine = set(np.flatnonzero(owners == worker))
            assert mine <= set(kept) or not mine & set(kept)


# --- whole runs in process -------------------------------------------------------------------------

def test_without_heterogeneity_no_hook_sleeps_and_the_manifest_says_none(config, pauses):
    for algorithm in ("ssgd", "asgd"):
        run = config(algorithm, rounds=30)
        assert run_local(run, workers=3) == 0
        recorded = manifest_of(run)["heterogeneity"]
        assert recorded["delay"] is None and recorded["network"] is None and recorded["dropout"] == 0.0
        assert "workers" not in recorded and len(recorded["worker_steps"]) == 3
        assert {row["active_workers"] for row in read_csv(run.out)[1:]} <= {1, 2, 3}
    assert pauses == []


def test_const_1_3_makes_worker_2_three_times_slower_in_a_sync_run(config, pauses):
    """The sleeps recorded: worker 2 sleeps twice its measured compute time every round, worker 1 never."""
    run = config("ssgd", batch_size=None, rounds=40, delay="const:1,3")
    assert run_local(run, workers=2) == 0
    first, second = manifest_of(run)["heterogeneity"]["workers"]
    assert first["delay_s"] == 0.0 and first["compute_s"] > 0
    assert second["delay_s"] == pytest.approx(2 * second["compute_s"], rel=1e-9)
    assert len(pauses) == 40 and sum(seconds for _, seconds in pauses) == pytest.approx(second["delay_s"])


def test_const_1_3_triples_the_wall_time_of_compute_bound_rounds(config, monkeypatch):
    """Real sleeps: every local step computes for at least 8 ms, so a round takes about 8 ms, and
    with const:1,3 worker 2's 24 ms. Measured 2.91-3.03 over 8 pairs; asserted between 2.2 and 3.8."""
    slow_compute(monkeypatch, 0.008)
    walls = {}
    for delay in (None, "const:1,3"):
        run = config("ssgd", rounds=40, delay=delay)
        assert run_local(run, workers=2) == 0
        walls[delay] = read_csv(run.out)[-1]["wall_s"]
    assert 2.2 <= walls["const:1,3"] / walls[None] <= 3.8, walls


def test_the_network_delay_of_a_sync_run_is_each_phase_s_message(config, pauses):
    """ssgd's message is d + 1 float64s (the gradient and the stop flag): each worker waits
    latency + 8(d + 1)/bandwidth before every Allreduce."""
    run = config("ssgd", rounds=25, network="2,10")
    assert run_local(run, workers=3) == 0
    d = setup.plan_run(dataclasses.replace(run, force=True), 3)[0].d_model
    per_message = 0.002 + 8 * (d + 1) / (10e6 / 8)
    for worker in manifest_of(run)["heterogeneity"]["workers"]:
        assert worker["network_s"] == pytest.approx(25 * per_message)
    assert len(pauses) == 3 * 25


def test_the_network_delays_of_an_async_run_are_the_payload_s_and_the_reply_s(config, pauses):
    run = config("asgd", rounds=60, network="lte")
    assert run_local(run, workers=2) == 0
    recorded = manifest_of(run)["heterogeneity"]
    d = setup.plan_run(dataclasses.replace(run, force=True), 2)[0].d_model
    message = 0.05 + 8 * (d + 2) / (10e6 / 8)  # payload and reply alike: two header slots and d floats
    for worker, steps in zip(recorded["workers"], recorded["worker_steps"]):
        # each step computed: its reply and its payload; the last payload may reach a server whose
        # budget is spent, which answers STOP and does not count it
        assert round(worker["network_s"] / message, 6) in (2 * steps, 2 * steps + 2)
    assert recorded["network"] == {"spec": "lte", "latency_ms": 50.0, "mbps": 10.0}


def test_dropout_in_a_sync_run_shows_in_active_workers_round_by_round(config):
    """ssgd, 4 workers, p = 0.3, 400 rounds: active_workers is exactly the seeded draw of every
    round, and its mean is 4(1 − p) = 2.8 within ±0.2 (5 % of the workers; 4σ is 0.18)."""
    run = config("ssgd", batch_size=8, rounds=400, eval_every=1, dropout=0.3, seed=11)
    assert run_local(run, workers=4) == 0
    rows = read_csv(run.out)
    assert rows[0]["active_workers"] is None  # no round yet
    expected = [round_participants(np.arange(4), np.arange(4), 11, r, 0.3).size for r in range(1, 401)]
    assert [row["active_workers"] for row in rows[1:]] == expected
    assert [row["active_clients"] for row in rows[1:]] == expected  # one client per worker
    assert np.mean(expected) == pytest.approx(2.8, abs=0.2)
    assert rows[-1]["updates"] == sum(expected)
    steps = manifest_of(run)["heterogeneity"]["worker_steps"]
    assert sum(steps) == sum(expected) and all(100 < count < 400 for count in steps)


def test_dropout_with_several_clients_per_worker_leaves_the_dropped_workers_clients_out(config):
    run = config("ma", clients=8, batch_size=8, rounds=60, eval_every=1, dropout=0.4, seed=1)
    assert run_local(run, workers=4) == 0
    rows = read_csv(run.out)[1:]
    assert all(row["active_clients"] == 2 * row["active_workers"] for row in rows)  # two clients each
    assert {row["active_workers"] for row in rows} > {2, 3}


def test_ssgd_with_dropout_still_converges_and_the_same_seed_gives_the_same_csv(config):
    """Full local gradients, λ = 0.01, 4 workers, p = 0.3, 1500 rounds: each round steps on the
    shards of the workers taking part, so with a constant step the model wanders near the optimum
    (as with backup workers). Measured final relative gaps 1.3e-4 to 1.7e-3 over seeds 0-5; asserted ≤ 5e-3."""
    runs = [config("ssgd", batch_size=None, lam=0.01, rounds=1500, dropout=0.3, seed=seed) for seed in (0, 0, 1)]
    for run in runs:
        assert run_local(run, workers=4) == 0
    optimum = reference_objective(runs[0])
    assert (objectives(runs[0].out)[-1] - optimum) / optimum <= 5e-3
    assert without_times(runs[0].out) == without_times(runs[1].out)
    assert without_times(runs[0].out) != without_times(runs[2].out)


def test_async_dropout_sits_activations_out(config, pauses):
    run = config("asgd", rounds=200, dropout=0.5, seed=3)
    assert run_local(run, workers=2) == 0
    recorded = manifest_of(run)["heterogeneity"]
    for worker, steps in zip(recorded["workers"], recorded["worker_steps"]):
        # p = 0.5: about one dropped activation per step taken (geometric), each sleeping one step time
        assert 0.5 * steps <= worker["dropped_activations"] <= 1.6 * steps
        assert worker["dropout_s"] > 0
    assert len(pauses) == sum(worker["dropped_activations"] for worker in recorded["workers"])


def test_an_asgd_straggler_sends_fewer_gradients(config, monkeypatch):
    """3 workers, each step computing at least 2 ms, worker 2 (chosen by the seed) 5 times slower:
    the server hears from it about a fifth as often. Measured 0.18-0.21 of the others' mean over seeds 0-7;
    asserted < 0.5."""
    slow_compute(monkeypatch, 0.002)
    run = config("asgd", rounds=300, delay="straggler:0.34,5", seed=0)
    assert run_local(run, workers=3) == 0
    recorded = manifest_of(run)["heterogeneity"]
    (slow,) = recorded["stragglers"]
    assert recorded["slowdown"][slow - 1] == 5.0
    steps = recorded["worker_steps"]
    others = [count for rank, count in enumerate(steps, start=1) if rank != slow]
    assert steps[slow - 1] < 0.5 * np.mean(others), steps


def test_the_manifest_records_every_model_resolved_per_worker(config, pauses):
    run = config("ssgd", rounds=20, delay="straggler:0.5,4", network="3g", dropout=0.2, seed=9)
    assert run_local(run, workers=4) == 0
    manifest = manifest_of(run)
    assert manifest["config"]["delay"] == "straggler:0.5,4" and manifest["config"]["network"] == "3g"
    recorded = manifest["heterogeneity"]
    assert recorded["stragglers"] == list(stragglers(0.5, 4, seed=9)) and len(recorded["stragglers"]) == 2
    assert recorded["slowdown"] == [4.0 if k in recorded["stragglers"] else 1.0 for k in range(1, 5)]
    assert recorded["network"] == {"spec": "3g", "latency_ms": 150.0, "mbps": 1.0}
    assert recorded["dropout"] == 0.2 and recorded["wait"] is None
    assert [worker["rank"] for worker in recorded["workers"]] == [1, 2, 3, 4]
    exp = config("asgd", rounds=10, delay="exp:0.001")
    assert run_local(exp, workers=2) == 0
    assert manifest_of(exp)["heterogeneity"]["wait"] == {"distribution": "exponential", "mean_s": 0.001}


def test_an_exp_delay_is_the_same_sequence_for_the_same_seed(config, pauses):
    """Each sync round's exp wait comes from the worker's own generator: the same seed, the same sleeps."""
    slept = []
    for seed in (4, 4, 5):
        pauses.clear()
        run = config("ssgd", rounds=30, delay="exp:0.01", seed=seed)
        assert run_local(run, workers=2) == 0
        slept.append(sorted(seconds for _, seconds in pauses))
    assert len(slept[0]) == 60 and slept[0] == slept[1] != slept[2]
    assert slept[0] == sorted(delays("exp:0.01", 4, 1, 2, 30) + delays("exp:0.01", 4, 2, 2, 30))


def test_start_up_refuses_what_only_the_worker_count_shows(config):
    for options, fragment in [({"delay": "const:1,2"}, "gives 2 factors for 3 workers"),
                              ({"delay": "straggler:0.1,2"}, "no straggler at all")]:
        run = config("ssgd", workers=3, **options)
        with pytest.raises(UsageError, match=fragment):
            setup.precheck(run)
        with pytest.raises(CollectiveUsageError, match=fragment):
            run_local(run, workers=3)
        assert not Path(run.out).exists() and not Path(run.out).with_suffix(".json").exists()
    with pytest.raises(UsageError, match="--dropout .* is not defined for it"):
        setup.precheck(config("giant", dropout=0.1))


# --- the command line ------------------------------------------------------------------------------

def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--delay", "const:0.5,2"], "Invalid value for '--delay': 'const:0.5,2': every factor must be 1 or more"),
    (["--delay", "exp:abc"], "Invalid value for '--delay': exp's MEAN must be plain decimal numbers"),
    (["--delay", "poisson:1"], "Invalid value for '--delay': 'poisson:1' is not a delay model"),
    (["--network", "5g"], "Invalid value for '--network': '5g' is not a network"),
    (["--dropout", "1"], "Invalid value for '--dropout'"),
    (["--dropout", "-0.1"], "Invalid value for '--dropout'"),
    (["--dropout", "nan"], "Invalid value for '--dropout': nan is not a finite number"),
    (["--set", "delay=straggler:2,3"], "--set: invalid value for 'delay': 'straggler:2,3': straggler takes"),
    (["--set", "network=1,0"], "--set: invalid value for 'network': '1,0' is not a network"),
    (["--workers", "3", "--delay", "const:1,2"], "--delay const:1,2 gives 2 factors for 3 workers"),
    (["--workers", "4", "--delay", "straggler:0.1,3"], "no straggler at all"),
])
def test_bad_heterogeneity_options_are_one_line_and_exit_2(capsys, tmp_path, args, message):
    code, err = run_cli(capsys, "train", "ssgd", "--out", str(tmp_path / "x.csv"), *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text,message", [
    ("delay = 3", "'delay' must be a delay model string"),
    ('delay = "exp:0"', "invalid value for 'delay'"),
    ("network = 5", "'network' must be a network string"),
    ('dropout = "half"', "'dropout' must be a number"),
])
def test_bad_heterogeneity_options_in_a_recipe(capsys, tmp_path, text, message):
    recipe = tmp_path / "r.toml"
    recipe.write_text(text + "\n")
    code, err = run_cli(capsys, "train", "ssgd", "--recipe", str(recipe), "--out", str(tmp_path / "x.csv"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_recipe_gives_the_models_by_name(tmp_path, captured):
    recipe = tmp_path / "r.toml"
    recipe.write_text('delay = "straggler:0.25, 3.0"\nnetwork = "lte"\ndropout = 0.1\n')
    with pytest.raises(SystemExit):
        main(["train", "asgd", "--recipe", str(recipe)])
    config = captured["config"]
    assert (config.delay, config.network, config.dropout) == ("straggler:0.25,3", "lte", 0.1)


# --- real MPI --------------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["ssgd", "asgd"])
def test_a_straggler_under_mpiexec(tmp_path, algorithm):
    """4 workers, one 3 times slower; full local gradients of 10,000 rows × 200 features (about 3 ms a
    step), so that the straggler's waits dominate the scheduling noise of 5 ranks on 2 cores. asgd
    over seeds 0-3: the straggler sent 22-34 payloads, the others 48-71."""
    out = tmp_path / f"{algorithm}.csv"
    done = dmlcli_mpi(5, "train", algorithm, "--data", "synthetic:n=40000,d=200,seed=1", "--batch-size", "all",
                      "--rounds", "200", "--delay", "straggler:0.25,3", "--progress", "off", "--out", str(out),
                      timeout=180)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(out.with_suffix(".json").read_text())
    recorded = manifest["heterogeneity"]
    assert manifest["status"] == "completed" and len(recorded["stragglers"]) == 1
    (slow,) = recorded["stragglers"]
    assert recorded["slowdown"] == [3.0 if k == slow else 1.0 for k in range(1, 5)]
    workers = recorded["workers"]
    assert workers[slow - 1]["delay_s"] == pytest.approx(2 * workers[slow - 1]["compute_s"], rel=1e-9)
    assert all(worker["delay_s"] == 0.0 for worker in workers if worker["rank"] != slow)
    rows = read_csv(out)
    assert rows[-1]["round"] == 200 and rows[-1]["objective"] < rows[0]["objective"]
    if algorithm == "asgd":  # the straggler is heard from less often than the others
        steps = recorded["worker_steps"]
        assert steps[slow - 1] < min(count for rank, count in enumerate(steps, start=1) if rank != slow), steps
    else:
        assert {row["active_workers"] for row in rows[1:]} == {4}
