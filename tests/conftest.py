"""Shared helpers: configs for in-process runs, and the real-MPI command line with its timeout."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dmlcli.problems import LOSSES, Problem, make_regularizer
from dmlcli.problems.reference import reference_solution
from dmlcli.report import read_csv
from dmlcli.runtime.config import make_config
from dmlcli.runtime.setup import centralised_problem

BIN = Path(sys.executable).parent
LAM, N = 0.5, 10  # the tiny problem of the by-hand tests: squared loss, (λ/2)‖w‖², 10 rows, d = 3
MPI_TIMEOUT_S = 120  # a hung run fails its own test instead of the whole suite


@pytest.fixture(autouse=True, scope="session")
def private_parse_cache(tmp_path_factory):
    """Runs in the suite (and the mpiexec runs they start) keep LIBSVM parse caches in a directory of
    the session's, never in the user's ~/.cache/dmlcli; tests of the cache set their own."""
    previous = os.environ.get("DMLCLI_CACHE_DIR")
    os.environ["DMLCLI_CACHE_DIR"] = str(tmp_path_factory.mktemp("parse-cache"))
    yield
    if previous is None:
        os.environ.pop("DMLCLI_CACHE_DIR", None)
    else:
        os.environ["DMLCLI_CACHE_DIR"] = previous


@pytest.fixture
def problem():
    return Problem(LOSSES["squared"], make_regularizer("l2", LAM), n=N, d=3)


@pytest.fixture
def captured(monkeypatch):
    """Pretend to be a rank under mpirun and catch the resolved config instead of running."""
    from dmlcli.runtime import launch

    seen = {}

    def fake_rank_main(config):
        seen["config"] = config
        return 0

    monkeypatch.setattr(launch, "under_launcher", lambda: True)
    monkeypatch.setattr(launch, "rank_main", fake_rank_main)
    monkeypatch.setenv("PMI_SIZE", "5")
    return seen


@pytest.fixture
def config(tmp_path):
    """make_config with test-friendly outputs: a CSV in tmp_path, no progress display."""
    counter = iter(range(1_000_000))

    def make(algorithm, params=None, **options):
        options.setdefault("out", str(tmp_path / f"{algorithm}-{next(counter)}.csv"))
        options.setdefault("progress", "off")
        return make_config(algorithm, params, **options)

    return make


def assert_refused_in_one_line(capsys, out_dir, args: list[str]) -> None:
    """`dmlcli ARGS --out OUT_DIR/run.csv` (in this process) exits 2 with one stderr line and writes nothing."""
    from dmlcli.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(out_dir / "run.csv")])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert list(out_dir.iterdir()) == []


def reference_objective(config, workers: int = 1) -> float:
    problem, X, y = centralised_problem(config, workers)
    return reference_solution(problem, X, y)[1]


def objectives(path) -> list[float]:
    return [row["objective"] for row in read_csv(path)]


def dmlcli_mpi(ranks: int, *args: str, timeout: float = MPI_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`mpiexec -n RANKS dmlcli ARGS`, killed (and the test failed) after `timeout` seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([str(BIN / "mpiexec"), "-n", str(ranks), str(BIN / "dmlcli"), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def alone_env() -> dict:
    """The environment of a process started without an MPI launcher."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL"))}


def dmlcli_alone(*args: str, timeout: float = MPI_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`dmlcli ARGS` started without a launcher, as a user would (it starts MPI itself)."""
    return subprocess.run([str(BIN / "dmlcli"), *args], capture_output=True, text=True, timeout=timeout, env=alone_env())
