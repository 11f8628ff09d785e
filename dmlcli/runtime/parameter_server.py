"""The asynchronous parameter server: rank 0 serves, ranks 1..K work, point to point.

Protocol (each message a preallocated float64 buffer, a small header in front):
  server -> worker  TAG_WORK [version, 0, model…]   or TAG_STOP [0, 0]
  worker -> server  TAG_WORK [version, samples, payload…]
Each worker has at most one message in flight: it sends a payload and waits for the reply.
The server keeps one posted receive per worker and takes whichever completes first. Once the
budget is spent (rounds, time limit, or a non-finite model) it answers each worker's next
message with STOP; when every worker has been stopped nothing is left in flight (drain, then
stop). Models are kept at the evaluation points (KeptModels: memory bounded, the rest on disk)
and evaluated together after the run, so evaluation never holds up the workers nor counts as
training time.

What the server does with a payload is the algorithm's `server_update` verdict, an `Outcome`
(or a bool: True is APPLIED, False is DROPPED, asgd's form):
  APPLIED  the model advanced one version (a round); the sender is answered at once
  DROPPED  discarded and counted (the CSV's `dropped`); the sender is answered at once
  HELD     accepted, and the sender is not answered yet: it waits, idle, until the model next
           advances, or, with `Outcome(hold=True, until=...)`, until until(server_state) is true
           (checked after every payload). Held workers are answered with the newest model.
`advanced` and `hold` combine: an update that moves the model while making its sender wait (a
stale-synchronous bound) is Outcome(advanced=True, hold=True, until=...). When the budget is
spent every held worker is answered with STOP at once. ssgd --backup holds the first K−b−1
gradients of a version and applies them with the K−b-th (Chen et al. 2016).

Heterogeneity (runtime.heterogeneity; none by default, and then no hook runs): a worker waits
its network delay for each reply it receives (the reply in flight: the server never sleeps), sits
out dropped activations, sleeps its delay after each step and its network delay before sending.
The server counts each worker's payloads (the manifest's worker_steps) and the workers heard
from since the previous evaluation point (the CSV's active_workers).

Failures. A worker whose step raises tells the server (TAG_FAIL, with its step) and leaves the
training, alive: it still holds its shard for the evaluation after the run. With --on-failure
abort the server then spends the budget at once (every worker is stopped, the models kept so far
are evaluated, the last one at the failure) and the run ends `failed`, exit 1. With continue the
server goes on without it (the algorithm's `leave` updates its state: ssp drops the worker from
the clock minimum); the run fails only when no worker is left or the held ones can never be
released (ssgd --backup b with more than b failed). With --stall-timeout S, S seconds without a
payload end the run naming the workers the server neither heard from nor holds (runtime.stall);
workers wait 2S for their replies, so that the server's report, which names ranks, comes first,
and then end the run naming rank 0.

The hot path. Per payload the server does what the reply depends on and counts; the staleness
columns come from running totals where they are read (kept models, progress, the checkpoint), the
progress display is ticked at most every TICK_S, and the run's constants are read once. Measured on
the 2-core development machine (2026-11-24) by driving _serve with a fake transport that always has
a payload ready (so scheduling noise is out; thread time, best of 5 runs of 4,000 updates, d = 101):
asgd 7.6-8.5 µs of server Python an update before, 5.9-6.1 µs after; ssp 10.2-11.5 before, 8.1-9.2
after. The bare loop's arithmetic alone (tests/bench/bare_asgd.py) takes about 1.8 µs of that.
A worker gathers its next mini-batch (Shard.prefetch) before it waits for the model, so the gather
overlaps the server's turn: with one worker (d = 100, B = 64, a core each) the worker's time from
reply to payload fell from 21 µs to 9.6 (bare_asgd.py's: 16 µs, gather included), and asgd went from
31.8k updates/s to 45.7k against the bare loop's 41.4k (medians of 5 interleaved runs, 2026-11-24).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable

import numpy as np

from dmlcli.algorithms.base import APPLIED, DROPPED, Outcome
from dmlcli.comm import TAG_FAIL, TAG_STOP, TAG_WORK, RankAborted, Stalled
from dmlcli.errors import UsageError
from dmlcli.runtime.checkpoint import restore_sampler, sampler_state, without_functions
from dmlcli.runtime.context import Stopwatch
from dmlcli.runtime.evaluate import Counters, KeptModels, evaluate_kept
from dmlcli.runtime.failures import report_failure
from dmlcli.runtime.setup import client_blocks
from dmlcli.runtime.stall import RunStalled, silent_text

HEADER = 2
TICK_S = 0.1  # the server ticks the progress display at most this often (a rich bar redraws every 0.1 s)


def outcome_of(verdict) -> Outcome:
    return verdict if isinstance(verdict, Outcome) else APPLIED if verdict else DROPPED


def check_server_run(config, algorithm, family: str, clients: int, workers: int) -> None:
    """Refuse what the server cannot run (on every rank, at start-up). Several clients per worker
    are logical workers of the asynchronous algorithms only: a synchronous algorithm whose options
    put it on the server (ssgd --backup) counts ranks, and a pull period is a rank's."""
    if config.client_fraction < 1.0:
        raise UsageError(f"{config.algorithm} runs on the parameter server, which serves every client in turn: "
                         f"--client-fraction below 1 is not defined for it")
    if clients != workers and family != "async":
        raise UsageError(f"{config.algorithm} with these options runs on the parameter server with one client per "
                         f"worker: --clients must equal the {workers} workers, got {clients}")
    if clients != workers and algorithm.pushes_per_pull > 1:
        raise UsageError(f"{config.algorithm}: --pull-every is a worker rank's and needs one client per worker; "
                         f"got {clients} clients on {workers} workers")


def run_async(ctx, algorithm) -> tuple[np.ndarray, str]:
    """Collective entry: serve on rank 0, work elsewhere, then evaluate the kept models together,
    block by block, rank 0 writing each block's CSV rows as they come."""
    kept = None
    if ctx.rank == 0:
        kept, status, snapshot = _serve(ctx, algorithm)
    else:
        snapshot, status = _work(ctx, algorithm), "completed"
    model, status = evaluate_kept(ctx, kept, status)
    # Every worker has stopped: the one point of an asynchronous run where the ranks' states agree.
    if ctx.checkpoint_due(snapshot.get("version", 0), status):
        ctx.write_checkpoint(snapshot.get("version", 0), snapshot)
    return model, status


def _serve(ctx, algorithm):
    config, transport, workers = ctx.config, ctx.transport, ctx.workers
    state = algorithm.server_init(ctx.initial_model())
    version = 0
    # The extras are the CSV's own columns (the family's and the algorithm's) that the server can fill.
    columns = set(ctx.recorder.log.columns) if ctx.recorder else set()
    initial = {"staleness_mean": 0.0, "staleness_max": 0, "dropped": 0, "active_clients": None, "compression_ratio": 1.0,
               "active_workers": None}
    counters = Counters(extras={column: value for column, value in initial.items() if column in columns})
    extras = counters.extras
    payloads_from = [0] * workers  # payloads taken from each worker (the manifest's worker_steps)
    owned = client_blocks(len(ctx.plan.client_sizes), workers)  # each worker's clients, served in this order
    messages_from = [0] * workers  # messages received from each worker, taken or not
    pulls = algorithm.pushes_per_pull  # a worker waits for a reply after this many payloads
    rounds, evaluation_interval = config.rounds, config.evaluation_interval  # read once: the loop reads them per update
    heard_from: set[int] = set()  # workers whose payloads came since the last kept model
    staleness_total = 0
    staleness_max = 0
    accepted = 0  # payloads taken (not dropped) since the model last advanced: that advance's gradients
    replies = [np.empty(HEADER + ctx.problem.d) for _ in range(workers)]
    payloads = [np.empty(HEADER + algorithm.payload_size) for _ in range(workers)]
    payload_bytes = payloads[0].nbytes
    stop_message = np.zeros(HEADER)
    sends: list = [None] * workers
    held: list[tuple[int, Callable | None]] = []  # (worker, until): senders not answered yet, in arrival order
    failed: list[int] = []  # workers that failed and left, in the order they told
    run_failed = False  # a failure ended the run (ctx.failure says why when no worker's report does)
    watch = Stopwatch()
    kept = KeptModels(ctx.problem.d, os.path.dirname(os.path.abspath(ctx.plan.csv_path)))
    if ctx.resumed:  # go on from a checkpoint taken when every worker had stopped (runtime.checkpoint)
        part = ctx.resumed
        state, version = part["state"], part["version"]
        vars(counters).update(vars(part["counters"]))
        extras = counters.extras
        payloads_from, messages_from = part["payloads_from"], part["messages_from"]
        staleness_total, staleness_max = part["staleness"]
        watch.resume(part["training_s"], 0.0)

    def next_client(k: int) -> int:
        """The client worker k steps for next: its clients take turns, one per payload."""
        return int(owned[k][messages_from[k] % len(owned[k])])

    def settle_staleness() -> None:
        """The staleness columns from the running totals: set where they are read (kept models, progress
        ticks, the checkpoint), not at every update."""
        if "staleness_mean" in extras and counters.updates:
            extras["staleness_mean"] = staleness_total / counters.updates
        if "staleness_max" in extras:
            extras["staleness_max"] = staleness_max

    def keep_model() -> bool:
        """Keep the model for evaluation (once per version); False if it is no longer finite."""
        model = algorithm.model(state)
        if not kept.counters or kept.counters[-1].round != version:
            settle_staleness()
            counters.wall_s = watch.training()
            if "active_workers" in extras:
                extras["active_workers"] = len(heard_from) if version else None
                heard_from.clear()
            kept.add(counters.snapshot(), model)
        return bool(np.isfinite(model).all())

    def post(k: int, message: np.ndarray, tag: int) -> None:
        """Send to worker k once its previous message has gone: only then is the buffer ours again."""
        if sends[k] is not None:
            transport.wait(sends[k])
        if message is replies[k]:
            message[0] = version
            message[HEADER:] = algorithm.model(state)
        sends[k] = transport.isend(message, k + 1, tag)
        counters.bytes_sent += message.nbytes
        counters.messages += 1

    def answer(k: int) -> None:
        """The newest model to worker k, or STOP once the budget is spent."""
        nonlocal active
        if budget_spent:
            post(k, stop_message, TAG_STOP)
            active -= 1
        else:
            post(k, replies[k], TAG_WORK)
            receives[k] = transport.irecv(payloads[k], k + 1)

    def advance() -> None:
        """The model moved on one version: a round."""
        nonlocal version, accepted
        version += 1
        counters.round = version
        if "active_clients" in extras:
            extras["active_clients"] = accepted
        accepted = 0

    def check_budget(advanced: bool) -> None:
        """Spend the budget at the rounds or the time limit; keep the model at the interval and at the end."""
        nonlocal budget_spent
        budget_spent = version >= rounds or ctx.should_stop(watch)
        if budget_spent or (advanced and version % evaluation_interval == 0):
            budget_spent = not keep_model() or budget_spent

    def released(advanced: bool) -> list[int]:
        """Take the held workers that may go on now (all of them once the budget is spent) off the hold list."""
        nonlocal held
        if not held:
            return []
        ready = [j for j, until in held if budget_spent or (advanced if until is None else until(state))]
        held = [(j, until) for j, until in held if j not in ready]
        return ready

    if not ctx.resumed:  # a resumed run's model at its checkpoint has its row already
        keep_model()
    for k in range(workers):
        post(k, replies[k], TAG_WORK)
    receives = [transport.irecv(payloads[k], k + 1) for k in range(workers)]
    budget_spent, active, next_first = False, workers, 0
    # The order to look for payloads in, from each worker: MPI's Testany favours low ranks when several
    # are ready, and a worker served more often biases the model towards its shard.
    rotations = [[*range(first, workers), *range(first)] for first in range(workers)]
    shows_progress = ctx.recorder is not None
    next_tick = 0.0  # perf_counter time of the next progress tick
    while active:
        if len(held) == active and not budget_spent:
            if not failed:
                raise RuntimeError(f"{config.algorithm}: every worker is held and no payload can come to release them")
            ctx.failure = f"{config.algorithm} cannot go on without {silent_text(j + 1 for j in failed)}: every worker left is held"
            budget_spent = run_failed = True
            keep_model()
            for j in released(False):  # all of them, the budget being spent
                answer(j)
            continue
        order = rotations[next_first]  # look from the worker after the last one served
        try:
            index, tag = transport.waitany([receives[j] for j in order])
        except Stalled:
            waiting = {j for j, _ in held} | set(failed)
            silent = [j + 1 for j in range(workers) if j not in waiting and receives[j] is not None]
            raise RunStalled(f"no payload arrived for {config.stall_timeout:g} s (--stall-timeout) after "
                             f"{counters.updates} updates: {silent_text(silent)} silent") from None
        k = order[index]
        receives[k] = None  # answered (and received from again) only when the reply goes
        next_first = (k + 1) % workers
        payload = payloads[k]
        messages_from[k] += 1
        if tag == TAG_FAIL:
            failed.append(k)
            active -= 1
            advanced = False
            if config.on_failure == "continue" and active > 0:
                if not budget_spent and algorithm.leave:
                    for client in owned[k]:
                        state, moved = algorithm.leave(state, int(client))
                        advanced = advanced or moved
                    if advanced:
                        advance()
                        check_budget(advanced)
            else:  # a failure fails the run even once the budget is spent: its last steps were lost
                run_failed = True
                if not budget_spent:
                    budget_spent = True
                    keep_model()
            for j in released(advanced):
                answer(j)
            continue
        counters.bytes_sent += payload_bytes
        counters.messages += 1
        outcome = None
        if not budget_spent:
            ctx.check_crash(counters.updates + 1)
            counters.updates += 1
            payloads_from[k] += 1
            heard_from.add(k)
            sent_version, samples = payload[:HEADER].tolist()
            counters.samples += int(samples)
            staleness = version - int(sent_version)
            staleness_total += staleness
            if staleness > staleness_max:
                staleness_max = staleness
            state, verdict = algorithm.server_update(state, payload[HEADER:], staleness)
            outcome = outcome_of(verdict)
            accepted += not outcome.dropped
            if outcome.advanced:
                advance()
            if outcome.dropped and "dropped" in extras:
                extras["dropped"] += 1
            check_budget(outcome.advanced)
            # A tick (two dicts and the display's clock) every update cost 1.0-1.7 µs of the server's
            # 7-8 µs (see the module's docstring); the display redraws at most every 0.1 s anyway.
            if shows_progress and time.perf_counter() >= next_tick:
                next_tick = time.perf_counter() + TICK_S
                settle_staleness()
                shown = {"staleness_mean": extras["staleness_mean"]} if "staleness_mean" in extras else {}
                ctx.recorder.tick(counters, **shown)
        # Answer the sender unless it is held, then every held worker that may go on now.
        ready = released(outcome is not None and outcome.advanced)
        if pulls > 1 and messages_from[k] % pulls:  # a push the worker does not wait on: no reply
            receives[k] = transport.irecv(payloads[k], k + 1)
        elif budget_spent:
            answer(k)
        elif outcome.hold and not (outcome.until and outcome.until(state)):
            held.append((k, outcome.until))
        elif algorithm.may_start and not algorithm.may_start(state, next_client(k)):
            held.append((k, functools.partial(algorithm.may_start, client=next_client(k))))
        else:
            answer(k)
        for j in ready:
            answer(j)
    for request in sends:
        if request is not None:
            transport.wait(request)
    ctx.worker_steps = payloads_from
    settle_staleness()
    snapshot = {"state": without_functions(state), "version": version, "counters": counters.snapshot(),
                "payloads_from": payloads_from, "messages_from": messages_from,
                "staleness": (staleness_total, staleness_max), "training_s": watch.training()}
    return kept, "failed" if run_failed else ctx.end_status(), snapshot


def _work(ctx, algorithm) -> None:
    """Step for this rank's clients in turn, one payload each (the server mirrors the turn)."""
    transport, shards = ctx.transport, ctx.shards
    states = [algorithm.worker_init(ctx.initial_model()) for _ in shards]
    step = 0
    me = ctx.delays  # this worker's heterogeneity, None without it
    if ctx.resumed:  # go on from a checkpoint (runtime.checkpoint)
        states, step = ctx.resumed["states"], ctx.resumed["step"]
        for shard in shards:
            restore_sampler(shard, ctx.resumed["samplers"][shard.client])
        if me is not None:
            vars(me).update(vars(ctx.resumed["delays"]))
    model = np.empty(HEADER + ctx.problem.d)
    payload = np.empty(HEADER + algorithm.payload_size)
    samples = [ctx.plan.batch_sizes[shard.client] * algorithm.local_steps for shard in shards]
    sent = None
    # A held worker may wait as long as the server's stall timeout; the server's report comes first.
    patience = 2 * ctx.config.stall_timeout if ctx.config.stall_timeout else None
    pulls = algorithm.pushes_per_pull
    # The next mini-batch's rows do not depend on the model: gather them while it is on its way. Not
    # under a delay model, whose slow-down stretches the step's compute time, gather included.
    prefetch_size = ctx.config.batch_size if me is None else None
    while True:
        pulling = step % pulls == 0  # otherwise the server does not answer this push: go on at once
        if pulling:
            shards[step % len(shards)].prefetch(prefetch_size)
            if _reply(ctx, model, patience) == TAG_STOP:
                break
            if me is not None:
                me.wait_for_message(model.nbytes)  # the reply's time in flight
        if me is not None:
            me.skip_dropped_activations()
            started = time.perf_counter()
        turn = step % len(shards)
        step += 1
        try:
            ctx.check_crash(step)
            update, states[turn] = algorithm.worker_step(states[turn], model[HEADER:] if pulling else None, shards[turn])
        except (RankAborted, Stalled):
            raise
        except Exception as error:  # noqa: BLE001 - any failure of the step is reported, not only expected ones
            _leave_after_failure(ctx, error, step, sent)
            break
        if me is not None:
            me.wait_after_compute(time.perf_counter() - started)
        if sent is not None:
            transport.wait(sent)
        payload[0], payload[1] = model[0], samples[turn]
        payload[HEADER:] = update
        if me is not None:
            me.wait_for_message(payload.nbytes)
        sent = transport.isend(payload, 0, TAG_WORK)
    if sent is not None:
        transport.wait(sent)
    return {"states": without_functions(states), "step": step, "delays": me,
            "samplers": {shard.client: sampler_state(shard) for shard in shards}}


def _reply(ctx, model: np.ndarray, patience: float | None) -> int:
    """The server's next message into `model`; its tag. A server silent for `patience` seconds ends the run."""
    try:
        return ctx.transport.wait(ctx.transport.irecv(model, 0), timeout=patience)
    except Stalled:
        raise RunStalled(f"no reply arrived for {patience:g} s (twice --stall-timeout) after step {ctx.step}: "
                         f"rank 0 is silent") from None


def _leave_after_failure(ctx, error: Exception, step: int, sent) -> None:
    """This worker's step failed: say so (as the launcher would for a rank that aborts), tell the
    server, and leave the training alive, for the evaluation after the run."""
    report_failure(ctx, error, step)
    if sent is not None:
        ctx.transport.wait(sent)
    ctx.transport.wait(ctx.transport.isend(np.array([float(step), 0.0]), 0, TAG_FAIL))
