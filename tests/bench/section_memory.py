"""Section 5: the peak resident memory of each rank against the data it holds, for a file-backed
dense set of 10⁶ × 100 (NPZ) and a sparse LIBSVM file of similar size. The manifest records both per
rank (`memory.peak_rss_mib`, `memory.data_mib`); the interpreter's baseline is the same command's
peak on a set of 100 rows. The target (issue 8): peak ≤ 1.5 × data + baseline on every worker."""

from __future__ import annotations

import json

from common import Bench, table

TITLE = "5. Memory"
WORKERS = 4


def _memory(bench: Bench, data: str) -> dict:
    out = bench.out_path("memory")
    bench.run([bench.dmlcli(), "train", "ssgd", "--data", data, "--workers", str(WORKERS), "--rounds", "2",
               "--progress", "off", "--out", out])
    with open(out.removesuffix(".csv") + ".json") as handle:
        return json.load(handle)["memory"]


def run(bench: Bench) -> list[str]:
    import bench_files

    rows_dense = 10_000 if bench.quick else 1_000_000
    # (label, file, the small set of the same kind whose peak is the baseline: sparse runs import scipy.sparse)
    sets = [(f"dense NPZ {rows_dense:,} × 100", bench_files.npz_file(rows_dense, 100, sparse=False),
             "synthetic:n=100,d=100,seed=1")]
    if not bench.quick:
        sets.append(("LIBSVM 200,000 × 2,000, 30 nonzeros a row", bench_files.libsvm_file(),
                     "synthetic:n=100,d=2000,seed=1,sparse=1"))
    rows = []
    for label, path, small in sets:
        baseline = _memory(bench, small)["peak_rss_mib"]
        memory = _memory(bench, path)
        for rank, (peak, data) in enumerate(zip(memory["peak_rss_mib"], memory["data_mib"])):
            over = peak - baseline[rank]
            rows.append([label if rank == 0 else "", rank, f"{data:,.1f}", f"{peak:,.1f}", f"{baseline[rank]:,.1f}",
                         f"{over / data:.2f}" if data else "—"])
    intro = [f"`dmlcli train ssgd --data FILE --workers {WORKERS} --rounds 2` (one run each). *Data* is the training "
             "and test rows the rank holds (CSR counts data, indices and row pointers); *baseline* is the same rank's "
             "peak on 100 synthetic rows of the same kind (`synthetic:n=100,d=100`, or sparse with d = 2,000: a sparse "
             "run imports scipy.sparse); the LIBSVM run reads a warm parse cache, whose memory-mapped pages count as "
             "resident; the last column is (peak − baseline) / data. Rank 0 holds no rows: its "
             "peak is what reading the file's labels and row index costs it.", ""]
    header = ["data set", "rank", "data MiB", "peak RSS MiB", "baseline MiB", "(peak − baseline) / data"]
    return intro + table(header, rows)
