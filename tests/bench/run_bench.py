"""`make bench`: per-round time of `dmlcli train ssgd` against a bare mpi4py loop (bare_ssgd.py)
doing the same arithmetic, at 2 and 4 workers and d = 100 and 10,000; then updates per second of
`dmlcli train asgd` against a bare mpi4py parameter server (bare_asgd.py) with 1, 2 and 4 workers
(2, 3 and 5 ranks on this machine's cores); measured in one run.

Both sides run under the same mpiexec on the same synthetic data; each pair is repeated and
interleaved so machine noise hits both alike, and the table reports medians and their ratio.
"""

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
CASES = [  # (workers, features, rows, rounds): rounds sized for a few seconds per run
    (2, 100, 4000, 3000),
    (4, 100, 4000, 3000),
    (2, 10_000, 2000, 150),
    (4, 10_000, 2000, 150),
]
ASYNC_CASES = [(1, 20_000), (2, 20_000), (4, 20_000)]  # (workers, updates); d = 100, mini-batches of 64
ASYNC_DATA = "synthetic:n=20000,d=100,seed=1"
TIMEOUT_S = 600


def run(command: list[str]) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    if done.returncode != 0:
        raise SystemExit(f"benchmark command failed ({done.returncode}): {' '.join(command)}\n{done.stderr}")
    return done.stdout


def dmlcli_round_s(workers: int, data: str, rounds: int, scratch: str) -> float:
    out = os.path.join(scratch, f"ssgd-{time.monotonic_ns()}.csv")
    run([str(BIN / "mpiexec"), "-n", str(workers + 1), str(BIN / "dmlcli"), "train", "ssgd", "--data", data,
         "--batch-size", "all", "--rounds", str(rounds), "--eval-every", str(rounds), "--test-fraction", "0",
         "--partition", "contiguous", "--no-standardize", "--lr", "0.1", "--lam", "1e-3", "--progress", "off",
         "--out", out])
    with open(out) as handle:
        last = list(csv.DictReader(handle))[-1]
    return float(last["wall_s"]) / int(last["round"])


def bare_round_s(workers: int, data: str, rounds: int) -> float:
    output = run([str(BIN / "mpiexec"), "-n", str(workers + 1), sys.executable, str(HERE / "bare_ssgd.py"),
                  "--data", data, "--rounds", str(rounds), "--lr", "0.1", "--lam", "1e-3"])
    return float(output.strip().splitlines()[-1])


def dmlcli_updates_per_s(workers: int, updates: int, scratch: str) -> float:
    out = os.path.join(scratch, f"asgd-{time.monotonic_ns()}.csv")
    run([str(BIN / "mpiexec"), "-n", str(workers + 1), str(BIN / "dmlcli"), "train", "asgd", "--data", ASYNC_DATA,
         "--batch-size", "64", "--rounds", str(updates), "--eval-every", str(updates), "--test-fraction", "0",
         "--partition", "contiguous", "--no-standardize", "--lr", "0.01", "--lam", "1e-3", "--progress", "off",
         "--out", out])
    with open(out) as handle:
        last = list(csv.DictReader(handle))[-1]
    return int(last["round"]) / float(last["wall_s"])


def bare_updates_per_s(workers: int, updates: int) -> float:
    output = run([str(BIN / "mpiexec"), "-n", str(workers + 1), sys.executable, str(HERE / "bare_asgd.py"),
                  "--data", ASYNC_DATA, "--updates", str(updates), "--lr", "0.01", "--lam", "1e-3"])
    return float(output.strip().splitlines()[-1])


def async_table(repeats: int, scratch: str) -> list[str]:
    lines = ["| workers | ranks | cores | dmlcli updates/s | bare mpi4py updates/s | ratio |",
             "|---:|---:|---:|---:|---:|---:|"]
    for workers, updates in ASYNC_CASES:
        ours, bare = [], []
        for _ in range(repeats):
            ours.append(dmlcli_updates_per_s(workers, updates, scratch))
            bare.append(bare_updates_per_s(workers, updates))
        mine, base = statistics.median(ours), statistics.median(bare)
        lines.append(f"| {workers} | {workers + 1} | {os.cpu_count()} | {mine:,.0f} | {base:,.0f} | {mine / base:.3f} |")
        print(lines[-1], flush=True)
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/bench.md")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lines = ["| workers | d | rows | rounds | dmlcli ms/round | bare mpi4py ms/round | ratio |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as scratch:
        for workers, features, rows, rounds in CASES:
            data = f"synthetic:n={rows},d={features},seed=1"
            ours, bare = [], []
            for _ in range(args.repeats):
                ours.append(dmlcli_round_s(workers, data, rounds, scratch))
                bare.append(bare_round_s(workers, data, rounds))
            mine, base = statistics.median(ours), statistics.median(bare)
            lines.append(f"| {workers} | {features} | {rows} | {rounds} | {mine * 1e3:.4f} | {base * 1e3:.4f} "
                         f"| {mine / base:.3f} |")
            print(lines[-1], flush=True)
        async_lines = async_table(args.repeats, scratch)
    table = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(f"# ssgd per-round time, dmlcli vs bare mpi4py ({time.strftime('%Y-%m-%d')})\n\n"
                              + table + "\n# asgd server updates per second, dmlcli vs a bare mpi4py parameter server "
                              "(d = 100, B = 64)\n\n" + "\n".join(async_lines) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
