"""`dmlcli` with ssp's worker steps delayed and its server updates logged, for tests under mpiexec:

    mpiexec -n P python tests/ssp_clock_log.py LOG.json SEED train ssp ...

Worker k sleeps a seeded uniform 0 to (k + 1)·0.4 ms before each step (Random(SEED·100 + k)); rank 0
writes every server update as [worker, clocks before, staleness, held, advanced, clocks after] to
LOG.json when the run ends. The runtime has no delay option of its own here: this wraps the
algorithm the run builds, as tests/test_ssp.py does in-process."""

import json
import random
import sys
import time

from dmlcli.cli import main
from dmlcli.runtime import setup


def logged(log_path: str, seed: int) -> None:
    updates = []
    original = setup.algorithm_for

    def algorithm_for(config, problem, workers, lr):
        algorithm = original(config, problem, workers, lr)
        d, rngs = problem.d, {}

        def worker_step(state, w, shard):
            rng = rngs.setdefault(shard.client, random.Random(seed * 100 + shard.client))
            time.sleep(rng.uniform(0.0, (shard.client + 1) * 4e-4))
            return algorithm.worker_step(state, w, shard)

        def server_update(state, payload, staleness):
            before = list(state.clocks)
            state, outcome = algorithm.server_update(state, payload, staleness)
            k = int(payload[d + 1])
            held = not algorithm.may_start(state, k)  # one client per worker: k steps next
            updates.append([k, before, staleness, held, outcome.advanced, list(state.clocks)])
            return state, outcome

        return algorithm._replace(worker_step=worker_step, server_update=server_update)

    setup.algorithm_for = algorithm_for
    try:
        main(sys.argv[3:])
    finally:
        if updates:  # rank 0
            with open(log_path, "w") as handle:
                json.dump(updates, handle)


if __name__ == "__main__":
    logged(sys.argv[1], int(sys.argv[2]))
