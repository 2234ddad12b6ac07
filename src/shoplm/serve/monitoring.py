"""Metrics over time in fixed windows, and alert rules on them.

Prometheus counters (``/metrics``) say what happened since the process started; an operator
also needs *when*: the p99 of the last five minutes, the error rate an hour ago, whether
event intake has stalled. :class:`Monitor` keeps that history itself, so the dashboard and
the alert rules need no Prometheus server:

- time is cut into buckets of ``bucket_seconds`` (10 s); each bucket holds, per series, a
  small vector of counts: per route requests, 5xx answers and a latency histogram (64
  log-spaced bins from 0.1 ms to 60 s, so quantiles of any span are exact to one bin,
  about 22%, and merging buckets is a sum); per experiment variant exposures, clicks,
  carts and purchases; events stored; and gauges sampled at each tick (items in the
  index, event lag);
- the last ``retention_seconds`` (24 h) stay in memory and in a small SQLite table in the
  data folder, so a restart keeps the history;
- recording is a few dictionary operations under a lock (the request path pays ~2 µs);
  everything else (sealing buckets, writing them, evaluating rules) happens in
  :meth:`Monitor.tick`, which the service calls from a background task.

Alert rules read like Prometheus ones: ``p99_ms{route="/search"} > 50 for 5m`` means "the
p99 latency of /search, computed over the last minute (``over``), has been above 50 ms at
every evaluation for 5 minutes". The state machine is Prometheus' too: ok, pending (the
condition holds, not yet for the whole window) and firing; it clears at the first
evaluation where the condition no longer holds.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LOGGER = logging.getLogger("shoplm.serve")
#: upper edges (ms) of the latency histogram's bins; one more bin takes anything slower
LATENCY_EDGES_MS = np.geomspace(0.1, 60_000.0, 64)
_N_BINS = LATENCY_EDGES_MS.size + 1
_LOWER_EDGES_MS = np.concatenate([[0.0], LATENCY_EDGES_MS])

# families: the labels naming a series, and what its count vector holds
_FAMILIES: dict[str, tuple[str, ...]] = {
    "http": ("route",),  # [requests, errors, *latency bins]
    "variant": ("experiment", "variant"),  # [exposures, click, add_to_cart, purchase]
    "events": (),  # [events stored]
    "gauge": ("name",),  # [last sampled value]
}
_VARIANT_FIELDS = ("exposures", "click", "add_to_cart", "purchase")
_SIZES = {"http": 2 + _N_BINS, "variant": len(_VARIANT_FIELDS), "events": 1, "gauge": 1}

Comparison = Literal[">", ">=", "<", "<="]
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


@dataclass(frozen=True)
class MetricSpec:
    """A metric a series or a rule can name: its family and how a span's counts become it."""

    family: str
    help: str
    value: Callable[[np.ndarray, float], float | None]


def _ratio(num: int, den: int) -> Callable[[np.ndarray, float], float | None]:
    return lambda v, _span: float(v[num] / v[den]) if v[den] > 0 else None


def _rate(index: int) -> Callable[[np.ndarray, float], float | None]:
    return lambda v, span: float(v[index] / span)


def _last(v: np.ndarray, _span: float) -> float | None:
    return float(v[0])


def _quantile(q: float) -> Callable[[np.ndarray, float], float | None]:
    def value(v: np.ndarray, _span: float) -> float | None:
        return latency_quantile(v[2:], q)

    return value


#: every metric of the monitor, by name
METRICS: dict[str, MetricSpec] = {
    "requests_per_s": MetricSpec("http", "requests per second, by route", _rate(0)),
    "error_rate": MetricSpec("http", "share of requests answered 5xx, by route", _ratio(1, 0)),
    "p50_ms": MetricSpec("http", "median latency (ms), by route", _quantile(0.5)),
    "p99_ms": MetricSpec("http", "99th percentile latency (ms), by route", _quantile(0.99)),
    "exposures_per_s": MetricSpec("variant", "served lists per second, by variant", _rate(0)),
    "ctr": MetricSpec("variant", "clicks per served list, by variant", _ratio(1, 0)),
    "cart_rate": MetricSpec("variant", "carts per served list, by variant", _ratio(2, 0)),
    "conversion": MetricSpec("variant", "purchases per served list, by variant", _ratio(3, 0)),
    "events_per_s": MetricSpec("events", "events stored per second", _rate(0)),
    "event_lag_s": MetricSpec("gauge", "seconds since the newest stored event's time", _last),
    "index_items": MetricSpec("gauge", "items in the live catalogue", _last),
}
_GAUGES = ("event_lag_s", "index_items")


def latency_quantile(counts: np.ndarray, q: float) -> float | None:
    """The ``q`` quantile (ms) of a latency histogram, interpolated within its bin."""
    total = counts.sum()
    if total <= 0:
        return None
    cumulative = np.cumsum(counts)
    target = q * total
    b = int(np.searchsorted(cumulative, target, side="left"))
    if b >= LATENCY_EDGES_MS.size:  # the open-ended last bin: its lower edge is all we know
        return float(_LOWER_EDGES_MS[-1])
    before = cumulative[b - 1] if b > 0 else 0
    share = (target - before) / counts[b] if counts[b] else 1.0
    low, high = _LOWER_EDGES_MS[b], LATENCY_EDGES_MS[b]
    return float(low + (high - low) * share)


# ---------------------------------------------------------------------- rules
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SELECTOR = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(?:\{(.*)\})?\s*$")
_LABEL = re.compile(r'^\s*([a-z_]+)\s*=\s*"([^"]*)"\s*$')
_RULE = re.compile(
    r"^(?P<selector>[A-Za-z0-9_]+\s*(?:\{[^}]*\})?)\s*(?P<op>>=|<=|>|<)\s*(?P<threshold>-?\d+(?:\.\d+)?(?:e-?\d+)?)"
    r"\s+for\s+(?P<window>\S+)(?:\s+over\s+(?P<over>\S+))?\s*$"
)


def parse_duration(text: str, where: str) -> float:
    """Seconds in ``30s``, ``5m``, ``1h``, ``1d`` (or a plain number of seconds)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{where}: {text!r} is not a duration like 30s, 5m, 1h or 1d")
    return float(match[1]) * _UNITS[match[2]]


def parse_selector(text: str, where: str) -> tuple[str, dict[str, str]]:
    """``name{label="value",...}`` as the metric name and its labels, both checked."""
    match = _SELECTOR.match(text)
    if not match:
        raise ValueError(f'{where}: {text!r} is not a metric like p99_ms{{route="/search"}}')
    name, body = match[1], match[2]
    if name not in METRICS:
        raise ValueError(f"{where}: unknown metric {name!r}; known: {sorted(METRICS)}")
    labels: dict[str, str] = {}
    for part in filter(str.strip, (body or "").split(",")):
        pair = _LABEL.match(part)
        if not pair:
            raise ValueError(f'{where}: {part.strip()!r} is not a label like route="/search"')
        labels[pair[1]] = pair[2]
    allowed = _FAMILIES[METRICS[name].family]
    unknown = sorted(set(labels) - set(allowed)) if name not in _GAUGES else sorted(labels)
    if unknown:
        raise ValueError(f"{where}: {name} has no label(s) {unknown}; it has {list(allowed)}")
    return name, labels


class AlertRule(BaseModel):
    """One alert: fires when ``metric`` compared with ``threshold`` holds for ``window``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    metric: str
    labels: dict[str, str] = Field(default_factory=dict)
    comparison: Comparison
    threshold: float
    #: seconds the condition must hold at every evaluation before the rule fires
    window: float = Field(ge=0)
    #: seconds of data each evaluation computes the metric over
    over: float = Field(default=60.0, gt=0)

    @field_validator("window", "over", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value, "duration") if isinstance(value, str) else value

    @model_validator(mode="after")
    def _known_metric(self) -> Self:
        selector = self.metric + (
            "{" + ",".join(f'{k}="{v}"' for k, v in self.labels.items()) + "}"
            if self.labels
            else ""
        )
        parse_selector(selector, f"rule {self.name!r}")
        return self

    @classmethod
    def parse(cls, text: str, name: str | None = None) -> AlertRule:
        """A rule from ``METRIC{LABELS} OP THRESHOLD for WINDOW [over SPAN]``."""
        match = _RULE.match(text.strip())
        if not match:
            raise ValueError(
                f"alert rule {text!r}: expected METRIC{{LABELS}} OP THRESHOLD for WINDOW "
                '[over SPAN], e.g. p99_ms{route="/search"} > 50 for 5m'
            )
        metric, labels = parse_selector(match["selector"], f"alert rule {text!r}")
        fields: dict[str, object] = {
            "name": name or text.strip(),
            "metric": metric,
            "labels": labels,
            "comparison": match["op"],
            "threshold": float(match["threshold"]),
            "window": parse_duration(match["window"], f"alert rule {text!r}"),
        }
        if match["over"]:
            fields["over"] = parse_duration(match["over"], f"alert rule {text!r}")
        return cls.model_validate(fields)

    def holds(self, value: float) -> bool:
        return _COMPARE[self.comparison](value, self.threshold)


@dataclass
class AlertState:
    """Where a rule stands: ``ok``, ``pending`` or ``firing``, and since when."""

    rule: AlertRule
    state: str = "ok"
    since: float = 0.0
    #: the value of the last evaluation (the worst matching series); None: no data
    value: float | None = None
    labels: dict[str, str] | None = None

    def to_dict(self) -> dict[str, object]:
        rule = self.rule
        return {
            "name": rule.name,
            "metric": rule.metric,
            "labels": rule.labels,
            "comparison": rule.comparison,
            "threshold": rule.threshold,
            "window_s": rule.window,
            "over_s": rule.over,
            "state": self.state,
            "since": self.since,
            "value": self.value,
            "series": self.labels,
        }


# ---------------------------------------------------------------------- monitor
class Monitor:
    """Metrics in fixed time buckets, kept for a day in memory and SQLite, and alert rules."""

    def __init__(
        self,
        path: Path | None = None,
        rules: list[AlertRule] | None = None,
        bucket_seconds: float = 10.0,
        retention_seconds: float = 86_400.0,
        clock: Callable[[], float] = time.time,
        gauges: Callable[[], dict[str, float | None]] | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.rules = list(rules or [])
        self.bucket_seconds = bucket_seconds
        self.retention_seconds = retention_seconds
        self.clock = clock
        #: sampled at each tick: {"index_items": ..., "event_lag_s": ...}
        self.gauges = gauges
        self.states = [AlertState(rule, since=clock()) for rule in self.rules]
        self._lock = threading.Lock()
        self._bucket = int(clock() // bucket_seconds)
        self._open: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
        # sealed buckets by series, oldest first: {(family, key): {bucket: counts}}
        self._history: dict[tuple[str, tuple[str, ...]], dict[int, np.ndarray]] = {}
        self._unsaved: list[tuple[int, str, tuple[str, ...], np.ndarray]] = []
        names = [r.name for r in self.rules]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"alert rules: names must be unique, repeated: {repeated}")

    # ------------------------------------------------------------------ storage
    def open(self) -> Monitor:
        """Read the stored history of the last ``retention_seconds`` (when there is a path).

        The file is opened per use, never held: a tick writes every ``bucket_seconds``, and
        a held handle would keep the data folder busy (a read-only remount, an unmount).
        A history that cannot be read or written is logged and the monitor goes on in
        memory: monitoring must never stop the service.
        """
        if self.path is None:
            return self
        try:
            with self._connect() as db:
                rows = db.execute(
                    "SELECT bucket, family, key, counts FROM buckets WHERE bucket >= ? "
                    "ORDER BY bucket",
                    (self._oldest_bucket(),),
                ).fetchall()
        except (sqlite3.Error, OSError) as exc:
            self._storage_failed(exc)
            return self
        for bucket, family, key, counts in rows:
            if family in _FAMILIES:
                series = self._history.setdefault((family, tuple(json.loads(key))), {})
                series[bucket] = np.asarray(json.loads(counts), dtype=np.float64)
        return self

    def close(self) -> None:
        """Store the last buckets, the open one included (a restart adds to it)."""
        self.tick(final=True)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5.0)
        try:
            # history, not acknowledged data: losing the last tick at a power cut is fine
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS buckets (bucket INTEGER NOT NULL, "
                "family TEXT NOT NULL, key TEXT NOT NULL, counts TEXT NOT NULL, "
                "PRIMARY KEY (bucket, family, key))"
            )
            with db:
                yield db
        finally:
            db.close()

    def _storage_failed(self, exc: Exception) -> None:
        LOGGER.warning(
            "monitoring history not stored; going on in memory",
            extra={"fields": {"file": str(self.path), "error": str(exc)}},
        )
        self.path = None

    def _oldest_bucket(self) -> int:
        return int((self.clock() - self.retention_seconds) // self.bucket_seconds)

    # ------------------------------------------------------------------ recording
    def _add(self, family: str, key: tuple[str, ...], index: int, amount: float = 1.0) -> None:
        bucket = int(self.clock() // self.bucket_seconds)
        with self._lock:
            if bucket != self._bucket:
                self._seal(bucket)
            counts = self._open.get((family, key))
            if counts is None:
                counts = self._open[(family, key)] = np.zeros(_SIZES[family])
            counts[index] += amount

    def record_request(self, route: str, seconds: float, status: int) -> None:
        """One answered request (route template, latency, HTTP status)."""
        ms = seconds * 1000.0
        bin_ = int(np.searchsorted(LATENCY_EDGES_MS, ms, side="left"))
        bucket = int(self.clock() // self.bucket_seconds)
        with self._lock:
            if bucket != self._bucket:
                self._seal(bucket)
            counts = self._open.get(("http", (route,)))
            if counts is None:
                counts = self._open[("http", (route,))] = np.zeros(2 + _N_BINS)
            counts[0] += 1
            counts[1] += status >= 500
            counts[2 + bin_] += 1

    def record_variant(self, experiment: str, variant: str, field: str, count: int = 1) -> None:
        """Exposures, clicks, carts or purchases of one experiment variant."""
        if field in _VARIANT_FIELDS:
            self._add("variant", (experiment, variant), _VARIANT_FIELDS.index(field), count)

    def record_events(self, count: int) -> None:
        self._add("events", (), 0, count)

    def _seal(self, bucket: int) -> None:
        """Move the open bucket into the history (the lock is held)."""
        for (family, key), counts in self._open.items():
            series = self._history.setdefault((family, key), {})
            earlier = series.get(self._bucket)  # stored by a run that stopped in this bucket
            if earlier is not None and family != "gauge":
                counts = counts + earlier
            series[self._bucket] = counts
            self._unsaved.append((self._bucket, family, key, counts))
        self._open = {}
        self._bucket = bucket

    # ------------------------------------------------------------------ ticking
    def tick(self, final: bool = False) -> None:
        """Sample the gauges, seal a finished bucket, store and prune, evaluate the rules.

        Bounded work: one bucket's series to store, the expired buckets to drop, and per
        rule a sum over at most ``over / bucket_seconds`` buckets per matching series.
        """
        if self.gauges is not None:
            for name, value in self.gauges().items():
                if value is not None and name in _GAUGES:
                    self._set_gauge(name, value)
        bucket = int(self.clock() // self.bucket_seconds)
        oldest = self._oldest_bucket()
        with self._lock:
            if bucket != self._bucket or final:
                self._seal(bucket)
            unsaved, self._unsaved = self._unsaved, []
            for series in self._history.values():
                for old in [b for b in series if b < oldest]:
                    del series[old]
        if self.path is not None and unsaved:
            try:
                with self._connect() as db:
                    db.executemany(
                        "INSERT OR REPLACE INTO buckets VALUES (?, ?, ?, ?)",
                        [
                            (b, family, json.dumps(list(key)), json.dumps(counts.tolist()))
                            for b, family, key, counts in unsaved
                        ],
                    )
                    db.execute("DELETE FROM buckets WHERE bucket < ?", (oldest,))
            except (sqlite3.Error, OSError) as exc:
                self._storage_failed(exc)
        self.evaluate()

    def _set_gauge(self, name: str, value: float) -> None:
        bucket = int(self.clock() // self.bucket_seconds)
        with self._lock:
            if bucket != self._bucket:
                self._seal(bucket)
            self._open[("gauge", (name,))] = np.array([float(value)])

    def evaluate(self) -> list[AlertState]:
        """Evaluate every rule now and move its state; returns the states."""
        now = self.clock()
        for state in self.states:
            rule = state.rule
            values = self.values(rule.metric, rule.labels, rule.over, now)
            crossing = [(v, k) for k, v in values.items() if v is not None and rule.holds(v)]
            if crossing:
                # the worst crossing series: largest for > and >=, smallest for < and <=
                value, labels = (max if rule.comparison in (">", ">=") else min)(crossing)
                state.value, state.labels = value, dict(labels)
                if state.state == "ok":
                    state.state, state.since = "pending", now
                if state.state == "pending" and now - state.since >= rule.window:
                    state.state, state.since = "firing", now
            else:
                known = [v for v in values.values() if v is not None]
                state.value = known[0] if len(known) == 1 else None
                state.labels = None
                if state.state != "ok":
                    state.state, state.since = "ok", now
        return self.states

    # ------------------------------------------------------------------ reading
    def _spans(self, family: str, start: int, end: int) -> Iterator[tuple[tuple, np.ndarray]]:
        """Per series of ``family``, its counts summed over buckets in ``[start, end]``.

        Gauges take their latest value instead of a sum.
        """
        span = range(start, end + 1)
        with self._lock:
            # only the buckets asked for are looked up: a rule's span is a few buckets
            series = {
                k: {b: v[b] for b in span if b in v}
                for (f, k), v in self._history.items()
                if f == family
            }
            for (f, key), counts in self._open.items():
                if f == family and self._bucket in span:
                    known = series.setdefault(key, {})
                    earlier = known.get(self._bucket)
                    add = earlier is not None and family != "gauge"
                    known[self._bucket] = counts + earlier if add else counts.copy()
        if family == "events":
            series.setdefault((), {})  # no event at all is a rate of 0, not missing data
        for key, buckets in series.items():
            inside = list(buckets)
            if not inside:
                # a known series that was quiet: zero counts (rates 0, ratios and quantiles
                # None); a gauge without a sample has no value
                if family != "gauge":
                    yield key, np.zeros(_SIZES[family])
                continue
            if family == "gauge":
                yield key, buckets[max(inside)]
            else:
                yield key, np.sum([buckets[b] for b in inside], axis=0)

    def values(
        self, metric: str, labels: dict[str, str], span: float, end: float | None = None
    ) -> dict[tuple[tuple[str, str], ...], float | None]:
        """The metric over ``span`` seconds up to ``end`` (now), for each matching series."""
        spec = METRICS[metric]
        end = self.clock() if end is None else end
        last = int(end // self.bucket_seconds)
        first = last - max(round(span / self.bucket_seconds), 1) + 1
        out = {}
        for key, counts in self._series(metric, labels, first, last):
            out[key] = spec.value(counts, span)
        return out

    def _series(
        self, metric: str, labels: dict[str, str], first: int, last: int
    ) -> Iterator[tuple[tuple[tuple[str, str], ...], np.ndarray]]:
        spec = METRICS[metric]
        names = _FAMILIES[spec.family]
        for key, counts in self._spans(spec.family, first, last):
            if spec.family == "gauge":
                if key == (metric,):
                    yield (), counts
                continue
            named = dict(zip(names, key, strict=True))
            if all(named.get(k) == v for k, v in labels.items()):
                yield tuple(named.items()), counts

    def series(
        self, metric: str, labels: dict[str, str], window: float, points: int = 120
    ) -> dict[str, object]:
        """The metric's time series over the last ``window`` seconds, per matching series.

        Each point covers ``step`` seconds (a whole number of buckets, at most ``points``
        points); a point with no data is null.
        """
        now = self.clock()
        per_bucket = max(1, math.ceil(window / self.bucket_seconds / points))
        step = per_bucket * self.bucket_seconds
        last = int(now // self.bucket_seconds)
        n = max(1, math.ceil(window / step))
        found: dict[tuple, list[list[float | None]]] = {}
        for i in range(n):
            end = last - (n - 1 - i) * per_bucket
            at = (end + 1) * self.bucket_seconds
            for key, counts in self._series(metric, labels, end - per_bucket + 1, end):
                found.setdefault(key, [[t, None] for t in self._times(last, n, per_bucket)])
                found[key][i] = [at, METRICS[metric].value(counts, step)]
        return {
            "metric": metric,
            "labels": labels,
            "window_s": window,
            "step_s": step,
            "series": [{"labels": dict(k), "points": pts} for k, pts in sorted(found.items())],
        }

    def _times(self, last: int, n: int, per_bucket: int) -> list[float]:
        return [(last - (n - 1 - i) * per_bucket + 1) * self.bucket_seconds for i in range(n)]

    def alerts(self) -> list[dict[str, object]]:
        return [state.to_dict() for state in self.states]

    # ------------------------------------------------------------------ Prometheus
    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Alert states and the sampled gauges, for a prometheus_client registry."""
        firing = GaugeMetricFamily(
            "shoplm_alert_firing", "1 when the alert rule fires, else 0", labels=["rule"]
        )
        pending = GaugeMetricFamily(
            "shoplm_alert_pending",
            "1 while the condition holds, not yet for its window",
            labels=["rule"],
        )
        since = GaugeMetricFamily(
            "shoplm_alert_state_since_seconds",
            "Unix time the rule entered its present state",
            labels=["rule"],
        )
        for state in self.states:
            firing.add_metric([state.rule.name], float(state.state == "firing"))
            pending.add_metric([state.rule.name], float(state.state == "pending"))
            since.add_metric([state.rule.name], state.since)
        yield from (firing, pending, since)
        now = self.clock()
        for name, exported, help_text in (
            ("index_items", "shoplm_index_items", "items in the live catalogue (last sample)"),
            ("event_lag_s", "shoplm_event_lag_seconds", "seconds since the newest event's time"),
        ):
            for value in self.values(name, {}, self.retention_seconds, now).values():
                if value is not None:
                    yield GaugeMetricFamily(exported, help_text, value=value)

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # dynamic: collected at every scrape, nothing to check at registration


def load_rules(rules: list[str], path: Path | None = None) -> list[AlertRule]:
    """Rules given as text, then those of a TOML file (``[[alerts]]`` with name and rule).

    A bad rule is an error naming the file, the table's position and the problem.
    """
    parsed = [AlertRule.parse(text) for text in rules]
    if path is None:
        return parsed
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ValueError(f"alerts file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from exc
    tables = raw.get("alerts", [])
    unknown = sorted(set(raw) - {"alerts"})
    if unknown or not isinstance(tables, list):
        raise ValueError(f"{path}: expected only [[alerts]] tables, found {unknown or 'alerts'}")
    for i, table in enumerate(tables):
        where = f"{path}: alerts[{i}]"
        if not isinstance(table, dict) or set(table) - {"name", "rule"} or "rule" not in table:
            raise ValueError(f"{where}: expected keys rule (and optionally name)")
        try:
            parsed.append(AlertRule.parse(str(table["rule"]), table.get("name")))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return parsed
