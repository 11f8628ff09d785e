"""Section 7 of `make bench`: rows per second of dmlcli's LIBSVM, CSV and NPZ readers against the library
readers on the same files, and the whole start of a run on the large LIBSVM file, first and repeated.

Each read happens in a fresh process (this file run as a script: `python section_loading.py READER PATH`),
so nothing a previous read left in the process helps; imports happen before the clock starts on both
sides, and the process prints the seconds and a checksum of what it read (shape, stored entries, sums of
X and y), which must agree between dmlcli and the library reader, so both sides did the same work.
dmlcli's read is what a worker of a run does: `open_source(path)`, `scan()`, then `rows()` of every row.
The files come from bench_files (in the OS page cache after the first read, for both sides alike).

The LIBSVM reader keeps a parse cache (dmlcli/data/cache.py) in `$DMLCLI_CACHE_DIR`: every dmlcli command
here gets a private one in the bench's scratch directory, so the user's cache is neither used nor touched,
and a "first" read or run starts with it deleted, a "repeated" one follows another with it warm. Whether
the reader kept anything is measured (the directory's size after a first read), not assumed, so the
section reads the same with or without a cache, and for the CSV and NPZ readers it is only a check.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import bench_files
import numpy as np
from common import interleaved, table

TITLE = "7. Data loading"
WORKERS = 4  # the start-up row: `dmlcli train ssgd --rounds 1 --workers 4`, as issue 8 measured it
# Every checksum must agree to this relative tolerance (sums of 10⁷ float64 values in different orders).
CHECK_TOLERANCE = 1e-9


def _read(reader: str, path: str) -> dict:
    """Read `path` with `reader` in this process; the seconds taken and a checksum of what was read."""
    import scipy.sparse as sp  # every side builds or returns scipy matrices: its import is outside the clock

    if reader == "dmlcli":
        from dmlcli.data import open_source

        started = time.perf_counter()
        source = open_source(path)
        info = source.scan()
        X, y = source.rows(np.arange(info.n)), info.y
    elif reader == "load_svmlight_file":
        from sklearn.datasets import load_svmlight_file

        started = time.perf_counter()
        X, y = load_svmlight_file(path)
    elif reader == "numpy.loadtxt":
        started = time.perf_counter()
        table_read = np.loadtxt(path, delimiter=",")
        X, y = table_read[:, 1:], table_read[:, 0]
    elif reader == "numpy.load":
        started = time.perf_counter()
        with np.load(path) as archive:
            if "X" in archive:
                X, y = archive["X"], archive["y"]
            else:
                X = sp.csr_matrix((archive["data"], archive["indices"], archive["indptr"]),
                                  shape=tuple(archive["shape"]))
                y = archive["y"]
    else:
        raise SystemExit(f"unknown reader {reader!r}")
    # The sums are inside the clock: a reader handing back memory-mapped views would otherwise read nothing
    # while timed. Summing 10⁷ numbers takes milliseconds, the same on both sides.
    x_sum, y_sum = float(X.sum()), float(np.sum(y))
    seconds = time.perf_counter() - started
    stored = int(X.nnz) if hasattr(X, "nnz") else int(X.size)
    return {"seconds": seconds, "shape": list(X.shape), "stored": stored, "x_sum": x_sum, "y_sum": y_sum}


def _parse_cache(bench) -> str:
    """The private parse cache directory of this bench's dmlcli commands."""
    return os.path.join(bench.scratch, "parse-cache")


def _dmlcli_env(bench) -> dict:
    return {"DMLCLI_CACHE_DIR": _parse_cache(bench)}


def _clear_parse_cache(bench) -> None:
    """Delete the private parse cache, so that the next dmlcli read or run is a first one."""
    shutil.rmtree(_parse_cache(bench), ignore_errors=True)


def _parse_cache_mb(bench) -> float:
    """MB the reader has kept in the private parse cache."""
    return sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(_parse_cache(bench))
               for name in names) / 1e6


def _fresh_read(bench, reader: str, path: str, checks: dict, first: bool = False) -> float:
    """Seconds of one read in a new process (`first`: with the parse cache cleared); its checksum is kept
    under `reader` to compare the sides."""
    if first:
        _clear_parse_cache(bench)
    environment = _dmlcli_env(bench) if reader == "dmlcli" else None
    result = json.loads(bench.run([sys.executable, __file__, reader, path], env=environment).strip().splitlines()[-1])
    checks.setdefault(reader, result)
    return result["seconds"]


def _same_read(dmlcli: dict, library: dict, what: str) -> None:
    """Stop the bench if the two readers did not read the same numbers."""
    same = (dmlcli["shape"] == library["shape"] and dmlcli["stored"] == library["stored"]
            and all(abs(dmlcli[key] - library[key]) <= CHECK_TOLERANCE * max(1.0, abs(library[key]))
                    for key in ("x_sum", "y_sum")))
    if not same:
        raise SystemExit(f"loading bench: dmlcli and the library read {what} differently: {dmlcli} vs {library}")


def _files(quick: bool) -> list[tuple[str, str, str]]:
    """(format, path, library reader) of every file measured; quick: a fiftieth of the rows (files of about
    1.5 MB, still above the size the parse cache starts at)."""
    scale = 50 if quick else 1
    return [("LIBSVM", bench_files.libsvm_file(200_000 // scale, 2_000, 30), "load_svmlight_file"),
            ("CSV (dense)", bench_files.csv_file(100_000 // scale, 100), "numpy.loadtxt"),
            ("NPZ (dense)", bench_files.npz_file(100_000 // scale, 100, sparse=False), "numpy.load"),
            ("NPZ (CSR)", bench_files.npz_file(200_000 // scale, 2_000, sparse=True), "numpy.load")]


def _start_seconds(bench, path: str, first: bool) -> float:
    """Wall seconds of the whole `dmlcli train ssgd --rounds 1 --workers 4` on `path`, from the command to its
    end (`first`: with the parse cache cleared)."""
    if first:
        _clear_parse_cache(bench)
    command = [bench.dmlcli(), "train", "ssgd", "--data", path, "--rounds", "1", "--workers", str(WORKERS),
               "--progress", "off", "--out", bench.out_path("loading-start")]
    return bench.timed(command, env=_dmlcli_env(bench))[0]


def _row(what: str, path: str, n: int, dmlcli_s: float, library_s: float) -> list[str]:
    return [what, f"{os.path.getsize(path) / 1e6:.1f}", f"{n:,}", f"{dmlcli_s:.3f}", f"{library_s:.3f}",
            f"{n / dmlcli_s:,.0f}", f"{n / library_s:,.0f}", f"{dmlcli_s / library_s:.2f}"]


def run(bench) -> list[str]:
    rows = []
    cached = []
    files = _files(bench.quick)
    for form, path, library in files:
        printed = len(rows)
        checks: dict = {}
        first_s, repeated_s, library_s = interleaved(
            bench.repeats,
            lambda path=path, checks=checks: _fresh_read(bench, "dmlcli", path, checks, first=True),
            lambda path=path, checks=checks: _fresh_read(bench, "dmlcli", path, checks),
            lambda path=path, library=library, checks=checks: _fresh_read(bench, library, path, checks))
        _same_read(checks["dmlcli"], checks[library], path)
        n = checks["dmlcli"]["shape"][0]
        cache_mb = _parse_cache_mb(bench)
        if cache_mb:
            cached.append(f"{form} {cache_mb:.0f} MB")
            rows.append(_row(f"{form} against `{library}`, first read", path, n, first_s, library_s))
            rows.append(_row(f"{form} against `{library}`, repeated read", path, n, repeated_s, library_s))
        else:  # nothing cached: a repeated read is one more first read
            rows.append(_row(f"{form} against `{library}`", path, n, first_s, library_s))
        for row in rows[printed:]:
            print(*row, sep=" | ", flush=True)

    form, path, library = files[0]
    checks = {}
    first_s, repeated_s, library_s = interleaved(bench.repeats,
                                                 lambda: _start_seconds(bench, path, first=True),
                                                 lambda: _start_seconds(bench, path, first=False),
                                                 lambda: _fresh_read(bench, library, path, checks))
    n = checks[library]["shape"][0]
    for label, seconds in (("first run", first_s), ("repeated run", repeated_s)):
        rows.append(_row(f"{form}: whole `dmlcli train ssgd --rounds 1 --workers {WORKERS}`, {label}, against "
                         f"`{library}`", path, n, seconds, library_s))
        print(*rows[-1], sep=" | ", flush=True)

    shapes = ", ".join(f"{form} {os.path.basename(path)}" for form, path, _ in files)
    caching = (f"dmlcli's parse cache held {', '.join(cached)} after a first read; \"first read\" starts with "
               "it deleted, \"repeated read\" follows a read with it warm. " if cached else "")
    caching += ("A format with one row kept nothing in the cache: its row is the reads with the cache just deleted."
                if len(cached) < len(files) else "")
    return [
        f"Seconds to read every row of a file and sum its values, in a fresh process (imports done before the "
        "clock starts): dmlcli's "
        "reader as a worker of a run uses it (`open_source(path)`, `scan()`, `rows()` of all rows) against the "
        "library reader of that format on the same file (`sklearn.datasets.load_svmlight_file`; `numpy.loadtxt` "
        "with `delimiter=','`; `numpy.load` and, for CSR parts, `scipy.sparse.csr_matrix`). Both sides' shape, "
        "stored entries and sums of X and y agree in every row of the table. Files from `tests/bench/bench_files.py` "
        f"(seeded; 30 nonzeros a row in the sparse ones): {shapes}; in the OS page cache for both sides. "
        f"{caching} The last two rows time the whole command `dmlcli train ssgd --data FILE --rounds 1 --workers "
        f"{WORKERS} --progress off` ({WORKERS + 1} ranks on {os.cpu_count()} cores), from the command to its end, "
        "against `load_svmlight_file` reading the same file in one process; \"first run\" with the parse cache "
        "deleted, \"repeated run\" right after another run on the file. dmlcli commands use a private "
        f"`DMLCLI_CACHE_DIR`. Medians of {bench.repeats} interleaved repeats; ratio = dmlcli s / library s "
        "(below 1: dmlcli is faster).",
        "",
        *table(["format", "file MB", "rows", "dmlcli s", "library s", "dmlcli rows/s", "library rows/s", "ratio"],
               rows),
    ]


if __name__ == "__main__":
    print(json.dumps(_read(sys.argv[1], sys.argv[2])))
