"""The shared-memory loop (hogwild): the worker ranks of one node step on one model, without locks.

Memory. Two arrays every rank maps (the transport's shared_array: an MPI shared-memory window on
the node, or one array between the threads of an in-process run):
  w         the model, d floats, initially zero. Workers read it and write into it in place,
            each at its own pace, with no lock: the algorithm's `compute` reads w as it finds it,
            `apply` writes the update into it.
  progress  [stop, steps of worker 1, …, steps of worker K]. Rank 0 alone writes the stop flag
            and worker k alone its own count, so no entry is written by two ranks.
Runs whose ranks are not all on one node are refused at start-up (check_shared_run).

Roles. Rank 0 holds no data and only coordinates: it sleeps, and every LOOK_S seconds reads the
counts. Their sum is the run's `round` and `updates` (every step is one update of w). At about
every --eval-every updates it copies w, right after reading the counts that the CSV row reports
(the copy may hold a few steps more: the workers do not stop for it); the copies are kept
(KeptModels) and evaluated together after the run, as the parameter server's are, so evaluation
never holds up the workers nor counts as training time. The run ends when the total reaches
--rounds, when --time-limit passes or a signal asks (ctx.should_stop), or when a copy is not
finite: rank 0 sets the stop flag, which workers read before each step. Workers also stop by
themselves once the total reaches --rounds; those already in a step finish it, so a run may end
up to K − 1 updates past --rounds, and its last row says exactly how many. Rank 0 takes the last
copy once every worker has stopped (a barrier). Rank 0's --crash step counts its looks.

Counters: bytes_sent and messages stay 0, since nothing travels: the workers share the memory
they write. `active_workers` is the workers whose counts rose since the previous copy (blank at
round 0), and the manifest's worker_steps are the K counts at the end.

Heterogeneity (none by default, and then no hook runs): a worker sits out dropped activations
before a step and sleeps its delay after computing, before writing, so a slow worker's update
lands on a w that has moved on, as it would. --network is refused (setup.check_heterogeneity).
"""

from __future__ import annotations

import os
import time

import numpy as np

from dmlcli.errors import UsageError
from dmlcli.runtime.context import Stopwatch
from dmlcli.runtime.evaluate import Counters, KeptModels, evaluate_kept
from dmlcli.runtime.stall import RunStalled, silent_text

STOP = 0  # progress[STOP] is the stop flag; progress[k] is worker k's step count
# Rank 0 looks at the counts every LOOK_S and sleeps in between, leaving the cores to the workers
# (ranks outnumber cores here). A look costs about 10 µs, so at 2 ms it takes about 0.5 % of a
# core, and copies, time limits and signals are still taken within about 2 ms of when they are due.
LOOK_S = 2e-3


def check_shared_run(config, transport) -> None:
    """Refuse at start-up (every rank, together) a run whose ranks do not share one node's memory."""
    if not transport.same_node():
        hosts = transport.describe()["hosts"]
        raise UsageError(f"{config.algorithm} keeps one model in the shared memory of one node, but this run's "
                         f"{transport.size} ranks are on more than one node (hosts: {', '.join(hosts)}); "
                         "start every rank on one node")


def run_shared(ctx, algorithm) -> tuple[np.ndarray, str]:
    """Collective entry: coordinate on rank 0, step on the workers, then evaluate the copies of w
    rank 0 kept. Returns (the last copy, status)."""
    transport, d = ctx.transport, ctx.problem.d
    summed = np.zeros(d)
    if ctx.rank:
        summed[:] = algorithm.shard_sums(ctx.shard)
    transport.allreduce(summed)
    kept, status = None, "completed"
    with transport.shared_array(d) as w, transport.shared_array(1 + ctx.workers) as progress:
        if ctx.rank == 0:
            kept, status = _coordinate(ctx, w, progress)
        else:
            _work(ctx, algorithm, algorithm.init(summed), w, progress)
    return evaluate_kept(ctx, kept, status)


def _coordinate(ctx, w: np.ndarray, progress: np.ndarray) -> tuple[KeptModels, str]:
    config, transport = ctx.config, ctx.transport
    samples_per_step = np.asarray(ctx.plan.batch_sizes, dtype=np.float64)  # one client per worker
    counters = Counters(extras={"active_workers": None})
    kept = KeptModels(ctx.problem.d, os.path.dirname(os.path.abspath(ctx.plan.csv_path)))
    w[:] = ctx.initial_model()
    kept.add(counters.snapshot(), w.copy())  # round 0
    steps_at_copy = np.zeros(ctx.workers)
    transport.barrier()  # the workers start: w holds the initial model
    watch = Stopwatch()

    def read_counts() -> np.ndarray:
        steps = progress[1:].copy()
        counters.round = counters.updates = int(steps.sum())
        counters.samples = int(steps @ samples_per_step)
        return steps

    def keep_copy(steps: np.ndarray) -> bool:
        """Keep a copy of w with the counts just read; False if it is no longer finite."""
        counters.wall_s = watch.training()
        counters.extras["active_workers"] = int(np.count_nonzero(steps > steps_at_copy))
        steps_at_copy[:] = steps
        model = w.copy()
        kept.add(counters.snapshot(), model)
        return bool(np.isfinite(model).all())

    next_copy, looks = config.evaluation_interval, 0
    last_steps, moved_at = np.zeros(ctx.workers), np.full(ctx.workers, time.monotonic())
    try:
        while True:
            looks += 1
            ctx.check_crash(looks)
            steps = read_counts()
            if counters.round >= config.rounds or ctx.should_stop(watch):
                break
            # --stall-timeout: nothing travels here, so a worker is silent when its own count stands still.
            now = time.monotonic()
            moved_at[steps != last_steps], last_steps = now, steps
            silent = np.flatnonzero(now - moved_at > (config.stall_timeout or np.inf))
            if silent.size:
                raise RunStalled(f"no step for {config.stall_timeout:g} s (--stall-timeout) after {counters.updates} "
                                 f"updates: {silent_text(silent + 1)} silent")
            if counters.round >= next_copy:
                if not keep_copy(steps):
                    break  # the evaluation after the run reports the divergence
                next_copy = (counters.round // config.evaluation_interval + 1) * config.evaluation_interval
            ctx.recorder.tick(counters)
            # In process, a rank that aborts ends this wait; rank 0 makes no other call that would notice.
            transport.sleep_until_aborted(LOOK_S)
    finally:
        progress[STOP] = 1.0  # however the loop ends (in process, another rank's abort too), the workers stop
    transport.barrier()  # every worker has left its loop: w and the counts are final
    steps = read_counts()
    if counters.round != kept.counters[-1].round:
        keep_copy(steps)
    ctx.worker_steps = [int(count) for count in steps]
    return kept, ctx.end_status()


def _work(ctx, algorithm, state, w: np.ndarray, progress: np.ndarray) -> None:
    rounds, rank, shard, me = ctx.config.rounds, ctx.rank, ctx.shard, ctx.delays
    step = 0
    ctx.transport.barrier()  # rank 0 has set w
    while progress[STOP] == 0.0 and progress[1:].sum() < rounds:
        if me is not None:
            me.skip_dropped_activations()
            started = time.perf_counter()
        step += 1
        ctx.check_crash(step)
        update, state = algorithm.compute(state, w, shard)
        if me is not None:
            me.wait_after_compute(time.perf_counter() - started)
        algorithm.apply(w, update)
        progress[rank] = step
    ctx.transport.barrier()
