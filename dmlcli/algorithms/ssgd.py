"""Synchronous SGD."""

from dmlcli.algorithms.base import AlgorithmSpec, SyncAlgorithm


def ssgd(problem, settings):
    """Synchronous SGD over an Allreduce.

    Each worker k computes a mini-batch gradient g_k of its shard's mean loss f_k at w_t;
    the Allreduce gives g = Σ_k (n_k/n) g_k, and every rank applies
        w_{t+1} = prox_{ηr}(w_t − η g).
    With batch size all this is exactly proximal full-batch gradient descent on F.
    (Zinkevich et al. 2010, "Parallelized stochastic gradient descent"; Chen et al. 2016,
    "Revisiting distributed synchronous SGD".)
    """
    eta, batch = settings.lr, settings.batch_size

    def init(w0):
        return w0.copy()

    def local(w, shard):
        X, y = shard.batch(batch)
        return shard.weight * problem.grad_mean(w, X, y), w

    def combine(w, g):
        return problem.reg.prox(w - eta * g, eta)

    return SyncAlgorithm(init, local, combine, model=lambda w: w, message_size=problem.d)


SPEC = AlgorithmSpec("ssgd", "sync", "synchronous SGD: Allreduce of the n_k-weighted gradients, one prox step", ssgd)
