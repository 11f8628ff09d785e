"""Synthetic linear-model data generated on demand: `synthetic:n=1000,d=20,kind=logistic,...`.

Rows come in fixed blocks of BLOCK_ROWS, block b drawn from its own generator seeded by
(data seed, b), so any row subset can be produced without generating the rest, row i is the same
whichever subset asks for it, and a smaller n gives a prefix of a larger one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from dmlcli.data.source import DatasetInfo, DataSource, csr_with_width
from dmlcli.errors import DataError
from dmlcli.sparse import scipy_sparse

BLOCK_ROWS = 1024
DRAW_BYTES = 64 * 2**20  # dense features are drawn this much at a time (see generate)
KINDS = ("logistic", "linear")

# Tags that keep the weight stream and the row streams apart. They are non-zero because
# SeedSequence pads entropy with zeros, so [seed, 0] would collide with plain [seed].
_ROW_STREAM = 1
_WEIGHT_STREAM = 2


@dataclass(frozen=True)
class SyntheticSpec:
    """The generating distribution: x ~ N(0, I) (or k-sparse N(0,1) entries), y from x·w* plus noise."""

    n: int = 1000
    d: int = 20
    kind: str = "logistic"
    noise: float = 0.1
    sparse: bool = False
    density: float = 0.1
    online: bool = False
    seed: int = 0

    def canonical(self) -> str:
        """The full spec with every key spelled out, so the run manifest pins the data exactly."""
        return (
            f"synthetic:n={self.n},d={self.d},kind={self.kind},noise={self.noise!r},"
            f"sparse={int(self.sparse)},density={self.density!r},online={int(self.online)},seed={self.seed}"
        )

    def nonzeros_per_row(self) -> int:
        """Features set in each row: all d when dense, round(density·d) (at least 1) when sparse."""
        return max(1, round(self.density * self.d)) if self.sparse else self.d


_KEYS = tuple(field.name for field in fields(SyntheticSpec))


def _integer(key: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"synthetic data: {key}={text!r} is not valid; expected an integer") from None


def _flag(key: str, text: str) -> bool:
    if text not in ("0", "1"):
        raise DataError(f"synthetic data: {key}={text!r} is not valid; expected 0 or 1")
    return text == "1"


def _real(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"synthetic data: {key}={text!r} is not valid; expected a number") from None
    if not np.isfinite(value):
        raise DataError(f"synthetic data: {key}={text!r} is not valid; expected a finite number")
    return value


def _kind(key: str, text: str) -> str:
    if text not in KINDS:
        raise DataError(f"synthetic data: {key}={text!r} is not valid; expected one of {', '.join(KINDS)}")
    return text


_PARSERS = {"n": _integer, "d": _integer, "kind": _kind, "noise": _real, "sparse": _flag,
            "density": _real, "online": _flag, "seed": _integer}


def _check_ranges(spec: SyntheticSpec) -> None:
    """Reject values that parse but describe no distribution."""
    problems = (
        ("n", spec.n, spec.n >= 1, "an integer >= 1"),
        ("d", spec.d, spec.d >= 1, "an integer >= 1"),
        ("noise", spec.noise, spec.noise >= 0, "a number >= 0"),
        ("density", spec.density, 0 < spec.density <= 1, "a number in (0, 1]"),
        ("seed", spec.seed, spec.seed >= 0, "an integer >= 0"),
    )
    for key, value, ok, expected in problems:
        if not ok:
            raise DataError(f"synthetic data: {key}={value} is out of range; expected {expected}")


def parse_synthetic_spec(spec: str) -> SyntheticSpec:
    """Parse `synthetic` or `synthetic:key=value,...` (every key optional) into a checked SyntheticSpec."""
    body = spec.partition(":")[2]
    values = {}
    for item in body.split(",") if body.strip() else []:
        key, equals, text = (part.strip() for part in item.partition("="))
        if not equals or not key:
            raise DataError(f"synthetic data: {item.strip()!r} is not key=value; expected keys {', '.join(_KEYS)}")
        if key not in _PARSERS:
            raise DataError(f"synthetic data: unknown key {key!r}; expected one of {', '.join(_KEYS)}")
        if key in values:
            raise DataError(f"synthetic data: key {key!r} is given twice")
        values[key] = _PARSERS[key](key, text)
    parsed = SyntheticSpec(**values)
    _check_ranges(parsed)
    return parsed


def true_weights(spec: SyntheticSpec) -> np.ndarray:
    """w*, drawn from the data seed and scaled so that the margin x·w* has unit variance."""
    rng = np.random.default_rng([spec.seed, _WEIGHT_STREAM])
    return rng.standard_normal(spec.d) / np.sqrt(spec.nonzeros_per_row())


def _sparse_features(rng: np.random.Generator, m: int, d: int, per_row: int):
    """m rows with `per_row` distinct random columns each, holding standard normal values."""
    columns = np.array([np.sort(rng.choice(d, size=per_row, replace=False)) for _ in range(m)], dtype=np.int64)
    values = rng.standard_normal(m * per_row)
    indptr = np.arange(0, m * per_row + 1, per_row, dtype=np.int64)
    return scipy_sparse().csr_matrix((values, columns.reshape(-1), indptr), shape=(m, d))


def generate(spec: SyntheticSpec, weights: np.ndarray, rng: np.random.Generator, m: int, keep=None):
    """Draw m samples (features, labels): labels ±1 = sign(x·w* + noise·ε) for logistic, x·w* + noise·ε for linear.

    `keep` (sorted positions in [0, m)) returns only those rows' features, labels still for all m.
    Dense features are drawn DRAW_BYTES at a time, the same numbers in the same order as one draw of
    (m, d), so memory follows the rows kept: a block of 1,024 rows at d = 10⁶ would be 8 GB."""
    if spec.sparse:
        features = _sparse_features(rng, m, spec.d, spec.nonzeros_per_row())
        response = features @ weights
        if keep is not None:
            features = features[keep]
    else:
        rows_per_draw = max(1, DRAW_BYTES // (8 * spec.d))
        response, kept = np.empty(m), []
        for start in range(0, m, rows_per_draw):
            part = rng.standard_normal((min(rows_per_draw, m - start), spec.d))
            response[start:start + part.shape[0]] = part @ weights
            if keep is None:
                kept.append(part)
            else:
                wanted = keep[(keep >= start) & (keep < start + part.shape[0])]
                kept.append(part[wanted - start])
        features = kept[0] if len(kept) == 1 else np.vstack(kept)
    response += spec.noise * rng.standard_normal(m)
    if spec.kind == "logistic":
        return features, np.where(response >= 0, 1.0, -1.0)
    return features, response


class SyntheticSource(DataSource):
    """A fixed n-row sample of the synthetic distribution, plus fresh draws when online."""

    def __init__(self, spec: SyntheticSpec):
        super().__init__(spec.canonical())
        self.spec = spec
        self.online = spec.online
        self._weights = true_weights(spec)

    def _block(self, block: int, keep):
        """Rows [block·BLOCK_ROWS, ...) of the fixed sample, features only at positions `keep` in the
        block: always a full block is drawn, then the labels cut at n."""
        rng = np.random.default_rng([self.spec.seed, _ROW_STREAM, block])
        features, labels = generate(self.spec, self._weights, rng, BLOCK_ROWS, keep)
        return features, labels[:min(BLOCK_ROWS, self.spec.n - block * BLOCK_ROWS)]

    def _scan(self) -> DatasetInfo:
        block_count = -(-self.spec.n // BLOCK_ROWS)
        nothing = np.empty(0, dtype=np.int64)
        labels = np.concatenate([self._block(block, nothing)[1] for block in range(block_count)])
        return DatasetInfo(n=self.spec.n, d=self.spec.d, y=labels, sparse=self.spec.sparse)

    def _read_sorted(self, rows: np.ndarray, width: int):
        blocks = rows // BLOCK_ROWS
        bounds = np.flatnonzero(np.diff(blocks)) + 1
        pieces = []
        for in_block in np.split(rows, bounds):
            block = int(in_block[0]) // BLOCK_ROWS
            pieces.append(self._block(block, in_block - block * BLOCK_ROWS)[0])
        if self.spec.sparse:
            return csr_with_width(scipy_sparse().vstack(pieces, format="csr"), width)
        return np.ascontiguousarray(np.vstack(pieces))

    def draw(self, rng: np.random.Generator, m: int):
        """m fresh samples (features, labels) from the generating distribution, using the caller's rng."""
        if not self.online:
            return super().draw(rng, m)
        if m < 0:
            raise ValueError(f"cannot draw {m} samples")
        return generate(self.spec, self._weights, rng, int(m))
