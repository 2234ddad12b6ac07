"""The web console: its JSON routes through the app, then the pages in a real browser.

The browser test drives Debian's Chromium through Playwright against the real service
(uvicorn in a child process on loopback) and saves a screenshot of each step under
``$SHOPLM_TEST_ARTIFACTS`` (or the test's temp folder).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import free_port
from fastapi.testclient import TestClient

from shoplm import store
from shoplm.config import SearchConfig, ShoplmConfig
from shoplm.engine import Engine
from shoplm.experiment import ExperimentConfig, analyse, assign, attribute
from shoplm.experiment.report import write_json
from shoplm.serve import console
from shoplm.serve.app import create_app
from shoplm.serve.settings import ServeSettings, hash_api_key

KEY = "console-test-key-0123456789"
ADMIN_KEY = "console-admin-key-0123456789"
AUTH = {"X-API-Key": KEY}
ADMIN = {"X-API-Key": ADMIN_KEY}
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

CATALOG = (
    "item_id,title,description,category,brand,price\n"
    "drill-1,Cordless Drill 20V,Brushless motor with two batteries,Tools > Drills,Makita,99\n"
    "drill-2,Hammer Drill,Corded 800W,Tools > Drills,Bosch,79\n"
    "drill-3,Compact Drill Driver,12V for small jobs,Tools > Drills,Bosch,59\n"
    "bits-1,Drill Bit Set,29 HSS bits,Tools > Accessories,Bosch,19\n"
    "saw-1,Circular Saw,7-1/4 inch blade,Tools > Saws,Makita,129\n"
    "gloves-1,Work Gloves,Leather palm,Tools > Safety,Ansell,9\n"
    "lamp-1,Desk Lamp,LED with dimmer,Home > Lighting,Ikea,25\n"
    "bulb-1,LED Bulb 4-pack,Warm white E27,Home > Lighting,Philips,12\n"
    "mug-1,Coffee Mug,Stoneware 350ml,Home > Kitchen,Ikea,6\n"
)
# drill-1 is bought with bits and gloves; the lamp and the bulbs are popular elsewhere
EVENTS = (
    "user_id,item_id,event,timestamp\n"
    "alice,drill-1,purchase,2024-01-01T10:00:00Z\n"
    "alice,bits-1,purchase,2024-01-01T10:01:00Z\n"
    "bob,drill-1,purchase,2024-01-02T10:00:00Z\n"
    "bob,gloves-1,purchase,2024-01-02T10:01:00Z\n"
    "carol,lamp-1,purchase,2024-01-03T10:00:00Z\n"
    "carol,bulb-1,purchase,2024-01-03T10:01:00Z\n"
    "dave,bulb-1,purchase,2024-01-04T10:00:00Z\n"
    "dave,mug-1,purchase,2024-01-04T10:01:00Z\n"
    "erin,lamp-1,purchase,2024-01-05T10:00:00Z\n"
    "erin,bulb-1,purchase,2024-01-05T10:01:00Z\n"
    "frank,saw-1,view,2024-01-06T10:00:00Z\n"
)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An engine root with two versions (v0002 current). Lexical search only: the console
    shows what the engine answers, and a dense encoder would only add a model load."""
    root = tmp_path_factory.mktemp("console-shop")
    (root / "catalog.csv").write_text(CATALOG, encoding="utf-8")
    (root / "events.csv").write_text(EVENTS, encoding="utf-8")
    config = ShoplmConfig(search=SearchConfig(dense=False))
    for _ in range(2):
        Engine.build(root / "catalog.csv", root / "engine", root / "events.csv", config)
    return root


@pytest.fixture
def engine_root(shop: Path, tmp_path: Path) -> Path:
    """A private copy of the engine root, so a rollback in one test leaves the others be."""
    root = tmp_path / "engine"
    shutil.copytree(shop / "engine", root, symlinks=True)
    return root


def _client(engine_root: Path, data_dir: Path, **options: object) -> TestClient:
    settings = ServeSettings(
        api_key_hashes=[hash_api_key(KEY)], admin_key_hashes=[hash_api_key(ADMIN_KEY)], **options
    )
    return TestClient(create_app(engine_root, data_dir, settings))


@pytest.fixture
def client(engine_root: Path, tmp_path: Path) -> TestClient:
    return _client(engine_root, tmp_path / "live")


# ---------------------------------------------------------------------- JSON routes
def test_pages_and_static_files_are_served_with_a_strict_policy(client):
    for path, marker in (("/", "storefront.js"), ("/dashboard", "dashboard.js")):
        page = client.get(path)
        assert page.status_code == 200
        assert marker in page.text
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
    script = client.get("/console/static/storefront.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert client.get("/console/static/console.css").headers["content-type"].startswith("text/css")
    # only plain names of files that exist: no other path can be reached through it
    assert client.get("/console/static/nothing.js").status_code == 404
    assert client.get("/console/static/..%2Fapp.py").status_code in (404, 422)
    assert client.get("/console/static/index.html").status_code == 422


def test_item_details_similar_and_bought_together(client):
    found = client.get("/console/api/items", params={"ids": ["drill-1", "nope"]}).json()
    assert found["missing"] == ["nope"]
    (drill,) = found["items"]
    assert drill == {
        "id": "drill-1",
        "title": "Cordless Drill 20V",
        "description": "Brushless motor with two batteries",
        "category": "Tools > Drills",
        "brand": "Makita",
        "price": 99.0,
    }
    together = client.get("/items/drill-1/bought-together").json()["items"]
    assert {i["id"] for i in together} == {"bits-1", "gloves-1"}
    assert {i["reason"] for i in together} == {"bought together"}
    similar = client.get("/items/drill-1/similar", params={"k": 5}).json()["items"]
    assert [i["id"] for i in similar[:2]] == [i["id"] for i in together]
    assert "drill-1" not in {i["id"] for i in similar}
    assert len(similar) == 5
    # a withdrawn item is gone from the lists and has no page
    assert client.delete("/items/gloves-1", headers=AUTH).status_code == 200
    assert [i["id"] for i in client.get("/items/drill-1/bought-together").json()["items"]] == [
        "bits-1"
    ]
    assert client.get("/items/gloves-1/similar").status_code == 404
    assert client.get("/items/unknown/bought-together").status_code == 404
    assert client.get("/console/api/items").status_code == 422


def test_versions_list_manifests_validation_and_metrics(client, engine_root):
    manifest_path = engine_root / "v0001" / store.MANIFEST
    manifest = json.loads(manifest_path.read_text("utf-8"))
    manifest["metrics"] = {"search": {"ndcg@10": 0.42}, "recall@10": float("nan")}
    manifest_path.write_text(json.dumps(manifest), "utf-8")
    (engine_root / "v0003").mkdir()  # an unfinished folder without a manifest is no version

    answer = client.get("/console/api/versions").json()
    assert answer["current"] == answer["serving"] == "v0002"
    assert [v["version"] for v in answer["versions"]] == ["v0002", "v0001"]
    newest, oldest = answer["versions"]
    assert newest["current"] and newest["serving"] and not oldest["current"]
    assert newest["counts"] == {"items": 9, "events": 11, "users": 6}
    assert newest["validation"] == {
        "errors": 0,
        "warnings": 0,
        "rows_read": 20,
        "rows_kept": 20,
        "rows_rejected": 0,
    }
    assert newest["components"]["recommend"] == ["cooccurrence", "popularity"]
    assert set(newest["inputs"]) == {"catalog", "events"}
    assert "path" not in newest["inputs"]["catalog"]
    assert oldest["metrics"] == {"search": {"ndcg@10": 0.42}, "recall@10": None}


def test_rollback_needs_a_key_switches_current_and_is_logged(client, engine_root):
    assert client.post("/console/api/rollback", json={"version": "v0001"}).status_code == 401
    # a write key is not an admin key
    for key in (AUTH, {"X-API-Key": "guess"}):
        refused = client.post("/console/api/rollback", json={"version": "v0001"}, headers=key)
        assert refused.status_code == 403
    missing = client.post("/console/api/rollback", json={"version": "v0009"}, headers=ADMIN)
    assert missing.status_code == 422
    assert "body.version" in missing.json()["detail"]
    bad = client.post("/console/api/rollback", json={"version": "../x"}, headers=ADMIN)
    assert [p["field"] for p in bad.json()["detail"]] == ["body.version"]
    assert store.resolve(engine_root).name == "v0002"

    done = client.post("/console/api/rollback", json={"version": "v0001"}, headers=ADMIN).json()
    assert done == {"current": "v0001", "previous": "v0002", "serving": "v0002", "changed": True}
    assert store.resolve(engine_root).name == "v0001"
    again = client.post("/console/api/rollback", json={"version": "v0001"}, headers=ADMIN).json()
    assert again["changed"] is False

    (entry,) = client.get("/console/api/deployments").json()["deployments"]
    assert entry["action"] == "rollback"
    assert (entry["version"], entry["previous"]) == ("v0001", "v0002")
    assert ADMIN_KEY not in json.dumps(entry)
    versions = client.get("/console/api/versions").json()
    assert (versions["current"], versions["serving"]) == ("v0001", "v0002")


def _ab_report(folder: Path) -> Path:
    """A real A/B report as ``shoplm ab report`` writes it: B converts 20% of users, A 10%,
    and B's click-through is a little higher."""
    config = ExperimentConfig(
        name="feed-v2",
        variants=[{"name": "A", "share": 0.5}, {"name": "B", "share": 0.5}],
        min_sample_per_variant=500,
        bootstrap_resamples=200,
    )
    users = np.array([f"user-{i:05d}" for i in range(3000)], dtype=object)
    arm = assign(config, users)
    rng = np.random.default_rng(0)
    clicked = rng.random(users.size) < np.where(arm == 1, 0.33, 0.30)
    bought = rng.random(users.size) < np.where(arm == 1, 0.2, 0.1)
    exposures = pd.DataFrame(
        {"user": users, "variant": np.array(config.variant_names)[arm], "served_at": 0}
    )
    outcomes = pd.DataFrame(
        {
            "user": np.concatenate([users[clicked], users[bought]]),
            "event": ["click"] * int(clicked.sum()) + ["purchase"] * int(bought.sum()),
            "timestamp": 5,
            "revenue": np.concatenate([np.zeros(clicked.sum()), np.full(bought.sum(), 10.0)]),
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    return write_json(analyse(attribute(exposures, outcomes, 10), config), folder / "feed-v2.json")


def test_experiment_report_is_passed_through_or_absent(client, engine_root, monkeypatch):
    absent = client.get("/console/api/experiment").json()
    assert absent["report"] is None
    assert absent["source"] == "experiments"
    folder = engine_root / console.EXPERIMENT_REPORT_DEFAULT
    folder.mkdir()
    assert client.get("/console/api/experiment").json()["report"] is None
    written = _ab_report(folder)
    shown = client.get("/console/api/experiment").json()
    assert shown["source"] == "feed-v2.json"
    assert shown["report"] == json.loads(written.read_text("utf-8"))
    assert shown["report"]["verdict"] == "B better"
    # a file named in the environment wins; one that does not parse says why
    elsewhere = engine_root / "ab.json"
    elsewhere.write_text("{not json", "utf-8")
    monkeypatch.setenv(console.EXPERIMENT_REPORT_ENV, str(elsewhere))
    broken = client.get("/console/api/experiment").json()
    assert broken["report"] is None
    assert broken["error"].startswith("ab.json:")


def test_console_reads_follow_protect_reads(engine_root, tmp_path):
    client = _client(engine_root, tmp_path / "live", protect_reads=True)
    assert client.get("/console/api/versions").status_code == 401
    assert client.get("/items/drill-1/similar").status_code == 401
    assert client.get("/console/api/versions", headers=AUTH).status_code == 200
    assert client.get("/").status_code == 200  # the page itself holds no data


# ---------------------------------------------------------------------- the browser
SERVER = """
import sys
from pathlib import Path

import uvicorn

from shoplm.serve.app import create_app
from shoplm.serve.settings import ServeSettings

settings = ServeSettings(alert_rules=['p99_ms{route="/search"} > 5000 for 5m'])
app = create_app(Path(sys.argv[1]), Path(sys.argv[2]), settings)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), access_log=False, log_level="warning")
"""


@pytest.fixture
def server(engine_root: Path, tmp_path: Path) -> Iterator[str]:
    """The real service on a loopback port; stopped by its pid whatever the test does."""
    port = free_port()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(engine_root), str(tmp_path / "live"), str(port)],
        env={**os.environ, "SHOPLM_API_KEYS": KEY, "SHOPLM_ADMIN_KEYS": ADMIN_KEY},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}: " + _tail(tmp_path))
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("server did not answer /health within 60 s: " + _tail(tmp_path))
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def _tail(tmp_path: Path) -> str:
    return (tmp_path / "server.log").read_text("utf-8", errors="replace")[-2000:]


@pytest.fixture
def artifacts(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    given = os.environ.get("SHOPLM_TEST_ARTIFACTS")
    folder = Path(given) / request.node.name if given else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_storefront_and_dashboard_in_a_real_browser(server, engine_root, artifacts):
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            _drive(sync_api, browser, server, engine_root, artifacts)
        finally:
            browser.close()


def _shot(page, path: Path) -> None:
    """The whole page from its top (a sticky header would float mid-page otherwise)."""
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=path, full_page=True)


def _drive(sync_api, browser, base: str, engine_root: Path, shots: Path) -> None:
    expect = sync_api.expect
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    # a shopper the engine never saw, and the keys, as the settings boxes store them
    context.add_init_script(
        f"localStorage.setItem('shoplm.apiKey', {json.dumps(KEY)});"
        f"localStorage.setItem('shoplm.adminKey', {json.dumps(ADMIN_KEY)});"
        "if (!localStorage.getItem('shoplm.user')) localStorage.setItem('shoplm.user', 'newcomer');"
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # the home feed of a newcomer: popular items only
    page.goto(f"{base}/#/")
    feed = page.locator("main .card")
    expect(feed.first).to_be_visible()
    assert page.locator("#user-id").input_value() == "newcomer"
    before = feed.locator(".reason").all_inner_texts()
    assert before and set(before) == {"popular in the shop"}
    _shot(page, shots / "01-home-feed.png")

    # a misspelt search, the suggestion, then a brand facet
    page.get_by_label("Search products").fill("dril")
    page.get_by_label("Search products").press("Enter")
    suggestion = page.locator(".suggestion a")
    expect(suggestion).to_have_text("drill")
    _shot(page, shots / "02-did-you-mean.png")
    suggestion.click()
    expect(page.locator("main h1")).to_have_text("Results for “drill”")
    expect(page.locator("#result-count")).to_have_text("4 products")
    page.locator("[data-facet=brand] a", has_text="Makita").click()
    expect(page.locator("#result-count")).to_have_text("1 product")
    expect(page.locator(".chips")).to_contain_text("brand: Makita")
    expect(page.locator("main .card-title")).to_have_text(["Cordless Drill 20V"])
    _shot(page, shots / "03-search-facet.png")

    # the product page: facts, bought together, similar items; then add it to the cart
    page.locator("main .card-title", has_text="Cordless Drill 20V").click()
    expect(page.locator("main h1")).to_have_text("Cordless Drill 20V")
    expect(page.locator(".product .price")).to_have_text("99.00")
    together = page.locator("#bought-together .card-title")
    expect(together).to_have_count(2)
    assert set(together.all_inner_texts()) == {"Drill Bit Set", "Work Gloves"}
    expect(page.locator("#similar .card").first).to_be_visible()
    page.get_by_role("button", name="Add to cart").click()
    expect(page.locator("#toast")).to_contain_text("Added “Cordless Drill 20V”")
    expect(page.locator("#cart-count")).to_have_text("1")
    _shot(page, shots / "04-product.png")

    # the feed now follows the click and the cart
    page.locator(".brand").click()
    reasons = page.locator("main .card .reason")
    expect(reasons.first).to_have_text("bought together with Cordless Drill 20V")
    after = page.locator("main .card-title").all_inner_texts()
    assert "Cordless Drill 20V" not in after
    assert {"Drill Bit Set", "Work Gloves"} <= set(after)
    _shot(page, shots / "05-feed-changed.png")

    # the dashboard: versions, live metrics, no experiment, then a rollback
    page.goto(f"{base}/dashboard")
    rows = page.locator("#versions-body tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("v0002")
    expect(rows.first.locator(".tag")).to_have_text(["current", "serving"])
    expect(page.locator("#live-body")).to_contain_text("/search")
    expect(page.locator("#experiment-body")).to_contain_text("No experiment running")
    # monitoring: the alert rule with its state, and the latency chart over time
    expect(page.locator("#alerts-body tbody tr")).to_contain_text(["p99_ms"])
    expect(
        page.locator("#charts-body figure svg polyline, #charts-body figure svg circle").first
    ).to_be_visible()
    _shot(page, shots / "06-dashboard.png")

    # an A/B report appears with its verdict and one interval plot per metric
    _ab_report(engine_root / console.EXPERIMENT_REPORT_DEFAULT)
    page.reload()
    expect(page.locator("#experiment-body .verdict")).to_contain_text("B better")
    expect(page.locator("#experiment-body svg circle.estimate")).to_have_count(3)
    expect(page.locator("#experiment-body tbody tr").first).to_contain_text("A")
    page.locator("#experiment").screenshot(path=shots / "07-ab-report.png")

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#rollback-version").select_option("v0001")
    page.get_by_role("button", name="Roll back").click()
    expect(page.locator("#rollback-status")).to_have_text(
        "v0001 is current and the service reloaded it."
    )
    expect(page.locator("#versions-body tbody tr").nth(1).locator(".tag")).to_have_text(
        ["current", "serving"]
    )
    expect(page.locator("#deployments-body tbody tr")).to_have_count(1)
    assert store.resolve(engine_root).name == "v0001"
    assert httpx.get(f"{base}/health").json()["engine_version"] == "v0001"
    expect(page.locator("#live-body .stat strong").first).to_have_text("v0001")
    _shot(page, shots / "08-rollback.png")

    assert not errors, errors
    context.close()
