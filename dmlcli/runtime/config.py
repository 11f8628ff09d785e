"""The resolved configuration of one run, and the shared options every algorithm takes.

Each shared option is defined once here; the CLI turns these (and each algorithm's own
parameters) into click options, and recipes and --set are checked against the same list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from dmlcli.algorithms.base import Param
from dmlcli.errors import UsageError
from dmlcli.problems import LOSSES, REGULARIZERS
from dmlcli.recipe import TomlForm
from dmlcli.runtime.heterogeneity import DelaySpec, NetworkSpec


class BatchSize(click.ParamType):
    """A positive integer, or `all` for the whole shard (stored as None)."""

    name = "N|all"
    toml_form = TomlForm(frozenset({"integer"}), ("all",), 'a positive integer or "all"')

    def convert(self, value, param, ctx):
        if value is None or value == "all":
            return None
        try:
            size = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a positive integer or 'all'", param, ctx)
        if size < 1:
            self.fail(f"{size} is not a positive integer or 'all'", param, ctx)
        return size


class StepSize(click.ParamType):
    """A positive float, or `auto`: 1/L, L the smoothness constant of F estimated from the data."""

    name = "FLOAT|auto"
    toml_form = TomlForm(frozenset({"integer", "float"}), ("auto",), 'a positive number or "auto"')

    def convert(self, value, param, ctx):
        if value is None or value == "auto":
            return None
        try:
            step = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a positive number or 'auto'", param, ctx)
        if not step > 0 or step == float("inf"):
            self.fail(f"{value!r} is not a positive number or 'auto'", param, ctx)
        return step


class CrashSpec(click.ParamType):
    """RANK@STEP: make that rank raise at that step (tests that a failure ends the run), or
    RANK@STEP:hang, make it stop answering there (tests --stall-timeout). Steps count from 1 on
    every rank; whether the rank exists is checked once the rank count is known. The value is
    (rank, step), or (rank, step, "hang")."""

    name = "RANK@STEP[:hang]"
    toml_form = TomlForm(frozenset({"string"}), (), 'a "RANK@STEP" string')

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, tuple):
            return value
        where, hang, kind = str(value).partition(":")
        if hang and kind != "hang":
            self.fail(f"{value!r}: the only kind after ':' is hang, e.g. 2@10:hang", param, ctx)
        try:
            rank, step = (int(part) for part in where.split("@"))
        except ValueError:
            self.fail(f"{value!r} is not RANK@STEP, e.g. 2@10", param, ctx)
        if rank < 0 or step < 1:
            self.fail(f"{value!r}: RANK must be 0 or more and STEP 1 or more", param, ctx)
        return (rank, step, "hang") if hang else (rank, step)


POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)

SHARED_OPTIONS: tuple[Param, ...] = (
    Param("data", str, "breast_cancer",
          "builtin name (breast_cancer, digits), synthetic:n=…,d=…,kind=…, or a .svm/.libsvm/.csv/.npz file"),
    Param("test_data", str, None, "held-out data file (default: split --test-fraction off the training data)"),
    Param("test_fraction", click.FloatRange(0, 1, max_open=True), None,
          "fraction of the data held out for testing (default 0.2; 0 with --test-data)"),
    Param("loss", click.Choice(sorted(LOSSES)), "logistic", "loss: logistic (labels ±1) or squared (regression)"),
    Param("reg", click.Choice(REGULARIZERS), "l2", "regulariser r(w)"),
    Param("lam", click.FloatRange(min=0), 1e-3, "regularisation strength λ"),
    Param("l1_ratio", click.FloatRange(0, 1), 0.5, "share of λ on the l1 term for --reg elastic"),
    Param("lr", StepSize(), "auto", "step size η; auto: 1/L, L the smoothness of F estimated from the data"),
    Param("batch_size", BatchSize(), 32, "mini-batch size per worker, or 'all' for the full local gradient"),
    Param("rounds", click.IntRange(min=1), 100, "global model updates (server updates for asynchronous algorithms)"),
    Param("time_limit", POSITIVE_FLOAT, None, "stop after this many seconds of training, whatever --rounds says"),
    Param("partition", str, "shuffle", "how samples go to workers: contiguous, shuffle, sample, dirichlet:ALPHA"),
    Param("seed", click.IntRange(min=0), 0, "seed of everything random in the run"),
    Param("workers", click.IntRange(min=1), 4, "workers when dmlcli starts MPI itself (under mpirun: ranks − 1)"),
    Param("clients", click.IntRange(min=1), None,
          "split the training set into this many clients (--partition), spread over the workers (default: one per worker)"),
    Param("client_fraction", click.FloatRange(0, 1, min_open=True), 1.0,
          "clients taking part each round: ⌈C·N⌉ of them, sampled with the seed, the same on every rank (FedAvg)"),
    Param("out", str, "runs/", "CSV file to write, or a directory (ending in /) to write <run_id>.csv in"),
    Param("force", bool, False, "overwrite existing output files"),
    Param("save_model", str, None, "write the final model to this .npy file"),
    Param("eval_every", click.IntRange(min=1), None, "evaluate every N rounds (default: about 100 points per run)"),
    Param("standardize", bool, True, "scale features to unit variance (dense data are also centred)"),
    Param("fit_intercept", bool, True, "append a constant-1 feature (regularised like the rest)"),
    Param("progress", click.Choice(["auto", "rich", "plain", "off"]), "auto", "progress display on rank 0"),
    Param("blas_threads", click.IntRange(min=1), 1, "BLAS threads per rank"),
    Param("max_model_mb", POSITIVE_FLOAT, 256,
          "refuse models larger than this many MB per copy (the model and its working copies are held on every rank)"),
    Param("crash", CrashSpec(), None, "fault injection: rank RANK raises at step STEP (with :hang, stops answering)"),
    Param("on_failure", click.Choice(["abort", "continue"]), "abort",
          "when a worker fails: abort (end every rank, exit 1) or continue without it, where the algorithm "
          "can (asgd, ssp, aeasgd, async-admm, ssgd --backup, dpsgd); the others end as abort does"),
    Param("checkpoint_every", click.IntRange(min=1), None,
          "write a checkpoint beside the CSV every N rounds and at the end (asynchronous runs: at the end); "
          "a run stopped by a signal writes one in any case (--resume continues it)"),
    Param("resume", str, None,
          "continue the run of this CSV or manifest from its checkpoint, into the same CSV, with the options "
          "it was started with; only --rounds and --time-limit may change"),
    Param("stall_timeout", POSITIVE_FLOAT, None,
          "end the run (exit 1, naming the silent ranks) when no message arrives for this many seconds "
          "(default: wait for ever); make it longer than the slowest step or evaluation"),
    Param("delay", DelaySpec(), None,
          "slow workers, real sleeps: const:F1,…,FK (worker k's steps take F_k times as long), exp:MEAN "
          "(an exponential wait of MEAN s per step), lognormal:MU,SIGMA (a wait of exp(N(MU,SIGMA²)) s per step), "
          "straggler:FRACTION,SLOWDOWN (round(FRACTION·K) seeded workers SLOWDOWN times slower)"),
    Param("network", NetworkSpec(), None,
          "a real delay per message of latency + bytes/bandwidth: LATENCY_MS,MBPS, or wifi (5 ms, 100 Mbit/s), "
          "lte (50 ms, 10 Mbit/s), 3g (150 ms, 1 Mbit/s)"),
    Param("dropout", click.FloatRange(0, 1, max_open=True), 0.0,
          "probability that a worker sits out a round (synchronous) or an activation (asynchronous), seeded"),
)


@dataclass(frozen=True)
class RunConfig:
    """Every shared option by name (see SHARED_OPTIONS), plus the algorithm and its parameters."""

    algorithm: str
    data: str
    test_data: str | None
    test_fraction: float | None
    loss: str
    reg: str
    lam: float
    l1_ratio: float
    lr: float | None  # None: auto
    batch_size: int | None
    rounds: int
    time_limit: float | None
    partition: str
    seed: int
    workers: int
    clients: int | None  # None: one client per worker
    client_fraction: float
    out: str
    force: bool
    save_model: str | None
    eval_every: int | None
    standardize: bool
    fit_intercept: bool
    progress: str
    blas_threads: int
    max_model_mb: float
    crash: tuple | None  # (rank, step) or (rank, step, "hang")
    on_failure: str  # "abort" or "continue"
    checkpoint_every: int | None
    resume: str | None  # the manifest of the run to continue (the CLI resolves a CSV to it)
    stall_timeout: float | None
    delay: str | None  # the canonical --delay spec (runtime.heterogeneity parses it)
    network: str | None  # the canonical --network spec: a preset name or LATENCY_MS,MBPS
    dropout: float
    params: dict[str, Any]

    @property
    def evaluation_interval(self) -> int:
        return self.eval_every or max(1, self.rounds // 100)

    @property
    def held_out_fraction(self) -> float:
        if self.test_fraction is not None:
            return self.test_fraction
        return 0.0 if self.test_data else DEFAULT_TEST_FRACTION


def make_config(algorithm: str, params: dict | None = None, **shared) -> RunConfig:
    """A RunConfig from the options given; the rest take their defaults. Raises UsageError on
    an unknown algorithm, option or parameter, or on options that contradict each other."""
    from dmlcli.algorithms import REGISTRY

    if algorithm not in REGISTRY:
        raise UsageError(f"unknown algorithm {algorithm!r}; choose from {', '.join(sorted(REGISTRY))}")
    unknown = sorted(set(shared) - set(SHARED_DEFAULTS))
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r}")
    spec = REGISTRY[algorithm]
    allowed = {p.name: p.default for p in spec.params}
    params = dict(params or {})
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise UsageError(f"unknown parameter {unknown[0]!r} for {algorithm}; it takes: {', '.join(allowed) or 'none'}")
    defaults = {**SHARED_DEFAULTS, "batch_size": None} if spec.full_batch else SHARED_DEFAULTS
    config = RunConfig(algorithm=algorithm, params={**allowed, **params}, **{**defaults, **shared})
    if config.test_data is not None and config.test_fraction is not None:
        raise UsageError("give either --test-data or --test-fraction, not both")
    if config.save_model is not None and not config.save_model.endswith(".npy"):
        raise UsageError(f"--save-model must name a .npy file, got {config.save_model!r}")
    return config


DEFAULT_TEST_FRACTION = 0.2
def _converted_default(param: Param):
    """The value a default stands for (the CLI shows `auto`, the config holds None)."""
    if isinstance(param.type, click.ParamType) and param.default is not None:
        return param.type.convert(param.default, None, None)
    return param.default


SHARED_DEFAULTS = {p.name: _converted_default(p) for p in SHARED_OPTIONS}
