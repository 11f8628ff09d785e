"""A worker whose step failed and that leaves the training alive (the parameter server's workers,
dpsgd with --on-failure continue): the one line it prints and the report it keeps."""

from __future__ import annotations

import sys


def described(error: BaseException) -> str:
    """TYPE: MESSAGE (the type again when the message is empty), as every failure line says it."""
    return f"{type(error).__name__}: {str(error) or type(error).__name__}"


def failure_line(rank: int, error: BaseException) -> str:
    """The one stderr line of a rank that failed (runtime.launch prints it before aborting)."""
    return f"dmlcli: rank {rank} failed: {described(error)}"


def report_failure(ctx, error: Exception, step: int) -> None:
    """Say so on stderr, as the launcher would for a rank that aborts, and keep the report in
    ctx.failure (the end-of-run gather takes it to the manifest's `failures`)."""
    goes_on = "; the run goes on without it" if ctx.config.on_failure == "continue" else ""
    print(failure_line(ctx.rank, error) + goes_on, file=sys.stderr, flush=True)
    ctx.failure = f"rank {ctx.rank} failed at step {step}: {described(error)}"
