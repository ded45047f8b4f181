"""Grouped splits: every sample of a group (plate, field of view) lands in the same part.

Samples from one plate (or one microscope field) share seeding, density and illumination, so a
split that lets a group straddle train and test measures memory, not generalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

IndexArray = npt.NDArray[np.int64]


def _ordered_groups(
    groups: npt.ArrayLike, seed: int
) -> tuple[np.ndarray, np.ndarray, list[IndexArray]]:
    """Unique groups in a seeded order (largest first, ties shuffled), their members."""
    values = np.asarray(groups)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"groups must be a non-empty 1-D array, got shape {values.shape}")
    unique, inverse = np.unique(values, return_inverse=True)
    members = [np.flatnonzero(inverse == g).astype(np.int64) for g in range(len(unique))]
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(unique))
    sizes = np.array([len(members[g]) for g in shuffled])
    order = shuffled[np.argsort(-sizes, kind="stable")]
    return unique, order, members


def grouped_split(
    groups: npt.ArrayLike, fractions: Sequence[float], seed: int = 0
) -> list[IndexArray]:
    """Split sample indices into ``len(fractions)`` parts of about those fractions, by group.

    Args:
        groups: (N,) group of each sample.
        fractions: target share of samples per part, e.g. (0.7, 0.15, 0.15); normalised to 1.
        seed: decides which groups go where.

    Returns:
        One sorted (n_i,) int64 index array per part; every part gets at least one group when
        there are at least as many groups as parts.

    Raises:
        ValueError: fewer groups than parts, or fractions not positive.
    """
    shares = np.asarray(fractions, dtype=np.float64)
    if shares.ndim != 1 or len(shares) == 0 or np.any(shares <= 0):
        raise ValueError(f"fractions must be positive, got {list(fractions)}")
    unique, order, members = _ordered_groups(groups, seed)
    if len(unique) < len(shares):
        raise ValueError(f"{len(unique)} groups cannot fill {len(shares)} parts")
    targets = shares / shares.sum() * sum(len(m) for m in members)
    sizes = np.zeros(len(shares))
    parts: list[list[IndexArray]] = [[] for _ in shares]
    for position, group in enumerate(order):
        empty = [i for i, part in enumerate(parts) if not part]
        remaining = len(order) - position
        candidates = empty if len(empty) >= remaining else list(range(len(shares)))
        best = max(candidates, key=lambda i: (targets[i] - sizes[i], -i))
        parts[best].append(members[group])
        sizes[best] += len(members[group])
    return [np.sort(np.concatenate(part)) for part in parts]


def grouped_kfold(
    groups: npt.ArrayLike,
    k: int,
    seed: int = 0,
    labels: npt.ArrayLike | None = None,
) -> list[tuple[IndexArray, IndexArray]]:
    """K folds of (train, test) indices in which no group straddles train and test.

    Groups are dealt largest first to the fold that currently holds the fewest samples of the
    group's majority label (then the fewest samples), so with ``labels`` the folds are roughly
    stratified as well as balanced.

    Args:
        groups: (N,) group of each sample.
        k: number of folds, 2 <= k <= number of groups.
        seed: shuffles groups of equal size.
        labels: optional (N,) int labels to stratify by.

    Returns:
        k pairs (train, test) of sorted int64 index arrays; the test parts partition 0..N-1.
    """
    unique, order, members = _ordered_groups(groups, seed)
    if not 2 <= k <= len(unique):
        raise ValueError(f"k must be in 2..{len(unique)} (the number of groups), got {k}")
    y = np.zeros(sum(len(m) for m in members), np.int64) if labels is None else np.asarray(labels)
    classes = np.unique(y)
    per_label = np.zeros((k, len(classes)))
    totals = np.zeros(k)
    folds: list[list[IndexArray]] = [[] for _ in range(k)]
    for group in order:
        index = members[group]
        values, counts = np.unique(y[index], return_counts=True)
        column = int(np.searchsorted(classes, values[np.argmax(counts)]))
        best = min(range(k), key=lambda f: (per_label[f, column], totals[f], f))
        folds[best].append(index)
        per_label[best] += [np.sum(y[index] == c) for c in classes]
        totals[best] += len(index)
    everything = np.arange(len(y), dtype=np.int64)
    out = []
    for fold in folds:
        test = np.sort(np.concatenate(fold))
        out.append((np.setdiff1d(everything, test).astype(np.int64), test))
    return out
