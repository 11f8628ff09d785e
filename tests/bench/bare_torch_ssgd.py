"""The peer of `make bench` section 2: the synchronous gradient descent of bare_ssgd.py written with
torch.distributed's gloo backend on CPU tensors.

The same arithmetic as `dmlcli train ssgd --batch-size all` on the same data (logistic loss, l2 prox
step, contiguous shards, float64), one all_reduce of the d-vector a round, one thread per process.
torch needs no server process: its K processes are dmlcli's worker ranks 1..K with the same shards
(dmlcli's rank 0 only adds zeros to the Allreduce, which changes no sum).

Started without --rank it is the launcher: it starts the K processes itself on localhost, with the
rendezvous in a file (no TCP port to pick and race for) and gloo on the loopback interface, and
ends them all if any fails or the timeout passes. Process 0 prints the mean seconds per round, and
with --save-model writes the final model as .npy, so the bench can check it against dmlcli's.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def train(args) -> None:
    import torch
    import torch.distributed as dist
    from bare_data import load

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{args.rendezvous}", rank=args.rank,
                            world_size=args.workers)
    n, d, _, X_rows, y_rows = load(args.data, args.rank + 1, args.workers)
    X, y = torch.from_numpy(X_rows), torch.from_numpy(y_rows)
    w = torch.zeros(d, dtype=torch.float64)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(args.rounds):
        g = X.T @ (-0.5 * y * (1.0 + torch.tanh(-0.5 * y * (X @ w)))) / n
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        w = (w - args.lr * g) / (1 + args.lr * args.lam)
    elapsed = time.perf_counter() - start
    if args.rank == 0:
        if args.save_model:
            np.save(args.save_model, w.numpy())
        print(f"{elapsed / args.rounds:.9f}", flush=True)
    dist.destroy_process_group()


def launch(args) -> None:
    """Start the K processes of one run and wait for them; any failure or the timeout ends all of them."""
    with tempfile.TemporaryDirectory(prefix="torch-ssgd-") as scratch:
        rendezvous = os.path.join(scratch, "rendezvous")
        env = dict(os.environ, GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
        processes = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--rank", str(rank),
                                       "--rendezvous", rendezvous], env=env,
                                      stdout=subprocess.PIPE if rank == 0 else subprocess.DEVNULL)
                     for rank in range(args.workers)]
        deadline = time.monotonic() + args.timeout
        try:
            while any(process.poll() is None for process in processes):
                if any(process.returncode not in (None, 0) for process in processes):
                    raise SystemExit(f"a torch process failed: exit codes {[p.returncode for p in processes]}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"torch run did not finish in {args.timeout:.0f} s")
                time.sleep(0.05)
            if any(process.returncode != 0 for process in processes):
                raise SystemExit(f"a torch process failed: exit codes {[p.returncode for p in processes]}")
            sys.stdout.write(processes[0].stdout.read().decode())
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--lam", type=float, default=1e-3)
    parser.add_argument("--save-model", help="write the final model to this .npy file")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before the launcher ends the run")
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rendezvous", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank is None:
        launch(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
