"""Run all ranks of a run as threads of this process (the in-process transport), for tests."""

from __future__ import annotations

import contextlib
import io
import threading

from dmlcli.comm import RankAborted
from dmlcli.comm.local import LocalHub
from dmlcli.runtime.run import CollectiveUsageError, run_rank


def run_local(config, workers: int, timeout: float = 120.0) -> int:
    """Run `config` on workers + 1 thread-ranks; return the exit code, or raise the first rank's error."""
    transports = LocalHub(workers + 1).transports()
    codes: list = [None] * len(transports)
    errors: list = [None] * len(transports)

    def rank(transport):
        try:
            codes[transport.rank] = run_rank(config, transport, summary_stream=io.StringIO())
        except RankAborted:
            pass
        except CollectiveUsageError as error:  # every rank raises it together: no abort, as under MPI
            errors[transport.rank] = error
        except BaseException as error:  # noqa: BLE001 - handed to the caller below
            errors[transport.rank] = error
            with contextlib.suppress(RankAborted):  # abort raises in the calling rank too
                transport.abort(1)

    threads = [threading.Thread(target=rank, args=(t,), daemon=True) for t in transports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"in-process run did not finish within {timeout:g} s")
    for error in errors:
        if error is not None:
            raise error
    return codes[0]
