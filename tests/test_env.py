"""`dmlcli env`: one report of what a launch depends on, alone (an MPI singleton) and under mpiexec (from rank 0)."""

import json
import subprocess
import sys

from conftest import BIN, alone_env, dmlcli_alone, dmlcli_mpi
from dmlcli import __version__
from dmlcli.cli.env import format_text, warnings_for

ENV_TIMEOUT_S = 60


def test_alone_it_is_one_rank_with_the_library_and_versions():
    done = dmlcli_alone("env", timeout=ENV_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    library = next(line for line in out.splitlines() if line.strip().startswith("library"))
    assert "MPICH" in library or "Open MPI" in library
    assert f"dmlcli {__version__}" in out and "numpy " in out and "mpi4py " in out and "scipy " in out
    assert "launcher      none: a single process (MPI initialised as a singleton)" in out
    assert "ranks         1 as MPI sees them" in out
    assert f"mpiexec       {BIN / 'mpiexec'} (beside this Python)" in out
    assert "BLAS" in out and "threads" in out


def test_json_parses_and_says_the_same():
    done = dmlcli_alone("env", "--json", timeout=ENV_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["dmlcli"] == __version__ and report["versions"]["dmlcli"] == __version__
    assert report["python"]["executable"] == sys.executable
    assert report["mpi"]["size"] == 1 and len(report["mpi"]["ranks"]) == 1
    assert report["mpi"]["library"] and report["mpi"]["standard"].count(".") == 1
    assert report["mpi"]["mpi4py"] == report["versions"]["mpi4py"]
    assert isinstance(report["mpi"]["mpi4py_config"], dict)
    assert report["mpiexec"]["path"] == str(BIN / "mpiexec") and report["mpiexec"]["kind"] in ("hydra", "open-mpi", "other")
    assert report["launcher"]["under_launcher"] is False and report["warnings"] == []
    assert report["blas"] and all(pool["num_threads"] >= 1 for pool in report["blas"])


def test_under_mpiexec_rank_0_alone_reports_every_rank():
    done = dmlcli_mpi(2, "env", timeout=ENV_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(f"dmlcli {__version__} on ") == 1  # one report, not one a rank
    assert "ranks         2 as MPI sees them" in done.stdout
    assert "    rank 0 " in done.stdout and "    rank 1 " in done.stdout
    assert "launcher      yes: " in done.stdout
    done = dmlcli_mpi(2, "env", "--json", timeout=ENV_TIMEOUT_S)
    report = json.loads(done.stdout)  # one JSON object: the other rank printed nothing
    ranks = report["mpi"]["ranks"]
    assert [rank["rank"] for rank in ranks] == [0, 1] and len({rank["pid"] for rank in ranks}) == 2
    assert report["launcher"]["size_from_launcher"] == 2 and report["warnings"] == []


def test_a_launcher_whose_ranks_mpi_does_not_see_is_warned_about():
    """Started by another MPI's mpirun, each process is its own one-rank world: the classic mismatch."""
    env = dict(alone_env(), OMPI_COMM_WORLD_SIZE="3")
    done = subprocess.run([str(BIN / "dmlcli"), "env"], capture_output=True, text=True, timeout=ENV_TIMEOUT_S, env=env)
    assert done.returncode == 0, done.stderr
    assert "the launcher started 3 processes but MPI sees 1 rank(s)" in done.stdout


def test_warnings_and_text_from_a_report():
    report = {
        "dmlcli": "9", "hostname": "h", "platform": "p", "versions": {"numpy": "2", "rich": None},
        "python": {"version": "3", "implementation": "CPython", "executable": "/py"},
        "mpi": {"library": "Open MPI v5.0.3", "vendor": "Open MPI 5.0.3", "standard": "3.1", "thread_level": "multiple",
                "mpi4py": "4", "mpi4py_config": {"mpicc": "/usr/bin/mpicc"}, "size": 1,
                "ranks": [{"rank": 0, "host": "h", "pid": 7, "cpus": 4}]},
        "mpiexec": {"path": "/py/mpiexec", "where": "beside this Python", "kind": "hydra", "version": "HYDRA 4.2",
                    "error": None},
        "launcher": {"under_launcher": False, "variables": {}, "size_from_launcher": None},
        "blas": [], "thread_variables": {"OMP_NUM_THREADS": "1"}, "cpus": 4,
    }
    said = warnings_for(report)
    assert len(said) == 1 and "mpiexec (HYDRA 4.2) is not of mpi4py's MPI (Open MPI v5.0.3)" in said[0]
    report["warnings"] = said
    text = format_text(report)
    assert "build configuration: mpicc=/usr/bin/mpicc" in text and "rich not installed" in text
    assert "OMP_NUM_THREADS=1" in text and text.splitlines()[-2] == "warnings"
    report["mpi"] = {"error": "RuntimeError: cannot load MPI library"}
    assert "MPI does not start: RuntimeError" in warnings_for(report)[0]
    assert "library       does not start: RuntimeError" in format_text(dict(report, warnings=[]))
