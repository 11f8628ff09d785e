"""Synchronous SGD."""

from dataclasses import dataclass

import numpy as np

from dmlcli.algorithms.base import APPLIED, DROPPED, HELD, NON_NEGATIVE_INT, AlgorithmSpec, AsyncAlgorithm, Param, SyncAlgorithm
from dmlcli.algorithms.compression import COMPRESSION_PARAMS, compressed
from dmlcli.errors import UsageError


def ssgd(problem, settings, overlap=False, backup=0, compressor="none", error_feedback=False):
    """Synchronous SGD over an Allreduce.

    Each worker k computes a mini-batch gradient g_k of its shard's mean loss f_k at w_t;
    the Allreduce gives g = Σ_k (n_k/n) g_k, and every rank applies
        w_{t+1} = prox_{ηr}(w_t − η g).
    With batch size all this is exactly proximal full-batch gradient descent on F.
    With --overlap the Allreduce of round t runs while round t+1's gradient is computed, and is
    applied after it: w_{t+1} = prox_{ηr}(w_t − η g(w_{t−1})), one step stale. The first round only
    starts the pipeline (w_1 = w_0), and the last round's gradient is computed but never sent.
    With --backup b ≥ 1 it runs on the parameter server instead and each round takes the first
    K − b gradients of w_t to arrive (see backup_workers). --compressor sends each g_k compressed
    (dmlcli.algorithms.compression).
    (Zinkevich et al. 2010, "Parallelized stochastic gradient descent"; Chen et al. 2016,
    "Revisiting distributed synchronous SGD"; Li et al. 2018, "Pipe-SGD".)
    """
    if backup:
        if overlap:
            raise UsageError("--backup and --overlap do not combine: backup rounds apply only gradients of the current model")
        if compressor != "none" or error_feedback:
            raise UsageError("--backup and --compressor do not combine: backup rounds send dense gradients")
        return backup_workers(problem, settings, backup)
    eta, batch = settings.lr, settings.batch_size

    def init(w0):
        return w0.copy()

    def local(w, shard):
        X, y = shard.batch(batch)
        return shard.weight * problem.grad_mean(w, X, y), w

    def combine(w, g):
        return problem.reg.prox(w - eta * g, eta)

    algorithm = SyncAlgorithm(init, local, combine, model=lambda w: w, message_size=problem.d, overlap=overlap)
    return compressed(algorithm, compressor, error_feedback, settings.seed)


@dataclass
class BackupRound:
    """The parameter server's state under --backup: the model w_t (version t) and the sums of the
    gradients of w_t that have arrived so far this round."""

    w: np.ndarray
    weighted_sum: np.ndarray  # Σ n_k g_k over the arrivals
    rows: float = 0.0  # Σ n_k over the arrivals
    arrived: int = 0


def backup_workers(problem, settings, backup):
    """ssgd with b backup workers, on the parameter server (Chen et al. 2016).

    Worker k sends n_k g_k(w_t) and n_k, tagged with the version t of the model it was given.
    The server holds (leaves unanswered) the first K − b − 1 gradients of w_t to arrive; the
    K − b-th completes the round S:
        w_{t+1} = prox_{ηr}(w_t − η Σ_{k∈S} n_k g_k / Σ_{k∈S} n_k),
    and every held worker is answered with w_{t+1}. A gradient of an older model arrives after
    its round is complete: it is dropped and counted, and its worker gets w_{t+1} at once. So
    every applied gradient is of the model it updates, and the b slowest workers of each round
    hold no one up. With b = 0 and B = all this is proximal gradient descent on F. One client
    per worker (--clients and --client-fraction are refused).
    """
    eta, batch, d = settings.lr, settings.batch_size, problem.d
    if backup < 0:
        raise UsageError(f"--backup must be 0 or more, got {backup}")
    quorum = settings.workers - backup  # settings.workers: the clients, one per worker here
    if quorum < 1:
        raise UsageError(f"--backup {backup}: a round needs at least one gradient, so --backup must be below "
                         f"the {settings.workers} workers")

    def server_init(w0):
        return BackupRound(w0.copy(), np.zeros(d))

    def worker_step(state, w, shard):
        X, y = shard.batch(batch)
        payload = np.empty(d + 1)
        payload[:d] = shard.n * problem.grad_mean(w, X, y)
        payload[d] = shard.n
        return payload, state

    def server_update(state, payload, staleness):
        if staleness > 0:  # its round is complete
            return state, DROPPED
        state.weighted_sum += payload[:d]
        state.rows += payload[d]
        state.arrived += 1
        if state.arrived < quorum:
            return state, HELD
        g = state.weighted_sum / state.rows
        state.w = problem.reg.prox(state.w - eta * g, eta)
        state.weighted_sum[:] = 0.0
        state.rows, state.arrived = 0.0, 0
        return state, APPLIED

    return AsyncAlgorithm(server_init, worker_init=lambda w0: None, worker_step=worker_step,
                          server_update=server_update, model=lambda state: state.w, payload_size=d + 1)


SPEC = AlgorithmSpec(
    "ssgd", "sync", "synchronous SGD: Allreduce of the n_k-weighted gradients, one prox step", ssgd,
    params=(
        Param("overlap", bool, False, "reduce round t's gradient while computing round t+1's (updates one step stale)"),
        Param("backup", NON_NEGATIVE_INT, 0,
              "backup workers b: each round applies the first K−b gradients to arrive, on the parameter server, "
              "and drops the late ones"),
        *COMPRESSION_PARAMS,
    ),
    extra_columns=("dropped",),
)
