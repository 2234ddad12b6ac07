"""The HTTP API as a client sees it: answers, errors, keys, and writes reflected at once."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sample_shop import build_lexical_engine

from shoplm.realtime.event_log import EventLog
from shoplm.serve.app import LOG_FILE, create_app
from shoplm.serve.live import EventsRejected
from shoplm.serve.observability import JsonFormatter
from shoplm.serve.settings import ServeSettings, hash_api_key

KEY = "test-api-key-0123456789"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One engine for the module. Lexical search only: these tests are about the HTTP layer,
    and the dense encoder would add a model load without changing what they check."""
    return build_lexical_engine(tmp_path_factory.mktemp("shop"))


def _client(engine_dir: Path, data_dir: Path, **settings: object) -> TestClient:
    options = {"api_key_hashes": [hash_api_key(KEY)], **settings}
    return TestClient(create_app(engine_dir, data_dir, ServeSettings(**options)))


@pytest.fixture
def client(engine_dir: Path, tmp_path: Path) -> TestClient:
    return _client(engine_dir, tmp_path / "live")


def _ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def _fields(response) -> list[str]:
    return [problem["field"] for problem in response.json()["detail"]]


def test_search_answers_with_titles_facets_pages_and_filters(client):
    first = client.get("/search", params={"q": "drill"}).json()
    assert {i["id"] for i in first["items"]} == {"drill-1", "drill-2"}
    assert {i["title"] for i in first["items"]} == {"Cordless Drill 20V", "Hammer Drill"}
    assert first["total"] == 2
    assert first["facets"]["category"] == {"Tools > Drills": 2}
    pages = [_ids(client.get("/search", params={"q": "drill", "k": 1, "page": p})) for p in (1, 2)]
    assert pages[0] + pages[1] == [i["id"] for i in first["items"]]
    bosch = client.get("/search", params={"q": "drill", "brand": "Bosch"}).json()
    assert [i["id"] for i in bosch["items"]] == ["drill-2"]
    assert bosch["applied"] == {"brand": "Bosch"}
    cheap = client.get("/search", params={"q": "led", "price_max": 20})
    assert _ids(cheap) == ["bulb-1"]


def test_bad_parameters_are_422_naming_the_field(client):
    assert _fields(client.get("/search", params={"q": "drill", "k": 0})) == ["query.k"]
    assert _fields(client.get("/search")) == ["query.q"]
    inverted = client.get("/search", params={"q": "x", "price_min": 50, "price_max": 10})
    assert inverted.status_code == 422
    assert "price_min" in inverted.json()["detail"]
    recs = client.get("/users/u/recommendations", params={"k": "many"})
    assert _fields(recs) == ["query.k"]


def test_write_routes_need_a_valid_key(client, engine_dir, tmp_path, monkeypatch):
    event = {"user_id": "zoe", "item_id": "saw-1", "event": "view"}
    assert client.post("/events", json=event).status_code == 401
    assert client.post("/events", json=event, headers={"X-API-Key": "guess"}).status_code == 403
    assert client.delete("/items/saw-1").status_code == 401
    assert client.put("/items/x", json={"title": "x"}, headers={"X-API-Key": ""}).status_code == 401
    assert client.delete("/users/zoe", headers={"X-API-Key": "guess"}).status_code == 403
    assert client.post("/events", json=event, headers=AUTH).status_code == 200
    # keys may also come from the environment; without any key every write is refused
    monkeypatch.setenv("SHOPLM_API_KEYS", "env-key-1, env-key-2")
    from_env = _client(engine_dir, tmp_path / "env", api_key_hashes=[])
    assert from_env.post("/events", json=event, headers={"X-API-Key": "env-key-2"}).is_success
    monkeypatch.delenv("SHOPLM_API_KEYS")
    keyless = _client(engine_dir, tmp_path / "none", api_key_hashes=[])
    assert keyless.post("/events", json=event, headers={"X-API-Key": "guess"}).status_code == 403


def test_reads_can_require_a_key(engine_dir, tmp_path):
    client = _client(engine_dir, tmp_path / "live", protect_reads=True)
    assert client.get("/search", params={"q": "drill"}).status_code == 401
    assert client.get("/search", params={"q": "drill"}, headers=AUTH).status_code == 200
    assert client.get("/health").status_code == 200


def test_cors_admits_only_configured_origins(engine_dir, tmp_path):
    client = _client(engine_dir, tmp_path / "live", cors_origins=["https://shop.example"])
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key",
    }
    allowed = client.options("/events", headers={"Origin": "https://shop.example", **preflight})
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
    other = client.options("/events", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers


def test_oversized_bodies_are_413(engine_dir, tmp_path):
    client = _client(engine_dir, tmp_path / "live", max_body_bytes=2_000)
    events = [{"user_id": f"u{i}", "item_id": "saw-1", "event": "view"} for i in range(100)]
    declared = client.post("/events", json=events, headers=AUTH)
    assert declared.status_code == 413
    body = json.dumps(events).encode()
    chunked = client.post(
        "/events",
        content=(body[i : i + 500] for i in range(0, len(body), 500)),
        headers={**AUTH, "content-type": "application/json"},
    )
    assert chunked.status_code == 413
    assert client.post("/events", json=events[:5], headers=AUTH).status_code == 200


def test_events_are_validated_like_an_event_file_and_a_bad_batch_stores_nothing(client, tmp_path):
    batch = [
        {"user_id": "zoe", "item_id": "saw-1", "event": "view"},
        {"user_id": "zoe", "item_id": "no-such-item", "event": "view"},
        {"user_id": "zoe", "item_id": "saw-1", "event": "teleport"},
        {"user_id": "zoe", "item_id": "saw-1", "event": "rating"},
        {"user_id": "zoe", "item_id": "saw-1", "timestamp": "yesterday-ish"},
    ]
    rejected = client.post("/events", json=batch, headers=AUTH)
    assert rejected.status_code == 422
    assert [(p["row"], p["field"]) for p in rejected.json()["detail"]] == [
        (1, "item_id"),
        (2, "event"),
        (3, "value"),
        (4, "timestamp"),
    ]
    assert "body.events.1.item_id" in rejected.json()["detail"][0]["message"]
    misspelt = client.post("/events", json={"user_id": "zoe", "itme_id": "saw-1"}, headers=AUTH)
    assert _fields(misspelt) == ["body.event.itme_id"]
    no_user = client.post("/events", json=[{"item_id": "saw-1"}], headers=AUTH)
    assert _fields(no_user) == ["body.events.0.user_id"]
    assert EventLog(tmp_path / "live" / LOG_FILE).events().empty


def test_a_posted_event_changes_recommendations_at_once(client):
    before = _ids(client.get("/users/erin/recommendations", params={"k": 3}))
    top = before[0]
    stored = client.post(
        "/events",
        json=[
            {"user_id": "erin", "item_id": top, "event": "purchase"},
            {"user_id": "erin", "item_id": "saw-1", "event": "view", "timestamp": 1.7e9},
        ],
        headers=AUTH,
    )
    assert stored.json() == {"received": 2, "stored": 2}
    after = client.get("/users/erin/recommendations", params={"k": 3}).json()["items"]
    assert top not in [i["id"] for i in after]
    assert "saw-1" not in [i["id"] for i in after]
    assert all(i["title"] and i["reason"] for i in after)
    # someone else is not affected
    assert _ids(client.get("/users/frank/recommendations", params={"k": 3})) == before


def test_only_timed_events_can_be_duplicates_and_untimed_ones_get_the_arrival_time(
    client, tmp_path
):
    click = {"user_id": "kim", "item_id": "lamp-1", "event": "click"}
    assert client.post("/events", json=[click, click], headers=AUTH).json()["stored"] == 2
    timed = {**click, "timestamp": "2024-05-01T10:00:00Z"}
    twice = client.post("/events", json=[timed, timed], headers=AUTH)
    assert [(p["row"], p["field"]) for p in twice.json()["detail"]] == [(1, "(record)")]
    stamps = EventLog(tmp_path / "live" / LOG_FILE).events()["timestamp"]
    assert (abs(stamps - time.time_ns()) < 60e9).all()


def test_an_event_id_makes_a_retry_safe(client):
    event = {"user_id": "gina", "item_id": "lamp-1", "event": "click", "event_id": "e-1"}
    assert client.post("/events", json=event, headers=AUTH).json()["stored"] == 1
    assert client.post("/events", json=event, headers=AUTH).json()["stored"] == 0


def test_concurrent_posts_are_committed_together_each_with_its_own_answer(client, tmp_path):
    live = client.app.state.live
    requests = [
        [{"user_id": f"w{i}", "item_id": "lamp-1", "event": "click"}] * (i + 1) for i in range(4)
    ]
    requests[2] = [requests[2][0], {"user_id": "w2", "item_id": "nope"}]  # row 1 is bad
    requests[3] = [{**e, "event_id": "same"} for e in requests[3]]  # 4 retries of one event
    outcomes: dict[int, object] = {}

    def post(i: int) -> None:
        try:
            outcomes[i] = live.ingest(
                [{**e, "timestamp": 1.7e9 + n} for n, e in enumerate(requests[i])]
            )
        except EventsRejected as exc:
            outcomes[i] = exc.problems

    # hold the committer while the requests queue, so they form one group; the request with
    # a bad row is refused before it queues
    with live._commit_lock:
        threads = [threading.Thread(target=post, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        while len(live._queue) < 3:
            time.sleep(0.01)
    for thread in threads:
        thread.join()
    assert outcomes[0] == 1 and outcomes[1] == 2 and outcomes[3] == 1
    assert [(p["row"], p["field"]) for p in outcomes[2]] == [(1, "item_id")]
    with sqlite3.connect(tmp_path / "live" / LOG_FILE) as db:
        commits = db.execute("SELECT COUNT(*), COUNT(DISTINCT received_at) FROM events").fetchone()
    assert commits == (1 + 2 + 1, 1)  # one transaction stored the three requests


def test_new_items_are_searchable_and_deleted_items_vanish(client, engine_dir, tmp_path):
    put = client.put(
        "/items/press-9",
        json={"title": "Quantum Drill Press", "brand": "Acme", "price": 300},
        headers=AUTH,
    )
    assert put.json() == {"id": "press-9", "created": True, "deleted": False}
    found = client.get("/search", params={"q": "quantum press"}).json()
    assert found["items"][0] == {"id": "press-9", "title": "Quantum Drill Press", "score": 1.0}
    assert _ids(client.get("/search", params={"q": "quantum", "brand": "Bosch"})) == []
    # holding only some of the words, it comes after what the engine found
    partial = _ids(client.get("/search", params={"q": "hammer press"}))
    assert partial[0] == "drill-2" and partial[-1] == "press-9"
    assert client.post(
        "/events", json={"user_id": "hal", "item_id": "press-9"}, headers=AUTH
    ).is_success

    assert client.delete("/items/drill-1", headers=AUTH).is_success
    assert client.delete("/items/drill-1", headers=AUTH).status_code == 404
    assert client.delete("/items/never-was", headers=AUTH).status_code == 404
    assert "drill-1" not in _ids(client.get("/search", params={"q": "drill"}))
    assert "drill-1" not in _ids(client.get("/users/ivy/recommendations", params={"k": 10}))
    gone = client.post("/events", json={"user_id": "ivy", "item_id": "drill-1"}, headers=AUTH)
    assert _fields(gone) == ["item_id"]

    # both edits outlive a restart: they were in the log before the 2xx
    restarted = _client(engine_dir, tmp_path / "live")
    assert _ids(restarted.get("/search", params={"q": "quantum press"}))[0] == "press-9"
    assert "drill-1" not in _ids(restarted.get("/search", params={"q": "drill"}))
    assert restarted.get("/health").json()["items"] == 5  # 5 built + 1 added - 1 deleted


def test_forgetting_a_user_erases_the_log_and_the_engine(client, engine_dir, tmp_path):
    # alice bought drill-1, the most popular item, so it is never recommended back to her
    assert "drill-1" not in _ids(client.get("/users/alice/recommendations", params={"k": 5}))
    client.post("/events", json={"user_id": "alice", "item_id": "lamp-1"}, headers=AUTH)
    removed = client.delete("/users/alice", headers=AUTH).json()
    assert removed == {"events_removed": 3}  # one live event and two from the build
    log_file = tmp_path / "live" / LOG_FILE
    assert EventLog(log_file).events().empty
    assert b"alice" not in log_file.read_bytes()
    engine_events = pd.read_parquet(engine_dir / "current" / "events.parquet")
    assert len(engine_events) == 5
    # her history is gone, so drill-1 comes back for her, now and after a restart
    assert "drill-1" in _ids(client.get("/users/alice/recommendations", params={"k": 5}))
    restarted = _client(engine_dir, tmp_path / "live")
    assert "drill-1" in _ids(restarted.get("/users/alice/recommendations", params={"k": 5}))


def test_health_metrics_and_docs(client):
    health = client.get("/health").json()
    assert health["engine_version"] == "v0001"
    assert health["status"] == "ok"
    client.get("/search", params={"q": "drill"})
    client.get("/users/someone/recommendations")
    metrics = client.get("/metrics").text
    assert 'shoplm_http_requests_total{method="GET",route="/search",status="200"} 1.0' in metrics
    assert 'route="/users/{user_id}/recommendations"' in metrics
    assert "someone" not in metrics
    assert 'shoplm_engine_info{engine_version="v0001"' in metrics
    assert "shoplm_http_request_seconds_bucket" in metrics
    assert client.get("/docs").status_code == 200
    assert "/users/{user_id}/recommendations" in client.get("/openapi.json").json()["paths"]


def test_logs_are_json_with_a_request_id_and_no_user_data(client, caplog):
    with caplog.at_level(logging.INFO, logger="shoplm.serve"):
        tagged = client.get(
            "/users/secret-person/recommendations", headers={"X-Request-ID": "req-42"}
        )
        client.get("/search", params={"q": "drill", "user": "secret-person"})
        injected = client.get("/health", headers={"X-Request-ID": "bad\nid"})
    assert tagged.headers["x-request-id"] == "req-42"
    assert injected.headers["x-request-id"] != "bad\nid"
    lines = [JsonFormatter().format(r) for r in caplog.records]
    entries = [json.loads(line) for line in lines]
    assert entries[0]["request_id"] == "req-42"
    assert {e["route"] for e in entries} >= {"/users/{user_id}/recommendations", "/search"}
    assert not any("secret-person" in line or "drill" in line for line in lines)
