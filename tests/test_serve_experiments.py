"""A/B experiments through the real app: sticky variants, exposures, outcomes, report, erasure."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sample_shop import CATALOG, EVENTS

from shoplm.config import SearchConfig, ShoplmConfig
from shoplm.engine import Engine
from shoplm.experiment import ExperimentConfig, assign_names
from shoplm.serve.app import create_app
from shoplm.serve.experiments import EXPERIMENT_LOG_FILE
from shoplm.serve.settings import ServeSettings, hash_api_key

KEY = "test-api-key-0123456789"
AUTH = {"X-API-Key": KEY}

#: the second version sells a new drill that everybody buys
NEW_ITEM = "drill-3,Impact Drill 18V,Compact driver,Tools > Drills,Makita,149\n"
NEW_EVENTS = "".join(f"buyer{i},drill-3,purchase,2024-02-0{i + 1}T10:00:00Z\n" for i in range(5))
USERS = [f"shopper-{i}" for i in range(40)]


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v0001 without drill-3; v0002 (current) with it, running an experiment in its config
    whose control keeps serving v0001."""
    root = tmp_path_factory.mktemp("shop")
    (root / "catalog.csv").write_text(CATALOG, encoding="utf-8")
    (root / "events.csv").write_text(EVENTS, encoding="utf-8")
    plain = ShoplmConfig(search=SearchConfig(dense=False))
    Engine.build(root / "catalog.csv", root / "engine", root / "events.csv", plain)
    (root / "catalog2.csv").write_text(CATALOG + NEW_ITEM, encoding="utf-8")
    (root / "events2.csv").write_text(EVENTS + NEW_EVENTS, encoding="utf-8")
    versions = ExperimentConfig(
        name="versions",
        variants=[
            {"name": "old", "share": 0.5, "engine": "v0001"},
            {"name": "new", "share": 0.5},
        ],
    )
    config = plain.model_copy(update={"experiments": [versions]})
    Engine.build(root / "catalog2.csv", root / "engine", root / "events2.csv", config)
    return root / "engine"


def _write_experiment(path: Path, **plan: object) -> Path:
    """A TOML file with one experiment: control against a diversified feed."""
    lines = ["[[experiments]]", 'name = "diverse-feed"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in plan.items()]
    lines += ["[[experiments.variants]]", 'name = "control"', "share = 0.5"]
    lines += ["[[experiments.variants]]", 'name = "diverse"', "share = 0.5"]
    lines += ['settings = { "recommend.diversity" = 0.5 }']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _client(engine_dir: Path, data_dir: Path, **settings: object) -> TestClient:
    options = {"api_key_hashes": [hash_api_key(KEY)], **settings}
    return TestClient(create_app(engine_dir, data_dir, ServeSettings(**options)))


def _expected(app_client: TestClient, name: str, users: list[str]) -> list[str]:
    live = app_client.app.state.live
    config = app_client.app.state.experiments.config(name)
    return assign_names(config, [live.pseudonym(u) for u in users]).tolist()


def test_assignment_is_sticky_across_requests_surfaces_and_restarts(engine_dir, tmp_path):
    settings = {"experiments_file": _write_experiment(tmp_path / "ab.toml")}
    client = _client(engine_dir, tmp_path / "live", **settings)
    expected = _expected(client, "diverse-feed", USERS)
    assert set(expected) == {"control", "diverse"}
    seen = []
    for user in USERS:
        answers = [
            client.get(f"/users/{user}/recommendations").json(),
            client.get(f"/users/{user}/recommendations", params={"k": 3}).json(),
            client.get("/search", params={"q": "drill", "user": user}).json(),
            client.get("/items/drill-1/similar", params={"user": user}).json(),
        ]
        variants = {a["variant"] for a in answers}
        assert len(variants) == 1, (user, variants)
        assert all(a["experiment"] == "diverse-feed" for a in answers)
        assert answers[0]["experiments"] == {"diverse-feed": answers[0]["variant"]}
        seen.append(answers[0]["variant"])
    assert seen == expected
    # without a user nothing is assigned or recorded
    assert "variant" not in client.get("/search", params={"q": "drill"}).json()
    restarted = _client(engine_dir, tmp_path / "live", **settings)
    again = [restarted.get(f"/users/{u}/recommendations").json()["variant"] for u in USERS]
    assert again == seen


def test_a_variant_serves_its_own_engine_version(engine_dir, tmp_path):
    """The experiment in v0002's config: "old" users get v0001's answers, the rest v0002's."""
    client = _client(engine_dir, tmp_path / "live")
    versions = {
        "old": Engine.load(engine_dir / "v0001"),
        "new": Engine.load(engine_dir / "v0002"),
    }
    variants = _expected(client, "versions", USERS)
    assert set(variants) == {"old", "new"}
    for user, variant in zip(USERS, variants, strict=True):
        answer = client.get(f"/users/{user}/recommendations", params={"k": 4}).json()
        assert answer["variant"] == variant
        (want,) = versions[variant].recommend([user], 4)
        assert [i["id"] for i in answer["items"]] == want.items
        found = client.get("/search", params={"q": "drill", "user": user}).json()
        assert ("drill-3" in [i["id"] for i in found["items"]]) == (variant == "new")
    # a reload keeps the variant engines side by side
    assert client.app.state.live.reload() == "v0002"
    user = USERS[variants.index("old")]
    answer = client.get(f"/users/{user}/recommendations", params={"k": 6}).json()
    assert "drill-3" not in [i["id"] for i in answer["items"]]


def test_exposures_are_logged_and_outcomes_attributed(engine_dir, tmp_path):
    settings = {"experiments_file": _write_experiment(tmp_path / "ab.toml")}
    client = _client(engine_dir, tmp_path / "live", **settings)
    shown = client.get("/users/shopper-1/recommendations", params={"k": 3}).json()
    client.get("/search", params={"q": "lamp", "user": "shopper-1"})
    events = [
        {"user_id": "shopper-1", "item_id": "lamp-1", "event": "click"},
        {"user_id": "shopper-1", "item_id": "lamp-1", "event": "add_to_cart"},
        {"user_id": "shopper-1", "item_id": "lamp-1", "event": "purchase", "value": 2},
        {"user_id": "shopper-1", "item_id": "bulb-1", "event": "purchase"},
        {"user_id": "shopper-1", "item_id": "saw-1", "event": "view"},
    ]
    assert client.post("/events", json=events, headers=AUTH).status_code == 200
    report = client.get("/experiments/diverse-feed/report").json()
    arm = next(v for v in report["variants"] if v["name"] == shown["variant"])
    assert (arm["users"], arm["exposures"]) == (1, 2)  # the feed and the search
    assert arm["revenue"] == pytest.approx(2 * 25 + 12)  # quantity x price, 1 x price
    assert arm["ctr"] == 1.0 and arm["conversion"] == 1.0
    assert report["kind"] == "not_enough_data"
    with sqlite3.connect(tmp_path / "live" / EXPERIMENT_LOG_FILE) as db:
        surfaces = [r[0] for r in db.execute("SELECT surface FROM exposures ORDER BY id")]
        items = json.loads(db.execute("SELECT items FROM exposures ORDER BY id").fetchone()[0])
        kinds = sorted(r[0] for r in db.execute("SELECT event FROM outcomes"))
    assert surfaces == ["home", "search"]
    assert items == [i["id"] for i in shown["items"]]
    assert kinds == ["add_to_cart", "click", "purchase", "purchase"]  # the view is no outcome
    assert client.get("/experiments/nope/report").status_code == 404


def test_the_report_reaches_a_verdict_on_a_simulated_stream(engine_dir, tmp_path):
    """Users of the treatment buy three times as often: the report says so, with no SRM."""
    plan = {"min_sample_per_variant": 150, "bootstrap_resamples": 200, "seed": 1}
    settings = {"experiments_file": _write_experiment(tmp_path / "ab.toml", **plan)}
    client = _client(engine_dir, tmp_path / "live", **settings)
    rng = np.random.default_rng(7)
    batch = []
    for i in range(400):
        user = f"sim-{i}"
        answer = client.get(f"/users/{user}/recommendations", params={"k": 3}).json()
        rate = 0.6 if answer["variant"] == "diverse" else 0.2
        draw = rng.random()
        item = answer["items"][0]["id"]
        if draw < 0.8:
            batch.append({"user_id": user, "item_id": item, "event": "click"})
        if draw < rate:
            batch.append({"user_id": user, "item_id": item, "event": "purchase", "value": 1})
    assert client.post("/events", json=batch, headers=AUTH).status_code == 200
    report = client.get("/experiments/diverse-feed/report").json()
    assert sum(v["users"] for v in report["variants"]) == 400
    assert report["srm"]["flagged"] is False
    assert report["kind"] == "better", report["verdict"]
    assert report["verdict"].startswith("diverse better")


def test_forgetting_a_user_erases_their_experiment_rows(engine_dir, tmp_path):
    settings = {"experiments_file": _write_experiment(tmp_path / "ab.toml")}
    client = _client(engine_dir, tmp_path / "live", **settings)
    for user in ("erin", "frank"):
        client.get(f"/users/{user}/recommendations")
        client.post("/events", json={"user_id": user, "item_id": "lamp-1"}, headers=AUTH)
    gone = client.delete("/users/erin", headers=AUTH).json()
    assert gone["experiment_rows_removed"] == 2  # one exposure, one purchase
    erin = client.app.state.live.pseudonym("erin")
    with sqlite3.connect(tmp_path / "live" / EXPERIMENT_LOG_FILE) as db:
        users = {
            r[0] for r in db.execute("SELECT user FROM exposures UNION SELECT user FROM outcomes")
        }
    assert erin not in users and len(users) == 1


def test_a_variant_setting_the_service_cannot_vary_is_refused_at_start(engine_dir, tmp_path):
    path = tmp_path / "ab.toml"
    _write_experiment(path)
    path.write_text(path.read_text().replace("recommend.diversity", "search.depth"))
    with pytest.raises(ValueError, match=r"diverse-feed\.variants\.diverse\.settings\.search"):
        _client(engine_dir, tmp_path / "live", experiments_file=path)
