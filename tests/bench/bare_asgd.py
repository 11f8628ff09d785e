"""The asynchronous baseline of `make bench`: a parameter server written directly on mpi4py.

The arithmetic of `dmlcli train asgd --batch-size B --partition contiguous --test-fraction 0
--no-standardize` on the same synthetic data (logistic loss, l2 prox step applied on arrival), with
nothing else: no evaluation, no logging, no progress. Workers draw their mini-batches as dmlcli's
Shard does (bare_data.ShardBatches: a fresh permutation of the shard each epoch from the same
seeded stream, rows gathered by index), so with one worker, where asynchronous SGD is sequential,
the final model is dmlcli's to rounding (`--save-model`; the bench checks it). Rank 0 keeps one
posted receive per worker and answers whichever arrives first with the newest w, using MPI's own
blocking waits. The clock runs from a barrier to the last update applied (dmlcli's wall_s stops
there too). Prints the updates per second the server applied and their mean staleness (updates
applied between a worker being sent w and its gradient being applied).
"""

import argparse
import time

import numpy as np
from bare_data import ShardBatches, load, logistic_dz
from mpi4py import MPI

WORK, STOP = 1, 2


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--updates", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--lam", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-model", help="write the final w here (.npy)")
    args = parser.parse_args()

    comm = MPI.COMM_WORLD
    rank, workers = comm.Get_rank(), comm.Get_size() - 1
    _, d, _, X, y = load(args.data, rank, workers)
    w = np.zeros(d)
    comm.Barrier()
    start = time.perf_counter()
    if rank == 0:
        payloads = [np.empty(d) for _ in range(workers)]
        sent_at = [0] * workers  # updates applied when worker k was last sent w
        for k in range(workers):
            comm.Send(w, dest=k + 1, tag=WORK)
        receives = [comm.Irecv(payloads[k], source=k + 1) for k in range(workers)]
        applied, staleness_total, active, elapsed = 0, 0, workers, 0.0
        while active:
            k = MPI.Request.Waitany(receives)
            if applied < args.updates:
                w = (w - args.lr * payloads[k]) / (1 + args.lr * args.lam)
                staleness_total += applied - sent_at[k]
                applied += 1
                if applied == args.updates:
                    elapsed = time.perf_counter() - start
                sent_at[k] = applied
                comm.Send(w, dest=k + 1, tag=WORK)
                receives[k] = comm.Irecv(payloads[k], source=k + 1)
            else:
                comm.Send(w, dest=k + 1, tag=STOP)
                receives[k] = MPI.REQUEST_NULL
                active -= 1
        print(f"{applied / elapsed:.3f} {staleness_total / applied:.6f}")
        if args.save_model:
            np.save(args.save_model, w)
    else:
        status, g = MPI.Status(), np.empty(d)
        batches = ShardBatches(X, y, args.seed, rank - 1, args.batch_size)
        while True:
            comm.Recv(w, source=0, status=status)
            if status.Get_tag() == STOP:
                break
            Xb, yb = batches.next()
            g[:] = Xb.T @ logistic_dz(Xb @ w, yb) / yb.size
            comm.Send(g, dest=0, tag=WORK)


if __name__ == "__main__":
    main()
