"""Section 2: per-round time of `dmlcli train ssgd --batch-size all` against the same full-batch
synchronous gradient descent written with torch.distributed's gloo backend on CPU tensors
(bare_torch_ssgd.py), at 2, 4 and 8 workers and d = 100, 10,000 and 1,000,000 (dense).

Both sides read the same data file with the same shards and take the same step and l2 prox, in
float64, one thread per process; each pair of runs is checked to end on the same model, so the two
did the same arithmetic. torch runs its K workers as K processes; dmlcli has K + 1 ranks (rank 0 takes part in
the Allreduce with zeros), as a user of each would run them. The data are a dense .npz file written
here (x ~ N(0, I), labels the sign of a random linear model plus noise), because dmlcli's `synthetic:`
data draw 1,024-row blocks whatever n is (10⁹ numbers a rank at d = 10⁶); both sides read only their rows of
it. Rows are chosen so that each run trains for a few seconds and d = 10⁶ stays small (32 rows, 256 MB).
Beside each pair, the arithmetic floor (arithmetic_floor.py): the rounds' arithmetic alone, in K
processes on their shards exchanging nothing, which bounds how much faster than torch any implementation
of this loop with K worker processes could be where the arithmetic, not the communication, fills a round.
torch is an optional extra (`pip install -e '.[bench]'`); without it the section says so and is skipped.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import partial

import numpy as np
from common import Bench, interleaved, last_row, table

TITLE = "2. torch.distributed (gloo) on the same synchronous SGD"
CASES = [  # (workers, features, rows, rounds): rounds sized for a few seconds of training a run
    (workers, features, rows, rounds)
    for workers in (2, 4, 8)
    for features, rows, rounds in ((100, 4000, 1000), (10_000, 2000, 100), (1_000_000, 32, 10))
]
QUICK_CASES = [(2, 100, 1000, 200), (2, 10_000, 500, 20)]
LR, LAM = 0.1, 1e-3
MODEL_RTOL = 1e-9  # float64 sums in another order (BLAS against torch's kernels, MPI against gloo)


def _data_file(bench: Bench, features: int, rows: int) -> str:
    """A dense .npz of rows × features, x ~ N(0, I) and labels ±1 = sign(x·w* + 0.1 ε), seeded."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((rows, features))
    y = np.where(X @ (rng.standard_normal(features) / np.sqrt(features)) + 0.1 * rng.standard_normal(rows) >= 0,
                 1.0, -1.0)
    path = bench.out_path(f"torch-data-{features}x{rows}").removesuffix(".csv") + ".npz"
    np.savez(path, X=X, y=y)
    return path


def _dmlcli_round_s(bench: Bench, workers: int, data: str, rounds: int, model: str) -> float:
    out = bench.out_path("torch-dmlcli")
    bench.run([*bench.mpiexec(workers + 1), bench.dmlcli(), "train", "ssgd", "--data", data, "--batch-size", "all",
               "--rounds", str(rounds), "--eval-every", str(rounds), "--test-fraction", "0",
               "--partition", "contiguous", "--no-standardize", "--lr", str(LR), "--lam", str(LAM),
               "--progress", "off", "--out", out, "--save-model", model, "--force"])
    last = last_row(out)
    return float(last["wall_s"]) / int(last["round"])


def _torch_round_s(bench: Bench, workers: int, data: str, rounds: int, model: str) -> float:
    output = bench.run([sys.executable, bench.script("bare_torch_ssgd.py"), "--data", data, "--rounds", str(rounds),
                        "--workers", str(workers), "--lr", str(LR), "--lam", str(LAM), "--save-model", model,
                        "--timeout", str(bench.timeout_s * 0.9)])
    return float(output.strip().splitlines()[-1])


def _arithmetic_floor_s(bench: Bench, workers: int, data: str, rounds: int) -> float:
    """The least a round can take with `workers` worker processes on this machine: the same processes doing
    their shards' arithmetic side by side with no messages (arithmetic_floor.py)."""
    output = bench.run([*bench.mpiexec(workers), sys.executable, bench.script("arithmetic_floor.py"), "--data", data,
                        "--rounds", str(rounds), "--lr", str(LR), "--lam", str(LAM)])
    return float(output.strip().splitlines()[-1])


def _relative_difference(path_a: str, path_b: str) -> float:
    a, b = np.load(path_a), np.load(path_b)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.finfo(float).tiny))


def run(bench: Bench) -> list[str]:
    if importlib.util.find_spec("torch") is None:
        return ["skipped: torch is not installed; `pip install -e '.[bench]'`"]
    rows, worst = [], 0.0
    data_files = {}
    for workers, features, n, rounds in QUICK_CASES if bench.quick else CASES:
        if (features, n) not in data_files:
            data_files[(features, n)] = _data_file(bench, features, n)
        data = data_files[(features, n)]
        ours_model, torch_model = (bench.out_path(side).removesuffix(".csv") + ".npy"
                                   for side in ("dmlcli-model", "torch-model"))
        ours, theirs, floor = interleaved(
            bench.repeats, partial(_dmlcli_round_s, bench, workers, data, rounds, ours_model),
            partial(_torch_round_s, bench, workers, data, rounds, torch_model),
            partial(_arithmetic_floor_s, bench, workers, data, rounds))
        difference = _relative_difference(ours_model, torch_model)
        if difference > MODEL_RTOL:
            raise SystemExit(f"torch and dmlcli ended on different models ({workers} workers, d = {features}): "
                             f"largest difference {difference:.2e} of the largest weight")
        worst = max(worst, difference)
        rows.append([workers, f"{features:,}", f"{n:,}", rounds, f"{ours * 1e3:.3f}", f"{theirs * 1e3:.3f}",
                     f"{theirs / ours:.2f}", f"{floor * 1e3:.3f}", f"{theirs / floor:.2f}"])
        print("  " + " | ".join(map(str, rows[-1])), flush=True)
    import torch

    intro = [f"Full-batch synchronous gradient descent (logistic loss, l2 prox, λ = {LAM}, η = {LR}, float64) on "
             "a dense .npz file of ROWS × D (x ~ N(0, I), seeded) in contiguous shards: `mpiexec -n K+1 dmlcli "
             "train ssgd --batch-size all --partition contiguous --no-standardize` against `bare_torch_ssgd.py`, "
             f"the same loop on torch {torch.__version__} with torch.distributed's gloo backend (CPU tensors, one "
             "all_reduce a round, `torch.set_num_threads(1)`, K processes on localhost). Per round: dmlcli's training "
             "time (`wall_s` of its last CSV row, evaluation excluded) over its rounds; torch's loop time on process 0 "
             f"after a barrier, over its rounds. Medians of {bench.repeats} interleaved runs. Each pair ended on the "
             f"same model (largest difference {worst:.1e} of the largest weight). Ratios above 1: torch is slower. "
             "*Arithmetic floor*: `mpiexec -n K arithmetic_floor.py`, the same rounds' arithmetic in K processes, each "
             "on its shard, side by side and exchanging nothing (timed from a barrier to a barrier): no implementation "
             "with K worker processes has a shorter round, so torch/floor is the largest torch/dmlcli any could reach "
             "on this machine. (Until 2026-11-25 the floor was one process's time for every row over min(K, cores), "
             "which assumed the cores share the arithmetic perfectly; they share the memory bandwidth too.)", ""]
    header = ["workers", "d", "rows", "rounds", "dmlcli ms/round", "torch gloo ms/round", "torch/dmlcli",
              "arithmetic floor ms/round", "torch/floor"]
    return intro + table(header, rows)
