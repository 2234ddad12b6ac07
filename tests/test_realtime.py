"""The real-time layer: the durable event log, live catalogue edits, session state, and a
server killed mid-write that keeps every event it acknowledged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import free_port
from hypothesis import given, settings
from hypothesis import strategies as st
from sample_shop import build_lexical_engine

from shoplm.config import ShoplmConfig
from shoplm.data.events import DuplicateFinder, normalise_events
from shoplm.data.privacy import Pseudonymiser
from shoplm.data.report import ValidationReport
from shoplm.data.schema import EVENT_CODES, EVENT_FIELDS
from shoplm.realtime.event_log import EVENT_COLUMNS, EventLog
from shoplm.realtime.intake import EventValidator
from shoplm.realtime.items import LiveCatalog
from shoplm.realtime.sessions import SessionStore
from shoplm.search.pipeline import SearchFilters
from shoplm.serve.app import LOG_FILE

EVENT_NAMES = list(EVENT_CODES)


def _events(n: int, user: str = "u", event_id: bool = False) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)] if event_id else [None] * n,
            "user": [user] * n,
            "item": [f"item-{i}" for i in range(n)],
            "event": ["view"] * n,
            "timestamp": np.arange(n, dtype=np.int64),
            "query": [None] * n,
            "value": [np.nan] * n,
            "session": [None] * n,
        }
    )


def test_event_log_is_durable_append_only_and_erasable(tmp_path):
    log = EventLog(tmp_path / "log.sqlite3")
    journal = log._db.execute("PRAGMA journal_mode").fetchone()[0]
    synchronous = log._db.execute("PRAGMA synchronous").fetchone()[0]
    assert (journal, synchronous) == ("wal", 2)  # 2 = FULL
    assert log.append(_events(3, "p1", event_id=True)).tolist() == [True] * 3
    retried = pd.concat([_events(4, "p1", event_id=True)] * 2, ignore_index=True)
    assert log.append(retried).tolist() == [False] * 3 + [True] + [False] * 4
    assert log.append(_events(2, "p2")).tolist() == [True, True]  # no event_id: all new
    log.close()
    reopened = EventLog(tmp_path / "log.sqlite3")
    stored = reopened.events()
    assert list(stored.columns) == list(EVENT_COLUMNS)
    assert stored["user"].tolist() == ["p1"] * 4 + ["p2"] * 2
    assert stored["item"].tolist() == [f"item-{i}" for i in (0, 1, 2, 3, 0, 1)]
    assert reopened.forget("p1") == 4
    assert reopened.events()["user"].tolist() == ["p2", "p2"]


def test_item_edits_keep_the_latest_state(tmp_path):
    log = EventLog(tmp_path / "log.sqlite3")
    log.put_item("a", {"title": "first"})
    log.put_item("b", {"title": "other", "price": 3.0})
    log.put_item("a", {"title": "second"})
    log.put_item("b", {}, deleted=True)
    edits = log.items()
    assert edits["item_id"].tolist() == ["a", "b"]
    assert edits["deleted"].tolist() == [False, True]
    assert edits.loc[0, "title"] == "second"


def test_live_catalog_finds_added_items_with_filters_and_hides_deleted():
    base = pd.DataFrame(
        {"item_id": ["a", "b"], "title": ["Red Kettle", "Blue Mug"], "price": [10.0, 5.0]}
    )
    catalog = LiveCatalog(base)
    # before any edit nothing is found, not even a catalogue field's name (a bug fuzzing found)
    assert catalog.search("title brand", 10, SearchFilters())[0].size == 0
    assert catalog.put("c", {"title": "Red Teapot", "category": "Kitchen > Tea", "price": 20})
    assert catalog.put("d", {"title": "Red Mug", "brand": "Acme", "price": 4})
    assert not catalog.put("a", {"title": "Red Kettle XL"})  # a change, not a new item
    assert catalog.titles.tolist() == ["Red Kettle XL", "Blue Mug", "Red Teapot", "Red Mug"]
    ids, scores = catalog.search("red mug", 10, SearchFilters())
    assert catalog.ids[ids].tolist() == ["d", "c"]  # only added items, best match first
    assert scores.tolist() == [1.0, 0.5]
    only = SearchFilters(category="Kitchen", price_min=10)
    assert catalog.ids[catalog.search("red", 10, only)[0]].tolist() == ["c"]
    assert catalog.ids[catalog.search("red", 10, SearchFilters(brand="acme"))[0]].tolist() == ["d"]
    assert catalog.delete("d") and not catalog.delete("d") and not catalog.delete("zzz")
    assert catalog.ids[catalog.search("red mug", 10, SearchFilters())[0]].tolist() == ["c"]
    assert catalog.deleted.tolist() == [False, False, False, True]


def test_sessions_keep_the_latest_wanted_items_per_user():
    sessions = SessionStore(max_items=3)
    users = np.array(["p", "p", "q", "p", "p", "p"], dtype=object)
    items = np.array([1, 2, 9, 3, -1, 4])
    events = np.array(["view", "purchase", "view", "return", "search", "click"], dtype=object)
    sessions.add(users, items, events)
    assert sessions.recent("p").tolist() == [1, 2, 4]  # a return and a search say no "want"
    sessions.add(np.array(["p"], dtype=object), np.array([5]), np.array(["view"], dtype=object))
    assert sessions.recent("p").tolist() == [2, 4, 5]
    sessions.forget("p")
    assert sessions.recent("p").size == 0
    assert sessions.recent("q").tolist() == [9]


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lexical_engine(tmp_path_factory.mktemp("shop"))


def _start_server(engine_dir: Path, data_dir: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "SHOPLM_API_KEYS": "crash-key"}
    command = [sys.executable, "-m", "shoplm.serve", "--engine", str(engine_dir)]
    command += ["--port", str(port), "--data-dir", str(data_dir)]
    with open(log, "ab") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).is_success:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise AssertionError(f"server did not start in 60 s: {log.read_text()}")


def test_every_acknowledged_event_survives_a_kill_exactly_once(engine_dir, tmp_path):
    port, data_dir, server_log = free_port(), tmp_path / "live", tmp_path / "server.log"
    server = _start_server(engine_dir, data_dir, port, server_log)
    acknowledged: list[str] = []
    sent: list[str] = []

    def post_until_refused() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for i in range(100_000):
                marker = f"s{i}"
                sent.append(marker)
                event = {"user_id": f"crash-{i % 3}", "item_id": "saw-1", "session_id": marker}
                try:
                    reply = client.post("/events", json=event, headers={"X-API-Key": "crash-key"})
                except httpx.TransportError:
                    return
                if reply.status_code == 200:
                    acknowledged.append(marker)

    writer = threading.Thread(target=post_until_refused)
    writer.start()
    deadline = time.monotonic() + 5
    while len(acknowledged) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    writer.join(timeout=10)
    assert not writer.is_alive()
    assert len(acknowledged) >= 10, server_log.read_text()

    server = _start_server(engine_dir, data_dir, port, server_log)
    try:
        stored = EventLog(data_dir / LOG_FILE).events()["session"].value_counts()
        assert stored.reindex(acknowledged).tolist() == [1] * len(acknowledged)
        assert set(stored.index) <= set(sent)
        assert stored.max() == 1
        # the restarted server rebuilt each user's session from the log
        recs = httpx.get(f"http://127.0.0.1:{port}/users/crash-0/recommendations").json()
        assert "saw-1" not in [item["id"] for item in recs["items"]]
    finally:
        server.kill()
        server.wait()


# ---------------------------------------------------------------------- intake
_POOLS = {
    "user_id": ["alice", " bob ", "   "],
    "item_id": [None, "drill-1", " saw-1", "nope", ""],
    "event": [None, "view", "PURCHASE", "search", "rating", "teleport", ""],
    "timestamp": [
        None,
        "2024-01-01T10:00:00Z",
        "2024-01-01 10:00",
        "2024-01-01T10:00:00+02:00",
        "2024-01-01T10:00:00.123456789Z",
        1.7e9,
        1.7e12,
        5.0,
        1e20,
        "yesterday",
        "1700000000",
        "20240101",
        "2024-13-01",
        "01/02/2024",
    ],
    "query": [None, "red drill", "call +44 20 7946 0958", "<b>drill</b> &amp; saw", "a@b.com"],
    "value": [None, 3.0, "4.5", "abc", "1e3", " 2 ", float("inf")],
    "session_id": [None, "s1", " s2 "],
}


def _file_loader_verdict(records, item_ids, pseudonymiser):
    """The event file loader's problems and kept rows for ``records``, as a file of them."""
    frame = pd.DataFrame.from_records(records, columns=list(EVENT_FIELDS))
    frame = frame.astype(object).where(frame.notna(), None).astype("string").astype(object)
    report = ValidationReport(examples_per_reason=len(frame))
    table = normalise_events(
        Path("request"),
        frame,
        np.arange(len(frame)),
        ShoplmConfig(),
        item_ids,
        pseudonymiser,
        report,
        DuplicateFinder(),
        seq_start=0,
    )
    problems = sorted(
        (row, field, reason)
        for (_, field, severity, reason), examples in report.examples.items()
        if severity == "error"
        for row, _ in examples
    )
    return problems, table.to_pandas()


@settings(max_examples=40, deadline=None, database=None)
@given(
    st.lists(
        st.fixed_dictionaries({f: st.sampled_from(pool) for f, pool in _POOLS.items()}),
        min_size=1,
        max_size=6,
    )
)
def test_posted_events_get_the_event_file_verdict(records):
    """The per-request validator and the file loader agree on problems and stored values."""
    item_ids = pd.Index(["drill-1", "drill-2", "saw-1", "lamp-1", "bulb-1"])
    pseudonymiser = Pseudonymiser.from_config(ShoplmConfig().privacy, create=True)
    expected, kept = _file_loader_verdict(records, item_ids, pseudonymiser)
    records = [{k: v for k, v in r.items() if v is not None} for r in records]
    checked = EventValidator({}, pseudonymiser).check(
        records, item_ids, np.zeros(len(item_ids), dtype=bool)
    )
    assert [(p["row"], p["field"], p["message"]) for p in checked.problems] == expected
    if expected:
        return
    stamps = [None if pd.isna(t) else t.value for t in kept["timestamp"]]
    assert [row[1:] for row in checked.rows] == [
        (
            user,
            item_ids[item] if item >= 0 else None,
            EVENT_NAMES[event],
            stamp,
            query or None,
            None if np.isnan(value) else value,
            session or None,
        )
        for user, item, event, stamp, query, value, session in zip(
            kept["user"],
            kept["item"],
            kept["event"],
            stamps,
            kept["query"],
            kept["value"],
            kept["session"],
            strict=True,
        )
    ]


def test_stored_events_reach_everyones_bought_together_without_a_rebuild(engine_dir, tmp_path):
    from shoplm.serve.live import LiveEngine

    def together_with_saw(live: LiveEngine) -> list[str]:
        saw = int(live.catalog.ids.get_loc("saw-1"))
        ids, _ = live.engine.cooccurrence.similar_items(np.array([saw]), 4)
        return live.engine.item_ids(ids[0][ids[0] >= 0])

    log = tmp_path / "events.db"
    live = LiveEngine.open(engine_dir, log, fold_interval=0.05)
    try:
        assert "bulb-1" not in together_with_saw(live)  # never bought together at build
        live.ingest(
            [
                {"user_id": "erin", "item_id": "saw-1", "event": "purchase"},
                {"user_id": "erin", "item_id": "bulb-1", "event": "purchase"},
            ]
        )
        deadline = time.monotonic() + 10
        while live.served.counts.folded < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "bulb-1" in together_with_saw(live)
        # a shopper the engine never saw, who just looked at the saw, is offered the bulb
        live.ingest([{"user_id": "frank-new", "item_id": "saw-1", "event": "view"}])
        answer = live.recommend("frank-new", 5)
        assert "bulb-1" in answer.ids
        bulb = answer.ids.index("bulb-1")
        assert answer.reasons[bulb] == "bought together with Circular Saw"
    finally:
        live.close()
    restarted = LiveEngine.open(engine_dir, log)  # the log is replayed into fresh counts
    try:
        assert "bulb-1" in together_with_saw(restarted)
    finally:
        restarted.close()
