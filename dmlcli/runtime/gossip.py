"""The decentralised (gossip) loop: no server and no global sum; each worker mixes its model with
its neighbours' over a topology.

Roles. The K worker ranks 1..K are the K nodes of the topology (node k − 1 is rank k, one client
each). Rank 0 holds no data, as in every dmlcli run, and takes no part in the gossip: it is the
coordinator that owns the stop flag and writes the CSV.

A round, on worker k: the algorithm's `local` step on its shard gives the message m_k (dpsgd: its
model x_k); the worker swaps messages with its neighbours of this round (`neighbour_exchange`:
point-to-point Isend/Irecv, one message each way per edge) and runs `mix` with
Σ_j W_kj m_j = W_kk m_k + Σ_{j ∈ N(k)} W_kj m_j. Every FLAG_EVERY-th round a 1-float Iallreduce,
started before the local step and completed after the mixing, carries rank 0's stop flag (time
limit, signals), so every rank leaves after the same round: a stop ends the run at the next such
round. Evaluation rounds are flag rounds too, so rank 0's clock for the CSV row waits for the
workers. With --on-failure continue it goes every round, also carries the failures and is completed
before the exchange (see Failures).

Evaluation (round 0, every --eval-every rounds, the last round): one Allreduce of the models gives
the mean x̄ = Σ_k x_k / K on every rank, a second the consensus distance mean_k ‖x_k − x̄‖²; the CSV
row is F and the test metrics at x̄, with the column `consensus`. The final model is x̄.

Mixing weights W (`TOPOLOGIES`): symmetric and doubly stochastic, so the mean is preserved by
mixing: x̄_{t+1} = x̄_t + mean_k (step of k). Fixed graphs use Metropolis–Hastings weights
W_kj = 1 / (1 + max(deg k, deg j)) on edges and W_kk = 1 − Σ_j W_kj (Xiao & Boyd 2004).
- ring: k ± 1 (mod K); K = 2 gives W = ½·11ᵀ, the complete graph.
- torus: a 2-D r × c torus with the most nearly square factorisation K = r·c, 2 ≤ r ≤ c; node k at
  (k // c, k mod c) with its four wrap-around neighbours (three when r = 2, two when r = c = 2).
  K without such a factorisation (K < 4, primes) is refused.
- exponential: k ± 2^i (mod K) for every 2^i < K (the undirected exponential graph).
- random-pairs: each round a random perfect matching, drawn from a generator seeded by
  (seed, round) on every rank without a message; a pair averages (W = ½, ½), the odd one out
  (odd K) keeps its model for the round.

Counters: bytes_sent counts 8·d per neighbour message, the stop flags (8 bytes per rank per flag round)
and the two evaluation reductions (8·(d + 1) per rank; with continue 8·(1 + K) and 8·(d + K)); as
in the other loops, the evaluator's own loss sums are not counted. The time of the evaluation reductions is evaluation time.

Heterogeneity: a worker sleeps its compute delay after the local step and its network delay
(for all its outgoing messages) before the exchange; --dropout is refused (a node missing from a
round would leave its neighbours waiting, and W would no longer be doubly stochastic).

Failures. With --on-failure abort (the default) any exception ends the run: the launcher aborts
every rank. With continue, a worker whose own computation of round S raises (--crash, the local
step or the mixing; not an abort or a stall of the transport) prints `dmlcli: rank R failed: …;
the run goes on without it`, keeps "rank R failed at step S: …" for the manifest's `failures`,
and still sends its current, unchanged model in round S's exchange, so its neighbours, who do
not know yet, are not left waiting (they mix it in as usual; it keeps its model and mixes
nothing). The news travels in the coordinator's reductions, which grow to [stop, f_1 … f_K] with
f_k the round node k failed in (0: alive; a failed node writes its own slot in every reduction,
so the sum is the round): the per-round reduction of round S + 1 and, if one comes first, the
first evaluation Allreduce of round S, [Σ_k x_k, f_1 … f_K]. Every rank thus learns it from the
same collective and re-wires the same way, with no other message: the topology is rebuilt over
the surviving nodes in node order (`Survivors`: the same rule and weights over the m survivors;
random-pairs draws its matching over them; a torus that m cannot make, m prime or m < 4, is a
ring over them instead). The failed node takes no further part in the gossip, but stays alive
and takes part in every collective (the per-round reduction, the evaluation Allreduces, the
end-of-run gather), as its shard is still part of F on the whole training set. From round S's
evaluation on (the failed node leaves x̄ at once: it knows) x̄ and the consensus distance are
over the survivors, and updates and samples count theirs from round S; the
manifest's worker_steps give a failed node the S − 1 steps it completed. One survivor goes on
alone (local SGD: no neighbours, W = [1]). When no node is left the run ends `failed` (exit 1)
at once, without a further evaluation, the reason the first worker's report; otherwise it ends
`completed` as usual. A gossip algorithm whose message is not its model (message_size ≠ d) has
no unchanged message to send: its failures end the run as with abort.

With continue, the per-round reduction is completed before the exchange instead of after the
mixing: the re-wiring must be known before a round's messages go, and the reduction cannot
carry a failure of the round it overlaps (it was started before the step). It still overlaps
the local step. Bytes: the per-round reduction is 8·(1 + K) per rank and each evaluation
Allreduce 8·(d + K) per rank (abort: 8 and 8·(d + 1), as ever).
"""

from __future__ import annotations

import time

import numpy as np

from dmlcli.comm import RankAborted, Stalled
from dmlcli.errors import UsageError
from dmlcli.runtime.context import Stopwatch
from dmlcli.runtime.evaluate import Counters, is_finite
from dmlcli.runtime.failures import report_failure

# Rounds from one stop flag to the next without --on-failure continue (with it, the flag goes every round:
# it carries the failures). A stop asked for by rank 0 (time limit, signal) ends the run at the next flag
# round. Every round's flag made each round wait for the coordinator, which has no other part in it:
# dpsgd on a ring, d = 100, mini-batches of 64, 2,000 rounds, medians of 3 interleaved runs (2026-11-25,
# 2-core development machine): 0.104 ms a round with 2 workers and 0.371 with 4 (3 and 5 ranks) with a flag
# every round, 0.056 and 0.271 every 8 rounds; bare mpi4py without a flag (tests/bench/bare_dpsgd.py) 0.029
# and 0.179. In an earlier comparison a flag every 4 rounds took 0.079 and 0.249, every 8 0.058 and 0.220.
FLAG_EVERY = 8
PAIRS_STREAM = 12  # seeds the random pairs of each round (setup's sampler stream is 10, sync's clients 11)


class Topology:
    """Who talks to whom in a round, and with which weights; nodes 0..K−1 are ranks 1..K."""

    name = ""
    varies = False  # True: the graph changes every round (random-pairs)

    def __init__(self, nodes: int):
        self.nodes = nodes

    def neighbours(self, node: int, round_: int) -> tuple[list[int], np.ndarray, float]:
        """(peers, their weights W_kj, the node's own weight W_kk) in round `round_` (from 1)."""
        raise NotImplementedError

    def matrix(self, round_: int = 1) -> np.ndarray:
        """The whole K × K mixing matrix of a round (for tests and documentation)."""
        W = np.zeros((self.nodes, self.nodes))
        for k in range(self.nodes):
            peers, weights, own = self.neighbours(k, round_)
            W[k, k] = own
            W[k, peers] = weights
        return W

    def messages(self, round_: int) -> int:
        """Neighbour messages sent in a round, over all nodes (each edge carries one each way)."""
        return sum(len(self.neighbours(k, round_)[0]) for k in range(self.nodes))

    @property
    def max_degree(self) -> int:
        raise NotImplementedError


class FixedGraph(Topology):
    """An undirected graph with Metropolis–Hastings weights, the same every round."""

    def __init__(self, nodes: int, adjacency: list[set[int]]):
        super().__init__(nodes)
        self.adjacency = [sorted(peers - {k}) for k, peers in enumerate(adjacency)]
        degree = [len(peers) for peers in self.adjacency]
        self._rows = []
        for k, peers in enumerate(self.adjacency):
            weights = np.array([1.0 / (1 + max(degree[k], degree[j])) for j in peers])
            self._rows.append((peers, weights, 1.0 - float(weights.sum())))
        self._messages = sum(degree)

    def neighbours(self, node: int, round_: int) -> tuple[list[int], np.ndarray, float]:
        return self._rows[node]

    def messages(self, round_: int) -> int:
        return self._messages

    @property
    def max_degree(self) -> int:
        return max((len(peers) for peers in self.adjacency), default=0)


class Ring(FixedGraph):
    name = "ring"

    def __init__(self, nodes: int, seed: int = 0):
        super().__init__(nodes, [{(k - 1) % nodes, (k + 1) % nodes} for k in range(nodes)])


def torus_shape(nodes: int) -> tuple[int, int]:
    """(r, c): the most nearly square r·c = nodes with 2 ≤ r ≤ c; UsageError if there is none."""
    rows = max((r for r in range(2, int(np.sqrt(nodes)) + 1) if nodes % r == 0), default=None)
    if rows is None:
        raise UsageError(f"--topology torus needs a worker count that is a product r×c with r, c ≥ 2 "
                         f"(4, 6, 8, 9, ...), got {nodes}; use ring or exponential")
    return rows, nodes // rows


class Torus(FixedGraph):
    name = "torus"

    def __init__(self, nodes: int, seed: int = 0):
        self.shape = rows, cols = torus_shape(nodes)
        adjacency = []
        for k in range(nodes):
            i, j = divmod(k, cols)
            adjacency.append({((i - 1) % rows) * cols + j, ((i + 1) % rows) * cols + j,
                              i * cols + (j - 1) % cols, i * cols + (j + 1) % cols})
        super().__init__(nodes, adjacency)


class Exponential(FixedGraph):
    name = "exponential"

    def __init__(self, nodes: int, seed: int = 0):
        hops = [2**i for i in range(max(nodes, 1).bit_length()) if 2**i < nodes]
        super().__init__(nodes, [{(k + s) % nodes for s in hops} | {(k - s) % nodes for s in hops}
                                 for k in range(nodes)])


class RandomPairs(Topology):
    name = "random-pairs"
    varies = True

    def __init__(self, nodes: int, seed: int = 0):
        super().__init__(nodes)
        self.seed = seed
        self._round, self._partner = None, None

    def partners(self, round_: int) -> np.ndarray:
        """Each node's partner in the round, or −1 for the odd one out (odd K)."""
        if self._round != round_:
            order = np.random.default_rng([self.seed, PAIRS_STREAM, round_]).permutation(self.nodes)
            partner = np.full(self.nodes, -1)
            pairs = order[: self.nodes // 2 * 2].reshape(-1, 2)
            partner[pairs[:, 0]], partner[pairs[:, 1]] = pairs[:, 1], pairs[:, 0]
            self._round, self._partner = round_, partner
        return self._partner

    def neighbours(self, node: int, round_: int) -> tuple[list[int], np.ndarray, float]:
        partner = int(self.partners(round_)[node])
        return ([], np.zeros(0), 1.0) if partner < 0 else ([partner], np.array([0.5]), 0.5)

    def messages(self, round_: int) -> int:
        return self.nodes // 2 * 2

    @property
    def max_degree(self) -> int:
        return 1 if self.nodes > 1 else 0


TOPOLOGIES = {cls.name: cls for cls in (Ring, Torus, Exponential, RandomPairs)}


def make_topology(name: str, nodes: int, seed: int) -> Topology:
    if name not in TOPOLOGIES:
        raise UsageError(f"unknown topology {name!r}; choose from {', '.join(TOPOLOGIES)}")
    return TOPOLOGIES[name](nodes, seed)


class Survivors(Topology):
    """The topology `name` rebuilt over the nodes left after failures (--on-failure continue): the
    m survivors, in node order, are the nodes 0..m−1 of make_topology(name, m, seed), with its
    weight rule (Metropolis–Hastings, or ½ for a random pair, drawn over the survivors). Where
    `name` cannot be built over m nodes (a torus of a prime m, or m < 4) it is a ring over them
    (`fallback`). A failed node has no peers and W_kk = 1: W over all K nodes stays symmetric and
    doubly stochastic, and the survivors' block is the rebuilt topology's W. Every rank builds the
    same from the same list of survivors."""

    def __init__(self, name: str, nodes: int, alive, seed: int = 0):
        super().__init__(nodes)
        self.alive = [int(k) for k in alive]
        self._index = {k: i for i, k in enumerate(self.alive)}
        try:
            self.inner, self.fallback = make_topology(name, len(self.alive), seed), False
        except UsageError:
            self.inner, self.fallback = Ring(len(self.alive)), True
        self.name, self.varies = self.inner.name, self.inner.varies

    def neighbours(self, node: int, round_: int) -> tuple[list[int], np.ndarray, float]:
        index = self._index.get(node)
        if index is None:
            return [], np.zeros(0), 1.0
        peers, weights, own = self.inner.neighbours(index, round_)
        return [self.alive[peer] for peer in peers], weights, own

    def messages(self, round_: int) -> int:
        return self.inner.messages(round_)

    @property
    def max_degree(self) -> int:
        return self.inner.max_degree


def check_gossip_run(config, algorithm, workers: int) -> None:
    """Refuse at start-up (every rank) what the gossip loop cannot run. One client per worker is
    already enforced for every family but "sync" (setup.check_clients)."""
    if config.dropout:
        raise UsageError(f"{config.algorithm}: --dropout is not defined for decentralised algorithms "
                         "(a node sitting a round out would leave its neighbours waiting)")
    make_topology(algorithm.topology, workers, config.seed)


def run_gossip(ctx, algorithm) -> tuple[np.ndarray, str]:
    """Run to --rounds or --time-limit; returns (x̄, status). Collective."""
    config, transport, plan = ctx.config, ctx.transport, ctx.plan
    nodes = ctx.workers
    topology = make_topology(algorithm.topology, nodes, config.seed)
    node = ctx.rank - 1  # −1: rank 0, the coordinator
    shard = ctx.shard
    state = algorithm.init(ctx.initial_model())
    d = ctx.problem.d
    # --on-failure continue: a worker's failure is announced and the others go on without it.
    going_on = config.on_failure == "continue" and algorithm.message_size == d
    received = [np.empty(algorithm.message_size) for _ in range(topology.max_degree)]
    flag = np.zeros(1 + nodes if going_on else 1)  # [stop, f_1 … f_K with continue]
    flag_reduction = transport.allreduce_init(flag)  # set up once, started every flag round
    every = 1 if going_on else FLAG_EVERY  # the rounds between flag rounds: with continue it carries the failures
    failed_at = np.zeros(nodes)  # the round each node failed in (0: alive), as every rank knows it
    failed_in = 0  # the round this worker failed in (it knows at once, the others from the next reduction)
    alive = nodes  # nodes taking part: the divisor of x̄ and the consensus distance
    me = ctx.delays
    batch_sizes = np.asarray(plan.batch_sizes)  # one client per worker: node k's is client k's
    samples_per_round = int(np.sum(batch_sizes)) * algorithm.local_steps
    message_bytes = 8 * algorithm.message_size
    counters = Counters(extras={"consensus": None})
    mean = ctx.initial_model()
    watch = Stopwatch()

    def learn(reported: np.ndarray) -> None:
        """The failure rounds a reduction brought (the same on every rank): re-wire over the survivors,
        and take back the updates and samples counted for the failed nodes' lost steps."""
        nonlocal topology, received, alive, samples_per_round
        new = (reported > 0) & (failed_at == 0)
        if not new.any():
            return
        failed_at[new] = reported[new]
        for k in np.flatnonzero(new):
            lost = max(0, counters.round - int(failed_at[k]) + 1)  # rounds counted from its failed one on
            counters.updates -= lost * algorithm.local_steps
            counters.samples -= lost * int(batch_sizes[k]) * algorithm.local_steps
        survivors = np.flatnonzero(failed_at == 0)
        alive = survivors.size
        samples_per_round = int(np.sum(batch_sizes[survivors])) * algorithm.local_steps
        topology = Survivors(algorithm.topology, nodes, survivors, config.seed)
        received = [np.empty(algorithm.message_size) for _ in range(topology.max_degree)]

    def average() -> tuple[np.ndarray, float] | None:
        """x̄ and mean_k ‖x_k − x̄‖² over the nodes taking part, on every rank: two Allreduces (the
        first also carries the failures, with continue). None when no node is left."""
        buf = np.zeros(d + (nodes if going_on else 1))
        if node >= 0 and not failed_in:
            buf[:d] = algorithm.model(state)
        if going_on and node >= 0:
            buf[d + node] = failed_in
        transport.allreduce(buf)
        if going_on:
            learn(buf[d:].copy())
        counters.bytes_sent += 2 * buf.nbytes * transport.size
        counters.messages += 2 * transport.size
        if not alive:
            return None
        x_bar = buf[:d] / alive
        buf[:] = 0.0
        if node >= 0 and not failed_in:
            buf[0] = float(np.sum((algorithm.model(state) - x_bar) ** 2))
        transport.allreduce(buf)
        return x_bar, float(buf[0]) / alive

    def evaluate() -> bool:
        nonlocal mean
        counters.wall_s = watch.training()
        with watch.evaluating():
            averaged = average()
            if averaged is None:  # no node left: nothing to evaluate, the run ends failed
                return True
            mean, counters.extras["consensus"] = averaged
            metrics = ctx.evaluator.evaluate(mean[None])[0]
        counters.eval_s = watch.eval_s
        if ctx.recorder:
            ctx.recorder.write(counters, metrics)
        return is_finite(metrics)

    def finish(status: str) -> tuple[np.ndarray, str]:
        flag_reduction.free()  # a flag round completes its reduction, and a run ends only on one
        if ctx.rank == 0:  # each node's rounds taken part: a failed one completed the steps before its failure
            ctx.worker_steps = [int(at) - 1 if at else counters.round for at in failed_at]
        return mean, status

    if not evaluate():
        return finish("diverged")
    for round_ in range(1, config.rounds + 1):
        taking_part = node >= 0 and not failed_in
        if node < 0 or not going_on:  # with continue a worker checks inside its step, below: a crash is a failed step
            ctx.check_crash(round_)
        # Also every evaluation round: rank 0 then waits for the workers to reach it before it reads its clock.
        flag_round = round_ % every == 0 or round_ % config.evaluation_interval == 0 or round_ == config.rounds
        if flag_round:
            flag[:] = 0.0
            flag[0] = float(ctx.rank == 0 and ctx.should_stop(watch))
            if going_on and node >= 0:
                flag[1 + node] = failed_in  # the others' slots are 0 here: the sum is every node's failure round
            request = flag_reduction.start()
        if taking_part:
            started = time.perf_counter() if me is not None else 0.0
            if going_on:
                try:
                    ctx.check_crash(round_)
                    message, stepped = algorithm.local(state, shard)
                except (RankAborted, Stalled):
                    raise
                except Exception as error:  # noqa: BLE001 - any failure of the step is reported, not only expected ones
                    report_failure(ctx, error, round_)
                    failed_in = round_
                    message, stepped = algorithm.model(state), None
            else:
                message, stepped = algorithm.local(state, shard)
            message = np.ascontiguousarray(message, dtype=np.float64)
            if me is not None and not failed_in:
                me.wait_after_compute(time.perf_counter() - started, True)
        if going_on:
            # Completed here, before the exchange, and not after the mixing as with abort: a failure
            # announced in it changes who this round's messages go to. A failure in this round's
            # step cannot be in it (it was started before the step): that node still exchanges
            # this round, and the next round's reduction announces it.
            transport.complete(request)
            learn(flag[1:].copy())
            if not alive:
                return finish("failed")
        if taking_part:
            peers, weights, own = topology.neighbours(node, round_)
            if me is not None and me.network is not None and peers:
                me.wait_for_message(message.nbytes * len(peers))
            got = transport.neighbour_exchange(message, [peer + 1 for peer in peers], received[: len(peers)])
            if not failed_in:
                mixed = own * message
                for weight, other in zip(weights, got):
                    mixed += weight * other
                if going_on:
                    try:
                        state = algorithm.mix(stepped, mixed)
                    except (RankAborted, Stalled):
                        raise
                    except Exception as error:  # noqa: BLE001 - as for the local step: it keeps its model
                        report_failure(ctx, error, round_)
                        failed_in = round_
                else:
                    state = algorithm.mix(stepped, mixed)
        if flag_round and not going_on:
            transport.complete(request, patient=ctx.rank == 0)
        sent = topology.messages(round_)
        counters.round = round_
        counters.updates += alive * algorithm.local_steps
        counters.samples += samples_per_round
        counters.bytes_sent += sent * message_bytes + (flag.nbytes * transport.size if flag_round else 0)
        counters.messages += sent + (transport.size if flag_round else 0)
        stop = (flag_round and bool(flag[0] > 0)) or round_ == config.rounds
        ended = ctx.close_round(counters, stop, evaluate)
        if not alive:
            return finish("failed")
        if ended:
            return finish(ended)
    return finish(ctx.end_status())
