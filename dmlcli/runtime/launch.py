"""Getting onto MPI ranks: re-executing under the installed mpiexec when started alone, and
turning any rank's failure into one clear message and an abort of every rank."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from dmlcli.errors import UsageError

# Variables that MPI launchers set in each rank (MPICH/Hydra, Open MPI, MVAPICH; Slurm's srun through
# PMI or PMIx). Slurm's own SLURM_* are not among them: a batch script has them without any launcher.
LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
ABORT_GRACE_S = 0.3  # see rank_main
# MPICH repeats the failing rank's abort in its own words; the rank already said what went wrong.
MPICH_ABORT_LINE = re.compile(r"^Abort\(\d+\) on node \d+.*MPI_Abort|^application called MPI_Abort")


def under_launcher() -> bool:
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


def find_mpiexec() -> str:
    """The mpiexec beside this Python (the `mpich` wheel puts it there), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    if not found:
        raise UsageError("no mpiexec found: install the MPI extra (pip install 'dmlcli[mpi]') "
                         "or start dmlcli under your MPI's mpirun")
    return found


def relaunch(args: list[str], ranks: int, blas_threads: int) -> int:
    """Run `python -m dmlcli ARGS` on `ranks` ranks under mpiexec; return its exit code."""
    mpiexec = find_mpiexec()
    command = [mpiexec, "-n", str(ranks)]
    if _is_open_mpi(mpiexec):
        command.append("--oversubscribe")  # more ranks than cores is the normal case on a laptop
    command += [sys.executable, "-m", "dmlcli", *args]
    env = dict(os.environ, DMLCLI_STDOUT_TTY="1" if sys.stdout.isatty() else "0")
    for name in THREAD_VARIABLES:
        env.setdefault(name, str(blas_threads))
    if sys.stdout.isatty():
        env.setdefault("COLUMNS", str(shutil.get_terminal_size().columns))
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
    forward = threading.Thread(target=_forward_stderr, args=(process.stderr,), daemon=True)
    forward.start()
    try:
        code = process.wait()
    except KeyboardInterrupt:
        code = process.wait()  # mpiexec passes the interrupt on to the ranks; let them finish
    forward.join(timeout=5)
    return code


def _forward_stderr(stream) -> None:
    for line in stream:
        if not MPICH_ABORT_LINE.search(line):
            sys.stderr.write(line)
            sys.stderr.flush()


def _is_open_mpi(mpiexec: str) -> bool:
    try:
        banner = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Open MPI" in banner or "OpenRTE" in banner


def rank_main(config) -> int:
    """Entry point on each MPI rank. A failure on any rank prints one line naming it and aborts all."""
    from dmlcli.comm.mpi import MPITransport
    from dmlcli.runtime.context import StopRequest
    from dmlcli.runtime.run import CollectiveUsageError, run_rank

    transport = MPITransport()
    stop = StopRequest()
    if transport.rank == 0:
        stop.install()
    else:
        # A signal reaches every rank; rank 0 alone handles it and stops the others in order.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        return run_rank(config, transport, stop=stop)
    except CollectiveUsageError as error:
        if transport.rank == 0:
            print(f"dmlcli: error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    except KeyboardInterrupt as interrupt:
        code = interrupt.args[0] if interrupt.args else 130
        print("dmlcli: interrupted at once; the CSV keeps every row written so far", file=sys.stderr, flush=True)
        time.sleep(ABORT_GRACE_S)
        transport.abort(code)
        return code
    except BaseException as error:  # noqa: BLE001 - any failure must end every rank, not hang them
        code = getattr(error, "exit_code", 1)
        detail = str(error) or type(error).__name__
        print(f"dmlcli: rank {transport.rank} failed: {type(error).__name__}: {detail}", file=sys.stderr, flush=True)
        # mpiexec relays a rank's output through a pipe; an immediate abort can tear the relay
        # down before it has passed the line on (seen: 7 runs in 25 lost it). Give it a moment.
        time.sleep(ABORT_GRACE_S)
        transport.abort(code)
        return code
