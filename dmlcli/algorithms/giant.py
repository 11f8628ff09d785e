"""GIANT: globally improved approximate Newton."""

from typing import NamedTuple

import click
import numpy as np

from dmlcli.algorithms.base import AlgorithmSpec, Param, Phase, Report, SyncAlgorithm
from dmlcli.errors import UsageError
from dmlcli.problems.cg import conjugate_gradient

CG_RTOL = 1e-10  # CG stops once ‖H p − g‖ ≤ CG_RTOL ‖g‖ (or after --cg-iters iterations)
BACKTRACK = 0.5  # the candidate steps are t_j = BACKTRACK**j, j = 0 … J − 1
ARMIJO = 1e-4  # sufficient decrease: F(w − t p) ≤ F(w) − ARMIJO · t · gᵀp
LINE_SEARCHES = ("armijo", "best")


class GiantState(NamedTuple):
    w: np.ndarray  # the model
    g: np.ndarray  # ∇F(w), from the gradient phase
    F: float  # F(w), from the gradient phase
    p: np.ndarray  # the mean of the local Newton directions, from the direction phase
    step: float  # the line search's step t of the last round (NaN before the first)


def giant(problem, settings, cg_iters=50, line_search_steps=10, line_search="armijo"):
    """GIANT, synchronous, every worker taking part in every round; three Allreduces a round.

    f_k is the mean loss of worker k's shard, w_k = n_k/n, F = Σ_k w_k f_k + r with r = (λ/2)‖w‖².
    1. gradient: one Allreduce of Σ_k w_k [∇f_k(w), f_k(w)] gives, on every rank,
           g = ∇F(w) = Σ_k w_k ∇f_k(w) + λw   and   F(w).
    2. direction: worker k solves its local Newton system
           (∇²f_k(w) + λI) p_k = g
       by conjugate gradients (at most --cg-iters iterations, relative residual 1e-10), with
       Hessian-vector products on its own rows; one Allreduce gives p = Σ_k w_k p_k.
    3. line search: worker k evaluates f_k(w − t_j p) at the candidate steps t_j = 2^−j,
       j = 0 … J − 1 (J = --line-search-steps); one Allreduce of Σ_k w_k [f_k(w − t_j p)]_j gives
       F_j = F(w − t_j p) for every j on every rank, which takes (--line-search armijo, the
       paper's) the largest t_j with the Armijo decrease
           F_j ≤ F(w) − 10⁻⁴ t_j max(gᵀp, 0),
       or (--line-search best) the t_j of least F_j, which costs no more: every candidate's
       loss is in the one Allreduce either way. Armijo with no candidate of sufficient decrease
       falls back to best, and best takes no step (t = 0) unless its F_j is below F(w) (F does
       not decrease along p at any candidate, e.g. at the optimum to rounding). w ← w − t p, so
       F never increases from round to round; the CSV's `step` is t (NaN before the first round).
    A worker's CG stops at a direction without curvature (possible only with no l2 term) and
    keeps its iterate so far, so every p_k, and p, has gᵀp ≥ 0: −p is a descent direction.
    The paper's mean of the p_k is uniform (its shards are equal); weighted by n_k/n here, so that
    clients spread over fewer workers give the same p. With one worker p is the Newton direction
    (to CG's tolerance) and this is Newton's method with a backtracking line search.
    Every round uses every row of every shard (--batch-size all); `updates` counts one per worker
    per round, `epochs` one pass per round although the CG and the line search read the rows again.
    --lr is not used. The l1 part of an elastic or l1 regulariser would make F non-smooth (no
    Hessian, no Newton step): refused. (Wang et al. 2018, "GIANT: globally improved approximate
    Newton method for distributed optimization".)
    """
    d, l2, reg = problem.d, problem.reg.l2, problem.reg
    if problem.reg.l1 > 0.0:
        raise UsageError(f"giant: the l1 part of --reg {reg.name} makes F non-smooth, so it has no Newton step; "
                         "use --reg l2 or none")
    if settings.batch_size is not None:
        raise UsageError(f"giant: every round uses each shard's full gradient, Hessian and losses; "
                         f"use --batch-size all (got {settings.batch_size})")
    if cg_iters < 1:
        raise UsageError(f"giant: --cg-iters must be at least 1, got {cg_iters}")
    if line_search not in LINE_SEARCHES:
        raise UsageError(f"giant: --line-search must be one of {', '.join(LINE_SEARCHES)}, got {line_search!r}")
    if line_search_steps < 1:
        raise UsageError(f"giant: --line-search-steps must be at least 1, got {line_search_steps}")
    steps = BACKTRACK ** np.arange(line_search_steps)

    def init(w0):
        zero = np.zeros_like(w0)
        return GiantState(w0.copy(), zero, float("nan"), zero, float("nan"))

    def gradient_local(state, shard):
        z = shard.X @ state.w
        loss_mean = float(problem.loss.value(z, shard.y).sum()) / shard.n
        gradient = shard.X.T @ problem.loss.dz(z, shard.y) / shard.n
        return shard.weight * np.append(gradient, loss_mean), state

    def gradient_combine(state, summed):
        w = state.w
        return state._replace(g=summed[:d] + l2 * w, F=float(summed[d]) + reg.value(w))  # new arrays

    def direction_local(state, shard):
        X = shard.X
        curvature = problem.loss.dz2(X @ state.w, shard.y) / shard.n

        def hessian_vector(v):
            return X.T @ (curvature * (X @ v)) + l2 * v

        tol = CG_RTOL * float(np.linalg.norm(state.g))
        return shard.weight * conjugate_gradient(hessian_vector, state.g, tol, cg_iters), state

    def direction_combine(state, summed):
        return state._replace(p=summed.copy())  # the runtime reuses its buffer

    def line_search_local(state, shard):
        z, zp = shard.X @ state.w, shard.X @ state.p
        losses = [float(problem.loss.value(z - t * zp, shard.y).sum()) for t in steps]
        return shard.weight * np.array(losses) / shard.n, state

    def line_search_combine(state, summed):
        w, p = state.w, state.p
        values = summed + np.array([reg.value(w - t * p) for t in steps])
        slope = float(state.g @ p)
        sufficient = values <= state.F - ARMIJO * steps * max(slope, 0.0)
        if line_search == "armijo" and sufficient.any():
            t = float(steps[np.argmax(sufficient)])
        elif values.min() < state.F:
            t = float(steps[np.argmin(values)])
        else:
            t = 0.0
        return state._replace(w=w - t * p, step=t)

    report = Report(local=lambda state, shard: np.zeros(0), size=0,
                    columns=lambda state, summed: {"step": state.step})
    return SyncAlgorithm(init, gradient_local, gradient_combine, model=lambda state: state.w, message_size=d + 1,
                         more_phases=(Phase(direction_local, direction_combine, d),
                                      Phase(line_search_local, line_search_combine, line_search_steps)),
                         report=report)


SPEC = AlgorithmSpec(
    "giant", "sync",
    "globally improved approximate Newton: Allreduce the gradient, average the local Newton directions (CG), "
    "backtracking line search on one Allreduce of the candidate losses", giant,
    params=(
        Param("cg_iters", click.IntRange(min=1), 50, "conjugate-gradient iterations at most per local Newton solve"),
        Param("line_search_steps", click.IntRange(min=1), 10,
              "candidate steps 1, 1/2, …, 2^−(J−1) of the backtracking line search (J losses in its Allreduce)"),
        Param("line_search", click.Choice(LINE_SEARCHES), "armijo",
              "armijo: the largest candidate with sufficient decrease (the paper's); best: the candidate of least F"),
    ),
    extra_columns=("step",),
    client_sampling=False,  # the gradient and the line search need every client's rows
    full_batch=True,
)
