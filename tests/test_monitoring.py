"""The monitor: windows over time, alert rules on an injected clock, /metrics and routes."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shoplm.config import SearchConfig, ShoplmConfig
from shoplm.engine import Engine
from shoplm.serve.app import create_app
from shoplm.serve.monitoring import AlertRule, Monitor, latency_quantile, load_rules
from shoplm.serve.settings import ServeSettings, hash_api_key

KEY = "test-api-key-0123456789"
RULE = 'p99_ms{route="/search"} > 50 for 5m'


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _run(monitor: Monitor, clock: Clock, seconds: int, latency_s: float) -> list[str]:
    """Ten requests per 10 s bucket at ``latency_s``, ticking after each bucket."""
    states = []
    for _ in range(seconds // 10):
        for _ in range(10):
            monitor.record_request("/search", latency_s, 200)
        clock.now += 10
        monitor.tick()
        states.append(monitor.states[0].state)
    return states


def test_a_rule_fires_after_its_window_and_clears_after(tmp_path):
    clock = Clock()
    monitor = Monitor(tmp_path / "m.db", [AlertRule.parse(RULE)], clock=clock).open()
    assert _run(monitor, clock, 600, 0.002) == ["ok"] * 60
    slow = _run(monitor, clock, 320, 0.100)
    # pending from the first slow minute, firing once it held for 5 minutes
    assert slow[0] == "pending" and slow.index("firing") == 30
    fired_at = monitor.states[0].since
    assert monitor.states[0].value == pytest.approx(100, rel=0.25)
    fast = _run(monitor, clock, 120, 0.002)
    # clears once the slow requests leave the rule's one-minute span
    assert fast[:4] == ["firing"] * 4 and fast[6:] == ["ok"] * len(fast[6:])
    assert monitor.states[0].since > fired_at
    monitor.close()
    # a restart keeps the history: the slow stretch is still in the series
    again = Monitor(tmp_path / "m.db", clock=clock).open()
    points = again.series("p99_ms", {"route": "/search"}, 3600)["series"][0]["points"]
    assert max(v for _, v in points if v is not None) == pytest.approx(100, rel=0.25)


def test_a_rule_below_a_threshold_and_the_other_metrics(tmp_path):
    clock = Clock()
    rules = load_rules(["events_per_s < 1 for 1m", "error_rate > 0.2 for 0s"])
    monitor = Monitor(None, rules, clock=clock)
    for _ in range(12):
        monitor.record_events(50)  # 5 events/s
        monitor.record_request("/events", 0.001, 200 if clock.now % 20 else 503)
        clock.now += 10
        monitor.tick()
    assert [s.state for s in monitor.states] == ["ok", "firing"]
    quiet = []
    for _ in range(14):
        clock.now += 10
        monitor.tick()
        quiet.append(monitor.states[0].state)
    # below 1/s once the last minute holds under 60 events, firing a minute later
    assert quiet.index("pending") == 3 and quiet.index("firing") == 9
    assert monitor.values("requests_per_s", {"route": "/events"}, 60, clock.now - 150) == {
        (("route", "/events"),): 0.1
    }
    monitor.record_variant("t", "A", "exposures", 4)
    monitor.record_variant("t", "A", "click")
    assert monitor.values("ctr", {}, 60) == {(("experiment", "t"), ("variant", "A")): 0.25}


def test_rules_are_checked_with_clear_messages(tmp_path):
    assert AlertRule.parse("p50_ms > 5 for 30s over 2m").over == 120
    for bad, message in (
        ("p42_ms > 5 for 1m", "unknown metric"),
        ('p99_ms{user="x"} > 5 for 1m', "no label"),
        ("p99_ms > 5 for soon", "not a duration"),
        ("p99_ms is high", "expected METRIC"),
    ):
        with pytest.raises(ValueError, match=message):
            AlertRule.parse(bad)
    path = tmp_path / "alerts.toml"
    path.write_text('[[alerts]]\nname = "slow"\nrule = "p99_ms > x for 1m"\n')
    with pytest.raises(ValueError, match=r"alerts.toml: alerts\[0\]"):
        load_rules([], path)


def test_latency_quantiles_are_within_one_bin():
    monitor = Monitor(None, clock=Clock())
    for ms in range(1, 101):
        monitor.record_request("/x", ms / 1000, 200)
    (counts,) = [c for _, c in monitor._series("p99_ms", {}, 0, 10**12)]
    assert latency_quantile(counts[2:], 0.5) == pytest.approx(50, rel=0.15)
    assert latency_quantile(counts[2:], 0.99) == pytest.approx(99, rel=0.15)


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shop")
    (root / "catalog.csv").write_text(
        "item_id,title,category,price\nd1,Cordless Drill,Tools,99\nl1,Desk Lamp,Home,25\n"
    )
    (root / "events.csv").write_text("user_id,item_id,event\nann,d1,purchase\nbo,l1,purchase\n")
    config = ShoplmConfig(search=SearchConfig(dense=False))
    Engine.build(root / "catalog.csv", root / "engine", root / "events.csv", config)
    return root / "engine"


def test_the_service_exports_alerts_series_and_gauges(engine_dir, tmp_path):
    settings = ServeSettings(api_key_hashes=[hash_api_key(KEY)], alert_rules=[RULE])
    client = TestClient(create_app(engine_dir, tmp_path / "live", settings))
    client.post("/events", json={"user_id": "cy", "item_id": "l1"}, headers={"X-API-Key": KEY})
    for _ in range(5):
        client.get("/search", params={"q": "drill"})
    client.app.state.monitor.tick()
    metrics = client.get("/metrics").text
    assert (
        f'shoplm_alert_firing{{rule="{RULE.replace(chr(34), chr(92) + chr(34))}"}} 0.0' in metrics
    )
    assert "shoplm_index_items 2.0" in metrics
    assert "shoplm_event_lag_seconds" in metrics
    alerts = client.get("/monitoring/alerts").json()["alerts"]
    assert [(a["name"], a["state"]) for a in alerts] == [(RULE, "ok")]
    series = client.get(
        "/monitoring/series", params={"metric": 'requests_per_s{route="/search"}', "window": "15m"}
    ).json()
    assert series["step_s"] == 10 and len(series["series"]) == 1
    assert sum(v for _, v in series["series"][0]["points"] if v) == pytest.approx(0.5)
    bad = client.get("/monitoring/series", params={"metric": "p99", "window": "1h"})
    assert bad.status_code == 422 and "query.metric" in bad.json()["detail"]
    assert client.get("/monitoring/series", params={"metric": "p99_ms", "window": "2d"}).is_error
