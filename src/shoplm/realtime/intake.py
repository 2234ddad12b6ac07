"""Validation of posted events, a request at a time, without building a data frame.

The file loader (:func:`shoplm.data.events.normalise_events`) validates events a chunk of
50,000 at a time through pandas, which costs about 45 ms whatever the chunk's size. A
request holds one to a few hundred events, so paying that per request capped intake at a
few dozen requests a second. :class:`EventValidator` applies the same rules, in the same
order and with the same messages, over plain Python values: the common shapes (an ISO 8601
time, an epoch number, a plain decimal value) are read here, and anything unusual is handed
to the file loader's own parsers, so an odd input gets exactly the file loader's verdict.
``tests/test_realtime.py`` checks the two agree on generated events.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from shoplm.data.clean import clean_one
from shoplm.data.parsing import parse_numbers, parse_timestamps
from shoplm.data.privacy import _EMAIL, _PHONE, Pseudonymiser, _mask_phone
from shoplm.data.schema import EVENT_CODES, EventType

#: An ISO 8601 date or date-time this module reads itself; anything else goes to pandas.
_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?"
    r"(Z|[+-]\d{2}:\d{2})?"
)
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_EPOCH_0 = datetime(1970, 1, 1, tzinfo=UTC)
_EARLIEST_NS = 31_536_000 * 1_000_000_000  # 1971-01-01
_NO_TIME = np.iinfo(np.int64).min

UNKNOWN_EVENT = f"unknown event type (expected one of {', '.join(EVENT_CODES)})"
DUPLICATE = "exact duplicate of an earlier event (same user, item, type, time and fields)"


@dataclass
class CheckedEvents:
    """The outcome of validating one request: rows to store, or the problems found."""

    #: per accepted event: (event_id, pseudonym, item id or None, event, ns or None,
    #: query or None, value or None, session or None), in :data:`EVENT_COLUMNS` order
    rows: list[tuple] = field(default_factory=list)
    #: internal item id of each row (-1: a search without an item)
    items: list[int] = field(default_factory=list)
    #: each problem: row, field, message, input (sorted by row, then field)
    problems: list[dict[str, object]] = field(default_factory=list)


class EventValidator:
    """The event file's rules for posted events.

    ``event_names`` maps the shop's own event names to shoplm's (as in the config).
    """

    def __init__(self, event_names: Mapping[str, str], pseudonymiser: Pseudonymiser) -> None:
        self.event_names = {
            **{e.value: e.value for e in EventType},
            **{k.lower(): str(v) for k, v in event_names.items()},
        }
        self.pseudonymiser = pseudonymiser

    def check(
        self, records: Sequence[Mapping[str, object]], item_ids: pd.Index, deleted: np.ndarray
    ) -> CheckedEvents:
        """Validate ``records`` (fields of :class:`~shoplm.serve.schemas.EventIn`).

        ``item_ids`` is the live catalogue's index (engine items plus items added since)
        and ``deleted`` its mask of withdrawn items.
        """
        out = CheckedEvents()
        problems = out.problems
        n = len(records)
        users = [_text(r.get("user_id")) for r in records]
        raw_events = [_text(r.get("event")).lower() for r in records]
        events = [self.event_names.get(e) if e else EventType.PURCHASE.value for e in raw_events]
        items = [_text(r.get("item_id")) for r in records]
        keep = [True] * n
        for i in range(n):
            if not users[i]:
                keep[i] = False
                problems.append(_problem(i, "user_id", "missing user_id"))
            elif events[i] is None:
                keep[i] = False
                problems.append(_problem(i, "event", UNKNOWN_EVENT, raw_events[i]))
        index = [-1] * n
        for i in range(n):
            if not items[i]:
                if keep[i] and events[i] != EventType.SEARCH.value:
                    keep[i] = False
                    problems.append(_problem(i, "item_id", "missing item_id"))
                continue
            found = item_ids.get_loc(items[i]) if items[i] in item_ids else -1
            index[i] = found if isinstance(found, int) else -1
            if index[i] < 0 and keep[i]:
                keep[i] = False
                problems.append(_problem(i, "item_id", "item_id not in the catalogue", items[i]))

        times, bad_times = self._timestamps([r.get("timestamp") for r in records])
        for i in np.flatnonzero(bad_times).tolist():
            if keep[i]:
                shown = _shown(records[i].get("timestamp"))
                problems.append(
                    _problem(i, "timestamp", "unreadable or out-of-range timestamp", shown)
                )
            keep[i] = False
        values = self._values([r.get("value") for r in records])
        for i in range(n):
            if keep[i] and events[i] == EventType.RATING.value and values[i] is None:
                keep[i] = False
                problems.append(_problem(i, "value", "a rating event needs a numeric value"))

        queries = [_mask_contact(clean_one(_text(r.get("query")))) for r in records]
        for i in range(n):
            search = events[i] == EventType.SEARCH.value
            if keep[i] and search and not items[i] and not queries[i]:
                keep[i] = False
                problems.append(_problem(i, "query", "a search event needs a query or an item"))

        sessions = [_text(r.get("session_id")) for r in records]
        # Without a timestamp two identical rows may be two real purchases: only timed rows
        # can be told to be the same event sent twice.
        seen: set[tuple] = set()
        for i in range(n):
            if not keep[i] or times[i] == _NO_TIME:
                continue
            key = (users[i], index[i], events[i], times[i], queries[i], values[i], sessions[i])
            if key in seen:
                keep[i] = False
                problems.append(_problem(i, "(record)", DUPLICATE))
            seen.add(key)

        for i in range(n):
            if keep[i] and index[i] >= 0 and deleted[index[i]]:
                problems.append(_problem(i, "item_id", "item was deleted"))
        if problems:
            problems.sort(key=lambda p: (p["row"], p["field"]))
            return out

        pseudonyms = {u: self.pseudonymiser.pseudonymise_one(u) for u in set(users)}
        for i, record in enumerate(records):
            out.rows.append(
                (
                    record.get("event_id"),
                    pseudonyms[users[i]],
                    items[i] or None,
                    events[i],
                    None if times[i] == _NO_TIME else times[i],
                    queries[i] or None,
                    values[i],
                    sessions[i] or None,
                )
            )
        out.items = index
        return out

    @staticmethod
    def _timestamps(raw: list[object]) -> tuple[list[int], np.ndarray]:
        """Nanoseconds since the epoch (or :data:`_NO_TIME`) and a mask of bad ones."""
        now_ns = int((datetime.now(UTC) + timedelta(days=1) - _EPOCH_0).total_seconds() * 1e9)
        times = [_NO_TIME] * len(raw)
        bad = np.zeros(len(raw), dtype=bool)
        odd: list[int] = []
        for i, value in enumerate(raw):
            text = _text(value)
            if not text:
                continue
            number = isinstance(value, int | float) and not isinstance(value, bool)
            ns = _epoch_ns(float(value)) if number else _iso_ns(text)
            if ns is None:
                odd.append(i)
            elif _EARLIEST_NS <= ns <= now_ns:
                times[i] = ns
            else:
                bad[i] = True
        for i in odd:
            try:
                parsed = parse_timestamps(pd.Series([_text(raw[i])], dtype=object))
            except (ValueError, OverflowError):  # pandas' out-of-bounds dates, e.g. year 2999
                bad[i] = True
                continue
            bad[i] = bool(parsed.bad[0])
            if not bad[i]:
                times[i] = int(parsed.values[0])
        return times, bad

    @staticmethod
    def _values(raw: list[object]) -> list[float | None]:
        """Numbers, or None for a missing value or one that is not a number (a warning)."""
        values: list[float | None] = [None] * len(raw)
        odd: list[int] = []
        for i, value in enumerate(raw):
            text = _text(value)
            if not text:
                continue
            if isinstance(value, float) or _DECIMAL.fullmatch(text):
                number = float(value if isinstance(value, float) else text)
                values[i] = number if math.isfinite(number) else None
            else:
                odd.append(i)
        if odd:
            parsed = parse_numbers(pd.Series([_text(raw[i]) for i in odd], dtype=object))
            for j, i in enumerate(odd):
                if np.isfinite(parsed.values[j]):
                    values[i] = float(parsed.values[j])
        return values


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _shown(value: object) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:79] + "…"


def _problem(row: int, field_name: str, message: str, value: object = "") -> dict[str, object]:
    return {"row": row, "field": field_name, "message": message, "input": _shown(value)}


def _mask_contact(text: str) -> str:
    return _PHONE.sub(_mask_phone, _EMAIL.sub("[email]", text)) if text else text


def _epoch_ns(number: float) -> int | None:
    """Epoch seconds, ms, µs or ns told apart by magnitude, as the file loader does."""
    if not math.isfinite(number):
        return None
    magnitude = abs(number)
    scale = 1e9 if magnitude < 1e11 else 1e6 if magnitude < 1e14 else 1e3 if magnitude < 1e17 else 1
    ns = number * scale
    return int(ns) if abs(ns) < 9.2e18 else None


def _iso_ns(text: str) -> int | None:
    """An ISO 8601 date or date-time in nanoseconds (UTC when no offset); None: not read."""
    match = _ISO.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        stamp = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            tzinfo=UTC,
        )
    except ValueError:
        return None
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        stamp -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    seconds = (stamp - _EPOCH_0) // timedelta(seconds=1)
    return seconds * 1_000_000_000 + int((fraction or "").ljust(9, "0"))
