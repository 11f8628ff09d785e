"""`make bench`: every performance figure of dmlcli, each a ratio measured in one run on one machine
(medians over interleaved repeats), written to BENCHMARKS.md with the machine, date and command.

Each section is a module `section_<name>.py` here with a TITLE and `run(bench) -> markdown lines`,
and can run alone: `make bench SECTION=startup` (or `python tests/bench/run_bench.py --section
startup`) replaces that section of BENCHMARKS.md and keeps the others.
"""

from __future__ import annotations

import argparse
import compileall
import importlib
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Bench  # noqa: E402

SECTIONS = ["overhead", "torch", "pyspark", "async", "memory", "startup", "loading", "scaling"]
TOP = "<!-- machine -->"


def machine() -> str:
    """The machine the numbers come from, as one line."""
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "?")
    except OSError:
        cpu = platform.processor() or "?"
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory = float("nan")
    from mpi4py import MPI

    library = MPI.Get_library_version().splitlines()[0].strip()
    return (f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, {library}")


def render_section(name: str, lines: list[str], seconds: float) -> str:
    module = importlib.import_module(f"section_{name}")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    body = "\n".join(lines)
    return (f"<!-- section:{name} -->\n## {module.TITLE}\n\n"
            f"Measured {stamp} on {machine()}; `make bench SECTION={name}` ({seconds:.0f} s).\n\n"
            f"{body}\n<!-- end:{name} -->\n")


def merge(existing: str, rendered: dict[str, str]) -> str:
    """BENCHMARKS.md with the rendered sections replaced (or added in SECTIONS order), the rest kept."""
    kept = {name: match.group(0) + "\n" for name in SECTIONS
            for match in [re.search(rf"<!-- section:{name} -->.*?<!-- end:{name} -->", existing, re.S)] if match}
    kept.update(rendered)
    head = ("# dmlcli benchmarks\n\nWritten by `make bench` (tests/bench/run_bench.py). Every figure is a ratio or "
            "a median measured in one run on one machine, with the date and command beside it; absolute times on "
            "shared machines are noisy, ratios less so.\n\n")
    return head + "\n".join(kept[name] for name in SECTIONS if name in kept)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", action="append", choices=SECTIONS,
                        help="run only this section (repeatable); default: all")
    parser.add_argument("--out", default="BENCHMARKS.md")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small grids: check that the sections run")
    args = parser.parse_args()
    names = args.section or SECTIONS
    out = Path(args.out)
    # Measure dmlcli as pip installs it, byte-compiled: an editable install under PYTHONDONTWRITEBYTECODE=1
    # (set on the development machine) otherwise compiles every module in every rank of every run, which
    # cost a 4-worker start-up about 0.35 s (1.63 s against 1.24 s, medians of 4 interleaved; 2026-11-25).
    compileall.compile_dir(str(Path(__file__).resolve().parents[2] / "dmlcli"), quiet=1)
    rendered = {}
    with tempfile.TemporaryDirectory(prefix="dmlcli-bench-") as scratch:
        bench = Bench(scratch=scratch, repeats=1 if args.quick else args.repeats, quick=args.quick)
        for name in names:
            module = importlib.import_module(f"section_{name}")
            print(f"== {module.TITLE}", flush=True)
            started = time.perf_counter()
            lines = module.run(bench)
            rendered[name] = render_section(name, lines, time.perf_counter() - started)
            print("\n".join(lines), flush=True)
            # Written after each section, so a long bench that stops keeps what it measured.
            out.write_text(merge(out.read_text() if out.exists() else "", rendered))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
