"""Seed 004: ssgd, ma, bmuf and easgd on breast_cancer, as in the PySpark teaching repo's experiment
(orion-orion/Distributed-ML-PySpark, blog "模型平均MA与弹性平均EASGD"), over seeds 0–9, on standardised
and on raw features, beside the test accuracies the seed reports.

    make seed004      # = .venv/bin/python recipes/seed004.py --out runs/seed004.md

Each run is `dmlcli train ALGO --recipe recipes/seed004-ALGO.toml --set seed=S [--set standardize=false]
--progress off --out <tmpdir>/` with the dmlcli beside this Python. The table reports the last CSV row's
test_metric (accuracy) and objective; a run that diverged (exit 3, manifest status `diverged`) or failed is
counted and left out of the means.
"""

import argparse
import csv
import datetime
import glob
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
ALGORITHMS = ("ssgd", "ma", "bmuf", "easgd")
# The seed's reported final test accuracies (raw features, one run each, fixed split random_state=0).
SEED_FIGURES = {"ssgd": 0.9298, "ma": 0.8538, "bmuf": 0.9298, "easgd": 0.9298}
FEATURES = (("standardised", []), ("raw", ["--set", "standardize=false"]))


def dmlcli() -> str:
    return os.path.join(os.path.dirname(sys.executable), "dmlcli")


def one_run(algorithm: str, extra: list[str], seed: int, timeout: float) -> dict:
    """Run once into a fresh directory; return status, accuracy and objective of the last CSV row."""
    with tempfile.TemporaryDirectory(prefix="seed004-") as tmp:
        recipe = os.path.join(HERE, f"seed004-{algorithm}.toml")
        command = [dmlcli(), "train", algorithm, "--recipe", recipe, "--set", f"seed={seed}", *extra,
                   "--progress", "off", "--out", tmp + "/"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "code": None}
        manifests = glob.glob(os.path.join(tmp, "*.json"))
        csvs = glob.glob(os.path.join(tmp, "*.csv"))
        status = json.loads(Path(manifests[0]).read_text()).get("status") if manifests else None
        result = {"status": status or f"exit {done.returncode}", "code": done.returncode}
        if done.returncode not in (0, 3):
            result["stderr"] = done.stderr.strip().splitlines()[-1:] if done.stderr else []
        if csvs:
            with open(csvs[0], newline="") as handle:
                rows = list(csv.DictReader(handle))
            if rows:
                result["accuracy"] = float(rows[-1]["test_metric"])
                result["objective"] = float(rows[-1]["objective"])
        return result


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/seed004.md", help="markdown file to write")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per run")
    args = parser.parse_args()

    started = time.monotonic()
    lines = []
    for algorithm in ALGORITHMS:
        for features, extra in FEATURES:
            results = []
            for seed in range(args.seeds):
                result = one_run(algorithm, extra, seed, args.timeout)
                results.append(result)
                print(f"{algorithm:5s} {features:12s} seed {seed}: {result['status']}"
                      f" acc={result.get('accuracy', float('nan')):.4f}", file=sys.stderr, flush=True)
            good = [r for r in results if r["status"] == "completed" and "accuracy" in r]
            diverged = sum(r["status"] == "diverged" for r in results)
            failed = len(results) - len(good) - diverged
            cell = f"{mean_std([r['accuracy'] for r in good])} (n = {len(good)})"
            notes = []
            if diverged:
                notes.append(f"{diverged} of {len(results)} diverged")
            if failed:
                notes.append(f"{failed} of {len(results)} failed: "
                             + ", ".join(sorted({r['status'] for r in results if r not in good
                                                 and r['status'] != 'diverged'})))
            if notes:
                cell += f"; {'; '.join(notes)}, mean over the rest"
            objective = f"{statistics.mean(r['objective'] for r in good):.4g}" if good else "—"
            figure = f"{SEED_FIGURES[algorithm]:.4f}" if features == "raw" else "— (seed: raw only)"
            lines.append(f"| {algorithm} | {features} | {cell} | {figure} | {objective} |")
    elapsed = time.monotonic() - started

    python = os.path.relpath(sys.executable) if not os.path.relpath(sys.executable).startswith("..") \
        else sys.executable
    remake = shlex.join([python, os.path.relpath(os.path.abspath(__file__)), *sys.argv[1:]])
    text = "\n".join([
        "# Seed 004: model averaging, BMUF and EASGD on breast_cancer, beside the seed's figures",
        "",
        f"Machine `{platform.node()}` ({os.cpu_count()} CPUs), {datetime.date.today().isoformat()}, "
        f"{args.seeds} seeds (0–{args.seeds - 1}) × 4 algorithms × 2 feature sets in {elapsed:.0f} s. "
        f"Remake: `{remake}` (or `make seed004`).",
        "",
        "Recipes `recipes/seed004-{ssgd,ma,bmuf,easgd}.toml`: 30 % test split (drawn with each seed), 4 workers, "
        "η = 0.1, batch 10 per worker, 300 rounds, logistic loss, no regulariser, intercept; ma/bmuf M = 5, "
        "bmuf μ = 0.9, ζ = 0.1, classic (not Nesterov) block momentum; easgd ρ = 0.1 (β = 0.04), τ = 1. "
        "Accuracy and objective are the last evaluation's (round 300); ± is the sample standard deviation over "
        "seeds; n counts the completed runs, and diverged or failed runs are left out of the means. The seed's "
        "figures are single runs on raw features with one fixed split (random_state = 0) and a random start.",
        "",
        "| algorithm | features | dmlcli test accuracy (mean ± std, n) | seed's figure | final objective (mean) |",
        "|---|---|---|---:|---:|",
        *lines,
        "",
    ])
    print(text)
    if os.path.dirname(args.out):
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        handle.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
