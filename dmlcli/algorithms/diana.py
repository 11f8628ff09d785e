"""DIANA: compressed gradient differences."""

import click
import numpy as np

from dmlcli.algorithms.base import AlgorithmSpec, Param, SyncAlgorithm
from dmlcli.algorithms.compression import COMPRESSION_STREAM, COMPRESSOR
from dmlcli.compressors import parse_compressor
from dmlcli.errors import UsageError


def variance_factor(compressor, d: int) -> float:
    """ω with E‖Q(x) − x‖² ≤ ω‖x‖² for an unbiased compressor: 0 for none, d/k − 1 for rand-k,
    min(d/S², √d/S) for S-level dithering (Alistarh et al. 2017, Lemma 3.1)."""
    name, _, arg = compressor.name.partition(":")
    if name == "randk":
        k = compressor.max_bytes(d) // 8 - 1
        return d / k - 1.0
    if name == "qsgd":
        levels = int(arg)
        return min(d / levels**2, np.sqrt(d) / levels)
    return 0.0


def diana(problem, settings, compressor="randk:0.25", alpha=None):
    """DIANA, synchronous, every client taking part in every round.

    Worker k keeps h_k (h_k = 0 at the start) and sends the compressed gradient difference
        Δ_k = Q(g_k − h_k),   then   h_k ← h_k + α Δ_k,
    g_k its mini-batch gradient at w_t. Every rank keeps h = Σ_k w_k h_k (w_k = n_k/n) and, with
    Δ = Σ_k w_k Δ_k, sets
        ĝ = h + Δ,   h ← h + α Δ,   w_{t+1} = prox_{ηr}(w_t − η ĝ).
    Q is unbiased (--compressor none, qsgd:S or randk:R); the payloads are Allgathered and every
    rank decodes them (none goes by Allreduce). h_k learns ∇f_k(w*), so with full local gradients
    the compressed differences vanish and the run converges to the optimum of F, where plain
    compressed SGD stalls at the compressor's noise. --alpha defaults to 1/(ω + 1), the paper's
    largest, ω the compressor's variance factor (rand-k: d/k − 1; S levels: min(d/S², √d/S));
    their step bound is η ≤ 1/(L(1 + 6ω/K)), so a large ω wants a smaller --lr than 1/L. With Q the
    identity this is ssgd (h = Σ_k w_k h_k makes ĝ = Σ_k w_k g_k, up to rounding).
    (Mishchenko, Gorbunov, Takáč, Richtárik 2019, "Distributed learning with compressed
    gradient differences"; Horváth et al. 2019, "Stochastic distributed learning with gradient
    quantization and variance reduction".)
    """
    eta, batch, d = settings.lr, settings.batch_size, problem.d
    quantizer = parse_compressor(compressor)
    if not quantizer.unbiased:
        raise UsageError(f"diana needs an unbiased --compressor (none, qsgd:S or randk:R), got {compressor}")
    alpha = 1.0 / (variance_factor(quantizer, d) + 1.0) if alpha is None else alpha
    if not 0.0 < alpha <= 1.0:
        raise UsageError(f"diana: --alpha must be in (0, 1], got {alpha:g}")
    dense = quantizer.name == "none"

    def init(w0):
        return w0.copy(), 0.0 * w0, 0.0 * w0, None  # (w, h, this client's h_k, its draws)

    def local(state, shard):
        w, h, h_k, rng = state
        if rng is None:
            rng = np.random.default_rng([settings.seed, COMPRESSION_STREAM, shard.client + 1])
        X, y = shard.batch(batch)
        difference = problem.grad_mean(w, X, y) - h_k
        if dense:
            return shard.weight * difference, (w, h, h_k + alpha * difference, rng)
        payload = quantizer.encode(difference, rng)
        sent = quantizer.decode(payload, d)
        return payload, (w, h, h_k + alpha * sent, rng)

    def combine(state, mean_difference):
        w, h, h_k, rng = state
        return problem.reg.prox(w - eta * (h + mean_difference), eta), h + alpha * mean_difference, h_k, rng

    return SyncAlgorithm(init, local, combine, model=lambda state: state[0], message_size=d,
                         compressor=None if dense else quantizer)


SPEC = AlgorithmSpec(
    "diana", "sync", "compressed gradient differences: each worker sends Q(g_k − h_k) and learns h_k ≈ ∇f_k(w*)",
    diana,
    params=(
        Param("compressor", COMPRESSOR, "randk:0.25", "an unbiased compressor: none, qsgd:S or randk:R"),
        Param("alpha", click.FloatRange(0.0, 1.0, min_open=True), None, "step α of the h_k (default 1/(ω + 1))"),
    ),
    client_sampling=False,
)
