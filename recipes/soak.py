"""The soak: many seeded runs of the asynchronous algorithms under random delay models, dropout,
crashes and hangs, on 2-6 ranks; every run must end with the exit code its case predicts, with a
manifest that agrees, and within a deadline (nothing hangs). `make soak` runs 200 cases and writes
a table of them; tests/test_soak.py runs a slice.

Each case is drawn from its own seed (case i: seed i), so a failing case is remade alone with
`python recipes/soak.py --first I --cases 1`. Cases alternate between dmlcli's own launcher
(`dmlcli train --workers K`) and a plain `mpiexec -n K+1 dmlcli train`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from experiment import tool, write_table  # noqa: E402

# The server's algorithms can go on without a failed worker; the others end at any failure.
SERVED = ("asgd", "ssp", "aeasgd", "async-admm")
ALGORITHMS = (*SERVED, "dpsgd", "hogwild")
STALL_TIMEOUT_S = 3.0  # far above any step here (the slowest: a 5x straggler's ms-long step)
DEADLINE_S = 90.0  # a case still running after this has hung
ROUNDS = 200
# hogwild's updates are each worker's own steps, racing: a slowed worker may take only a few of 200 before the
# others end the run, and rank 0 looks at the counts every 2 ms, so its run is longer and rank 0's crash early.
HOGWILD_ROUNDS, HOGWILD_LOOKS = 20000, 20


@dataclass(frozen=True)
class Case:
    seed: int
    algorithm: str
    workers: int
    options: tuple[str, ...]
    crash: str | None  # RANK@STEP or RANK@STEP:hang
    on_failure: str
    launcher: str  # "dmlcli" (its own launcher) or "mpiexec"

    @property
    def expected_exit(self) -> int:
        if self.crash is None:
            return 0
        rank = int(self.crash.split("@")[0])
        if self.crash.endswith(":hang") or rank == 0:
            return 1
        goes_on = self.algorithm in (*SERVED, "dpsgd") and self.on_failure == "continue" and self.workers > 1
        return 0 if goes_on else 1

    @property
    def expected_status(self) -> str:
        return "completed" if self.expected_exit == 0 else "failed"

    def describe(self) -> str:
        return " ".join((self.algorithm, f"K={self.workers}", *self.options, *(("--crash", self.crash) if self.crash else ()),
                         "--on-failure", self.on_failure, f"({self.launcher})"))


def draw(seed: int) -> Case:
    """Case `seed`: an algorithm, 1-5 workers, a delay model, maybe dropout, maybe a crash or a hang."""
    rng = random.Random(seed)
    algorithm = rng.choice(ALGORITHMS)
    workers = rng.randint(2 if algorithm == "dpsgd" else 1, 5)
    options = []
    delay = rng.choice([None, "const", "exp", "lognormal", "straggler"])
    if delay == "const":
        options += ["--delay", "const:" + ",".join(str(rng.choice([1, 1.5, 2, 3])) for _ in range(workers))]
    elif delay == "exp":
        options += ["--delay", f"exp:{rng.choice([0.001, 0.003])}"]
    elif delay == "lognormal":
        options += ["--delay", "lognormal:-7,0.5"]
    elif delay == "straggler":
        stragglers = rng.randint(1, max(1, workers // 2))
        options += ["--delay", f"straggler:{stragglers / workers:g},{rng.choice([2, 5])}"]
    if algorithm in ("asgd", "ssp", "aeasgd") and rng.random() < 0.4:
        options += ["--dropout", str(rng.choice([0.1, 0.3]))]
    crash = None
    if rng.random() < 0.5:
        rank = rng.randint(0, workers)
        # A worker of the server takes about ROUNDS/K steps, fewer when slowed: step 3 always comes.
        step = rng.randint(1, 3) if rank else rng.randint(1, ROUNDS // 2)
        if algorithm == "hogwild" and rank == 0:
            step = 1 + step % HOGWILD_LOOKS
        crash = f"{rank}@{step}" + (":hang" if rng.random() < 0.3 else "")
    return Case(seed, algorithm, workers, tuple(options), crash, rng.choice(["abort", "continue"]),
                "dmlcli" if seed % 2 == 0 else "mpiexec")


def run(case: Case, directory: str) -> dict:
    """Run one case; return what happened and whether it is what the case predicts."""
    out = os.path.join(directory, f"case-{case.seed}.csv")
    rounds = HOGWILD_ROUNDS if case.algorithm == "hogwild" else ROUNDS
    args = ["train", case.algorithm, "--rounds", str(rounds), "--seed", str(case.seed), "--progress", "off",
            "--stall-timeout", str(STALL_TIMEOUT_S), "--on-failure", case.on_failure, "--out", out, *case.options,
            *(("--crash", case.crash) if case.crash else ())]
    if case.launcher == "dmlcli":
        command = [tool("dmlcli"), *args, "--workers", str(case.workers)]
    else:
        command = [tool("mpiexec"), "-n", str(case.workers + 1), tool("dmlcli"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE_S, env=env)
        code, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired:
        code, stderr = None, "hung"
    elapsed = time.monotonic() - started
    try:
        with open(out.removesuffix(".csv") + ".json") as handle:
            status = json.load(handle)["status"]
    except (OSError, ValueError, KeyError):
        status = None
    problems = []
    if code != case.expected_exit:
        problems.append(f"exit {code}, expected {case.expected_exit}")
    if status != case.expected_status:
        problems.append(f"manifest {status}, expected {case.expected_status}")
    if case.crash and code == 1:
        rank = case.crash.split("@")[0]
        if f"rank {rank} " not in stderr:
            problems.append(f"no line names rank {rank}")
    return {"case": case, "exit": code, "status": status, "seconds": elapsed, "problems": problems,
            "stderr": stderr.strip().splitlines()[-3:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--first", type=int, default=0, help="seed of the first case")
    parser.add_argument("--out", default="runs/soak.md")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="dmlcli-soak-") as directory:
        for seed in range(args.first, args.first + args.cases):
            result = run(draw(seed), directory)
            results.append(result)
            verdict = "ok" if not result["problems"] else "; ".join(result["problems"])
            print(f"{seed:4d} {result['seconds']:5.1f} s exit {result['exit']}  {result['case'].describe()}  {verdict}",
                  flush=True)
    bad = [r for r in results if r["problems"]]
    counts: dict[tuple, int] = {}
    for r in results:
        key = (r["case"].algorithm, r["exit"])
        counts[key] = counts.get(key, 0) + 1
    lines = [f"# Soak: {len(results)} cases (seeds {args.first}-{args.first + len(results) - 1}), "
             f"{len(bad)} not as predicted, longest {max(r['seconds'] for r in results):.1f} s",
             "", "| algorithm | exit 0 | exit 1 | other |", "|---|---|---|---|"]
    for algorithm in ALGORITHMS:
        other = sum(n for (name, code), n in counts.items() if name == algorithm and code not in (0, 1))
        lines.append(f"| {algorithm} | {counts.get((algorithm, 0), 0)} | {counts.get((algorithm, 1), 0)} | {other} |")
    for r in bad:
        lines.append(f"\n- case {r['case'].seed}: {r['case'].describe()}: {'; '.join(r['problems'])}: {r['stderr']}")
    write_table(lines, args.out)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
