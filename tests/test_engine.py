"""Build, load and query an engine through the command-line contract."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from sample_shop import CATALOG as SHOP_CATALOG
from sample_shop import EVENTS
from typer.testing import CliRunner

from shoplm import store
from shoplm.cli import app
from shoplm.data.privacy import PrivacyError
from shoplm.engine import Engine, forget_user

runner = CliRunner()

#: an item with no text at all is still an item
CATALOG = SHOP_CATALOG + "nails-1,,,,,\n"


@pytest.fixture
def shop(tmp_path: Path, write) -> tuple[Path, Path]:
    return write("catalog.csv", CATALOG), write("events.csv", EVENTS)


def _build(shop, out: Path) -> None:
    catalog, events = shop
    result = runner.invoke(
        app, ["build", "--catalog", str(catalog), "--events", str(events), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_build_writes_a_versioned_engine_with_a_manifest(tmp_path, shop):
    out = tmp_path / "engine"
    _build(shop, out)
    _build(shop, out)
    assert [v.name for v in store.versions(out)] == ["v0001", "v0002"]
    assert os.readlink(out / "current") == "v0002"
    manifest = json.loads((out / "current" / "manifest.json").read_text())
    assert manifest["counts"] == {"items": 6, "events": 7, "users": 4}
    assert manifest["inputs"]["catalog"]["sha256"]
    assert not any(p.name.startswith(".building") for p in out.iterdir())
    # no raw user id is written anywhere in the engine
    for path in (out / "v0002").rglob("*"):
        if path.is_file():
            assert b"alice" not in path.read_bytes(), path


def test_search_and_recommend_batch_contract(tmp_path, shop, write):
    out = tmp_path / "engine"
    _build(shop, out)
    queries = write("queries.txt", "cordless drill\nled lighting\n\n🙂🙂\n")
    result = runner.invoke(
        app,
        [
            "search",
            "--engine",
            str(out),
            "--queries",
            str(queries),
            "--k",
            "3",
            "--out",
            str(tmp_path / "s.jsonl"),
        ],
    )
    assert result.exit_code == 0, result.output
    hits = _jsonl(tmp_path / "s.jsonl")
    assert [h["query"] for h in hits] == ["cordless drill", "led lighting", "", "🙂🙂"]
    assert hits[0]["items"][0] == "drill-1"
    assert set(hits[1]["items"][:2]) == {"lamp-1", "bulb-1"}
    assert hits[2]["items"] == [] and hits[3]["items"] == []
    assert all(len(h["items"]) == len(h["scores"]) <= 3 for h in hits)

    users = write("users.txt", "alice\nnever-seen\n")
    result = runner.invoke(
        app,
        [
            "recommend",
            "--engine",
            str(out),
            "--users",
            str(users),
            "--k",
            "10",
            "--out",
            str(tmp_path / "r.jsonl"),
        ],
    )
    assert result.exit_code == 0, result.output
    alice, stranger = _jsonl(tmp_path / "r.jsonl")
    assert alice["user"] == "alice" and stranger["user"] == "never-seen"
    assert "drill-1" not in alice["items"] and "saw-1" not in alice["items"]  # already seen
    assert stranger["items"][0] == "drill-1"  # the best seller
    assert len(stranger["items"]) == 6 and len(alice["items"]) == 4
    assert all(isinstance(r, str) and r for r in alice["reasons"])


def test_a_catalogue_alone_is_enough(tmp_path, shop):
    catalog, _ = shop
    result = runner.invoke(app, ["build", "--catalog", str(catalog), "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    engine = Engine.load(tmp_path / "e")
    assert engine.search(["circular saw"], 1)[0].items == ["saw-1"]
    assert len(engine.recommend(["anyone"], 3)[0].items) == 3


def test_forget_erases_a_user_everywhere(tmp_path, shop):
    out = tmp_path / "engine"
    _build(shop, out)
    _build(shop, out)
    result = runner.invoke(app, ["forget", "--engine", str(out), "--user", "alice"])
    assert result.exit_code == 0, result.output
    assert "removed 4 events" in result.output  # 2 events in each of the two versions
    for version in store.versions(out):
        assert pq.read_table(version / "events.parquet").num_rows == 5
    engine = Engine.load(out)
    assert engine.user_histories(["alice"]).lengths.tolist() == [0]
    assert engine.user_histories(["bob"]).lengths.tolist() == [2]
    assert forget_user(out, "alice") == 0


def test_a_different_key_is_refused(tmp_path, shop, monkeypatch):
    out = tmp_path / "engine"
    _build(shop, out)
    monkeypatch.setenv("SHOPLM_PSEUDONYM_KEY", "another-key-entirely-0123")
    with pytest.raises(PrivacyError, match="not the one this engine was built with"):
        Engine.load(out).recommend(["alice"], 3)


def test_a_failed_build_leaves_the_live_engine_alone(tmp_path, shop, write):
    out = tmp_path / "engine"
    _build(shop, out)
    empty = write("empty.csv", "item_id,title\n,nothing\n")
    result = runner.invoke(app, ["build", "--catalog", str(empty), "--out", str(out)])
    assert result.exit_code == 2
    assert "no usable item" in result.output
    assert [v.name for v in store.versions(out)] == ["v0001"]
    assert os.readlink(out / "current") == "v0001"
    assert sorted(p.name for p in out.iterdir()) == ["current", "v0001"]


def test_not_an_engine_is_a_clear_error(tmp_path, write):
    queries = write("q.txt", "x\n")
    result = runner.invoke(
        app,
        [
            "search",
            "--engine",
            str(tmp_path),
            "--queries",
            str(queries),
            "--out",
            str(tmp_path / "o.jsonl"),
        ],
    )
    assert result.exit_code == 2
    assert "not an engine directory" in result.output


def test_events_without_timestamps_keep_file_order(tmp_path, write):
    catalog = write("c.csv", "item_id\na\nb\nc\n")
    events = write("e.csv", "user_id,item_id\nu,c\nu,a\nu,b\n")
    Engine.build(catalog, tmp_path / "e", events)
    engine = Engine.load(tmp_path / "e")
    history = engine.user_histories(["u"])
    assert engine.items["item_id"].to_numpy()[history.items].tolist() == ["c", "a", "b"]
    assert pd.read_parquet(tmp_path / "e" / "current" / "events.parquet")["timestamp"].isna().all()


def test_recommendations_are_explained(tmp_path, shop):
    out = tmp_path / "engine"
    _build(shop, out)
    engine = Engine.load(out)
    alice, stranger = engine.recommend(["alice", "never-seen"], 10)
    # bob and carol bought the cordless drill with drill-2 and lamp-1: alice gets those first
    assert set(alice.items[:2]) == {"drill-2", "lamp-1"}
    assert alice.reasons[:2] == ["bought together with Cordless Drill 20V"] * 2
    assert alice.reasons[2:] == ["popular in the shop"] * (len(alice.items) - 2)
    assert stranger.reasons == ["popular in the shop"] * len(stranger.items)


def test_similar_items_contract(tmp_path, shop, write):
    out = tmp_path / "engine"
    _build(shop, out)
    items = write("items.txt", "drill-1\nno-such-item\n")
    result = runner.invoke(
        app,
        [
            "similar",
            "--engine",
            str(out),
            "--items",
            str(items),
            "--k",
            "3",
            "--out",
            str(tmp_path / "sim.jsonl"),
        ],
    )
    assert result.exit_code == 0, result.output
    drill, unknown = _jsonl(tmp_path / "sim.jsonl")
    assert drill["item"] == "drill-1" and "drill-1" not in drill["items"]
    assert drill["reasons"][0] == "bought together"
    assert len(drill["items"]) == len(drill["reasons"]) == 3
    assert unknown["reasons"] == ["popular in the shop"] * 3
    assert unknown["items"][0] == "drill-1"


def test_unavailable_items_are_never_searched_or_recommended(tmp_path, write):
    catalog = write(
        "catalog.csv",
        "item_id,title,category,available\n"
        "drill-1,Cordless Drill 20V,Tools,yes\n"
        "drill-2,Hammer Drill,Tools,false\n"
        "drill-3,Drill Bits,Tools,\n"
        "lamp-1,Desk Lamp,Home,maybe\n",
    )
    events = write(
        "events.csv",
        "user_id,item_id,event\nann,drill-1,purchase\nann,drill-2,purchase\n"
        "bo,drill-1,purchase\nbo,drill-2,purchase\nbo,drill-3,purchase\n",
    )
    result = Engine.build(catalog, tmp_path / "engine", events)
    # an unreadable flag is reported and the item stays available
    assert result.report.counts[(str(catalog), "available", "warning", _FLAG_REASON)] == 1
    engine = Engine.load(tmp_path / "engine")
    assert engine.available.tolist() == [True, False, True, True]
    assert "drill-2" not in engine.search(["drill"], 10)[0].items
    assert "drill-2" not in engine.search_pipeline.search("hammer drill", 10).ids
    for rec in [*engine.recommend(["ann", "bo", "new"], 10), *engine.similar(["drill-1"], 10)]:
        assert "drill-2" not in rec.items and rec.items
    # its history still counts: drill-2 links drill-1 to drill-3 for a new cart
    assert engine.recommend(["ann"], 1)[0].items == ["drill-3"]


_FLAG_REASON = "not true/false, yes/no or 1/0; item kept as available"


def test_a_changed_model_file_is_refused_at_load(tmp_path, shop):
    _build(shop, tmp_path / "engine")
    version = store.resolve(tmp_path / "engine")
    manifest = json.loads((version / "manifest.json").read_text())
    assert "items.parquet" in manifest["files"] and "events.parquet" not in manifest["files"]
    pops = version / "recommend" / "popularity"
    target = next(p for p in sorted(pops.iterdir()) if p.is_file())
    target.write_bytes(target.read_bytes() + b"\0")
    with pytest.raises(store.EngineNotFoundError, match="SHA-256 differs"):
        Engine.load(tmp_path / "engine")
