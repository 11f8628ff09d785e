"""Section 8 of `make bench`: wall-clock training time to a relative objective gap of 1e-3 for ssgd, ma and asgd
with 1, 2, 4 and 8 workers on one fixed synthetic problem, and the speed-up against 1 worker.

Time to a gap, as recipes/straggler.py and recipes/bytes_to_gap.py measure it: F* comes from the centralised
reference solver on the run's training set (`optimum` in recipes/experiment.py); with `--test-fraction 0`
the training set is the whole synthetic set whatever the worker count, so one F* serves every run. A run's
time is the CSV's `wall_s` (training time, evaluation excluded) at the first evaluated row with
(F − F*)/F* ≤ 1e-3. Full local gradients (`--batch-size all`) make every run deterministic up to asgd's
arrival order, and each algorithm's default step (1/L synchronous, 1/(L·K) asynchronous) reaches the gap.

Budgets: on the full grid's problem (n = 100,000, d = 100, λ = 0.001) ssgd gets there at round 195 for every K
(it is gradient descent), ma (M = 5) at round 39, asgd after 195, 380, 780 and 1,520 server updates with 1, 2, 4
and 8 workers (its step shrinks with K); the quick grid's n = 20,000 needs 210, 43 and 210·K. Each budget is
about 1.5 times that, evaluated often enough to place the hit within a few per cent, and a run that misses
the gap all the same shows "not reached".

Beside each row, a worker's shard in MiB and a probe of one process's gradient time per row on a shard that
size: measured while building this section, ma with 8 workers passed the gap 4.3 times sooner than with 1 on
2 cores, and the probe showed why (152 ns a row over the whole 77 MiB set, 28 ns over a 10 MiB shard, which
stays in the 32 MiB last-level cache through ma's M local steps).
"""

from __future__ import annotations

import csv
import math
import os
import statistics
import sys
from pathlib import Path

from common import interleaved, table

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
from experiment import optimum  # noqa: E402

TITLE = "8. Scaling: time to a fixed relative gap"
TARGET = 1e-3
LAM = 0.001
# (algorithm, budget in rounds for K workers, evaluated every so many rounds for K workers): see the docstring.
ALGORITHMS = (
    ("ssgd", lambda workers: 300, lambda workers: 5),
    ("ma", lambda workers: 60, lambda workers: 1),
    ("asgd", lambda workers: 300 * workers, lambda workers: 5 * workers),
)


def _grid(quick: bool) -> tuple[str, tuple[int, ...]]:
    """(data spec, worker counts): quick is a smaller set and no oversubscription beyond 3 ranks."""
    if quick:
        return "synthetic:n=20000,d=100,seed=1", (1, 2)
    return "synthetic:n=100000,d=100,seed=1", (1, 2, 4, 8)


def _time_to_gap(bench, data: str, best: float, algorithm: str, workers: int, rounds: int, every: int,
                 rounds_seen: list) -> float:
    """wall_s at the first evaluated row within TARGET of `best` (inf if the budget ends first)."""
    out = bench.out_path(f"scaling-{algorithm}-{workers}")
    bench.run([*bench.mpiexec(workers + 1), bench.dmlcli(), "train", algorithm, "--data", data, "--test-fraction",
               "0", "--batch-size", "all", "--lam", str(LAM), "--rounds", str(rounds), "--eval-every", str(every),
               "--progress", "off", "--out", out])
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    hit = next((row for row in rows if (float(row["objective"]) - best) / best <= TARGET), None)
    if hit is None:
        rounds_seen.append(math.inf)
        return math.inf
    rounds_seen.append(int(hit["round"]))
    return float(hit["wall_s"])


def _last_level_cache_mib() -> float | None:
    """The largest CPU cache of this machine in MiB (Linux sysfs), None where it cannot be read."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip()
        units = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}
        sizes.append(float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text) / 2**20)
    return max(sizes) if sizes else None


def _shard_mib(data: str, workers: int) -> float:
    """A worker's training rows in MiB: n/K rows of d features and the intercept, float64."""
    fields = dict(part.split("=") for part in data.removeprefix("synthetic:").split(","))
    return int(fields["n"]) / workers * (int(fields["d"]) + 1) * 8 / 2**20


PASS_PROBE = """
import sys, time
import numpy as np
rows, d, passes = (int(a) for a in sys.argv[1:])
rng = np.random.default_rng(1)
X, y, w = rng.standard_normal((rows, d + 1)), np.sign(rng.standard_normal(rows)), np.zeros(d + 1)
best = float("inf")
for _ in range(5):
    started = time.perf_counter()
    for _ in range(passes):
        X.T @ (-0.5 * y * (1.0 + np.tanh(-0.5 * y * (X @ w)))) / rows
    best = min(best, (time.perf_counter() - started) / passes / rows)
print(best)
"""


def _gradient_ns_per_row(bench, data: str, workers: int) -> float:
    """One process's time per row for a logistic gradient over a shard of K workers' size, best of 5
    bursts of M = 5 gradients in a row (ma's local steps): whether the shard stays in the cache."""
    fields = dict(part.split("=") for part in data.removeprefix("synthetic:").split(","))
    output = bench.run([sys.executable, "-c", PASS_PROBE, str(int(fields["n"]) // workers), fields["d"], "5"])
    return float(output.strip()) * 1e9


def _shown(value: float, form: str) -> str:
    return "not reached" if math.isinf(value) else format(value, form)


def run(bench) -> list[str]:
    data, worker_counts = _grid(bench.quick)
    best = optimum(workers=1, data=data, lam=LAM, test_fraction=0.0)
    configurations = [(algorithm, workers, budget(workers), every(workers))
                      for algorithm, budget, every in ALGORITHMS for workers in worker_counts]
    rounds_seen = {configuration: [] for configuration in configurations}
    measures = [lambda c=configuration: _time_to_gap(bench, data, best, *c, rounds_seen[c])
                for configuration in configurations]
    seconds = dict(zip(configurations, interleaved(bench.repeats, *measures)))

    per_row = {workers: _gradient_ns_per_row(bench, data, workers) for workers in worker_counts}
    rows = []
    for algorithm, workers, budget, every in configurations:
        one_worker = seconds[next(c for c in configurations if c[0] == algorithm and c[1] == 1)]
        wall = seconds[(algorithm, workers, budget, every)]
        rounds = statistics.median(rounds_seen[(algorithm, workers, budget, every)])
        speed_up = one_worker / wall if math.isfinite(one_worker) and math.isfinite(wall) else math.nan
        rows.append([algorithm, workers, workers + 1, f"{_shard_mib(data, workers):.1f}", f"{per_row[workers]:.0f}",
                     f"{budget} (every {every})", _shown(rounds, ".0f"),
                     _shown(wall, ".3f"), "–" if math.isnan(speed_up) else f"{speed_up:.2f}"])

    cores = os.cpu_count()
    crowded = [workers for workers in worker_counts if workers > cores]
    crowding = (f"With {' and '.join(map(str, crowded))} workers the workers outnumber the {cores} cores "
                "(oversubscribed): more workers then split the same cores more finely, and a waiting rank must "
                "give its core away. " if crowded else "")
    crowding += (f"Rank 0 is a rank more than the workers (it mostly waits), so from {cores} workers on the "
                 "ranks outnumber the cores. ")
    cache = _last_level_cache_mib()
    if cache:
        crowding += (f"*Shard MiB* is a worker's rows (this machine's last-level cache: {cache:.0f} MiB); *ns/row "
                     "alone*: one process's time per row for 5 gradients in a row over a shard of that size (best "
                     "of 5), as ma's M = 5 local steps read it while the worker holds a core. A shard that stays "
                     "in the cache costs less per row, which can make ma's speed-up exceed the cores.")
    return [
        f"Wall-clock training time (the CSV's `wall_s`, evaluation excluded) to a relative objective gap "
        f"(F − F*)/F* ≤ {TARGET:g}, F* from the centralised reference solver (as `recipes/straggler.py`): "
        f"`mpiexec -n K+1 dmlcli train ALGO --data {data} --test-fraction 0 --batch-size all --lam {LAM:g} "
        "--rounds R --eval-every E --progress off`, logistic, each algorithm's default step (1/L synchronous, "
        "1/(L·K) for asgd) and ma's default M = 5 local steps; K workers plus rank 0. The rounds column counts "
        "rounds (server updates for asgd) at the first evaluation within the gap. Speed-up = the same algorithm's "
        f"time with 1 worker / its time with K. Medians of {bench.repeats} interleaved repeats (every "
        f"configuration in turn, then again) on {cores} cores. {crowding}",
        "",
        *table(["algorithm", "workers", "ranks", "shard MiB", "ns/row alone", "budget R (E)", "rounds to gap", "wall_s to gap",
                "speed-up vs 1 worker"], rows, align="lrrrrrrrr"),
    ]
