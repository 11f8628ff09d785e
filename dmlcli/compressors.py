"""Message compressors Q for the gradient-based algorithms (ALGORITHMS.md, "Communication reduction").

A compressor turns a float64 vector x ∈ R^d into a payload, a 1-D np.uint8 array whose length is
exactly the bytes that travel (the runtime Allgathers payloads and logs their size), and decodes
a payload back to a dense float64 vector. Pure numpy, no MPI; multi-byte fields are little-endian,
so ranks of any byte order read each other's payloads. Randomness comes only from the rng given
to encode, so a seeded run compresses the same way every time.

    spec        unbiased   payload (k = ceil(R·d) computed exactly; m = #{i : |x_i| > EPS})
    none        yes        8d                                 x as float64
    qsgd:S      yes        8 + ceil(d/8) + d·b                norm, sign bits, levels (b = 1, 2 or 4 bytes: the
                                                              smallest unsigned int holding S)
    topk:R      no         12k                                uint32 indices + float64 values
    randk:R     yes        8 + 8k                             uint64 seed + float64 values
    sign        no         8 + ceil(d/8)                      ‖x‖₁/d as float64, sign bits
    filter:EPS  no         12m, or 8d when 12m ≥ 8d           indices + values, or dense

max_bytes(d) is exact for all but filter (its bound is the dense 8d). filter's payload length
varies between ranks: the runtime must exchange the lengths (Allgather one int, then
Allgatherv), and decode needs the exact payload, not a padded buffer.

Choices, measured on d = 10⁶, k = 10⁴ (numpy 2.4, one core):
- top-k selects by np.partition plus an explicit tie rule (9 ms) rather than a stable argsort
  (196 ms); ties at the k-th largest |x| go to the lower indices, so the choice is deterministic.
- rand-k sends the 8-byte seed of its index draw instead of the indices: 8 + 8k bytes instead of
  12k (smaller for every k ≥ 3), and regenerating k indices from the seed costs 0.13 ms per
  payload (14 ms at k = d/2), negligible beside the K decodes' O(d) scatter.
- R is parsed as an exact fraction: with floats, ceil(0.1·30) = ceil(3.0000000000000004) = 4.

Biased compressors take error feedback (with_error_feedback, below).
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from dmlcli.errors import UsageError

_F8 = np.dtype("<f8")
_U4 = np.dtype("<u4")
_U8 = np.dtype("<u8")
_MAX_INDEX = 2**32  # indices travel as uint32
_EXPECTED = "expected none, qsgd:S, topk:R, randk:R, sign or filter:EPS"


@dataclass(frozen=True)
class Compressor:
    """A compressor: name (its spec), whether E[decode(encode(x))] = x, and its three functions.

    encode(x, rng) -> uint8 payload; decode(payload, d) -> float64 vector of length d;
    max_bytes(d) -> an upper bound of len(payload) for d coordinates (exact unless filter).
    """

    name: str
    unbiased: bool
    encode: Callable[[np.ndarray, np.random.Generator], np.ndarray]
    decode: Callable[[np.ndarray, int], np.ndarray]
    max_bytes: Callable[[int], int]
    fixed_size: bool = True  # every payload of d coordinates is max_bytes(d) long (all but filter)


def _bytes(*parts) -> np.ndarray:
    """The concatenated raw bytes of arrays (each already in its wire dtype)."""
    return np.concatenate([np.ascontiguousarray(p).reshape(-1).view(np.uint8) for p in parts])


def _fields(payload: np.ndarray, name: str, *counts: tuple[np.dtype, int]) -> list[np.ndarray]:
    """Split a payload into consecutive fields of (dtype, count); its length must match exactly."""
    payload = np.ascontiguousarray(payload, dtype=np.uint8)
    expected = sum(dtype.itemsize * n for dtype, n in counts)
    if payload.size != expected:
        raise ValueError(f"{name}: payload of {payload.size} bytes, expected {expected}")
    fields, offset = [], 0
    for dtype, n in counts:
        fields.append(np.frombuffer(payload, dtype=dtype, count=n, offset=offset))
        offset += dtype.itemsize * n
    return fields


def _vector(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"compressors take a 1-D vector, got shape {x.shape}")
    if x.size > _MAX_INDEX:
        raise ValueError(f"compressors index at most 2**32 coordinates, got {x.size}")
    return x


def _sparse_decode(name: str, payload: np.ndarray, d: int, k: int) -> np.ndarray:
    idx, vals = _fields(payload, name, (_U4, k), (_F8, k))
    if k and idx.max() >= d:
        raise ValueError(f"{name}: index {idx.max()} out of range for d = {d}")
    out = np.zeros(d)
    out[idx] = vals
    return out


def _kept(ratio: Fraction, d: int) -> int:
    """k = ceil(R·d), exactly (R is a Fraction)."""
    return math.ceil(ratio * d)


def none() -> Compressor:
    """No compression: the float64 vector itself, 8d bytes; decode is exact."""

    def encode(x, rng):
        return _bytes(_vector(x).astype(_F8))

    def decode(payload, d):
        return _fields(payload, "none", (_F8, d))[0].astype(np.float64)

    return Compressor("none", True, encode, decode, lambda d: 8 * d)


def qsgd(levels: int, name: str) -> Compressor:
    """Random dithering with S levels (QSGD, Alistarh et al. 2017), unbiased.

    With r_i = S|x_i|/‖x‖₂ ∈ [0, S], level ξ_i = ⌊r_i⌋ + 1 with probability r_i − ⌊r_i⌋, else ⌊r_i⌋,
    so E ξ_i = r_i and Q(x)_i = ‖x‖₂ sign(x_i) ξ_i / S is unbiased, with variance
    (‖x‖₂/S)² p_i(1 − p_i), p_i = r_i − ⌊r_i⌋. Payload: ‖x‖₂ (float64), one sign bit per
    coordinate (1 = negative), then the levels as uint8/16/32, the smallest holding S:
    8 + ceil(d/8) + d·b bytes. ‖x‖₂ is computed as max|x|·‖x/max|x|‖₂, so it neither overflows
    nor underflows for finite x; a non-finite x encodes as norm NaN and decodes to all NaN.
    """
    level_dtype = np.dtype(f"<u{1 if levels < 2**8 else 2 if levels < 2**16 else 4}")

    def encode(x, rng):
        x = _vector(x)
        a = np.abs(x)
        top = a.max() if x.size else 0.0
        norm = top * np.linalg.norm(x / top) if np.isfinite(top) and top > 0 else top
        xi = np.zeros(x.size, dtype=level_dtype)
        if not np.isfinite(norm):
            norm = np.nan
        elif norm > 0:
            r = a / norm * levels
            xi[:] = np.minimum(np.floor(r + rng.random(x.size)), levels)
        return _bytes(np.array([norm], _F8), np.packbits(x < 0), xi)

    def decode(payload, d):
        norm, bits, xi = _fields(payload, name, (_F8, 1), (np.dtype(np.uint8), (d + 7) // 8), (level_dtype, d))
        signs = np.where(np.unpackbits(bits, count=d).astype(bool), -1.0, 1.0)
        return norm[0] / levels * xi * signs

    return Compressor(name, True, encode, decode, lambda d: 8 + (d + 7) // 8 + d * level_dtype.itemsize)


def topk(ratio: Fraction, name: str) -> Compressor:
    """Top-k sparsification: keep the k = ceil(R·d) largest |x_i| (Stich et al. 2018), biased.

    Ties at the k-th largest |x_i| go to the lower indices. Payload: the k indices (uint32,
    ascending) then their values (float64): exactly 12k bytes, more than none's 8d when R > 2/3.
    """

    def encode(x, rng):
        x = _vector(x)
        d, k = x.size, _kept(ratio, x.size)
        a = np.abs(x)
        if k == 0:
            idx = np.zeros(0, dtype=np.int64)
        else:
            t = np.partition(a, d - k)[d - k]
            above = np.flatnonzero(a > t)
            idx = np.sort(np.concatenate([above, np.flatnonzero(a == t)[: k - above.size]]))
        return _bytes(idx.astype(_U4), x[idx].astype(_F8))

    def decode(payload, d):
        return _sparse_decode(name, payload, d, _kept(ratio, d))

    return Compressor(name, False, encode, decode, lambda d: 12 * _kept(ratio, d))


def randk(ratio: Fraction, name: str) -> Compressor:
    """Random-k sparsification, scaled to be unbiased (Stich et al. 2018; Wangni et al. 2018).

    k = ceil(R·d) coordinates drawn uniformly without replacement, each sent as (d/k)·x_i, so
    E Q(x) = x, with variance x_i²(d/k − 1). The indices are not sent: encode draws a uint64
    seed from rng, picks the indices with default_rng(seed), and decode repeats the draw.
    Payload: seed (8 bytes) then the k scaled values (float64): exactly 8 + 8k bytes.
    """

    def indices(seed: int, d: int, k: int) -> np.ndarray:
        return np.random.default_rng(seed).choice(d, size=k, replace=False, shuffle=False)

    def encode(x, rng):
        x = _vector(x)
        d, k = x.size, _kept(ratio, x.size)
        seed = int(rng.integers(0, 2**64, dtype=np.uint64))
        values = x[indices(seed, d, k)] * (d / k) if k else np.zeros(0)
        return _bytes(np.array([seed], _U8), values.astype(_F8))

    def decode(payload, d):
        k = _kept(ratio, d)
        seed, values = _fields(payload, name, (_U8, 1), (_F8, k))
        out = np.zeros(d)
        out[indices(int(seed[0]), d, k)] = values
        return out

    return Compressor(name, True, encode, decode, lambda d: 8 + 8 * _kept(ratio, d))


def sign() -> Compressor:
    """Scaled sign, ‖x‖₁/d · sign(x) (Bernstein et al. 2018; Karimireddy et al. 2019), biased.

    Payload: ‖x‖₁/d (float64) then one bit per coordinate (1 = negative): 8 + ceil(d/8) bytes.
    One bit has no room for sign(0) = 0: a zero coordinate decodes as +‖x‖₁/d (an all-zero x
    decodes to zeros, since its scale is 0).
    """

    def encode(x, rng):
        x = _vector(x)
        scale = np.abs(x).sum() / x.size if x.size else 0.0
        return _bytes(np.array([scale], _F8), np.packbits(x < 0))

    def decode(payload, d):
        scale, bits = _fields(payload, "sign", (_F8, 1), (np.dtype(np.uint8), (d + 7) // 8))
        return np.where(np.unpackbits(bits, count=d).astype(bool), -scale[0], scale[0])

    return Compressor("sign", False, encode, decode, lambda d: 8 + (d + 7) // 8)


def model_filter(eps: float, name: str) -> Compressor:
    """Model filtering: send only the coordinates whose change exceeds EPS, biased.

    The caller passes the change itself (x = w − w_reference; the algorithm keeps the reference,
    with error feedback the memory plays that role). Sent: the m coordinates with |x_i| > EPS as
    uint32 indices + float64 values, 12m bytes; when 12m ≥ 8d the filtered vector goes dense
    instead (8d bytes, zeros where |x_i| ≤ EPS), so it never costs more than none. decode tells
    the two apart by length: a sparse payload is always shorter than 8d. max_bytes(d) = 8d.
    """

    def encode(x, rng):
        x = _vector(x)
        idx = np.flatnonzero(np.abs(x) > eps)
        if 12 * idx.size >= 8 * x.size:
            return _bytes(np.where(np.abs(x) > eps, x, 0.0).astype(_F8))
        return _bytes(idx.astype(_U4), x[idx].astype(_F8))

    def decode(payload, d):
        size = np.asarray(payload).size
        if size == 8 * d:
            return _fields(payload, name, (_F8, d))[0].astype(np.float64)
        if size % 12 or size > 8 * d:
            raise ValueError(f"{name}: payload of {size} bytes is neither 12m < {8 * d} nor {8 * d}")
        return _sparse_decode(name, payload, d, size // 12)

    return Compressor(name, False, encode, decode, lambda d: 8 * d, fixed_size=False)


_DECIMAL = re.compile(r"(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_compressor(spec: str) -> Compressor:
    """The compressor of a spec: none, qsgd:S, topk:R, randk:R, sign or filter:EPS.

    S is an integer in [1, 2**32 − 1], R a decimal in (0, 1], EPS a finite decimal ≥ 0 (plain
    literals: no sign, '_', 'nan' or 'inf'). Anything else is a UsageError naming the spec.
    """
    name, _, arg = spec.partition(":")
    has_arg = ":" in spec

    def bad(what: str) -> UsageError:
        return UsageError(f"bad compressor {spec!r}: {what}")

    if name in ("none", "sign"):
        if has_arg:
            raise bad(f"{name} takes no parameter; expected {name!r}")
        return none() if name == "none" else sign()
    if name == "qsgd":
        if not re.fullmatch(r"\d+", arg) or not 1 <= int(arg) < 2**32:
            raise bad("expected qsgd:S with S an integer number of levels in [1, 4294967295]")
        return qsgd(int(arg), spec)
    if name in ("topk", "randk"):
        ratio = Fraction(arg) if _DECIMAL.fullmatch(arg) else None
        if ratio is None or not 0 < ratio <= 1:
            raise bad(f"expected {name}:R with R, the fraction of coordinates kept, a number in (0, 1]")
        return (topk if name == "topk" else randk)(ratio, spec)
    if name == "filter":
        eps = float(arg) if _DECIMAL.fullmatch(arg) else math.nan
        if not math.isfinite(eps):
            raise bad("expected filter:EPS with EPS a finite number ≥ 0")
        return model_filter(eps, spec)
    raise UsageError(f"unknown compressor {spec!r}; {_EXPECTED}")


def with_error_feedback(compressor: Compressor, x: np.ndarray, memory: np.ndarray, rng: np.random.Generator):
    """One step of error feedback (Karimireddy et al. 2019, "Error feedback fixes SignSGD").

    p = x + e, payload = encode(p), e ← p − decode(payload): what was not sent is added to the
    next message, so over T steps Σ decode(payload_t) = Σ x_t + e_0 − e_T (up to rounding) and the
    bias of a compressor does not accumulate. Pure: returns (payload, new memory); memory is the
    previous e (zeros at the start) and is not modified.

    Meant for the biased compressors, which are contractive, ‖Q(x) − x‖² ≤ (1 − δ)‖x‖² (top-k
    with δ = k/d, scaled sign with δ = ‖x‖₁²/(d‖x‖₂²) ≥ 1/d), or, for filter, keep |e_i| ≤ EPS.
    The unbiased ones rescale and are not: measured over 60 steps of N(0, I) inputs, d = 40,
    max|e| ends at 2.8 (topk:0.1), 3.8 (sign), 0.46 (filter:0.5), 0.36 (qsgd:16), but 1.3e4
    (qsgd:2) and 1.9e11 (randk:0.2), growing geometrically.
    """
    p = np.asarray(x, dtype=np.float64) + memory
    payload = compressor.encode(p, rng)
    return payload, p - compressor.decode(payload, p.size)
