"""A worker whose step failed and that leaves the training alive (the parameter server's workers,
dpsgd with --on-failure continue): the one line it prints and the report it keeps."""

from __future__ import annotations

import sys


def report_failure(ctx, error: Exception, step: int) -> None:
    """Say so on stderr, as the launcher would for a rank that aborts, and keep the report in
    ctx.failure (the end-of-run gather takes it to the manifest's `failures`)."""
    goes_on = "; the run goes on without it" if ctx.config.on_failure == "continue" else ""
    detail = str(error) or type(error).__name__
    print(f"dmlcli: rank {ctx.rank} failed: {type(error).__name__}: {detail}{goes_on}", file=sys.stderr, flush=True)
    ctx.failure = f"rank {ctx.rank} failed at step {step}: {type(error).__name__}: {detail}"
