"""Stragglers: wall-clock training time to a relative gap of 1e-3, with one worker 5x slower among 4
and with none, for ssgd, ssgd with a backup worker, ssp (s = 3), asgd and aeasgd (issue 6's table).

    make straggler      # = .venv/bin/python recipes/straggler.py --out runs/straggler.md --runs runs/straggler/,
                        #   then dmlcli plot runs/straggler/ --x wall_s --y gap … -o docs/straggler.png
    python recipes/straggler.py --seeds 1 --scale 0.1 --out /tmp/s.md --runs /tmp/s/   # a quick check (~35 s)

Each run is one `mpiexec -n 5 dmlcli train ALGO --data DATA --test-fraction 0 --batch-size all --lam 0.01
--rounds R --eval-every E --progress off --seed S --out RUNS/<name>.csv [--delay const:1,1,1,5] …`
(4 workers) with the mpiexec and dmlcli beside this Python. The optimum F* comes from the centralised
reference solver on the same training set (dmlcli.problems.reference); with --test-fraction 0 the training
set is the whole synthetic set whatever the seed, so every run has the same F*. The table gives, per
configuration, the CSV's wall_s (training time, evaluation excluded) at the first evaluated row with
(F − F*)/F* ≤ 1e-3, the rounds (server updates for asynchronous algorithms, clocks for ssp) and worker
gradients there, and the gap at the end of the budget. The configurations run interleaved, seed by seed,
and each cell is the median over the seeds with the range in brackets. The CSVs stay in RUNS for
`dmlcli plot`.
"""

import argparse
import csv
import datetime
import glob
import os
import platform
import statistics
import subprocess
import sys
import time

from experiment import optimum, tool, write_table

DATA = "synthetic:n=40000,d=200,seed=1"
TARGET = 1e-3
DELAYS = (("none", []), ("const:1,1,1,5", ["--delay", "const:1,1,1,5"]))
# (label, algorithm, options, budget in rounds, evaluated every): full local gradients, each algorithm's
# default step (1/L synchronous, 1/(L·K) asynchronous). ssgd and ssp count rounds and clocks (one gradient
# of every worker); asgd counts server updates (one gradient each), so it gets 8x ssgd's rounds, twice
# ssgd's gradients; aeasgd (τ = 1) counts exchanges and needs several thousand (README, ssp and aeasgd).
CONFIGURATIONS = (
    ("ssgd", "ssgd", [], 150, 2),
    ("ssgd --backup 1", "ssgd", ["--backup", "1"], 150, 2),
    ("ssp --staleness-bound 3", "ssp", ["--staleness-bound", "3"], 150, 2),
    ("asgd", "asgd", [], 1200, 8),
    ("aeasgd", "aeasgd", [], 4000, 10),
)


def one_run(algorithm: str, options: list[str], rounds: int, every: int, seed: int, out: str, best: float,
            timeout: float, scale: float) -> dict:
    rounds = max(every, int(rounds * scale))
    command = [tool("mpiexec"), "-n", "5", tool("dmlcli"), "train", algorithm, "--data", DATA, "--test-fraction", "0",
               "--batch-size", "all", "--lam", "0.01", "--rounds", str(rounds), "--eval-every", str(every),
               "--progress", "off", "--seed", str(seed), "--out", out, "--force", *options]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"))
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 3):
        return {"status": f"exit {done.returncode}: {done.stderr.strip()[-200:]}", "seconds": seconds}
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    gaps = [(float(row["objective"]) - best) / best for row in rows]
    hit = next((i for i, gap in enumerate(gaps) if gap <= TARGET), None)
    result = {"status": "diverged" if done.returncode == 3 else "completed", "seconds": seconds,
              "reached": hit is not None, "final_gap": gaps[-1], "final_round": int(rows[-1]["round"]),
              "final_wall": float(rows[-1]["wall_s"])}
    if hit is not None:
        result.update(wall=float(rows[hit]["wall_s"]), round=int(rows[hit]["round"]),
                      updates=int(rows[hit]["updates"]))
    return result


def summary(values: list[float], form: str) -> str:
    if not values:
        return "–"
    text = format(statistics.median(values), form)
    if len(values) > 1:
        text += f" ({format(min(values), form)}–{format(max(values), form)})"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/straggler.md")
    parser.add_argument("--runs", default="runs/straggler/", help="directory kept for the CSVs and manifests")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every budget (a quick check: 0.1)")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    os.makedirs(args.runs, exist_ok=True)
    for stale in glob.glob(os.path.join(args.runs, "*.csv")) + glob.glob(os.path.join(args.runs, "*.json")):
        os.remove(stale)
    best = optimum(data=DATA, lam=0.01, test_fraction=0.0)
    print(f"F* = {best:.12g}", flush=True)
    results: dict[tuple[str, str], list[dict]] = {}
    started = time.perf_counter()
    for seed in range(args.seeds):
        for delay, delay_options in DELAYS:
            for label, algorithm, options, rounds, every in CONFIGURATIONS:
                name = f"{label}-{delay}-s{seed}".replace(" --", "-").replace(" ", "-").replace(":", "").replace(",", "")
                out = os.path.join(args.runs, name + ".csv")
                result = one_run(algorithm, options + delay_options, rounds, every, seed, out, best, args.timeout,
                                 args.scale)
                print(seed, delay, label, result, flush=True)
                results.setdefault((delay, label), []).append(result)
    total = time.perf_counter() - started
    budgets = ", ".join(f"{label} {max(every, int(rounds * args.scale))} (every {every})"
                        for label, _, _, rounds, every in CONFIGURATIONS)
    lines = [f"Wall-clock training time to (F − F*)/F* ≤ {TARGET:g}: `{DATA}`, `--test-fraction 0`, logistic, "
             f"λ = 0.01 (F* = {best:.12g}), 4 workers under `mpiexec -n 5` (5 ranks on {os.cpu_count()} cores: "
             "oversubscribed), full local gradients, each algorithm's default step; the straggler is worker 4 "
             "(`--delay const:1,1,1,5`). Budgets in rounds (server updates for asgd, exchanges for aeasgd, clocks "
             f"for ssp) and evaluation interval: {budgets}. Seeds 0–{args.seeds - 1}, interleaved; median (range).",
             f"Measured {datetime.date.today()} on {platform.node()} ({os.cpu_count()} cores), "
             f"`python recipes/straggler.py --seeds {args.seeds} --scale {args.scale:g}` ({total:.0f} s in all).", "",
             "| `--delay` | configuration | reached | wall_s to 1e-3 | rounds there | worker gradients there | "
             "gap at the end (rounds, wall_s) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for delay, _ in DELAYS:
        for label, *_ in CONFIGURATIONS:
            runs = results[(delay, label)]
            failed = [run["status"] for run in runs if "final_gap" not in run]
            if failed:
                lines.append(f"| {delay} | {label} | {failed[0]} | | | | |")
                continue
            hits = [run for run in runs if run["reached"]]
            lines.append(
                f"| {delay} | {label} | {len(hits)}/{len(runs)} | {summary([run['wall'] for run in hits], '.3f')} | "
                f"{summary([run['round'] for run in hits], '.0f')} | {summary([run['updates'] for run in hits], '.0f')} | "
                f"{summary([run['final_gap'] for run in runs], '.1e')} ({runs[0]['final_round']}, "
                f"{summary([run['final_wall'] for run in runs], '.2f')} s) |")
    write_table(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
