#!/bin/bash
#PBS -N dmlcli
#PBS -l select=2:ncpus=8:mpiprocs=8   # PBS Pro: 2 nodes ("chunks") of 8 ranks each; Torque: -l nodes=2:ppn=8
#PBS -l walltime=01:00:00             # wall time: keep DMLCLI_TIME_LIMIT below it (see "Stopping")
#PBS -j oe                            # stdout and stderr in one log: dmlcli.o<job id>, where you submitted
##PBS -q workq                        # EDIT: your site's queue and project, where it needs them
##PBS -A my-project                   #       (a line starting ##PBS is a comment)
#
# dmlcli on a PBS (PBS Pro, OpenPBS, Torque) allocation, the ranks started by mpirun.
#
# PBS writes one line per rank slot into $PBS_NODEFILE (a host repeated once per mpiprocs/ppn),
# so its length is the number of ranks and the file is mpirun's host file. --hostfile is taken
# by MPICH's Hydra (which also takes -f, -hostfile and -machinefile) and by Open MPI alike. Open MPI
# built with PBS (tm) support reads the allocation itself and needs no host file. Hydra starts its
# proxies on the other nodes with ssh (unless built with PBS support), so passwordless ssh between
# the job's nodes must work, as it does at most PBS sites within a job.
# The mpirun must be the one of the MPI that mpi4py was built against: load the same module
# (README, "Install"). `dmlcli env` at the top of the log warns when they differ.
#
# Submit (qsub options on the command line override the #PBS lines):
#   qsub recipes/hpc/pbs.sh                                # the smoke run below: ssgd on breast_cancer
#   qsub -v DMLCLI_ARGS="asgd --data a9a.svm --batch-size 64 --rounds 20000" recipes/hpc/pbs.sh
#   qsub -l walltime=04:00:00 -v DMLCLI_TIME_LIMIT=14100,DMLCLI_ARGS="ma --local-steps 5" recipes/hpc/pbs.sh
#
# qsub passes no arguments to a script, so the run is chosen by environment variables (qsub -v;
# -v separates variables with commas, so a value holding a comma, e.g. --delay const:1,2, must be
# exported in your shell and passed with `qsub -V` instead). Arguments, where given (Torque's
# qsub -F, or `bash pbs.sh ALGO ...` on an interactive qsub -I node), take precedence.
#   DMLCLI_ARGS        what follows `dmlcli train`: ALGO, then its options (one string, split at
#                      spaces), e.g. "ssgd --recipe r.toml". They come after the options this script
#                      sets (--out, --time-limit), so they win: of an option given twice the last is
#                      taken. Default: the smoke run.
#   DMLCLI_TIME_LIMIT  seconds of training before the run stops itself (default 3300: walltime minus 5 min)
#   DMLCLI_RUN_DIR     where the CSV and manifest go (default $PBS_O_WORKDIR/runs/<job name>-<job number>)
#   DMLCLI_MODULES     modules to load first, e.g. "gcc/12 openmpi/4.1" (default: none)
#   DMLCLI_VENV        virtualenv to activate, e.g. "$HOME/venvs/dmlcli" (default: none, dmlcli is on PATH)
#
# Stopping. The run stops itself after DMLCLI_TIME_LIMIT seconds of training and exits 0 with a
# complete CSV and manifest (status `completed`). Evaluation and start-up are not counted in that
# time, so the margin must cover them. This is the stop to rely on. Should the walltime come first,
# PBS sends SIGTERM to the job's processes and SIGKILL kill_delay seconds later (PBS Pro: 10 s by
# default). Rank 0 then stops as if its budget were spent: the last CSV row is the model at the
# stop, the manifest says `interrupted`, exit code 143 (README, "Exit codes"), if it manages within
# kill_delay. The other ranks ignore the signal. MPICH's mpiexec passes SIGTERM on to the ranks and
# waits for them; Open MPI's mpirun kills them moments after (4.x: MCA odls_base_sigkill_timeout).

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
# Hydra passes the whole environment to every rank; Open MPI, started by ssh, only what -x names.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 BLIS_NUM_THREADS=1

if [[ $# -gt 0 ]]; then
    train_args=("$@")
elif [[ -n ${DMLCLI_ARGS:-} ]]; then
    read -r -a train_args <<< "${DMLCLI_ARGS}"
else
    train_args=(ssgd --data breast_cancer --batch-size 32 --rounds 2000)    # the smoke run
fi
nodefile=${PBS_NODEFILE:?"not in a PBS job (PBS_NODEFILE is unset): submit with qsub"}
ranks=$(wc -l < "${nodefile}")
ranks=${ranks//[[:space:]]/}
time_limit=${DMLCLI_TIME_LIMIT:-3300}
job_id=${PBS_JOBID:-local}
job_id=${job_id%%.*}          # 1234.server -> 1234
submit_dir=${PBS_O_WORKDIR:-$PWD}
run_dir=${DMLCLI_RUN_DIR:-${submit_dir}/runs/${PBS_JOBNAME:-dmlcli}-${job_id}}
cd "${submit_dir}"            # PBS starts the job in $HOME; relative --data and --recipe paths are read from here
mkdir -p "${run_dir}"

echo "== job ${PBS_JOBID:-?} on $(sort -u "${nodefile}" | paste -sd, -): ${ranks} ranks, started $(date -Is)"
echo "== run directory ${run_dir}"

# Open MPI also wants -x for each variable above when it starts ranks by ssh:
#   mpi_options=(--hostfile "${nodefile}" -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS -x MKL_NUM_THREADS)
mpi_options=(--hostfile "${nodefile}")

# What the ranks see: MPI library, ranks and their hosts, BLAS threads. Read this first when
# something goes wrong; a failure here is reported but does not stop the job.
echo "== mpirun -n ${ranks} ${mpi_options[*]} dmlcli env"
mpirun -n "${ranks}" "${mpi_options[@]}" dmlcli env || echo "== dmlcli env failed (exit $?)"

# A trap keeps this shell alive when the batch system signals every process of the job, so it can
# report the run's end; the signal itself reaches the ranks directly and through mpirun.
trap 'echo "== SIGTERM: the run is stopping, rank 0 completes the CSV and manifest"' TERM

echo "== mpirun -n ${ranks} ${mpi_options[*]} dmlcli train ${train_args[*]} --out ${run_dir}/ --time-limit ${time_limit}"
status=0
mpirun -n "${ranks}" "${mpi_options[@]}" dmlcli train "${train_args[0]}" --out "${run_dir}/" \
    --time-limit "${time_limit}" "${train_args[@]:1}" || status=$?

echo "== dmlcli train exited ${status} at $(date -Is); outputs:"
ls -l "${run_dir}"
exit "${status}"
