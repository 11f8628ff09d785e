"""One rank's whole run: start-up, the training loop of the algorithm's family, outputs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time

import numpy as np

from dmlcli.algorithms import AsyncAlgorithm, GossipAlgorithm, SharedAlgorithm, SyncAlgorithm
from dmlcli.comm import Stalled
from dmlcli.errors import UsageError
from dmlcli.report import CsvLog, git_revision, make_progress, print_summary, software_versions, utc_now, write_manifest
from dmlcli.runtime import checkpoint, setup
from dmlcli.runtime.context import Recorder, RunContext, StopRequest
from dmlcli.runtime.evaluate import Evaluator
from dmlcli.runtime.gossip import check_gossip_run, run_gossip
from dmlcli.runtime.heterogeneity import NO_HETEROGENEITY, Heterogeneity
from dmlcli.runtime.launch import THREAD_VARIABLES, tell_launcher
from dmlcli.runtime.parameter_server import check_server_run, run_async
from dmlcli.runtime.resources import command_started_at, data_mib, peak_rss_mib
from dmlcli.runtime.shared_memory import check_shared_run, run_shared
from dmlcli.runtime.stall import end_stalled
from dmlcli.runtime.sync import run_sync


class CollectiveUsageError(UsageError):
    """Bad input found at start-up and known to every rank: each exits 2, no abort needed."""


# The loop is chosen by what the factory built: ssgd --backup is sync but served.
LOOPS = {SyncAlgorithm: run_sync, AsyncAlgorithm: run_async, GossipAlgorithm: run_gossip, SharedAlgorithm: run_shared}
# CSV columns the family's loop adds. active_workers: sync, the workers that took part in the last round;
# async (and ssgd --backup), the workers whose payloads reached the server since the previous evaluation point.
FAMILY_COLUMNS = {"sync": ("active_workers", "active_clients", "compression_ratio"), "async": ("active_workers",),
                  "gossip": (),  # gossip: every worker takes part in every round
                  "shared": ("active_workers",)}  # shared: the workers that stepped since the previous evaluation point
EXIT_CODES = {"completed": 0, "failed": 1, "diverged": 3}  # interrupted: 128 + the signal, as a shell reports it


def run_rank(config, transport, summary_stream=None, stop=None) -> int:
    """Run on this rank; returns its exit code (rank 0's is the run's: mpiexec reports the worst).

    Bad input raises CollectiveUsageError on every rank, and leaves no file behind. Any other
    exception propagates: the caller aborts all ranks (see dmlcli.runtime.launch). `stop` is
    rank 0's StopRequest, wired to SIGINT/SIGTERM by the caller.
    """
    started = _run_started_at()
    if transport.size < 2:
        raise CollectiveUsageError(f"{config.algorithm} needs at least 2 MPI ranks (a server and one worker), got {transport.size}")
    # Overflow on the way to divergence is expected: it is caught, as a non-finite objective, at evaluation.
    with blas_threads_limited(config.blas_threads), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        ctx, manifest = _start(config, transport, stop or StopRequest())
        at_round_0 = time.time()
        transport.stall_timeout = config.stall_timeout  # start-up's waits are rank 0 reading data: not a stall
        try:
            with ctx.recorder.progress if ctx.recorder else contextlib.nullcontext():
                model, status = _train(ctx)
        except BaseException as error:
            if ctx.recorder:
                _record_failure(ctx, manifest, error)
            elif isinstance(error, Exception):
                _record_failure_of_worker(ctx, error)
            raise
    # What each worker computed and slept, and how it failed if it left the run: one gather.
    memory = {"peak_rss_mib": round(peak_rss_mib(), 1), "data_mib": round(data_mib(ctx.shards, ctx.evaluator.test), 3)}
    reports = transport.gather_object((ctx.delays and ctx.delays.totals(), ctx.failure, memory))
    if transport.rank == 0:
        manifest["timing"] = {"command_to_round_0_s": round(at_round_0 - started, 3)}
        manifest["memory"] = {key: [report[key] for *_, report in reports] for key in memory}
        _finish(ctx, manifest, model, status, summary_stream, reports, started)
    return 128 + ctx.stop.signum if status == "interrupted" else EXIT_CODES[status]


def blas_threads_limited(threads: int):
    """BLAS libraries limited to `threads` threads for the run. The launcher sets the variables every
    BLAS reads when it loads; where they already say `threads`, importing threadpoolctl to set the
    limit again (about 70 ms of CPU per rank before round 0) is skipped."""
    if all(os.environ.get(name) == str(threads) for name in THREAD_VARIABLES):
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads)


_first_run_in_process = True


def _run_started_at() -> float:
    """Where this run's start-up is counted from: the command for the first run in a process, the
    end of the previous run for the later runs of a sweep."""
    global _first_run_in_process
    if _first_run_in_process:
        _first_run_in_process = False
        return command_started_at()
    return time.time()


def _train(ctx):
    """The family's loop; a wait that gave up (--stall-timeout) becomes RunStalled naming the silent ranks."""
    try:
        return LOOPS[type(ctx.algorithm)](ctx, ctx.algorithm)
    except Stalled:
        end_stalled(ctx)
        raise  # end_stalled always raises; this keeps the traceback's origin


def _start(config, transport, stop):
    rank, workers = transport.rank, transport.size - 1
    if rank == 0:
        try:
            plan, rows = setup.plan_run(config, workers)
            resumed = _checkpoint_to_resume(config, plan, transport.size)
            plan = setup.reserve_outputs(config, plan)
            verdict = (None, plan)
        except UsageError as error:
            verdict, rows, resumed = (str(error), None), None, None
    else:
        verdict, rows, resumed = None, None, None
    error, plan = transport.bcast_object(verdict)
    if error is not None:
        raise CollectiveUsageError(error)
    try:
        return _prepare(config, transport, stop, plan, rows, resumed)
    except CollectiveUsageError:
        if rank == 0:
            setup.release_outputs(plan)
        raise


def _checkpoint_to_resume(config, plan, ranks: int) -> dict | None:
    """Rank 0: the checkpoint --resume continues from (None without --resume), checked against the run."""
    spec = setup.REGISTRY[config.algorithm]
    if config.checkpoint_every and spec.family in ("gossip", "shared"):
        raise UsageError(f"{config.algorithm}: checkpoints are for the synchronous and parameter-server "
                         "algorithms so far; --checkpoint-every is not defined for it")
    if config.resume is None:
        return None
    saved = checkpoint.read(plan.csv_path, ranks)
    checkpoint.check_csv(plan.csv_path, _columns(spec))
    if config.rounds <= saved["round"]:
        raise UsageError(f"--resume: the checkpoint is at round {saved['round']}; give --rounds above it to go on "
                         f"(now {config.rounds})")
    return saved


def _prepare(config, transport, stop, plan, rows, resumed):
    """Everything after the plan: this rank's data, the shared preprocessing and step, rank 0's outputs."""
    rank, workers = transport.rank, transport.size - 1
    if config.resume is not None:  # this rank's part of the checkpoint, with the round it was taken at
        part = transport.scatter_object(resumed["parts"] if rank == 0 else None)
        resumed = dict(part, round=transport.bcast_object(resumed and resumed["round"]))
    my_rows = transport.scatter_object([None, *rows] if rank == 0 else None)
    if my_rows is not None:
        source, X, X_test = setup.load_rows(config, plan, my_rows)
    else:
        source = X = X_test = None
    prepare = setup.make_preprocessor(config, X, plan.d_features, plan.sparse, transport.allreduce)
    shards, test = setup.make_shards(config, plan, my_rows, source, X, X_test, prepare) if my_rows else ([], None)
    del X  # the shards hold the preprocessed rows
    problem = setup.make_problem(config, plan)
    spec = setup.REGISTRY[config.algorithm]
    try:  # every rank computes the same step and builds the same algorithm, so every rank knows
        lr = config.lr or setup.auto_step(transport, [s.X for s in shards], problem, spec.family, workers)
        algorithm = setup.algorithm_for(config, problem, len(plan.client_sizes), lr)
        if isinstance(algorithm, AsyncAlgorithm):
            check_server_run(config, algorithm, spec.family, len(plan.client_sizes), workers)
        if isinstance(algorithm, GossipAlgorithm):
            check_gossip_run(config, algorithm, workers)
        if isinstance(algorithm, SharedAlgorithm):
            check_shared_run(config, transport)
        if config.checkpoint_every and getattr(algorithm, "overlap", False):
            raise UsageError(f"{config.algorithm} --overlap has a reduction in flight at the end of every round: "
                             "it cannot be checkpointed (--checkpoint-every)")
    except UsageError as error:
        raise CollectiveUsageError(str(error)) from None
    mpi = transport.describe()
    het = Heterogeneity.from_config(config, workers)
    delays = het.worker(rank) if het and rank else None

    recorder = manifest = None
    if rank == 0 and resumed is not None:
        manifest, log = _resume_outputs(config, plan, spec, resumed["round"])
    elif rank == 0:
        manifest = {
            "run_id": plan.run_id, "algorithm": config.algorithm, "status": "running", "reason": None,
            "config": dataclasses.asdict(config), "seed": config.seed, "csv": plan.csv_path, "lr": lr,
            "data": {"n_train": plan.n_train, "n_test": plan.n_test, "features": plan.d_features,
                     "model_size": plan.d_model, "sparse": plan.sparse, "index_base": plan.index_base},
            "mpi": mpi, "workers": workers, "clients": len(plan.client_sizes),
            "heterogeneity": het.describe() if het else dict(NO_HETEROGENEITY), "versions": software_versions(),
            "git_revision": git_revision(os.getcwd()), "started": utc_now(), "ended": None,
        }
        write_manifest(plan.manifest_path, manifest)
        # reserve_outputs created the CSV for this run alone: writing into it replaces nothing.
        log = CsvLog(plan.csv_path, plan.run_id, config.algorithm, _columns(spec), overwrite=True)
    if rank == 0:
        tell_launcher("manifest", plan.manifest_path)
        progress = make_progress(config.progress, config.rounds, config.time_limit, f"{config.algorithm} ×{workers}")
        recorder = Recorder(log, progress, plan.n_train)
    evaluator = Evaluator(transport, problem, plan.n_test, shards, test)
    context = RunContext(transport, config, plan, problem, shards, evaluator, recorder, algorithm, stop,
                         heterogeneity=het, delays=delays, resumed=resumed)
    return context, manifest


def _columns(spec) -> tuple[str, ...]:
    return (*FAMILY_COLUMNS[spec.family], *spec.extra_columns)


def _resume_outputs(config, plan, spec, round_: int):
    """Rank 0 resuming: the run's manifest, running again with the new budget, and its CSV without
    the rows after the checkpoint's round (written before the stop, to be written again)."""
    with open(plan.manifest_path) as handle:
        manifest = json.load(handle)
    manifest["config"] = dict(manifest["config"], rounds=config.rounds, time_limit=config.time_limit)
    manifest.setdefault("resumed", []).append({"round": round_, "at": utc_now()})
    manifest.update(status="running", reason=None, ended=None)
    write_manifest(plan.manifest_path, manifest)
    log = CsvLog.reopen(plan.csv_path, plan.run_id, config.algorithm, _columns(spec), after_round=round_)
    return manifest, log


def _record_failure(ctx, manifest, error: BaseException) -> None:
    """Rank 0 failing or interrupted: the CSV has every row so far; the manifest says why it ended,
    unless the rank that failed first has already said so (rank 0 then only sees the abort)."""
    ctx.recorder.log.close()
    interrupted = isinstance(error, KeyboardInterrupt)
    if not interrupted and _manifest_status(ctx.plan.manifest_path) == "failed":
        return
    manifest.update(status="interrupted" if interrupted else "failed", ended=utc_now(),
                    reason="interrupted" if interrupted else f"rank 0: {type(error).__name__}: {error}",
                    final=ctx.recorder.last_row)
    write_manifest(ctx.plan.manifest_path, manifest)


def _record_failure_of_worker(ctx, error: Exception) -> None:
    """A worker failing: it marks the manifest rank 0 wrote as failed, naming itself and its step,
    before every rank is aborted (rank 0, stopped mid-collective, cannot). Under anyone's mpirun,
    not only dmlcli's own launcher."""
    path = ctx.plan.manifest_path
    try:
        with open(path) as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return  # not written yet: the failure came before rank 0's start-up finished
    if manifest.get("status") != "running":
        return
    manifest.update(status="failed", ended=utc_now(),
                    reason=f"rank {ctx.rank} failed at step {ctx.step}: {type(error).__name__}: {error}")
    write_manifest(path, manifest)


def _manifest_status(path) -> str | None:
    try:
        with open(path) as handle:
            return json.load(handle).get("status")
    except (OSError, ValueError):
        return None


def _finish(ctx, manifest, model, status, summary_stream, reports, started: float) -> None:
    config, plan, recorder = ctx.config, ctx.plan, ctx.recorder
    recorder.log.close()
    manifest["heterogeneity"]["worker_steps"] = ctx.worker_steps
    if ctx.heterogeneity:
        manifest["heterogeneity"]["workers"] = [slept for slept, *_ in reports[1:]]  # rank 0 computes no steps
    failures = [failure for _, failure, _ in reports[1:] if failure]  # the workers' own reports, in rank order
    manifest["failures"] = failures
    failure = ctx.failure or (failures[0] if failures else None)  # why the run ended failed
    if config.save_model:
        os.makedirs(os.path.dirname(os.path.abspath(config.save_model)), exist_ok=True)  # checked at start-up
        np.save(config.save_model, model)
    reasons = {"diverged": "objective became non-finite", "failed": failure,
               "interrupted": f"stopped by signal {ctx.stop.signum} (the last row is the model at the stop)"}
    if ctx.checkpointed is not None:
        manifest["checkpoint"] = {"path": checkpoint.path_of(plan.csv_path), "round": ctx.checkpointed}
    manifest.update(status=status, ended=utc_now(), final=recorder.last_row, reason=reasons.get(status))
    manifest["timing"]["command_to_end_s"] = round(time.time() - started, 3)  # the summary follows at once
    write_manifest(plan.manifest_path, manifest)
    row = dict(recorder.last_row or {}, algorithm=config.algorithm, status=status, csv=plan.csv_path)
    print_summary([row], stream=summary_stream or sys.stdout)
    if status == "interrupted":
        print(f"dmlcli: stopped by signal {ctx.stop.signum}; the CSV and manifest are complete up to the stop",
              file=sys.stderr)
    if status == "diverged":
        print(f"dmlcli: diverged: the objective became non-finite (try a smaller --lr, now {manifest['lr']:g})",
              file=sys.stderr)


