"""Section 4 of `make bench`: the parameter server's throughput against bare mpi4py servers.

Server updates per second and mean staleness of `dmlcli train asgd` and `dmlcli train ssp` against
bare_asgd.py and bare_ssp.py, which do the same arithmetic (same data, shards, sampler, step and
clock bound) with MPI's own blocking waits and nothing else. One worker gives as many ranks as the
development machine has cores (2); 2, 4 and 8 workers outnumber them, where how a rank waits decides
who gets a core. With one worker both algorithms are sequential, and every repeat checks that
dmlcli's final model is the bare loop's to rounding: the baseline does the same arithmetic. What the
bare loops do not do: dmlcli's workers gather their next mini-batch while they wait for the model
(Shard.prefetch), and its server yields the core while it waits for a payload where the bare one
spins in MPI's blocking wait (comm.polling).
"""

from __future__ import annotations

import os
import statistics
import sys

import numpy as np
from common import Bench, interleaved, last_row, table

TITLE = "4. Asynchronous throughput"
DATA = {100: "synthetic:n=20000,d=100,seed=1", 10_000: "synthetic:n=2000,d=10000,seed=1"}
# Server updates per run, about half a second of training at this machine's rates (d = 10,000:
# the 64-row gather and gradient take about 4 ms a step).
UPDATES = {100: 10_000, 10_000: 400}
QUICK_UPDATES = {100: 2_000}
WORKERS = (1, 2, 4, 8)
QUICK_WORKERS = (1, 2)
ALGORITHMS = ("asgd", "ssp")
BATCH, LR, LAM = 64, 0.01, 1e-3
STALENESS_BOUND = 3  # ssp's default bound, given to both sides
AGREEMENT_TOLERANCE = 1e-9  # max |Δw| between the final models of a one-worker pair


def _budget(algorithm: str, updates: int, workers: int) -> int:
    """The --rounds (asgd: server updates; ssp: clocks completed by every worker) for about `updates` updates."""
    return updates if algorithm == "asgd" else max(1, updates // workers)


def _dmlcli(bench: Bench, algorithm: str, workers: int, d: int, updates: int, model: str | None):
    """(updates/s, mean staleness) of one dmlcli run, read from its last CSV row."""
    out = bench.out_path(f"{algorithm}-{workers}-{d}")
    rounds = _budget(algorithm, updates, workers)
    command = [*bench.mpiexec(workers + 1), bench.dmlcli(), "train", algorithm, "--data", DATA[d],
               "--batch-size", BATCH, "--rounds", rounds, "--eval-every", rounds, "--test-fraction", 0,
               "--partition", "contiguous", "--no-standardize", "--lr", LR, "--lam", LAM, "--progress", "off",
               "--out", out]
    if algorithm == "ssp":
        command += ["--staleness-bound", STALENESS_BOUND]
    if model:
        command += ["--save-model", model, "--force"]
    bench.run(command)
    row = last_row(out)
    return int(row["updates"]) / float(row["wall_s"]), float(row["staleness_mean"])


def _bare(bench: Bench, algorithm: str, workers: int, d: int, updates: int, model: str | None):
    """(updates/s, mean staleness) printed by the bare loop."""
    rounds = _budget(algorithm, updates, workers)
    if algorithm == "asgd":
        command = [bench.script("bare_asgd.py"), "--updates", rounds]
    else:
        command = [bench.script("bare_ssp.py"), "--clocks", rounds, "--staleness-bound", STALENESS_BOUND]
    command += ["--data", DATA[d], "--batch-size", BATCH, "--lr", LR, "--lam", LAM]
    if model:
        command += ["--save-model", model]
    rate, staleness = bench.run([*bench.mpiexec(workers + 1), sys.executable, *command]).split()[-2:]
    return float(rate), float(staleness)


def _ranks_and_cores(workers: int) -> str:
    ranks, cores = workers + 1, os.cpu_count() or 1
    return f"{ranks}/{cores} ({'a core each' if ranks <= cores else 'outnumbered'})"


def _pair(bench: Bench, algorithm: str, workers: int, d: int, updates: int):
    """Medians over interleaved repeats of dmlcli's and the bare loop's updates/s and mean staleness, and the
    largest difference between their final models (None with several workers: arrival order is not fixed)."""
    # One worker runs sequentially: keep both final models to check they agree.
    models = ([os.path.join(bench.scratch, f"{side}-{algorithm}-{d}.npy") for side in ("dmlcli", "bare")]
              if workers == 1 else [None, None])
    staleness: tuple[list, list] = ([], [])
    differences = []

    def ours():
        rate, mean_staleness = _dmlcli(bench, algorithm, workers, d, updates, models[0])
        staleness[0].append(mean_staleness)
        return rate

    def theirs():
        rate, mean_staleness = _bare(bench, algorithm, workers, d, updates, models[1])
        staleness[1].append(mean_staleness)
        if models[1]:
            differences.append(float(np.abs(np.load(models[0]) - np.load(models[1])).max()))
        return rate

    rates = interleaved(bench.repeats, ours, theirs)
    return rates, [statistics.median(side) for side in staleness], max(differences) if differences else None


def run(bench: Bench) -> list[str]:
    updates_for = QUICK_UPDATES if bench.quick else UPDATES
    worker_counts = QUICK_WORKERS if bench.quick else WORKERS
    rows, agreement = [], []
    for algorithm in ALGORITHMS:
        for d, updates in updates_for.items():
            for workers in worker_counts:
                (mine, base), (my_staleness, base_staleness), difference = _pair(bench, algorithm, workers, d, updates)
                if difference is not None:
                    if difference > AGREEMENT_TOLERANCE:
                        raise SystemExit(f"{algorithm}, 1 worker, d = {d}: dmlcli's final model differs from the bare "
                                         f"loop's by {difference:.3g}: they no longer do the same arithmetic")
                    agreement.append(f"{algorithm} d = {d:,}: {difference:.1g}")
                rows.append([algorithm, workers, _ranks_and_cores(workers), f"{d:,}", f"{mine:,.0f}", f"{base:,.0f}",
                             f"{mine / base:.2f}", f"{my_staleness:.2f}", f"{base_staleness:.2f}"])
                print("  " + " | ".join(map(str, rows[-1])), flush=True)
    shown_updates = " and ".join(f"{updates:,} at d = {d:,}" for d, updates in updates_for.items())
    text = (
        f"`dmlcli train asgd` and `dmlcli train ssp --staleness-bound {STALENESS_BOUND}` against the bare mpi4py "
        f"parameter servers `tests/bench/bare_asgd.py` and `tests/bench/bare_ssp.py` (the same arithmetic, "
        f"sampler and clock bound; MPI's blocking waits; no evaluation, logging or progress). Synthetic logistic "
        f"data ({', '.join(f'`{DATA[d]}`' for d in updates_for)}), mini-batches "
        f"of {BATCH}, lr {LR}, l2 λ = {LAM}, contiguous shards, no test split, no standardisation. Server updates per run: "
        f"{shown_updates} (ssp: that many over the workers, in clocks), evaluation only at "
        f"the end. Updates per second are server updates applied over training time (dmlcli: the CSV's `updates` "
        f"over `wall_s`; bare: from a barrier to the last update); staleness is the server's mean over updates "
        f"(asgd: updates, ssp: clocks, since the worker was sent its model). Ratio = dmlcli over bare, so above 1 "
        f"is faster. Medians of {bench.repeats} interleaved repeats. Ranks/cores says whether every rank has a "
        f"core. With one worker the final models agree (max |Δw|: {'; '.join(agreement) or 'not checked'}); with "
        f"more, arrival order differs run to run, so the models do too.",
        "",
    )
    header = ["algorithm", "workers", "ranks/cores", "d", "dmlcli updates/s", "bare updates/s", "ratio",
              "dmlcli mean staleness", "bare mean staleness"]
    return [*text, *table(header, rows, align="lrlrrrrrr")]
