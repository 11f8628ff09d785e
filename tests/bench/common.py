"""What every section of `make bench` shares: running a command the way a user would (one BLAS
thread per process, a timeout so nothing hangs), reading a run's last CSV row, and medians over
interleaved repeats, so machine noise hits both sides of a ratio alike."""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class Bench:
    """One `make bench` run: where scratch files go, how many repeats, and whether to use the small grid."""

    scratch: str
    repeats: int = 3
    quick: bool = False  # a small grid that only checks a section still runs (tests, smoke)
    timeout_s: float = 900.0

    def run(self, command: list[str], env: dict | None = None) -> str:
        """Run a command to its end and return its stdout; a failure stops the benchmark with its stderr."""
        environment = dict(os.environ, **ONE_THREAD, **(env or {}))
        done = subprocess.run([str(part) for part in command], capture_output=True, text=True,
                              timeout=self.timeout_s, env=environment)
        if done.returncode != 0:
            raise SystemExit(f"benchmark command failed ({done.returncode}): {' '.join(map(str, command))}\n"
                             f"{done.stderr[-4000:]}")
        return done.stdout

    def timed(self, command: list[str], env: dict | None = None) -> tuple[float, str]:
        """(wall seconds, stdout) of a command."""
        started = time.perf_counter()
        out = self.run(command, env)
        return time.perf_counter() - started, out

    def out_path(self, stem: str) -> str:
        """A fresh CSV path in the scratch directory."""
        return os.path.join(self.scratch, f"{stem}-{time.monotonic_ns()}.csv")

    def mpiexec(self, ranks: int) -> list[str]:
        return [str(BIN / "mpiexec"), "-n", str(ranks)]

    def dmlcli(self) -> str:
        return str(BIN / "dmlcli")

    def script(self, name: str) -> str:
        return str(HERE / name)


def last_row(csv_path: str) -> dict:
    with open(csv_path) as handle:
        return list(csv.DictReader(handle))[-1]


def interleaved(repeats: int, *measures):
    """Medians of each measure, called in turn `repeats` times (a, b, a, b, ...)."""
    samples = [[] for _ in measures]
    for _ in range(repeats):
        for sample, measure in zip(samples, measures):
            sample.append(measure())
    return [statistics.median(sample) for sample in samples]


def table(header: list[str], rows: list[list], align: str | None = None) -> list[str]:
    """A markdown table; columns right-aligned except the first unless `align` says ('l'/'r' per column)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |",
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]
