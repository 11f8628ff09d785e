"""Failures that end cleanly: --on-failure abort|continue, --stall-timeout and --crash R@S:hang.

In-process runs check the state the server keeps (who failed, the clocks, the rows written);
a few real mpiexec runs check that every rank ends, within seconds, with the exit code promised.
"""

import json
import time

import click
import pytest

from conftest import dmlcli_mpi
from dmlcli.algorithms import REGISTRY
from dmlcli.report import read_csv
from dmlcli.report.compare import crash_text
from dmlcli.runtime import setup
from dmlcli.runtime.config import CrashSpec
from dmlcli.runtime.context import InjectedCrash
from dmlcli.runtime.local_run import run_local
from dmlcli.runtime.stall import RunStalled


def manifest_of(config) -> dict:
    with open(config.out.removesuffix(".csv") + ".json") as handle:
        return json.load(handle)


def rounds_of(config) -> list[int]:
    return [row["round"] for row in read_csv(config.out)]


@pytest.mark.parametrize("algorithm", ["asgd", "ssp", "aeasgd", "async-admm"])
def test_abort_ends_failed_with_the_rows_up_to_the_failure(config, algorithm):
    """A worker's failure stops every worker; the models kept so far are evaluated, the last one the model at the failure."""
    run = config(algorithm, rounds=400, eval_every=10, crash=(2, 20), on_failure="abort")
    assert run_local(run, workers=3) == 1
    manifest = manifest_of(run)
    assert manifest["status"] == "failed"
    assert manifest["reason"] == "rank 2 failed at step 20: InjectedCrash: injected crash at step 20 (--crash 2@20)"
    assert manifest["failures"] == [manifest["reason"]]
    assert manifest["heterogeneity"]["worker_steps"][1] == 19  # its 20th step failed
    rounds = rounds_of(run)
    assert rounds[0] == 0 and 0 < rounds[-1] < 400
    assert all(r % 10 == 0 for r in rounds[:-1]) and rounds == sorted(set(rounds))
    assert manifest["final"]["round"] == rounds[-1]


@pytest.mark.parametrize("algorithm", ["asgd", "ssp", "aeasgd", "async-admm"])
def test_continue_goes_on_without_the_failed_worker(config, algorithm):
    run = config(algorithm, rounds=300, eval_every=50, crash=(2, 20), on_failure="continue")
    assert run_local(run, workers=3) == 0
    manifest = manifest_of(run)
    assert manifest["status"] == "completed" and manifest["reason"] is None
    assert manifest["failures"] == ["rank 2 failed at step 20: InjectedCrash: injected crash at step 20 (--crash 2@20)"]
    steps = manifest["heterogeneity"]["worker_steps"]
    assert steps[1] == 19 and steps[0] > 19 and steps[2] > 19
    rows = read_csv(run.out)
    assert rows[-1]["round"] == 300
    assert rows[-1]["active_workers"] == 2  # only ranks 1 and 3 were heard from since the previous row


def test_ssp_drops_a_failed_worker_from_the_clock_minimum(config, monkeypatch):
    """Without `leave` the failed worker's clock would hold every other worker for ever: the
    run then ends failed, saying why, instead of hanging."""
    run = config("ssp", {"staleness_bound": 2}, rounds=200, crash=(1, 5), on_failure="continue")
    assert run_local(run, workers=3) == 0
    assert rounds_of(run)[-1] == 200

    built = setup.algorithm_for

    def without_leave(*args):
        return built(*args)._replace(leave=None)

    monkeypatch.setattr(setup, "algorithm_for", without_leave)
    stuck = config("ssp", {"staleness_bound": 2}, rounds=200, crash=(1, 5), on_failure="continue")
    assert run_local(stuck, workers=3) == 1
    manifest = manifest_of(stuck)
    assert manifest["status"] == "failed"
    assert manifest["reason"] == "ssp cannot go on without rank 1: every worker left is held"
    assert rounds_of(stuck)[-1] < 200


@pytest.mark.parametrize("barrier,delay", [(1, 2), (2, 2), (3, 1)])
def test_async_admm_stops_waiting_for_a_failed_worker(config, barrier, delay):
    """The delay bound and the barrier wait for live workers only: with τ = 1 or A = K every update
    would otherwise wait for the failed worker for ever."""
    run = config("async-admm", {"partial_barrier": barrier, "max_delay": delay}, rounds=60, crash=(2, 4),
                 on_failure="continue")
    assert run_local(run, workers=3) == 0
    assert rounds_of(run)[-1] == 60


def test_continue_with_every_worker_failed_ends_failed(config):
    run = config("asgd", rounds=200, crash=(1, 5), on_failure="continue")
    assert run_local(run, workers=1) == 1
    assert manifest_of(run)["reason"].startswith("rank 1 failed at step 5")


def test_ssgd_with_backup_goes_on_without_one_worker(config):
    run = config("ssgd", {"backup": 1}, rounds=100, batch_size=None, crash=(3, 10), on_failure="continue")
    assert run_local(run, workers=3) == 0
    assert rounds_of(run)[-1] == 100
    assert manifest_of(run)["heterogeneity"]["worker_steps"][2] == 9


def test_a_synchronous_algorithm_ends_at_a_failure_whatever_the_policy(config):
    with pytest.raises(InjectedCrash):
        run_local(config("ma", crash=(2, 5), on_failure="continue"), workers=3)


@pytest.mark.parametrize("algorithm,silent", [("ssgd", 2), ("dpsgd", 2), ("asgd", 2), ("ssp", 1), ("ma", 0), ("asgd", 0),
                                             ("hogwild", 2)])
def test_a_silent_rank_ends_the_run_naming_it(config, algorithm, silent):
    run = config(algorithm, rounds=2000, crash=(silent, 5, "hang"), stall_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(RunStalled) as stalled:
        run_local(run, workers=3, timeout=30)
    assert time.monotonic() - started < 10
    if silent == 0:
        assert str(stalled.value).endswith("rank 0 is silent")
    else:
        assert str(stalled.value).endswith(f": rank {silent} silent")
    manifest = manifest_of(run)
    assert manifest["status"] == "failed" and "RunStalled" in manifest["reason"] and "silent" in manifest["reason"]


def test_a_hogwild_worker_whose_count_stands_still_is_silent(config):
    """Nothing travels in shared memory: rank 0 watches each worker's own step count."""
    run = config("hogwild", rounds=10**9, crash=(1, 3, "hang"), stall_timeout=0.5)
    with pytest.raises(RunStalled, match=r"no step for 0.5 s \(--stall-timeout\) after \d+ updates: rank 1 silent"):
        run_local(run, workers=1, timeout=30)


def test_a_slow_rank_within_the_timeout_is_not_a_stall(config):
    run = config("ssgd", rounds=20, delay="const:1,1,1", lr=0.1, stall_timeout=5.0)
    assert run_local(run, workers=3) == 0


@pytest.mark.parametrize("text,value", [("2@10", (2, 10)), ("2@10:hang", (2, 10, "hang"))])
def test_the_crash_spec_reads_hang(text, value):
    assert CrashSpec().convert(text, None, None) == value
    assert crash_text(list(value)) == text


def test_the_crash_spec_refuses_another_kind():
    with pytest.raises(click.BadParameter, match="the only kind after ':' is hang"):
        CrashSpec().convert("2@10:boom", None, None)


def test_on_failure_is_an_option_of_every_algorithm():
    from dmlcli.cli import main

    for name in REGISTRY:
        with pytest.raises(SystemExit) as exit_info:
            main(["train", name, "--on-failure", "sometimes"])
        assert exit_info.value.code == 2


# ------------------------------------------------------------------------------- under real mpiexec


def test_under_mpiexec_continue_finishes_and_abort_fails_with_rows(tmp_path):
    for policy, code in (("continue", 0), ("abort", 1)):
        out = tmp_path / f"{policy}.csv"
        done = dmlcli_mpi(4, "train", "ssp", "--rounds", "300", "--eval-every", "10", "--crash", "2@30",
                          "--on-failure", policy, "--progress", "off", "--out", str(out), timeout=60)
        assert done.returncode == code, done.stderr
        failures = [line for line in done.stderr.splitlines() if "failed" in line]
        assert failures[0].startswith("dmlcli: rank 2 failed: InjectedCrash") and len(failures) == 1
        rounds = [row["round"] for row in read_csv(out)]
        assert (rounds[-1] == 300) == (policy == "continue") and len(rounds) > 2


@pytest.mark.parametrize("algorithm", ["ssgd", "asgd"])
def test_under_mpiexec_a_hung_rank_ends_the_run_in_seconds(tmp_path, algorithm):
    out = tmp_path / "hang.csv"
    started = time.monotonic()
    done = dmlcli_mpi(4, "train", algorithm, "--rounds", "3000", "--crash", "3@10:hang",
                      "--stall-timeout", "1", "--progress", "off", "--out", str(out), timeout=60)
    assert done.returncode == 1
    (failure,) = [line for line in done.stderr.splitlines() if "failed" in line]
    assert failure.startswith("dmlcli: rank 0 failed: RunStalled") and failure.endswith("rank 3 silent")
    assert time.monotonic() - started < 20
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["status"] == "failed" and manifest["reason"].endswith("rank 3 silent")
