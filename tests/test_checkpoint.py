"""Checkpoints and --resume: a resumed run goes on as if it had not stopped (bit for bit for the
deterministic algorithms), its CSV has every row once, and what may change at resume is refused
otherwise. In-process for the algorithms, then SIGTERM to real runs mid-way (must-show 2)."""

import json
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, MPI_TIMEOUT_S, assert_refused_in_one_line
from dmlcli.errors import UsageError
from dmlcli.report import read_csv
from dmlcli.runtime.checkpoint import path_of, resumed_config
from dmlcli.runtime.config import make_config
from dmlcli.runtime.context import InjectedCrash
from dmlcli.runtime.local_run import run_local

TIMES = ("wall_s", "eval_s", "run_id")


def resume(run, **given):
    """The configuration `dmlcli train ALGO --resume RUN.csv [options]` runs with."""
    return resumed_config(make_config(run.algorithm, resume=run.out, **given), {"resume": run.out, **given})


def rows_of(path) -> list[dict]:
    """The rows without their times, values as text (so that NaN equals NaN)."""
    return [{key: repr(value) for key, value in row.items() if key not in TIMES} for row in read_csv(path)]


DETERMINISTIC = [
    ("ssgd", {}, {"batch_size": None}),
    ("ssgd", {}, {"batch_size": 8}),  # the samplers' permutations and positions
    ("ma", {"local_steps": 3}, {"batch_size": 8}),
    ("scaffold", {}, {"batch_size": 8}),
    ("admm", {}, {}),  # the cached local solve, made again
    ("giant", {}, {}),
    ("diana", {"compressor": "randk:0.25"}, {"batch_size": None}),  # a generator in the state
    ("ssgd", {"compressor": "topk:0.2", "error_feedback": True}, {"batch_size": 8}),
    ("dadam", {}, {"batch_size": 8}),
    ("ma", {}, {"batch_size": 8, "clients": 6, "client_fraction": 0.5}),
]


@pytest.mark.parametrize("algorithm,params,options", DETERMINISTIC)
def test_a_resumed_run_is_the_uninterrupted_run_bit_for_bit(config, tmp_path, algorithm, params, options):
    full = config(algorithm, params, rounds=30, eval_every=5, lam=0.01, save_model=str(tmp_path / "full.npy"),
                  **options)
    assert run_local(full, workers=3) == 0
    part = config(algorithm, params, rounds=20, eval_every=5, lam=0.01, checkpoint_every=10, **options)
    assert run_local(part, workers=3) == 0
    assert json.loads(Path(part.out).with_suffix(".json").read_text())["checkpoint"]["round"] == 20
    resumed = resume(part, rounds=30, save_model=str(tmp_path / "resumed.npy"))
    assert run_local(resumed, workers=3) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "resumed.npy"), np.load(tmp_path / "full.npy"))
    assert rows_of(part.out) == rows_of(full.out)
    manifest = json.loads(Path(part.out).with_suffix(".json").read_text())
    assert manifest["status"] == "completed" and manifest["resumed"][0]["round"] == 20
    assert manifest["config"]["rounds"] == 30 and manifest["checkpoint"]["round"] == 30


def test_rows_written_after_the_checkpoint_are_written_once(config):
    """A crash at round 28 with checkpoints every 10 rounds: row 25 was written after the checkpoint
    at 20; the resumed run (which does not carry --crash over) drops it and writes it again, once."""
    full = config("ssgd", rounds=40, eval_every=5, batch_size=8)
    assert run_local(full, workers=2) == 0
    crashed = config("ssgd", rounds=40, eval_every=5, batch_size=8, checkpoint_every=10, crash=(1, 28))
    with pytest.raises(InjectedCrash):
        run_local(crashed, workers=2)
    assert [row["round"] for row in read_csv(crashed.out)] == [0, 5, 10, 15, 20, 25]
    assert run_local(resume(crashed), workers=2) == 0
    assert rows_of(crashed.out) == rows_of(full.out)


def test_an_asynchronous_run_resumes_with_the_servers_state(config):
    """ssp stops at round 100 (its end, --checkpoint-every given) and goes on to 200 with its clocks:
    the rows continue (rounds and updates rising, none twice) and the resumed run reaches the end."""
    run = config("ssp", rounds=100, eval_every=20, batch_size=16, checkpoint_every=1)
    assert run_local(run, workers=3) == 0
    with open(path_of(run.out), "rb") as handle:
        saved = pickle.load(handle)
    server = saved["parts"][0]
    assert saved["round"] == server["version"] == 100 and min(server["state"].clocks) == 100
    # each worker's steps are the messages the server had from it (the last ones after the budget, unused)
    assert [part["step"] for part in saved["parts"][1:]] == server["messages_from"]
    assert run_local(resume(run, rounds=200), workers=3) == 0
    rows = read_csv(run.out)
    rounds = [row["round"] for row in rows]
    assert rounds == sorted(set(rounds)) and rounds[-1] == 200 and 100 in rounds
    updates = [row["updates"] for row in rows]
    assert updates == sorted(updates) and updates[-1] >= 3 * 200


@pytest.mark.parametrize("given,fragment", [
    ({"rounds": 20}, "the checkpoint is at round 20; give --rounds above it"),
    ({"rounds": 40, "lr": 0.5}, "--lr 0.5 disagrees with the run's"),
    ({"rounds": 40, "local_steps": 2}, "--local-steps 2 disagrees with the run's 5"),
])
def test_what_may_not_change_at_resume_is_refused(config, given, fragment):
    run = config("ma", rounds=20, checkpoint_every=10)
    assert run_local(run, workers=2) == 0
    params = {"local_steps": given.pop("local_steps")} if "local_steps" in given else {}
    with pytest.raises(UsageError, match=fragment):
        configured = resumed_config(make_config("ma", params, resume=run.out, **given),
                                    {"resume": run.out, **given, **params})
        run_local(configured, workers=2)


def test_resume_refuses_a_run_without_a_checkpoint_or_another_algorithm(config, capsys, tmp_path):
    run = config("ma", rounds=10)
    assert run_local(run, workers=2) == 0
    with pytest.raises(UsageError, match="no checkpoint"):
        run_local(resume(run, rounds=20), workers=2)
    with pytest.raises(UsageError, match="that run is ma, not ssgd"):
        resumed_config(make_config("ssgd", resume=run.out), {"resume": run.out})
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused_in_one_line(capsys, empty, ["train", "ma", "--resume", str(tmp_path / "none.csv")])


def test_checkpoints_are_refused_where_they_are_not_defined(config):
    with pytest.raises(UsageError, match="--overlap has a reduction in flight"):
        run_local(config("ssgd", {"overlap": True}, checkpoint_every=5), workers=2)
    with pytest.raises(UsageError, match="checkpoints are for the synchronous and parameter-server"):
        run_local(config("dpsgd", checkpoint_every=5), workers=2)


# --------------------------------------------------------------------- SIGTERM mid-way, real mpiexec


def stop_mid_way(tmp_path, name: str, *args: str, rows: int = 3) -> dict:
    """`dmlcli train ARGS` self-launched; SIGTERM once the CSV has `rows` rows (asynchronous runs
    write theirs after training: rows 0, then a second of training); returns its manifest."""
    out = tmp_path / f"{name}.csv"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    process = subprocess.Popen([str(BIN / "dmlcli"), "train", *args, "--progress", "off", "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + MPI_TIMEOUT_S
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < rows + 1):
        time.sleep(0.05)
    if not rows:
        manifest = out.with_suffix(".json")
        while time.monotonic() < deadline and not manifest.exists():
            time.sleep(0.05)
        time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=MPI_TIMEOUT_S)
    assert process.returncode == 143, stderr
    return json.loads(out.with_suffix(".json").read_text())


def dmlcli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([str(BIN / "dmlcli"), "train", *args, "--progress", "off"], capture_output=True, text=True,
                          timeout=MPI_TIMEOUT_S, env=env)


def test_sigterm_then_resume_gives_the_uninterrupted_model_bit_for_bit(tmp_path):
    common = ("ssgd", "--workers", "3", "--batch-size", "16", "--eval-every", "10", "--lam", "0.01")
    stopped = stop_mid_way(tmp_path, "stopped", *common, "--rounds", "1000000")
    assert stopped["status"] == "interrupted"
    at = stopped["checkpoint"]["round"]
    total = at + 55
    done = dmlcli("ssgd", "--resume", str(tmp_path / "stopped.csv"), "--rounds", str(total),
                  "--save-model", str(tmp_path / "resumed.npy"))
    assert done.returncode == 0, done.stderr
    done = dmlcli(*common, "--rounds", str(total), "--out", str(tmp_path / "full.csv"),
                  "--save-model", str(tmp_path / "full.npy"))
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "resumed.npy"), np.load(tmp_path / "full.npy"))
    resumed, full = rows_of(tmp_path / "stopped.csv"), rows_of(tmp_path / "full.csv")
    rounds = [int(row["round"]) for row in resumed]
    assert rounds == sorted(set(rounds)) and rounds[-1] == total
    # every row of the uninterrupted run is there once; the only other one is the row at the stop
    assert [row for row in resumed if row["round"] != repr(at) or at % 10 == 0] == full


def test_sigterm_then_resume_an_asynchronous_run(tmp_path):
    stopped = stop_mid_way(tmp_path, "stopped", "asgd", "--workers", "3", "--batch-size", "16", "--eval-every", "50",
                           "--rounds", "100000000", rows=0)
    assert stopped["status"] == "interrupted"
    at = stopped["checkpoint"]["round"]
    before = read_csv(tmp_path / "stopped.csv")
    assert before[-1]["round"] == at  # the model at the stop, the checkpoint's
    done = dmlcli("asgd", "--resume", str(tmp_path / "stopped.json"), "--rounds", str(at + 500))
    assert done.returncode == 0, done.stderr
    rows = read_csv(tmp_path / "stopped.csv")
    rounds = [row["round"] for row in rows]
    assert rounds == sorted(set(rounds)) and rounds[-1] == at + 500
    assert rows[: len(before)] == before  # nothing before the stop rewritten
    manifest = json.loads((tmp_path / "stopped.json").read_text())
    assert manifest["status"] == "completed" and manifest["resumed"] == [{"round": at, "at": manifest["resumed"][0]["at"]}]
