"""Section 6: seconds from the command to round 0 and to the summary, with 4 workers on this
machine's cores, for the builtin sets, a synthetic set and a small LIBSVM file — what every run of a
sweep of short runs pays. The floor beside it is the cost of starting the same 5 Python processes
under mpiexec with numpy and mpi4py imported and MPI initialised, and nothing else."""

from __future__ import annotations

import json
import sys

from common import Bench, table

TITLE = "6. Start-up"
WORKERS = 4
FLOOR_CODE = "import numpy; from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"


def _cases(bench: Bench) -> list[tuple[str, list[str]]]:
    """(label, data options): digits has 10 classes, so it runs as least squares on its labels."""
    import bench_files

    small = bench_files.libsvm_file(rows=2_000, features=100, nonzeros=10)
    cases = [("builtin breast_cancer", ["--data", "breast_cancer"]),
             ("builtin digits (squared loss)", ["--data", "digits", "--loss", "squared"]),
             ("synthetic n=2000, d=20", ["--data", "synthetic:n=2000,d=20,seed=1"]),
             ("LIBSVM 2,000 × 100 (small file)", ["--data", small])]
    return cases[:1] if bench.quick else cases


def _dmlcli(bench: Bench, data: list[str]) -> dict:
    out = bench.out_path("startup")
    wall, _ = bench.timed([bench.dmlcli(), "train", "ssgd", *data, "--workers", str(WORKERS), "--rounds", "1",
                           "--progress", "off", "--out", out])
    with open(out.removesuffix(".csv") + ".json") as handle:
        timing = json.load(handle)["timing"]
    return {"round0": timing["command_to_round_0_s"], "end": timing["command_to_end_s"], "wall": wall}


def _floor(bench: Bench) -> float:
    return bench.timed([*bench.mpiexec(WORKERS + 1), sys.executable, "-c", FLOOR_CODE])[0]


def run(bench: Bench) -> list[str]:
    rows = []
    for label, data in _cases(bench):
        ours, floor = [], []
        for _ in range(bench.repeats):  # interleaved, so load on the machine hits both
            ours.append(_dmlcli(bench, data))
            floor.append(_floor(bench))
        median = {key: sorted(run[key] for run in ours)[len(ours) // 2] for key in ("round0", "end", "wall")}
        floor_s = sorted(floor)[len(floor) // 2]
        rows.append([label, f"{median['round0']:.2f}", f"{median['end']:.2f}", f"{median['wall']:.2f}",
                     f"{floor_s:.2f}", f"{median['round0'] / floor_s:.2f}"])
    intro = [f"`dmlcli train ssgd --data DATA [--loss squared] --workers {WORKERS} --rounds 1` started by dmlcli itself (it launches "
             f"mpiexec with {WORKERS + 1} ranks), medians of {bench.repeats} interleaved runs. *To round 0* and *to "
             "the summary* are the manifest's `timing` (counted from the launcher process's start); *whole command* "
             "is measured outside, until the process exits. The floor is `mpiexec -n 5 python -c "
             f"\"{FLOOR_CODE}\"`: what any Python MPI program pays before it does anything.", ""]
    header = ["data", "to round 0 s", "to summary s", "whole command s", "floor s", "round 0 / floor"]
    return intro + table(header, rows)
