"""What each user did since the engine was built: their most recent items, in memory.

Recommenders are queried with histories, not user ids (see :mod:`shoplm.recommend.base`),
so a fresh event only has to reach the history a user is answered with. This store keeps
the last few items per pseudonym, rebuilt from the event log when the service starts, and
the service appends to it after each durable write.
"""

from __future__ import annotations

import threading

import numpy as np

from shoplm.engine import EVENT_WEIGHTS

#: Event types that say "this user wants this item" (the engine's interaction types).
WANTING_EVENTS = frozenset(EVENT_WEIGHTS)


class SessionStore:
    """The last ``max_items`` wanted items of each user (internal ids, oldest first)."""

    def __init__(self, max_items: int = 50) -> None:
        self.max_items = max_items
        self._recent: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def add(self, users: np.ndarray, items: np.ndarray, events: np.ndarray) -> None:
        """Record events (pseudonyms, internal item ids, event type names) in time order.

        Events that are not about wanting an item (returns, searches without a click) are
        skipped, as the engine's build skips them. Grouping is a dict pass rather than a
        data frame: a request brings a handful of events, and a frame's fixed cost (about
        a millisecond) would dominate it; the replay of a whole log at start is one pass.
        """
        wanted = np.isin(events, list(WANTING_EVENTS)) & (items >= 0)
        grouped: dict[str, list[int]] = {}
        for user, item in zip(users[wanted].tolist(), items[wanted].tolist(), strict=True):
            grouped.setdefault(user, []).append(item)
        with self._lock:
            for user, latest in grouped.items():
                merged = np.concatenate(
                    [self._recent.get(user, np.zeros(0, np.int64)), latest[-self.max_items :]]
                ).astype(np.int64)
                self._recent[user] = merged[-self.max_items :]

    def recent(self, user: str) -> np.ndarray:
        """The user's recent items, oldest first (empty for a user without events)."""
        with self._lock:
            return self._recent.get(user, np.zeros(0, dtype=np.int64))

    def forget(self, user: str) -> None:
        with self._lock:
            self._recent.pop(user, None)
