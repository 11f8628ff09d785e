"""The arithmetic floor of `make bench` section 2: bare_ssgd.py's rounds with no communication at all.

Run under `mpiexec -n K`: K processes, each on its contiguous shard as a worker of a K-worker run holds it,
repeat full-batch gradient descent's arithmetic (logistic loss, l2 prox step, float64, one BLAS thread) on
their own rows, and exchange nothing: each keeps its own model. A round of any synchronous implementation
with K worker processes does this same arithmetic in the same processes on this machine's cores, then
communicates, so it cannot be shorter: what remains of a round is communication and overhead.

An earlier floor took one process's time for every row over min(K, cores), which assumed the cores share
the work perfectly. Where a round streams the data from memory (d = 10⁶: 256 MB a round) they do not: the
cores share the memory bandwidth.

The clock runs on process 0 from a barrier before the first round to a barrier after every process's last,
both polled with sleeps so a process that is done leaves the cores to the rest. Prints the mean seconds
per round.
"""

import argparse
import time

import numpy as np
from bare_data import load, logistic_dz, sleeping_barrier
from mpi4py import MPI


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--lam", type=float, default=1e-3)
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    n, d, rows, X, y = load(args.data, rank=comm.Get_rank() + 1, workers=comm.Get_size())
    weight = rows.size / n
    w = np.zeros(d)
    sleeping_barrier(comm)
    start = time.perf_counter()
    for _ in range(args.rounds):
        g = weight * (X.T @ logistic_dz(X @ w, y) / rows.size)
        w = (w - args.lr * g) / (1 + args.lr * args.lam)
    sleeping_barrier(comm)
    if comm.Get_rank() == 0:
        print((time.perf_counter() - start) / args.rounds)


if __name__ == "__main__":
    main()
