"""Ending a stalled run (--stall-timeout S) with exit 1 and the silent ranks named, instead of hanging.

Every wait of the transport gives up once it has lasted S seconds (comm.Stalled). Then:
- The parameter server knows who is silent: it waits on every worker at once, so the workers it
  neither heard from nor holds have sent nothing for S seconds (runtime.parameter_server says so).
- In a collective nobody knows which rank has not arrived. Every rank whose wait gave up tells
  rank 0 so, point to point (TAG_STALL); rank 0 listens for S seconds
  more and names the ranks it did not hear from. A rank waiting in the same collective gives up
  within S of rank 0 (it started waiting later, never more than S later, or rank 0 would have
  been the silent one), so its note is in by then. Rank 0 raises RunStalled, and the launcher's
  abort ends every rank. A rank that is still running 2S after its note (rank 0 itself silent)
  raises RunStalled naming rank 0.
"""

from __future__ import annotations

import time

import numpy as np

from dmlcli.comm import TAG_STALL, Stalled


class RunStalled(RuntimeError):
    """The run ended because some rank sent nothing for the stall timeout (exit 1)."""


def silent_text(ranks) -> str:
    ranks = sorted(ranks)
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(str(rank) for rank in ranks)}"


def end_stalled(ctx) -> None:
    """Called on a rank whose wait gave up: find the silent ranks together, then raise RunStalled."""
    transport, timeout, step = ctx.transport, ctx.config.stall_timeout, ctx.step
    if transport.rank != 0:
        transport.isend(np.array([float(step)]), 0, TAG_STALL)
        transport.sleep_until_aborted(2 * timeout)
        raise RunStalled(f"nothing arrived for {timeout:g} s (--stall-timeout) at step {step}, and rank 0 did not "
                         f"end the run: rank 0 is silent")
    notes = {rank: np.empty(1) for rank in range(1, transport.size)}
    receives = [transport.irecv(note, rank, TAG_STALL) for rank, note in notes.items()]
    heard: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(heard) < len(notes) and time.monotonic() < deadline:
        try:
            index, _ = transport.waitany(receives, timeout=max(deadline - time.monotonic(), 1e-3))
        except Stalled:
            break
        receives[index] = None
        heard.add(index + 1)
    silent = [rank for rank in notes if rank not in heard]
    who = f"{silent_text(silent)} silent" if silent else "every rank is waiting (a message was lost)"
    raise RunStalled(f"nothing arrived for {timeout:g} s (--stall-timeout) at step {step}: {who}")
