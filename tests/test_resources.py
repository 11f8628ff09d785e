"""What a run costs, as the manifest reports it: when the command started, each rank's peak
resident memory and the bytes of data it holds (dmlcli.runtime.resources)."""

import contextlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.sparse as sp

from dmlcli.runtime import resources, run
from dmlcli.runtime.local_run import run_local


def test_a_process_knows_when_it_started_to_a_tick():
    before = time.time()
    out = subprocess.run([sys.executable, "-c", "import time; time.sleep(0.3); from dmlcli.runtime.resources import "
                          "process_started_at; print(process_started_at())"], capture_output=True, text=True, timeout=60)
    after = time.time()
    started = float(out.stdout)
    assert before - 0.05 <= started <= after - 0.3  # it slept 0.3 s after starting: the start is not "now"


def test_the_launcher_start_is_where_start_up_counts_from(monkeypatch):
    monkeypatch.setenv(resources.COMMAND_STARTED_VARIABLE, "1234.5")
    assert resources.command_started_at() == 1234.5
    monkeypatch.delenv(resources.COMMAND_STARTED_VARIABLE)
    assert time.time() - 600 < resources.command_started_at() <= time.time()  # this test process's own start


def test_peak_memory_grows_with_what_the_process_touches():
    # resident now (statm's second field, in pages), then the peak after writing 160 MiB more
    code = ("import os, numpy as np; from dmlcli.runtime.resources import peak_rss_mib; "
            "now = int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20; "
            "block = np.ones(160 * 2**20 // 8); print(now, peak_rss_mib())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    resident, peak = map(float, out.stdout.split())
    assert resident + 155 <= peak <= resident + 260


class FakeShard:
    def __init__(self, X, y):
        self.X, self.y = X, y


def test_data_bytes_count_dense_rows_and_the_three_arrays_of_csr():
    dense = FakeShard(np.zeros((100, 10)), np.zeros(100))
    csr = sp.random(50, 1000, density=0.01, format="csr", random_state=0)
    sparse = FakeShard(csr, np.zeros(50))
    expected = 100 * 10 * 8 + 100 * 8 + csr.data.nbytes + csr.indices.nbytes + csr.indptr.nbytes + 50 * 8
    assert resources.data_mib([dense, sparse], None) * 2**20 == pytest.approx(expected)
    test_rows = (np.zeros((7, 10)), np.zeros(7))
    assert resources.data_mib([], test_rows) * 2**20 == pytest.approx(7 * 10 * 8 + 7 * 8)


def test_the_manifest_has_start_up_and_every_ranks_memory(config, monkeypatch):
    n, d = 400, 6
    monkeypatch.setattr(run, "_first_run_in_process", True)  # this is the process's first run
    monkeypatch.setenv(resources.COMMAND_STARTED_VARIABLE, str(time.time() - 50))
    cfg = config("ssgd", rounds=5, data=f"synthetic:n={n},d={d},seed=3")
    assert run_local(cfg, workers=3) == 0
    with open(cfg.out.removesuffix(".csv") + ".json") as handle:
        manifest = json.load(handle)
    timing, memory = manifest["timing"], manifest["memory"]
    assert 50 <= timing["command_to_round_0_s"] <= timing["command_to_end_s"] < 50 + 60
    assert len(memory["peak_rss_mib"]) == len(memory["data_mib"]) == 4
    assert memory["data_mib"][0] == 0.0  # the server holds no rows
    # every training and test row once, with its intercept column and its label: n (d + 2) float64s
    assert sum(memory["data_mib"]) == pytest.approx(n * (d + 2) * 8 / 2**20, abs=4e-3)
    assert all(peak > 10 for peak in memory["peak_rss_mib"])


def test_blas_is_limited_once_whether_or_not_the_launcher_set_the_variables(monkeypatch):
    from threadpoolctl import threadpool_info

    from dmlcli.runtime.launch import THREAD_VARIABLES

    for name in THREAD_VARIABLES:
        monkeypatch.setenv(name, "1")
    assert isinstance(run.blas_threads_limited(1), contextlib.nullcontext)  # set before BLAS loaded: nothing to do
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    with run.blas_threads_limited(1):
        assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")


def test_a_dense_run_imports_neither_scipy_nor_threadpoolctl_nor_the_other_subcommands(tmp_path):
    """What every rank imports before round 0 is start-up every run pays (see dmlcli.sparse)."""
    code = f"""
import os, sys
from dmlcli.runtime.launch import THREAD_VARIABLES
for name in THREAD_VARIABLES:
    os.environ[name] = "1"
from dmlcli.cli import main
from dmlcli.runtime import launch
launch.under_launcher = lambda: True
launch.rank_main = lambda config: __import__("dmlcli.runtime.local_run").runtime.local_run.run_local(config, 2)
try:
    main(["train", "ssgd", "--data", "breast_cancer", "--rounds", "3", "--progress", "off", "--workers", "2",
          "--out", {str(tmp_path / "run.csv")!r}])
except SystemExit as done:
    assert done.code == 0, done.code
heavy = [name for name in ("scipy", "threadpoolctl", "matplotlib", "rich", "dmlcli.cli.plot", "dmlcli.cli.sweep",
                           "dmlcli.report.compare") if name in sys.modules]
print(heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PMI_SIZE="3"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
