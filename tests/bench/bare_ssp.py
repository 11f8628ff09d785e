"""The stale-synchronous baseline of `make bench`: an SSP parameter server written directly on mpi4py.

The arithmetic and the clock bound of `dmlcli train ssp --staleness-bound s --batch-size B
--partition contiguous --test-fraction 0 --no-standardize` on the same synthetic data, with nothing
else (no evaluation, logging or progress): worker k sends (n_k/n) g_k, its shard's mini-batch gradient
(sampled as dmlcli's Shard samples, bare_data.ShardBatches) at the model it was sent; the server applies
w <- w - K lr (n_k/n) g_k on arrival, advances worker k's clock, commits the l2 prox of the steps
since the last completed clock when the slowest clock advances, and serves prox(w) with the
pending part applied. A worker more than s clocks ahead of the slowest is not answered until the
slowest catches up. With one worker, or s = 0, the run is deterministic and the final model is
dmlcli's to rounding (`--save-model`; the bench checks it). MPI's own blocking waits; the clock runs
from a barrier to the update that completes the last clock (dmlcli's wall_s stops there too). Prints
the updates per second the server applied and their mean staleness in clocks.
"""

import argparse
import time

import numpy as np
from bare_asgd import STOP, WORK
from bare_data import ShardBatches, load, logistic_dz
from mpi4py import MPI


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--clocks", type=int, required=True, help="the budget: clocks completed by every worker")
    parser.add_argument("--staleness-bound", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--lam", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-model", help="write the final served model here (.npy)")
    args = parser.parse_args()

    comm = MPI.COMM_WORLD
    rank, workers = comm.Get_rank(), comm.Get_size() - 1
    n, d, rows, X, y = load(args.data, rank, workers)
    w = np.zeros(d)
    step = workers * args.lr
    comm.Barrier()
    start = time.perf_counter()
    if rank == 0:
        shares = [size / n for size in comm.gather(0)[1:]]
        clocks, pending, version = [0] * workers, 0.0, 0
        payloads = [np.empty(d) for _ in range(workers)]
        sent_at = [0] * workers  # the version worker k was last sent
        held: list[int] = []

        def served():
            return w / (1 + step * pending * args.lam) if pending else w

        def answer(k: int):
            sent_at[k] = version
            comm.Send(served(), dest=k + 1, tag=WORK)
            receives[k] = comm.Irecv(payloads[k], source=k + 1)

        def stop(k: int):
            comm.Send(served(), dest=k + 1, tag=STOP)
            receives[k] = MPI.REQUEST_NULL

        receives = [MPI.REQUEST_NULL] * workers
        for k in range(workers):
            answer(k)
        applied, staleness_total, active, elapsed = 0, 0, workers, 0.0
        while active:
            k = MPI.Request.Waitany(receives)
            if version >= args.clocks:
                stop(k)
                active -= 1
                continue
            staleness_total += version - sent_at[k]
            applied += 1
            w = w - step * payloads[k]
            pending += shares[k]
            clocks[k] += 1
            slowest = min(clocks)
            if slowest > version:  # every worker has completed clock `version`: commit its prox
                w, pending, version = served(), 0.0, slowest
            if version >= args.clocks:
                elapsed = time.perf_counter() - start
                for j in [k, *held]:
                    stop(j)
                active -= 1 + len(held)
                held = []
                continue
            ready = [j for j in held if clocks[j] - slowest <= args.staleness_bound]
            held = [j for j in held if j not in ready]
            if clocks[k] - slowest <= args.staleness_bound:
                answer(k)
            else:
                held.append(k)
            for j in ready:
                answer(j)
        print(f"{applied / elapsed:.3f} {staleness_total / applied:.6f}")
        if args.save_model:
            np.save(args.save_model, served())
    else:
        comm.gather(rows.size)
        share = rows.size / n
        status, g = MPI.Status(), np.empty(d)
        batches = ShardBatches(X, y, args.seed, rank - 1, args.batch_size)
        while True:
            comm.Recv(w, source=0, status=status)
            if status.Get_tag() == STOP:
                break
            Xb, yb = batches.next()
            g[:] = share * (Xb.T @ logistic_dz(Xb @ w, yb) / yb.size)
            comm.Send(g, dest=0, tag=WORK)


if __name__ == "__main__":
    main()
