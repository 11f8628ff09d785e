"""What a run costs its processes: when the command started, each rank's peak resident memory and
the bytes of data it holds. Rank 0 puts them in the manifest (`timing`, `memory`), so a sweep of
short runs can see what start-up costs it and a large data set what each rank keeps."""

from __future__ import annotations

import os
import resource
import sys
import time

from dmlcli.sparse import issparse

# The launcher passes its own start to the ranks, so start-up counts from the user's command.
COMMAND_STARTED_VARIABLE = "DMLCLI_COMMAND_STARTED"
MIB = 2.0**20


def process_started_at() -> float | None:
    """When this process started, in seconds since the epoch; None where unknown. Linux gives the
    start in clock ticks since boot (/proc/self/stat, field 22) and the time since boot to 10 ms
    (/proc/uptime): their difference is the process's age (the boot time itself is in whole seconds)."""
    try:
        with open("/proc/self/stat") as handle:
            after_name = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return time.time() - (uptime - int(after_name[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def command_started_at() -> float:
    """When the user's command started: the launcher's start when dmlcli launched itself, else this
    process's start (under mpirun, rank 0 starts moments after mpirun), else now."""
    given = os.environ.get(COMMAND_STARTED_VARIABLE)
    try:
        return float(given)
    except (TypeError, ValueError):
        return process_started_at() or time.time()


def peak_rss_mib() -> float:
    """This process's peak resident set size so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB on Linux


def data_mib(shards, test) -> float:
    """The bytes of the training rows (every client's shard) and test rows this rank holds."""
    arrays = [part for shard in shards for part in (shard.X, shard.y)]
    if test is not None:
        arrays += list(test)
    return sum(_nbytes(array) for array in arrays) / MIB


def _nbytes(array) -> int:
    if issparse(array):
        return array.data.nbytes + array.indices.nbytes + array.indptr.nbytes
    return getattr(array, "nbytes", 0)
