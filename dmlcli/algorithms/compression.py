"""Compressed messages for the algorithms whose message is a gradient or a model change
(ssgd, ma, dadam, storm): `--compressor` and `--error-feedback`.

Such an algorithm's message is its client's vector weighted by shard.weight. `compressed`
sends the unweighted vector as the payload of a compressor (dmlcli.compressors) instead: the
runtime Allgathers the payloads, and every rank decodes them and sums them, each weighted by
its client's share, so the algorithm's combine sees the same kind of sum as before. Error
feedback (Karimireddy et al. 2019) keeps, per client, what the compressor left out and adds it
to the next message; it is for the biased compressors, and refused with the unbiased ones,
whose rescaling makes the memory grow without bound (measured in dmlcli.compressors).
"""

import click
import numpy as np

from dmlcli.algorithms.base import Param, SyncAlgorithm
from dmlcli.compressors import parse_compressor, with_error_feedback
from dmlcli.errors import UsageError

COMPRESSION_STREAM = 12  # seeds each client's compressor draws (the client sampler's stream is 11)


class CompressorSpec(click.ParamType):
    """none, qsgd:S, topk:R, randk:R, sign or filter:EPS, checked when given; kept as its text."""

    name = "SPEC"

    def convert(self, value, param, ctx):
        try:
            parse_compressor(str(value))
        except UsageError as error:
            self.fail(str(error), param, ctx)
        return str(value)


COMPRESSOR = CompressorSpec()

COMPRESSION_PARAMS = (
    Param("compressor", COMPRESSOR, "none",
          "compress each message: none, qsgd:S (S levels), topk:R, randk:R (R the fraction kept), sign, filter:EPS"),
    Param("error_feedback", bool, False,
          "add what the compressor left out to the client's next message (for the biased topk, sign, filter)"),
)


def compressed(algorithm: SyncAlgorithm, spec: str, error_feedback: bool, seed: int) -> SyncAlgorithm:
    """`algorithm` with its messages travelling as payloads of the compressor `spec`; itself for none."""
    compressor = parse_compressor(spec)
    if compressor.name == "none":
        if error_feedback:
            raise UsageError("--error-feedback needs a --compressor other than none")
        return algorithm
    if error_feedback and compressor.unbiased:
        raise UsageError(f"--error-feedback with the unbiased compressor {spec} grows without bound; "
                         "use it with topk, sign or filter")
    if algorithm.overlap or algorithm.more_phases or algorithm.compressor:
        raise UsageError("--compressor works with one uncompressed Allreduce per round (not with --overlap)")

    def init(w0):
        return algorithm.init(w0), np.zeros_like(w0), None  # (the algorithm's state, feedback memory, draws)

    def local(state, shard):
        inner, memory, rng = state
        message, inner = algorithm.local(inner, shard)
        vector = message / shard.weight if shard.weight else message
        if rng is None:  # one stream per client, the same whichever rank serves it
            rng = np.random.default_rng([seed, COMPRESSION_STREAM, shard.client + 1])
        if error_feedback:
            payload, memory = with_error_feedback(compressor, vector, memory, rng)
        else:
            payload = compressor.encode(vector, rng)
        return payload, (inner, memory, rng)

    def combine(state, summed):
        inner, memory, rng = state
        return algorithm.combine(inner, summed), memory, rng

    return algorithm._replace(init=init, local=local, combine=combine, compressor=compressor,
                              model=lambda state: algorithm.model(state[0]))
