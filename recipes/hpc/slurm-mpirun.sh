#!/bin/bash
#SBATCH --job-name=dmlcli
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8           # MPI ranks per node; rank 0 is the server, the others are workers
#SBATCH --cpus-per-task=1             # one core per rank (and one BLAS thread per rank, below)
#SBATCH --time=01:00:00               # wall time: keep DMLCLI_TIME_LIMIT below it (see "Stopping")
#SBATCH --output=%x-%j.out            # the log, in the directory you submitted from: dmlcli-<job id>.out
##SBATCH --partition=compute          # EDIT: your site's partition and account, where it needs them
##SBATCH --account=my-project         #       (a line starting ##SBATCH is a comment)
#
# dmlcli on a Slurm allocation, the ranks started by the MPI library's own mpirun.
#
# Use this one when `srun` cannot start MPI programs (no PMI/PMIx for your MPI: see slurm-srun.sh).
# mpirun reads the allocation from Slurm, so it needs no host file: Open MPI built with Slurm
# support and MPICH's Hydra (also Intel MPI's) both start their daemons on the nodes through srun
# themselves. The mpirun must be the one of the MPI that mpi4py was built against: load the same
# module (README, "Install"). `dmlcli env` at the top of the log warns when they differ.
#
# Submit (sbatch options on the command line override the #SBATCH lines):
#   sbatch recipes/hpc/slurm-mpirun.sh                     # the smoke run below: ssgd on breast_cancer
#   sbatch recipes/hpc/slurm-mpirun.sh asgd --data a9a.svm --batch-size 64 --rounds 20000
#   DMLCLI_TIME_LIMIT=14100 sbatch --nodes=4 --time=04:00:00 recipes/hpc/slurm-mpirun.sh ma --local-steps 5
#
# Arguments are what follows `dmlcli train`: ALGO, then its options. They come after the options
# this script sets (--out, --time-limit), so they win: of an option given twice the last is taken
# (flags also beat a recipe's values, so the script's --out and --time-limit beat a recipe's).
# Without arguments, DMLCLI_ARGS is used (one string, split at spaces), else the smoke run.
# Environment (sbatch passes yours on to the job, unless --export says otherwise):
#   DMLCLI_ARGS        ALGO and options when the script has no arguments, e.g. "ssgd --recipe r.toml"
#   DMLCLI_TIME_LIMIT  seconds of training before the run stops itself (default 3300: --time minus 5 min)
#   DMLCLI_RUN_DIR     where the CSV and manifest go (default $SLURM_SUBMIT_DIR/runs/<job name>-<job id>)
#   DMLCLI_MODULES     modules to load first, e.g. "gcc/12 openmpi/4.1" (default: none)
#   DMLCLI_VENV        virtualenv to activate, e.g. "$HOME/venvs/dmlcli" (default: none, dmlcli is on PATH)
#
# Stopping. The run stops itself after DMLCLI_TIME_LIMIT seconds of training and exits 0 with a
# complete CSV and manifest (status `completed`). Evaluation and start-up are not counted in that
# time, so the margin must cover them. This is the stop to rely on under mpirun. Should the wall
# time come first, Slurm sends SIGTERM to every process of the job, then SIGKILL KillWait seconds
# later (often 30 s). Rank 0 then stops as if its budget were spent: the last CSV row is the model at
# the stop, the manifest says `interrupted`, exit code 143 (README, "Exit codes"); the other ranks
# ignore the signal. MPICH's mpiexec passes SIGTERM on to the ranks and waits for them. Open MPI's
# mpirun also passes it on but kills the ranks moments later (4.x: MCA odls_base_sigkill_timeout),
# which may be too soon for that last evaluation.

# --- site set-up (EDIT: or set DMLCLI_MODULES / DMLCLI_VENV) ------------------------------------
# The MPI module must be the one mpi4py was built against (README, "Install"). `module` is a shell
# function that login shells define; if the job says "module: command not found", start this file
# with `#!/bin/bash -l`.
if [[ -n ${DMLCLI_MODULES:-} ]]; then
    # shellcheck disable=SC2086
    module load ${DMLCLI_MODULES}     # unquoted on purpose: several modules
fi
if [[ -n ${DMLCLI_VENV:-} ]]; then
    # shellcheck source=/dev/null
    source "${DMLCLI_VENV}/bin/activate"
fi
# ------------------------------------------------------------------------------------------------

set -euo pipefail

# One BLAS/OpenMP thread per rank: the ranks already fill the cores, and default thread pools
# (one thread per core, in every rank) would fight over them. dmlcli does the same with its
# default --blas-threads 1; setting them here also covers libraries loaded before it applies that.
# (Hydra passes the whole environment to every rank; so does Open MPI here, its daemons being
# started through srun. Started by ssh elsewhere, Open MPI needs `-x OMP_NUM_THREADS` and so on.)
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 BLIS_NUM_THREADS=1

if [[ $# -gt 0 ]]; then
    train_args=("$@")
elif [[ -n ${DMLCLI_ARGS:-} ]]; then
    read -r -a train_args <<< "${DMLCLI_ARGS}"
else
    train_args=(ssgd --data breast_cancer --batch-size 32 --rounds 2000)    # the smoke run
fi
ranks=${SLURM_NTASKS:?"not in a Slurm job (SLURM_NTASKS is unset): submit with sbatch"}
time_limit=${DMLCLI_TIME_LIMIT:-3300}
submit_dir=${SLURM_SUBMIT_DIR:-$PWD}
run_dir=${DMLCLI_RUN_DIR:-${submit_dir}/runs/${SLURM_JOB_NAME:-dmlcli}-${SLURM_JOB_ID:-local}}
cd "${submit_dir}"            # relative --data and --recipe paths are read from here
mkdir -p "${run_dir}"

echo "== job ${SLURM_JOB_ID:-?} on ${SLURM_JOB_NODELIST:-?}: ${ranks} tasks, started $(date -Is)"
echo "== run directory ${run_dir}"

# What the ranks see: MPI library, ranks and their hosts, BLAS threads. Read this first when
# something goes wrong; a failure here is reported but does not stop the job.
echo "== mpirun -n ${ranks} dmlcli env"
mpirun -n "${ranks}" dmlcli env || echo "== dmlcli env failed (exit $?)"

# A trap keeps this shell alive when the batch system signals every process of the job, so it can
# report the run's end; the signal itself reaches the ranks directly and through mpirun.
trap 'echo "== SIGTERM: the run is stopping, rank 0 completes the CSV and manifest"' TERM

echo "== mpirun -n ${ranks} dmlcli train ${train_args[*]} --out ${run_dir}/ --time-limit ${time_limit}"
status=0
mpirun -n "${ranks}" dmlcli train "${train_args[0]}" --out "${run_dir}/" --time-limit "${time_limit}" \
    "${train_args[@]:1}" || status=$?

echo "== dmlcli train exited ${status} at $(date -Is); outputs:"
ls -l "${run_dir}"
exit "${status}"
