"""Heterogeneity: slow workers (`--delay`), a slow network (`--network`), workers that drop out
(`--dropout`). Options of every algorithm, applied by the runtime, never by an algorithm.

Every model is a real sleep (so the CSV's wall-clock columns are real), drawn from generators
seeded by the run's seed, so the same seed gives the same sequence of delays and dropouts.
Workers are numbered by their rank, 1..K.

--delay (what a worker waits after computing a step, before its message goes):
  const:F1,…,FK           worker k's steps take F_k times as long: it sleeps (F_k − 1) × the
                          compute time it just measured (F_k ≥ 1, exactly K factors)
  exp:MEAN                each worker activates as a Poisson process: an exponential wait of
                          mean MEAN seconds per step (Baytas et al. 2016, AMTL's model)
  lognormal:MU,SIGMA      an extra wait per step of exp(N(MU, SIGMA²)) seconds
  straggler:FRACTION,S    round(FRACTION·K) workers (half up), drawn with the seed, are S times
                          slower: const with F = S for them and 1 for the rest
--network LATENCY_MS,MBPS or a preset (NETWORK_PRESETS): a message of b bytes costs its sender
  latency + b / bandwidth seconds before it goes.
--dropout p: a worker sits out a round (synchronous) or an activation (asynchronous) with
  probability p; see `round_participants` and `WorkerDelays.skip_dropped_activations`.

A synchronous round's waits: each worker with clients taking part sleeps its delay after its
local step (the random waits once a round, the slow-down factor on every phase's compute) and
its network delay before each phase's collective. On the parameter server a worker sleeps its
delay after each step and its network delay before sending its payload; the server's reply
travels as long as its own network delay, which the worker waits on receipt: the same instant
as a reply in flight that long, without making the server serve the other workers one network
delay at a time (a server that slept before every reply could give only 1/latency replies a second).

With none of them given the run has no Heterogeneity (None) and the loops skip every hook.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import click
import numpy as np

from dmlcli.errors import UsageError
from dmlcli.recipe import TomlForm

DELAY_STREAM = 20  # (seed, DELAY_STREAM, rank): a worker's exp and lognormal waits
STRAGGLER_STREAM = 21  # (seed, STRAGGLER_STREAM): which workers straggle
DROPOUT_STREAM = 22  # (seed, DROPOUT_STREAM, round): which workers sit a synchronous round out
ACTIVATION_STREAM = 23  # (seed, ACTIVATION_STREAM, rank): which of a worker's asynchronous activations drop

# (latency ms, bandwidth Mbit/s), in the spirit of MOCHA's simulated networks (Smith et al. 2017)
NETWORK_PRESETS = {"wifi": (5.0, 100.0), "lte": (50.0, 10.0), "3g": (150.0, 1.0)}
MAX_WAIT_S = 86400.0  # one sleep is at most a day (a lognormal tail could ask for more than time.sleep takes)

DELAY_FORMS = "const:F1,F2,…, exp:MEAN, lognormal:MU,SIGMA or straggler:FRACTION,SLOWDOWN"
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class Delay:
    """A parsed --delay: the model's name and its numbers."""

    kind: str  # const, exp, lognormal, straggler
    values: tuple[float, ...]


@dataclass(frozen=True)
class Network:
    """A parsed --network: per-message latency and bandwidth."""

    latency_s: float
    bytes_per_s: float
    preset: str | None = None

    @property
    def latency_ms(self) -> float:
        return self.latency_s * 1e3

    @property
    def mbps(self) -> float:
        return self.bytes_per_s * 8 / 1e6


def _numbers(text: str, what: str) -> tuple[float, ...]:
    """Comma-separated plain decimal numbers (no 1_0, 0x1, nan or inf)."""
    parts = [part.strip() for part in text.split(",")]
    if not all(_NUMBER.fullmatch(part) for part in parts):
        raise ValueError(f"{what} must be plain decimal numbers separated by commas")
    values = tuple(float(part) for part in parts)
    if not all(math.isfinite(value) for value in values):
        raise ValueError(f"{what} must be finite numbers")
    return values


def _shown(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def parse_delay(text: str) -> Delay:
    """A --delay spec; ValueError with a one-line reason if it is not one."""
    kind, sep, rest = str(text).strip().partition(":")
    if not sep or kind not in ("const", "exp", "lognormal", "straggler"):
        raise ValueError(f"{text!r} is not a delay model; give {DELAY_FORMS}")
    if kind == "const":
        values = _numbers(rest, "const's factors")
        if min(values) < 1:
            raise ValueError(f"{text!r}: every factor must be 1 or more (worker k's steps take F_k times as long)")
    elif kind == "exp":
        values = _numbers(rest, "exp's MEAN")
        if len(values) != 1 or values[0] <= 0:
            raise ValueError(f"{text!r}: exp takes one MEAN wait in seconds, above 0 (exp:0.01)")
    elif kind == "lognormal":
        values = _numbers(rest, "lognormal's MU,SIGMA")
        if len(values) != 2 or values[1] < 0:
            raise ValueError(f"{text!r}: lognormal takes MU,SIGMA with SIGMA 0 or more; "
                             "the wait is exp(N(MU, SIGMA²)) seconds (lognormal:-6,0.5)")
    else:
        values = _numbers(rest, "straggler's FRACTION,SLOWDOWN")
        if len(values) != 2 or not 0 < values[0] <= 1 or values[1] < 1:
            raise ValueError(f"{text!r}: straggler takes FRACTION,SLOWDOWN with 0 < FRACTION ≤ 1 and "
                             "SLOWDOWN 1 or more (straggler:0.25,3)")
    return Delay(kind, values)


def format_delay(delay: Delay) -> str:
    return f"{delay.kind}:" + ",".join(_shown(value) for value in delay.values)


def parse_network(text: str) -> Network:
    """A --network spec: a preset name or LATENCY_MS,MBPS; ValueError if it is neither."""
    text = str(text).strip()
    if text in NETWORK_PRESETS:
        latency_ms, mbps = NETWORK_PRESETS[text]
        return Network(latency_ms / 1e3, mbps * 1e6 / 8, text)
    try:
        values = _numbers(text, "LATENCY_MS,MBPS")
    except ValueError:
        values = ()
    if len(values) != 2 or values[0] < 0 or values[1] <= 0:
        raise ValueError(f"{text!r} is not a network; give LATENCY_MS,MBPS (latency 0 or more, bandwidth in "
                         f"Mbit/s above 0, e.g. 20,50) or one of {', '.join(NETWORK_PRESETS)}")
    return Network(values[0] / 1e3, values[1] * 1e6 / 8)


def format_network(network: Network) -> str:
    return network.preset or f"{_shown(network.latency_ms)},{_shown(network.mbps)}"


class DelaySpec(click.ParamType):
    """--delay: parsed strictly, held as its canonical text (const:1,3)."""

    name = "const:F1,…|exp:MEAN|lognormal:MU,SIGMA|straggler:FRACTION,SLOWDOWN"
    toml_form = TomlForm(frozenset({"string"}), (), 'a delay model string such as "straggler:0.25,3"')

    def get_metavar(self, param, ctx=None):
        return self.name  # as typed: the model names are lower case (click would show them upper case)

    def convert(self, value, param, ctx):
        if value is None:
            return None
        try:
            return format_delay(parse_delay(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


class NetworkSpec(click.ParamType):
    """--network: LATENCY_MS,MBPS or a preset, held as its canonical text."""

    name = "LATENCY_MS,MBPS|" + "|".join(NETWORK_PRESETS)
    toml_form = TomlForm(frozenset({"string"}), (), 'a network string such as "wifi" or "20,50"')

    def get_metavar(self, param, ctx=None):
        return self.name  # the presets are lower case

    def convert(self, value, param, ctx):
        if value is None:
            return None
        try:
            return format_network(parse_network(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


def straggler_count(fraction: float, workers: int) -> int:
    """round(FRACTION·K), halves rounded up."""
    return math.floor(round(fraction * workers, 9) + 0.5)


def stragglers(fraction: float, workers: int, seed: int) -> tuple[int, ...]:
    """The straggling workers' ranks (1..K), sorted: round(FRACTION·K) of them, drawn with the seed."""
    chosen = np.random.default_rng([seed, STRAGGLER_STREAM]).choice(workers, straggler_count(fraction, workers), replace=False)
    return tuple(sorted(int(k) + 1 for k in chosen))


def slowdown_factors(delay: Delay | None, workers: int, seed: int) -> tuple[float, ...]:
    """F_k of every worker (rank k at index k − 1): a step takes F_k times its compute time."""
    if delay is None or delay.kind in ("exp", "lognormal"):
        return (1.0,) * workers
    if delay.kind == "const":
        return delay.values
    slow = set(stragglers(delay.values[0], workers, seed))
    return tuple(delay.values[1] if k in slow else 1.0 for k in range(1, workers + 1))


def check(delay_text: str | None, workers: int) -> None:
    """What only the worker count can tell: UsageError at start-up, before anything is written."""
    if delay_text is None:
        return
    delay = parse_delay(delay_text)
    if delay.kind == "const" and len(delay.values) != workers:
        raise UsageError(f"--delay {delay_text} gives {len(delay.values)} factors for {workers} workers; "
                         f"give exactly one per worker (rank 1 first)")
    if delay.kind == "straggler" and straggler_count(delay.values[0], workers) == 0:
        raise UsageError(f"--delay {delay_text}: round({_shown(delay.values[0])} × {workers} workers) is no straggler "
                         "at all; give a larger FRACTION")


def extra_wait(delay: Delay | None, factor: float, compute_s: float, rng, new_step: bool = True) -> float:
    """Seconds a worker waits after computing for compute_s: (F − 1)·compute_s for const and
    straggler; for exp and lognormal a draw from rng, once a step (new_step)."""
    if delay is None:
        return 0.0
    if delay.kind in ("const", "straggler"):
        return (factor - 1.0) * compute_s
    if not new_step:
        return 0.0
    if delay.kind == "exp":
        return float(rng.exponential(delay.values[0]))
    return float(np.exp(rng.normal(delay.values[0], delay.values[1])))


def message_delay(network: Network | None, nbytes: int) -> float:
    """Seconds a message of nbytes costs its sender: latency + bytes / bandwidth."""
    if network is None:
        return 0.0
    return network.latency_s + nbytes / network.bytes_per_s


def dropped_workers(seed: int, round_: int, workers: int, p: float) -> np.ndarray:
    """Which workers sit out a synchronous round (index k − 1 for rank k): each with probability p,
    from a generator seeded by (seed, DROPOUT_STREAM, round), so every rank knows with no message."""
    return np.random.default_rng([seed, DROPOUT_STREAM, round_]).random(workers) < p


def round_participants(active: np.ndarray, owners: np.ndarray, seed: int, round_: int, p: float) -> np.ndarray:
    """The clients that take part in a round: those of `active` (the sampled clients) whose worker
    (owners[client], 0-based) does not drop out. If every worker holding one of them drops, one of
    those workers, drawn with the same seeded generator, takes part after all."""
    workers = int(owners.max()) + 1
    rng = np.random.default_rng([seed, DROPOUT_STREAM, round_])
    dropped = rng.random(workers) < p
    holders = owners[active]
    kept = active[~dropped[holders]]
    if kept.size == 0:
        candidates = np.unique(holders)
        back = candidates[rng.integers(candidates.size)]
        kept = active[holders == back]
    return kept


def pause(seconds: float) -> None:
    """Sleep (the one place heterogeneity sleeps; tests replace it to record the waits)."""
    time.sleep(min(seconds, MAX_WAIT_S))


class Heterogeneity:
    """The run's resolved models, the same on every rank (None when no option asks for any)."""

    def __init__(self, delay: str | None, network: str | None, dropout: float, seed: int, workers: int):
        self.delay = parse_delay(delay) if delay else None
        self.network = parse_network(network) if network else None
        self.dropout, self.seed, self.workers = dropout, seed, workers
        self.factors = slowdown_factors(self.delay, workers, seed)

    @classmethod
    def from_config(cls, config, workers: int) -> Heterogeneity | None:
        if config.delay is None and config.network is None and not config.dropout:
            return None
        return cls(config.delay, config.network, config.dropout, config.seed, workers)

    def worker(self, rank: int) -> WorkerDelays:
        return WorkerDelays(self, rank)

    def participants(self, active: np.ndarray, owners: np.ndarray, round_: int) -> np.ndarray:
        if not self.dropout:
            return active
        return round_participants(active, owners, self.seed, round_, self.dropout)

    def describe(self) -> dict:
        """The manifest's record of the models, resolved per worker."""
        delay, wait = self.delay, None
        if delay is not None and delay.kind == "exp":
            wait = {"distribution": "exponential", "mean_s": delay.values[0]}
        elif delay is not None and delay.kind == "lognormal":
            wait = {"distribution": "lognormal", "mu": delay.values[0], "sigma": delay.values[1]}
        network = self.network and {"spec": format_network(self.network), "latency_ms": self.network.latency_ms,
                                    "mbps": self.network.mbps}
        return {
            "delay": delay and format_delay(delay),
            "slowdown": list(self.factors),  # F_k of ranks 1..K
            "stragglers": list(stragglers(delay.values[0], self.workers, self.seed)) if delay and delay.kind == "straggler" else None,
            "wait": wait,
            "network": network,
            "dropout": self.dropout,
        }


NO_HETEROGENEITY = {"delay": None, "slowdown": None, "stragglers": None, "wait": None, "network": None, "dropout": 0.0}


class WorkerDelays:
    """One worker's delays: its slow-down factor, its own seeded generators, and what it slept."""

    def __init__(self, run: Heterogeneity, rank: int):
        self.delay, self.network, self.dropout = run.delay, run.network, run.dropout
        self.rank = rank
        self.factor = run.factors[rank - 1]
        self.rng = np.random.default_rng([run.seed, DELAY_STREAM, rank])
        self.activations = np.random.default_rng([run.seed, ACTIVATION_STREAM, rank])
        self.last_step_s: float | None = None  # compute + delay of the last step (asynchronous dropout)
        self.network_since_s = 0.0  # network waits since the last activation began
        self.compute_s = self.delay_s = self.network_s = self.dropout_s = 0.0
        self.dropped = 0

    def delay_after_compute(self, compute_s: float, new_step: bool = True) -> float:
        """The wait after compute_s of computing (drawn, not slept); new_step False: another
        phase of the same step, which only the slow-down factor stretches."""
        return extra_wait(self.delay, self.factor, compute_s, self.rng, new_step)

    def wait_after_compute(self, compute_s: float, new_step: bool = True) -> float:
        wait = self.delay_after_compute(compute_s, new_step)
        self.compute_s += compute_s
        self.delay_s += wait
        self.last_step_s = compute_s + wait
        if wait > 0:
            pause(wait)
        return wait

    def message_delay(self, nbytes: int) -> float:
        return message_delay(self.network, nbytes)

    def wait_for_message(self, nbytes: int) -> float:
        wait = self.message_delay(nbytes)
        if wait > 0:
            self.network_s += wait
            self.network_since_s += wait
            pause(wait)
        return wait

    def drops(self) -> bool:
        """Whether this asynchronous activation drops (one draw from the worker's own generator).
        A worker's first activation never drops: it has no step time to sit out yet."""
        return self.last_step_s is not None and bool(self.dropout) and self.activations.random() < self.dropout

    def skip_dropped_activations(self) -> int:
        """Asynchronous dropout, called as an activation begins (the model received): while the
        activation drops, the worker computes and sends nothing and sleeps one step time, what its
        last activation took on its side (compute, delay, its payload's and a reply's network
        delays); then it steps on the model it holds. Returns the activations dropped."""
        step_s = (self.last_step_s or 0.0) + self.network_since_s
        self.network_since_s = 0.0
        skipped = 0
        while self.drops():
            skipped += 1
            self.dropout_s += step_s
            pause(step_s)
        self.dropped += skipped
        return skipped

    def totals(self) -> dict:
        return {"rank": self.rank, "compute_s": self.compute_s, "delay_s": self.delay_s,
                "network_s": self.network_s, "dropout_s": self.dropout_s, "dropped_activations": self.dropped}
