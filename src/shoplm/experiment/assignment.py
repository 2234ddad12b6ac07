"""Deterministic, sticky assignment of users to variants.

A user's variant is a pure function of ``(experiment name, salt, pseudonymised user)``:
no table of assignments to store, replicate or lose, the same answer on every replica and
after every restart, and a different, independent shuffle for every experiment (so users
who drew the treatment in one test are not the same users in the next).

The hash is FNV-1a (64 bit) over the UTF-8 bytes, followed by the SplitMix64 finaliser to
spread FNV's weak low bits; it runs column by column over a byte matrix, so a batch of a
million users is ~30 numpy passes rather than a million Python calls. The result is reduced
to one of :data:`BUCKETS` buckets, and each variant owns a contiguous range of buckets in
config order. A variant's range depends only on its own share and those before it, so a new
variant appended at the end, with its share taken from the last variant, moves no one but
some of the last variant's users.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from shoplm.experiment.config import ExperimentConfig

#: Resolution of traffic shares: 0.01 % of users.
BUCKETS = 10_000

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1
_SEPARATOR = "\x1f"  # ASCII unit separator: never in a name, so fields cannot run together


def buckets(experiment: str, salt: str, users: np.ndarray | pd.Series | list[str]) -> np.ndarray:
    """The bucket in ``[0, BUCKETS)`` of every user, as int64 (each distinct user hashed once)."""
    codes, uniques = pd.factorize(pd.Series(np.asarray(users, dtype=object)).astype(str))
    hashed = _hash_strings(f"{experiment}{_SEPARATOR}{salt}{_SEPARATOR}", uniques.to_numpy())
    return (hashed % np.uint64(BUCKETS)).astype(np.int64)[codes]


def variant_bounds(shares: list[float]) -> np.ndarray:
    """Exclusive upper bucket of each variant; the last is always :data:`BUCKETS`."""
    bounds = np.rint(np.cumsum(shares) * BUCKETS).astype(np.int64)
    bounds[-1] = BUCKETS
    widths = np.diff(np.concatenate([[0], bounds]))
    if np.any(widths < 1):
        raise ValueError(f"every share must cover at least 1/{BUCKETS} of the traffic: {shares}")
    return bounds


def assign(config: ExperimentConfig, users: np.ndarray | pd.Series | list[str]) -> np.ndarray:
    """The variant index (position in ``config.variants``) of every user."""
    return np.searchsorted(
        variant_bounds(config.shares), buckets(config.name, config.salt, users), side="right"
    )


def assign_names(config: ExperimentConfig, users: np.ndarray | pd.Series | list[str]) -> np.ndarray:
    """The variant name of every user, as an object array."""
    return np.asarray(config.variant_names, dtype=object)[assign(config, users)]


def _hash_strings(prefix: str, values: np.ndarray) -> np.ndarray:
    """FNV-1a of ``prefix + value`` for every value, then SplitMix64's finaliser (uint64)."""
    state = _FNV_OFFSET
    for byte in prefix.encode("utf-8"):
        state = ((state ^ byte) * _FNV_PRIME) & _MASK64
    encoded = [v.encode("utf-8") for v in values]
    lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
    width = int(lengths.max()) if lengths.size else 0
    # one zero-padded row of bytes per value; the padding is masked out below
    matrix = np.array(encoded, dtype=f"S{max(width, 1)}").view(np.uint8)
    matrix = matrix.reshape(len(encoded), max(width, 1))
    h = np.full(len(encoded), state, dtype=np.uint64)
    prime = np.uint64(_FNV_PRIME)
    with np.errstate(over="ignore"):
        for col in range(width):
            h = np.where(col < lengths, (h ^ matrix[:, col]) * prime, h)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h
