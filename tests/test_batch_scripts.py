"""The batch scripts in recipes/hpc/, run with bash on this machine in a fake Slurm or PBS job.

The environment is what the batch system gives a job script: SLURM_* (or PBS_*) variables for 3 tasks
on this host, the submit directory, a PBS node file. There is no Slurm here, so a fake `srun` stands in
(see FAKE_SRUN) and a fake `module` logs what it is asked to load. The scripts run as written: `dmlcli
env`, then `dmlcli train` under srun or mpirun (MPICH's, from the `mpich` wheel) into a run directory.
"""

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, MPI_TIMEOUT_S

SCRIPTS = Path(__file__).resolve().parent.parent / "recipes" / "hpc"
RANKS = 3
JOB_ID = "4242"
SHORT_RUN = ["ssgd", "--data", "breast_cancer", "--batch-size", "32", "--rounds", "50"]

# srun as Slurm runs it inside an allocation, on one host: srun's own options, then the program, started
# as -n tasks (default: the job's SLURM_NTASKS). Several tasks are an MPI program's ranks, so they get PMI
# from MPICH's mpiexec, as `srun --mpi=pmi2` would give it (-launcher fork: no srun inside this srun). One
# task runs as it is: that is how MPICH's mpirun, inside a Slurm job, starts its proxy on each node
# (`srun -N 1 -n 1 --input none hydra_pmi_proxy ...`). Every call is logged.
FAKE_SRUN = """#!/bin/bash
echo "srun $*" >> "$FAKE_LOG"
tasks=${SLURM_NTASKS:-1}
while [[ $# -gt 0 && $1 == -* ]]; do
    case $1 in
        -n|--ntasks) tasks=$2; shift 2 ;;
        --ntasks=*) tasks=${1#*=}; shift ;;
        -N|--nodes|-w|--nodelist|--input|--mpi|-c|--cpus-per-task) shift 2 ;;
        *) shift ;;
    esac
done
if [[ $tasks == 1 ]]; then
    SLURM_PROCID=0 SLURM_NODEID=0 SLURM_LOCALID=0 exec "$@"
fi
exec "%(mpiexec)s" -launcher fork -n "$tasks" "$@"
"""
FAKE_MODULE = """#!/bin/bash
echo "module $*" >> "$FAKE_LOG"
"""


def job_env(tmp_path: Path, **variables: str) -> dict:
    """This process's environment less any launcher's or batch system's, the fakes and the venv first on
    PATH, one BLAS thread per process (as in conftest), and VARIABLES."""
    fakes = tmp_path / "fakes"
    fakes.mkdir(exist_ok=True)
    for name, text in (("srun", FAKE_SRUN % {"mpiexec": BIN / "mpiexec"}), ("module", FAKE_MODULE)):
        (fakes / name).write_text(text)
        (fakes / name).chmod(0o755)
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL", "HYDRA_", "SLURM", "PBS_", "DMLCLI_"))}
    env.update(PATH=f"{fakes}:{BIN}:{env.get('PATH', '/usr/bin:/bin')}", FAKE_LOG=str(tmp_path / "fakes.log"),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.update(variables)
    return env


def slurm_env(tmp_path: Path, **variables: str) -> dict:
    """A Slurm batch step's environment: a job of RANKS tasks on this host, submitted from tmp_path."""
    host = socket.gethostname()
    return job_env(tmp_path, SLURM_JOB_ID=JOB_ID, SLURM_JOBID=JOB_ID, SLURM_JOB_NAME="dmlcli",
                   SLURM_SUBMIT_DIR=str(tmp_path), SLURM_SUBMIT_HOST=host, SLURM_CLUSTER_NAME="fake",
                   SLURM_JOB_PARTITION="compute", SLURM_JOB_NODELIST=host, SLURM_NODELIST=host,
                   SLURM_JOB_NUM_NODES="1", SLURM_NNODES="1", SLURM_NTASKS=str(RANKS), SLURM_NPROCS=str(RANKS),
                   SLURM_NTASKS_PER_NODE=str(RANKS), SLURM_TASKS_PER_NODE=str(RANKS), SLURM_CPUS_PER_TASK="1",
                   SLURM_JOB_CPUS_PER_NODE=str(RANKS), SLURMD_NODENAME=host, SLURM_NODEID="0", SLURM_PROCID="0",
                   SLURM_LOCALID="0", **variables)


def pbs_env(tmp_path: Path, **variables: str) -> dict:
    """A PBS job's environment: RANKS slots on this host (localhost in the node file), submitted from tmp_path."""
    nodefile = tmp_path / "aux" / f"{JOB_ID}.pbs-server"
    nodefile.parent.mkdir()
    nodefile.write_text("localhost\n" * RANKS)
    home = tmp_path / "home"  # PBS starts the script in $HOME, not where it was submitted
    home.mkdir()
    return job_env(tmp_path, PBS_JOBID=f"{JOB_ID}.pbs-server", PBS_JOBNAME="dmlcli", PBS_O_WORKDIR=str(tmp_path),
                   PBS_NODEFILE=str(nodefile), PBS_ENVIRONMENT="PBS_BATCH", PBS_O_HOST=socket.gethostname(),
                   PBS_QUEUE="workq", NCPUS="1", HOME=str(home), **variables)


def run_script(name: str, env: dict, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / name), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=MPI_TIMEOUT_S)


def the_run(run_dir: Path) -> tuple[Path, dict]:
    """The one CSV in run_dir and its manifest."""
    csvs = list(run_dir.glob("*.csv"))
    assert len(csvs) == 1, sorted(run_dir.iterdir()) if run_dir.exists() else f"no {run_dir}"
    return csvs[0], json.loads(csvs[0].with_suffix(".json").read_text())


def assert_completed(result: subprocess.CompletedProcess, run_dir: Path, time_limit: float = 3300) -> dict:
    assert result.returncode == 0, result.stdout + result.stderr
    csv, manifest = the_run(run_dir)
    assert csv.read_text().count("\n") >= 2  # the header and at least one evaluation
    assert manifest["status"] == "completed", manifest["reason"]
    assert manifest["workers"] == RANKS - 1
    assert manifest["mpi"]["ranks"] == RANKS
    assert manifest["config"]["time_limit"] == time_limit
    assert manifest["csv"] == str(csv)
    # `dmlcli env` ran first, under the same launcher, and its report is in the job's log
    log = result.stdout
    assert re.search(rf"ranks\s+{RANKS} as MPI sees them", log), log
    assert re.search(r"launcher\s+yes", log), log
    assert log.index("as MPI sees them") < log.index("dmlcli train exited 0")
    return manifest


def fake_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "fakes.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("name", ["slurm-srun.sh", "slurm-mpirun.sh", "pbs.sh"])
def test_scripts_pass_a_bash_syntax_check(name):
    result = subprocess.run(["bash", "-n", str(SCRIPTS / name)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_slurm_srun_script_runs_under_srun(tmp_path):
    # the run chosen by DMLCLI_ARGS, the venv activated by the script, a module loaded through `module`
    venv = BIN.parent
    env = slurm_env(tmp_path, DMLCLI_ARGS=" ".join([*SHORT_RUN, "--seed", "3"]), DMLCLI_VENV=str(venv),
                    DMLCLI_MODULES="gcc/12 mpich/5")
    result = run_script("slurm-srun.sh", env, cwd=tmp_path)
    manifest = assert_completed(result, tmp_path / "runs" / f"dmlcli-{JOB_ID}")
    assert manifest["config"]["seed"] == 3 and manifest["config"]["rounds"] == 50
    calls = fake_calls(tmp_path)
    assert calls[0] == "module load gcc/12 mpich/5"
    assert calls[1] == "srun dmlcli env"
    assert calls[2].startswith("srun dmlcli train ssgd --out ")


def test_slurm_mpirun_script_runs_under_mpirun(tmp_path):
    # the run chosen by the script's arguments, which beat the script's own --time-limit
    result = run_script("slurm-mpirun.sh", slurm_env(tmp_path), *SHORT_RUN, "--time-limit", "600", cwd=tmp_path)
    assert_completed(result, tmp_path / "runs" / f"dmlcli-{JOB_ID}", time_limit=600)
    # MPICH's mpirun took the job's host from Slurm and started its proxy through srun, as on a cluster
    assert any("hydra_pmi_proxy" in call for call in fake_calls(tmp_path)), fake_calls(tmp_path)


def test_pbs_script_runs_under_mpirun_with_the_node_file(tmp_path):
    # no arguments, no DMLCLI_ARGS: the script's smoke run, started in $HOME as PBS does
    env = pbs_env(tmp_path, DMLCLI_TIME_LIMIT="900")
    result = run_script("pbs.sh", env, cwd=Path(env["HOME"]))
    manifest = assert_completed(result, tmp_path / "runs" / f"dmlcli-{JOB_ID}", time_limit=900)
    assert manifest["config"]["rounds"] == 2000 and manifest["config"]["data"] == "breast_cancer"
    assert f"--hostfile {env['PBS_NODEFILE']}" in result.stdout
    assert list(Path(env["HOME"]).iterdir()) == []  # nothing written where the job started


@pytest.mark.parametrize("name", ["slurm-srun.sh", "slurm-mpirun.sh"])
def test_sigterm_to_the_whole_job_stops_the_run_gracefully(tmp_path, name):
    """What Slurm does at the wall time: SIGTERM to every process of the job (the script, mpirun, srun,
    the ranks). Rank 0 stops as if the budget were spent: exit 143, CSV and manifest complete."""
    run_dir = tmp_path / "runs" / f"dmlcli-{JOB_ID}"
    process = subprocess.Popen(["bash", str(SCRIPTS / name), "ssgd", "--data", "breast_cancer",
                                "--rounds", "100000000", "--eval-every", "200"],
                               env=slurm_env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + MPI_TIMEOUT_S
        while not any(csv.read_text().count("\n") >= 3 for csv in run_dir.glob("*.csv")):  # training is under way
            assert process.poll() is None and time.monotonic() < deadline, process.communicate(timeout=10)
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=MPI_TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 143, stdout + stderr
    csv, manifest = the_run(run_dir)
    assert manifest["status"] == "interrupted"
    assert manifest["mpi"]["ranks"] == RANKS
    rows = csv.read_text().strip().splitlines()
    assert int(rows[-1].split(",")[2]) == manifest["final"]["round"]  # the last row is the model at the stop
    assert "== SIGTERM: the run is stopping" in stdout
    assert "dmlcli train exited 143" in stdout
