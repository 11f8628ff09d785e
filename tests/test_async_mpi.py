"""ssp and aeasgd end to end under real mpiexec, through the command line. Every run has a timeout."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
from test_ssp import check_the_bound

from conftest import BIN, dmlcli_mpi, objectives, reference_objective
from dmlcli.report import read_csv
from dmlcli.runtime.config import make_config

PROBLEM = ["--data", "breast_cancer", "--batch-size", "all", "--lam", "0.01", "--progress", "off"]
TIMEOUT_S = 120


def gaps(out, algorithm):
    optimum = reference_objective(make_config(algorithm, batch_size=None, lam=0.01))
    return [(value - optimum) / optimum for value in objectives(out)]


def test_ssp_reaches_the_reference_under_mpiexec(tmp_path):
    """4 ranks (3 workers), the default s = 3, 2000 clocks."""
    out = tmp_path / "ssp.csv"
    done = dmlcli_mpi(4, "train", "ssp", *PROBLEM, "--rounds", "2000", "--out", str(out), timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert gaps(out, "ssp")[-1] <= 1e-2
    last = read_csv(out)[-1]
    assert last["round"] == 2000 and last["updates"] >= 3 * 2000 and last["staleness_max"] <= 3


def test_ssp_with_s_0_gives_ssgd_s_csv_under_mpiexec(tmp_path):
    """5 ranks: every clock waits for all 4 workers, so it is ssgd's round (--lr auto on both)."""
    runs = {}
    for algorithm, extra in (("ssgd", []), ("ssp", ["--staleness-bound", "0"])):
        runs[algorithm] = tmp_path / f"{algorithm}.csv"
        done = dmlcli_mpi(5, "train", algorithm, *PROBLEM, *extra, "--rounds", "200", "--eval-every", "10",
                          "--out", str(runs[algorithm]), timeout=TIMEOUT_S)
        assert done.returncode == 0, done.stderr
    # the Allreduce may sum the ranks' gradients in another order than the server does: equal to rounding
    # (2e-15 measured)
    np.testing.assert_allclose(objectives(runs["ssp"]), objectives(runs["ssgd"]), rtol=1e-12)
    assert read_csv(runs["ssp"])[-1]["updates"] == 4 * 200


def test_the_ssp_bound_holds_under_mpiexec_with_seeded_delays(tmp_path):
    """5 ranks, s = 2, worker k delayed by a seeded uniform 0 to (k + 1)·0.4 ms a step
    (tests/ssp_clock_log.py): the invariants of test_ssp.check_the_bound at every server update."""
    out, log = tmp_path / "ssp.csv", tmp_path / "clocks.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    done = subprocess.run([str(BIN / "mpiexec"), "-n", "5", str(BIN / "python"), str(Path(__file__).with_name("ssp_clock_log.py")),
                           str(log), "7", "train", "ssp", "--staleness-bound", "2", "--data", "breast_cancer",
                           "--batch-size", "16", "--rounds", "300", "--progress", "off", "--out", str(out)],
                          capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert done.returncode == 0, done.stderr
    updates = [(k, before, staleness, advanced, held, after)
               for k, before, staleness, held, advanced, after in json.loads(log.read_text())]
    held, widest = check_the_bound(updates, bound=2, workers=4)
    assert held > 0 and widest == 3
    last = read_csv(out)[-1]
    assert last["round"] == 300 and last["updates"] == len(updates)


def test_aeasgd_reaches_the_reference_under_mpiexec(tmp_path):
    """4 ranks (3 workers), τ = 5, default α = 0.3, 1000 exchanges."""
    out = tmp_path / "aeasgd.csv"
    done = dmlcli_mpi(4, "train", "aeasgd", *PROBLEM, "--period", "5", "--rounds", "1000", "--out", str(out),
                      timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert gaps(out, "aeasgd")[-1] <= 1e-2
    assert read_csv(out)[-1]["round"] == 1000


def test_aeasgd_refuses_alpha_of_1_in_one_line_under_mpiexec(tmp_path):
    """α = η·ρ = 0.5 × 2 is refused once the step is known, on the ranks: exit 2, one line, nothing written."""
    done = dmlcli_mpi(3, "train", "aeasgd", "--rho", "2", "--lr", "0.5", "--out", str(tmp_path / "x.csv"),
                      timeout=TIMEOUT_S)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "α = η·ρ" in done.stderr
    assert list(tmp_path.iterdir()) == []
