"""Decentralised parallel SGD (gossip SGD): no server, every worker mixes with its neighbours."""

import click

from dmlcli.algorithms.base import AlgorithmSpec, GossipAlgorithm, Param

TOPOLOGY_NAMES = ("ring", "torus", "exponential", "random-pairs")  # runtime.gossip.TOPOLOGIES


def dpsgd(problem, settings, topology="ring"):
    """Decentralised parallel SGD (D-PSGD), synchronous, over a topology of the workers.

    Each worker k keeps its own model x_k. Each round it draws a mini-batch of its shard, computes
    g_k = ∇f_k(x_k) (the loss part; the regulariser goes through its prox), swaps x_k with its
    neighbours and mixes:
        x_k ← prox_{ηr}(Σ_j W_kj x_j − η g_k),
    W the topology's symmetric, doubly stochastic mixing matrix (see runtime.gossip: ring, 2-D
    torus, exponential graph, random pairs). The CSV evaluates F at x̄ = mean_k x_k and logs
    the consensus distance mean_k ‖x_k − x̄‖². With an l2 or no regulariser the prox is linear
    and W's columns sum to one, so x̄_{t+1} = prox_{ηr}(x̄_t − η mean_k g_k(x_k)): ssgd's step,
    with gradients taken at the local models. With a constant step x̄ settles O(η)-close to the
    optimum, not at it: the local gradients differ at x*. (Lian et al. 2017, "Can decentralized
    algorithms outperform centralized algorithms?"; Nedić & Ozdaglar 2009 for the deterministic DGD.)

    With --on-failure continue a node whose step fails leaves the gossip and the others re-wire
    over the survivors (runtime.gossip, Failures): x̄ then heads for the minimiser of the
    survivors' objective, as the lost shard's rows are no longer trained on (F still counts them).
    """
    eta, batch = settings.lr, settings.batch_size

    def init(w0):
        return w0.copy(), None

    def local(state, shard):
        x, _ = state
        X, y = shard.batch(batch)
        return x, (x, problem.grad_mean(x, X, y))

    def mix(state, mixed):
        _, g = state
        return problem.reg.prox(mixed - eta * g, eta), None

    return GossipAlgorithm(init, local, mix, model=lambda state: state[0], message_size=problem.d, topology=topology)


SPEC = AlgorithmSpec(
    "dpsgd", "gossip", "decentralised parallel SGD: local SGD steps mixed with the neighbours' models over a topology",
    dpsgd,
    params=(Param("topology", click.Choice(TOPOLOGY_NAMES), "ring",
                  "who gossips with whom: ring, 2-D torus, exponential graph, or random pairs drawn each round"),),
    extra_columns=("consensus",),
    client_sampling=False,
)
