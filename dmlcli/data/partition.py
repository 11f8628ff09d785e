"""Dividing training rows among workers, and holding out a test set.

Every scheme is seeded by the run seed through its own stream tag, so the test split, the shuffle
and the label skew are independent of one another yet reproducible.
"""

from __future__ import annotations

import numpy as np

from dmlcli.errors import UsageError

PARTITION_SCHEMES = ("contiguous", "shuffle", "sample", "dirichlet:ALPHA")

# Stream tags; non-zero because SeedSequence pads entropy with zeros ([seed, 0] == [seed]).
_SPLIT_STREAM = 1
_SHUFFLE_STREAM = 2
_SAMPLE_STREAM = 3
_DIRICHLET_STREAM = 4

_ALLOWED = "expected one of contiguous, shuffle, sample, dirichlet:ALPHA with ALPHA > 0"


def parse_scheme(scheme: str) -> tuple[str, float | None]:
    """(scheme name, ALPHA or None) of a partition scheme, or a UsageError naming the allowed ones."""
    if scheme in ("contiguous", "shuffle", "sample"):
        return scheme, None
    name, colon, text = scheme.partition(":")
    if name != "dirichlet" or not colon:
        raise UsageError(f"unknown partition scheme {scheme!r}; {_ALLOWED}")
    try:
        alpha = float(text)
    except ValueError:
        alpha = float("nan")
    if not 0 < alpha < float("inf"):
        raise UsageError(f"bad partition scheme {scheme!r}: ALPHA {text!r} is not a positive number; {_ALLOWED}")
    return name, alpha


def contiguous_blocks(n: int, workers: int) -> list[np.ndarray]:
    """0..n-1 in `workers` consecutive blocks whose sizes differ by at most one, larger blocks first."""
    return np.array_split(np.arange(n, dtype=np.int64), workers)


def shuffled_blocks(n: int, workers: int, seed: int) -> list[np.ndarray]:
    """A seeded permutation cut like contiguous_blocks, each block sorted for sequential reading."""
    permutation = np.random.default_rng([seed, _SHUFFLE_STREAM]).permutation(n)
    return [np.sort(block) for block in np.array_split(permutation.astype(np.int64), workers)]


def sampled_blocks(n: int, workers: int, seed: int) -> list[np.ndarray]:
    """Per worker, as many rows as its contiguous block, drawn uniformly with replacement (sorted)."""
    sizes = [block.size for block in np.array_split(np.arange(n), workers)]
    return [
        np.sort(np.random.default_rng([seed, _SAMPLE_STREAM, worker]).integers(0, n, size=size, dtype=np.int64))
        for worker, size in enumerate(sizes)
    ]


def _give_every_worker_a_row(parts: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Move single random rows from the largest part to each empty one (possible since workers <= n)."""
    parts = list(parts)
    for empty in [worker for worker, part in enumerate(parts) if part.size == 0]:
        largest = max(range(len(parts)), key=lambda worker: parts[worker].size)
        taken = int(rng.integers(parts[largest].size))
        parts[empty] = parts[largest][taken:taken + 1]
        parts[largest] = np.delete(parts[largest], taken)
    return parts


def dirichlet_blocks(labels: np.ndarray, workers: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Label-skewed parts: each label's rows are split among workers in Dirichlet(alpha·1) proportions.

    Small alpha gives each worker few labels; large alpha approaches an even mix.
    """
    rng = np.random.default_rng([seed, _DIRICHLET_STREAM])
    pieces: list[list[np.ndarray]] = [[] for _ in range(workers)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(workers, alpha))
        cuts = np.minimum(np.round(np.cumsum(shares)[:-1] * members.size).astype(np.int64), members.size)
        for worker, piece in enumerate(np.split(members, cuts)):
            pieces[worker].append(piece)
    parts = [np.concatenate(worker_pieces).astype(np.int64) for worker_pieces in pieces]
    return [np.sort(part) for part in _give_every_worker_a_row(parts, rng)]


def partition(scheme: str, n: int, workers: int, seed: int, labels: np.ndarray) -> list[np.ndarray]:
    """Row indices (int64) for each of `workers` workers under `scheme` (see PARTITION_SCHEMES).

    Every worker gets at least one row. contiguous and shuffle cover 0..n-1 exactly once, whatever
    `workers` is; sample draws with replacement; dirichlet covers 0..n-1 with label skew.
    `labels` (length n) is used only by dirichlet.
    """
    name, alpha = parse_scheme(scheme)
    if workers < 1:
        raise UsageError(f"need at least 1 worker, got {workers}")
    if workers > n:
        raise UsageError(f"more workers ({workers}) than training samples ({n})")
    if name == "contiguous":
        return contiguous_blocks(n, workers)
    if name == "shuffle":
        return shuffled_blocks(n, workers, seed)
    if name == "sample":
        return sampled_blocks(n, workers, seed)
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"dirichlet partition needs one label per row: {labels.shape} labels for {n} rows")
    return dirichlet_blocks(labels, workers, alpha, seed)


def held_out_count(n: int, fraction: float) -> int:
    """Rows held out: round(fraction·n), at least 1 when fraction > 0, always leaving 1 to train on."""
    if fraction == 0:
        return 0
    return min(n - 1, max(1, round(fraction * n)))


def split_test(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), each sorted, a seeded random split of 0..n-1 with about fraction·n test rows."""
    if not 0 <= fraction < 1:
        raise UsageError(f"test fraction {fraction} is out of range; expected a number in [0, 1)")
    if n < 1:
        raise UsageError(f"cannot split {n} samples into train and test; expected at least 1")
    held_out = held_out_count(n, fraction)
    permutation = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(n).astype(np.int64)
    return np.sort(permutation[held_out:]), np.sort(permutation[:held_out])
