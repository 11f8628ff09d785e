"""Section 1 of `make bench`: per-round time of the synchronous algorithms against bare mpi4py loops.

For ssgd (--batch-size all), ma, admm, giant and dpsgd (the gossip loop), at 2, 4 and 8 workers, d = 100,
10,000 and 1,000,000, dense and sparse, `dmlcli train ALGO` runs beside a bare script (bare_ssgd.py,
bare_ma.py, bare_admm.py, bare_giant.py, bare_dpsgd.py) doing the same arithmetic each round and nothing
else, under the same mpiexec on the same rows; the table says what each figure is.

Rounds are set by dmlcli itself: the first run of a cell stops at a time limit, and every other run of
the cell, dmlcli's and the bare script's, takes that many rounds. A fixed table of rounds would be wrong on
any other machine (the cells span four orders of magnitude per round), and both sides must run the same
rounds because admm's and giant's early rounds cost more than later ones (warm-started local solves).
The first pair of runs also saves both final models: their difference shows the bare loop computed what
dmlcli did (0 in every cell on the development machine: the same bits).

Dense d = 10⁶ reads a 32-row .npz archive (bench_files) rather than synthetic data: the synthetic
generator draws whole 1,024-row blocks, 8 GB a rank at that width. The full grid is 72 cells × 2 sides ×
repeats runs, most of whose time is MPI start-up (1 to 3 s a run on 2 cores), so the time limit is short.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
from common import interleaved, last_row, table

TITLE = "1. Overhead against a bare mpi4py loop"

LAM = "1e-3"
# dmlcli's options for each algorithm, and the bare script with the same hyper-parameters.
ALGORITHMS = {
    "ssgd": (["--batch-size", "all", "--lr", "0.1"], "bare_ssgd.py", ["--lr", "0.1"]),
    "ma": (["--batch-size", "64", "--local-steps", "5", "--lr", "0.1"], "bare_ma.py",
           ["--batch-size", "64", "--local-steps", "5", "--lr", "0.1"]),
    "admm": (["--batch-size", "all"], "bare_admm.py", []),
    "giant": (["--batch-size", "all"], "bare_giant.py", []),
    "dpsgd": (["--batch-size", "64", "--lr", "0.1"], "bare_dpsgd.py", ["--batch-size", "64", "--lr", "0.1"]),
}
COMMON = ["--test-fraction", "0", "--partition", "contiguous", "--no-standardize", "--lam", LAM,
          "--progress", "off"]
UNBOUNDED = str(10**9)  # rounds and evaluation interval of a run that the time limit ends
TIME_LIMIT_S = 0.6  # training seconds of a cell's first dmlcli run, which fixes the cell's rounds
QUICK_TIME_LIMIT_S = 0.15


@dataclass(frozen=True)
class DataCase:
    d: int
    kind: str  # "dense" or "sparse"
    rows: int
    spec: str  # a data spec; "" for the dense d = 10⁶ archive, made when the section runs

    def data(self) -> str:
        if self.spec:
            return self.spec
        from bench_files import npz_file

        return npz_file(self.rows, self.d)


DATA = [
    DataCase(100, "dense", 4000, "synthetic:n=4000,d=100,seed=1"),
    DataCase(100, "sparse", 4000, "synthetic:n=4000,d=100,sparse=1,density=0.1,seed=1"),
    DataCase(10_000, "dense", 1000, "synthetic:n=1000,d=10000,seed=1"),
    DataCase(10_000, "sparse", 4000, "synthetic:n=4000,d=10000,sparse=1,density=0.01,seed=1"),
    DataCase(1_000_000, "dense", 32, ""),
    DataCase(1_000_000, "sparse", 4000, "synthetic:n=4000,d=1000000,sparse=1,density=0.0001,seed=1"),
]
WORKERS = (2, 4, 8)
QUICK_CELLS = [("ssgd", 2, DATA[0]), ("ma", 2, DATA[0]), ("admm", 2, DATA[0]), ("giant", 2, DATA[0]), ("dpsgd", 2, DATA[0]),
               ("ssgd", 2, DATA[1])]


def measure_cell(bench, algorithm: str, workers: int, data: str, time_limit: float) -> dict:
    """Interleaved dmlcli and bare runs of one cell: medians of seconds per round, rounds, model difference."""
    options, script, bare_options = ALGORITHMS[algorithm]
    ranks = workers + 1
    cell = {"rounds": None, "models": None}

    def dmlcli_round_s() -> float:
        out = bench.out_path(f"overhead-{algorithm}")
        if cell["rounds"] is None:
            budget = ["--rounds", UNBOUNDED, "--eval-every", UNBOUNDED, "--time-limit", str(time_limit)]
            saved = out[:-4] + ".npy"
        else:
            budget = ["--rounds", str(cell["rounds"]), "--eval-every", str(cell["rounds"])]
            saved = None
        bench.run([*bench.mpiexec(ranks), bench.dmlcli(), "train", algorithm, "--data", data, *options, *COMMON,
                   *budget, "--out", out, *(["--save-model", saved] if saved else [])])
        row = last_row(out)
        if cell["rounds"] is None:
            cell["rounds"], cell["models"] = int(row["round"]), [saved]
        return float(row["wall_s"]) / int(row["round"])

    def bare_round_s() -> float:
        saved = None
        if len(cell["models"]) == 1:
            saved = bench.out_path(f"bare-{algorithm}")[:-4] + ".npy"
            cell["models"].append(saved)
        output = bench.run([*bench.mpiexec(ranks), sys.executable, bench.script(script), "--data", data,
                            "--rounds", str(cell["rounds"]), "--lam", LAM, *bare_options,
                            *(["--save-model", saved] if saved else [])])
        return float(output.strip().splitlines()[-1])

    ours, bare = interleaved(bench.repeats, dmlcli_round_s, bare_round_s)
    mine, theirs = (np.load(path) for path in cell["models"])
    return {"rounds": cell["rounds"], "ours": ours, "bare": bare,
            "difference": float(np.abs(mine - theirs).max() / max(np.linalg.norm(mine), 1e-300))}


def run(bench) -> list[str]:
    cores = os.cpu_count()
    time_limit = QUICK_TIME_LIMIT_S if bench.quick else TIME_LIMIT_S
    cells = QUICK_CELLS if bench.quick else [(algorithm, workers, case) for case in DATA for algorithm in ALGORITHMS
                                             for workers in WORKERS]
    rows = []
    for algorithm, workers, case in cells:
        result = measure_cell(bench, algorithm, workers, case.data(), time_limit)
        ranks = workers + 1
        rows.append([algorithm, workers, f"{ranks} / {cores}" + (" (over)" if ranks > cores else ""), f"{case.d:,}",
                     case.kind, f"{case.rows:,}", result["rounds"], f"{result['ours'] * 1e3:.3f}",
                     f"{result['bare'] * 1e3:.3f}", f"{result['ours'] / result['bare']:.2f}",
                     f"{result['difference']:.0e}" if result["difference"] else "0"])
        print("| " + " | ".join(map(str, rows[-1])) + " |", flush=True)
    runs = len(cells) * 2 * bench.repeats
    return [
        f"Per-round time of `dmlcli train ALGO` against a bare mpi4py script doing the same arithmetic "
        f"(tests/bench/bare_ssgd.py, bare_ma.py, bare_admm.py, bare_giant.py, bare_dpsgd.py), both under "
        f"`mpiexec -n K+1` with rank 0 adding zeros to every Allreduce, on the same data: logistic loss, l2 λ = {LAM}, "
        f"`--partition contiguous --test-fraction 0 --no-standardize`, intercept appended. ssgd: `--batch-size "
        f"all --lr 0.1`; ma: `--local-steps 5 --batch-size 64 --lr 0.1` (mini-batches drawn from the same seeded "
        f"stream as dmlcli's); admm: ρ = 0.1, inexact Newton-CG local solves (at most 20 Newton steps of at most "
        f"50 CG steps); giant: at most 50 CG steps, 10 line-search candidates; dpsgd: a ring, `--batch-size 64 "
        f"--lr 0.1` (the bare loop has no Allreduce in its rounds: rank 0 waits for the end, and there is no stop "
        f"flag; dmlcli's goes round every 8th round). dmlcli ms/round is the CSV's "
        f"wall_s (evaluation excluded) over its rounds; bare ms/round is the script's clock from a barrier. "
        f"A cell's rounds are what dmlcli ran in {time_limit:g} s of training in its first run (`--time-limit`); "
        f"every other run of the cell takes that many. Medians of {bench.repeats} interleaved repeats "
        f"({runs} runs). ranks / cores: MPI ranks on this machine's cores, '(over)' where ranks outnumber cores. "
        f"Rows: the whole training set, split in equal contiguous shards. Data: synthetic (`synthetic:n=ROWS,"
        f"d=D,seed=1`; sparse with 10 nonzeros a row at d = 100 and 100 at d = 10⁴ and 10⁶), except dense "
        f"d = 10⁶: a 32-row .npz archive (256 MB) read by both sides with dmlcli's reader, since the synthetic "
        f"generator draws 1,024-row blocks (8 GB a rank at that width). Δ model: the largest difference between "
        f"dmlcli's final model (`--save-model`) and the bare script's in the first repeat, relative to its norm "
        f"(0: the same bits).",
        "",
        *table(["algorithm", "workers", "ranks / cores", "d", "data", "rows", "rounds", "dmlcli ms/round",
                "bare ms/round", "ratio", "Δ model"], rows, align="lrrrlrrrrrr"),
    ]
