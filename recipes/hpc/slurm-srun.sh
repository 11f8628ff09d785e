#!/bin/bash
#SBATCH --job-name=dmlcli
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8           # MPI ranks per node; rank 0 is the server, the others are workers
#SBATCH --cpus-per-task=1             # one core per rank (and one BLAS thread per rank, below)
#SBATCH --time=01:00:00               # wall time: keep DMLCLI_TIME_LIMIT below it (see "Stopping")
#SBATCH --signal=TERM@120             # SIGTERM to the ranks 2-3 min before the wall time: a second safety net
#SBATCH --output=%x-%j.out            # the log, in the directory you submitted from: dmlcli-<job id>.out
##SBATCH --partition=compute          # EDIT: your site's partition and account, where it needs them
##SBATCH --account=my-project         #       (a line starting ##SBATCH is a comment)
#
# dmlcli on a Slurm allocation, the ranks started by srun.
#
# srun starts the MPI processes itself, so the MPI library mpi4py was built against must speak
# Slurm's PMI (PMI-2 or PMIx; Open MPI, MPICH and Intel MPI built for your cluster usually do).
# `srun --mpi=list` shows what your Slurm offers; if the site's default is `none`, add e.g.
# `--mpi=pmix` to both srun lines below. Check the `dmlcli env` report at the top of the log: it
# must say `launcher yes` and `ranks N` with every rank's host. If it prints N reports of one rank
# each, the processes did not find each other: fix --mpi, or use slurm-mpirun.sh instead.
#
# Submit (sbatch options on the command line override the #SBATCH lines):
#   sbatch recipes/hpc/slurm-srun.sh                       # the smoke run below: ssgd on breast_cancer
#   sbatch recipes/hpc/slurm-srun.sh asgd --data a9a.svm --batch-size 64 --rounds 20000
#   DMLCLI_TIME_LIMIT=14100 sbatch --nodes=4 --time=04:00:00 recipes/hpc/slurm-srun.sh ma --local-steps 5
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
# time, so the margin must cover them. Should the wall time come first, Slurm sends SIGTERM (here
# 2-3 minutes early, from --signal; otherwise at the wall time, and SIGKILL KillWait seconds later,
# often 30 s): rank 0 stops as if its budget were spent, the last CSV row is the model at the stop,
# the manifest says `interrupted`, and the step ends with exit code 143 (README, "Exit codes").
# Only rank 0 acts on the signal; the other ranks ignore it and are stopped by rank 0.

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
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 BLIS_NUM_THREADS=1

if [[ $# -gt 0 ]]; then
    train_args=("$@")
elif [[ -n ${DMLCLI_ARGS:-} ]]; then
    read -r -a train_args <<< "${DMLCLI_ARGS}"
else
    train_args=(ssgd --data breast_cancer --batch-size 32 --rounds 2000)    # the smoke run
fi
time_limit=${DMLCLI_TIME_LIMIT:-3300}
submit_dir=${SLURM_SUBMIT_DIR:-$PWD}
run_dir=${DMLCLI_RUN_DIR:-${submit_dir}/runs/${SLURM_JOB_NAME:-dmlcli}-${SLURM_JOB_ID:-local}}
cd "${submit_dir}"            # relative --data and --recipe paths are read from here
mkdir -p "${run_dir}"

echo "== job ${SLURM_JOB_ID:-?} on ${SLURM_JOB_NODELIST:-?}: ${SLURM_NTASKS:-?} tasks, started $(date -Is)"
echo "== run directory ${run_dir}"

# What the ranks see: MPI library, ranks and their hosts, BLAS threads. Read this first when
# something goes wrong; a failure here is reported but does not stop the job.
echo "== srun dmlcli env"
srun dmlcli env || echo "== dmlcli env failed (exit $?)"

# A trap keeps this shell alive when the batch system signals every process of the job, so it can
# report the run's end; the signal itself reaches the ranks directly (and through srun).
trap 'echo "== SIGTERM: the run is stopping, rank 0 completes the CSV and manifest"' TERM

echo "== srun dmlcli train ${train_args[*]} --out ${run_dir}/ --time-limit ${time_limit}"
status=0
srun dmlcli train "${train_args[0]}" --out "${run_dir}/" --time-limit "${time_limit}" "${train_args[@]:1}" \
    || status=$?

echo "== dmlcli train exited ${status} at $(date -Is); outputs:"
ls -l "${run_dir}"
exit "${status}"
