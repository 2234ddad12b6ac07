"""The deployment pipeline: gates, promote, rollback, scheduled mode, and a swap under load.

The shop is made here: 12 product groups of 4; each user buys 3 items of one group and
their 4th item is held out, so a working co-occurrence model finds it and an engine built
from scrambled events does not. Builds are lexical-only and untuned to stay fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import free_port
from typer.testing import CliRunner

from shoplm.config import ShoplmConfig
from shoplm.deploy.command import app
from shoplm.deploy.config import DeployConfig
from shoplm.deploy.evaluate import read_held_out_events
from shoplm.deploy.pipeline import (
    DEPLOYMENTS_FILE,
    RECORD_FILE,
    count_events,
    current_version,
    deploy,
    rollback,
    watch,
)
from shoplm.realtime.event_log import EVENT_COLUMNS, EventLog
from shoplm.store import CURRENT

NOUNS = ["kettle", "teapot", "candle", "lantern", "blanket", "cushion"]
NOUNS += ["mirror", "clock", "basket", "vase", "apron", "umbrella"]
COLOURS = ["red", "blue", "green", "white"]
ADMIN = "deploy-admin-key-0123456789"
BUILD_SECTIONS = """
[search]
dense = false

[recommend]
tune = false
collaborative = false
"""


def _history(user: int) -> tuple[list[str], str]:
    """The 3 items a user bought and the 4th, held out (which one turns with the user)."""
    group, turn = user % len(NOUNS), user // len(NOUNS)
    items = [f"{NOUNS[group]}-{(turn + j) % 4}" for j in range(4)]
    return items[:3], items[3]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("deploy-shop")
    rows = [
        (f"{noun}-{j}", f"{COLOURS[j].title()} {noun.title()}", noun)
        for noun in NOUNS
        for j in range(4)
    ]
    pd.DataFrame(rows, columns=["item_id", "title", "category"]).to_csv(
        folder / "catalog.csv", index=False
    )
    train, held = [], []
    for user in range(144):
        bought, target = _history(user)
        for step, item in enumerate(bought):
            train.append((f"u{user}", item, "purchase", 1_700_000_000 + 60 * step))
        held.append((f"u{user}", target, "purchase", 1_700_100_000))
    columns = ["user_id", "item_id", "event", "timestamp"]
    pd.DataFrame(train, columns=columns).to_csv(folder / "events.csv", index=False)
    pd.DataFrame(held, columns=columns).to_csv(folder / "holdout.csv", index=False)
    # the same events with the items dealt out at random: no group structure left
    scrambled = pd.DataFrame(train, columns=columns)
    scrambled["item_id"] = np.random.default_rng(0).permutation(scrambled["item_id"].to_numpy())
    scrambled.to_csv(folder / "scrambled.csv", index=False)
    judged = [
        (noun, f"{other}-{j}", 3 if other == noun else 1)
        for noun in NOUNS
        for other in [*NOUNS[:4], noun]
        for j in range(2)
    ]
    pd.DataFrame(judged, columns=["query", "item_id", "relevance"]).drop_duplicates(
        ["query", "item_id"]
    ).to_csv(folder / "queries.csv", index=False)
    return folder


def _config_file(shop: Path, folder: Path, **deploy: object) -> Path:
    settings = {
        "engine": str(folder / "engine"),
        "catalog": str(shop / "catalog.csv"),
        "events": str(shop / "events.csv"),
        "holdout_events": str(shop / "holdout.csv"),
        "holdout_queries": str(shop / "queries.csv"),
        "latency_sample": 30,
        **deploy,
    }
    lines = ["[deploy]"] + [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    path = folder / "shoplm.toml"
    path.write_text("\n".join(lines) + "\n" + BUILD_SECTIONS, encoding="utf-8")
    return path


def _history_lines(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / DEPLOYMENTS_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def deployed(shop: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An engine root after one deploy (v0001, current) of the good events."""
    folder = tmp_path_factory.mktemp("deployed")
    result = CliRunner().invoke(app, ["deploy", "--config", str(_config_file(shop, folder))])
    assert result.exit_code == 0, result.output
    return folder / "engine"


@pytest.fixture
def root(deployed: Path, tmp_path: Path) -> Path:
    """A private copy of the deployed engine root."""
    copy = tmp_path / "engine"
    shutil.copytree(deployed, copy, symlinks=True)
    return copy


def _deploy_config(shop: Path, root: Path, **options: object) -> DeployConfig:
    settings: dict[str, object] = {
        "engine": root,
        "catalog": shop / "catalog.csv",
        "events": shop / "events.csv",
        "holdout_events": shop / "holdout.csv",
        "holdout_queries": shop / "queries.csv",
        "latency_sample": 30,
    }
    return DeployConfig.model_validate(settings | options)


def _build_config() -> ShoplmConfig:
    return ShoplmConfig.model_validate(
        {"search": {"dense": False}, "recommend": {"tune": False, "collaborative": False}}
    )


# ---------------------------------------------------------------------- deploy
def test_a_first_deploy_promotes_with_nothing_to_compare(deployed):
    assert current_version(deployed) == "v0001"
    record = json.loads((deployed / "v0001" / RECORD_FILE).read_text())
    assert record["decision"] == "promoted"
    assert record["live"] is None
    assert record["by"] and record["started_at"] and record["finished_at"]
    assert {"build", "evaluate", "measure", "promote"} <= set(record["steps"])
    metrics = record["metrics"]["candidate"]
    # the 4th item of each user's group is found: co-occurrence works on this shop
    assert metrics["recall@10"] > 0.9
    assert metrics["search_ndcg@10"] > 0.5
    assert record["steps"]["evaluate"]["data"]["holdout_events"]["users"] == 144
    (line,) = _history_lines(deployed)
    assert line["action"] == "promote" and line["version"] == "v0001"
    assert line["previous"] is None


def test_a_deploy_that_passes_the_gates_is_promoted(shop, root, tmp_path):
    config = _config_file(shop, tmp_path, max_drop=0.02)
    result = CliRunner().invoke(app, ["deploy", "--config", str(config), "--engine", str(root)])
    assert result.exit_code == 0, result.output
    assert "promoted v0002 (was v0001)" in result.output
    assert current_version(root) == "v0002"
    record = json.loads((root / "v0002" / RECORD_FILE).read_text())
    assert record["live"] == "v0001"
    assert set(record["metrics"]) == {"candidate", "live"}
    gates = {gate["name"]: gate for gate in record["gates"]}
    assert set(gates) == {
        "recall@10",
        "ndcg@10",
        "search_ndcg@10",
        "search_p99_cpu_ms",
        "recommend_p99_cpu_ms",
        "size_mb",
    }
    assert all(gate["passed"] for gate in gates.values())
    recall = gates["recall@10"]
    assert recall["limit"] == pytest.approx(recall["live"] - 0.02)
    assert [line["action"] for line in _history_lines(root)] == ["promote", "promote"]


def test_an_impossible_latency_budget_leaves_current_untouched(shop, root, tmp_path):
    config = _config_file(shop, tmp_path, latency_budget_ms=0.0001)
    result = CliRunner().invoke(app, ["deploy", "--config", str(config), "--engine", str(root)])
    assert result.exit_code == 1
    assert "rejected v0002" in result.output
    assert "search_p99_cpu_ms: candidate" in result.output
    assert "> budget 0.0001 ms" in result.output
    assert "live engine (v0001) is untouched" in result.output
    assert current_version(root) == "v0001"
    assert json.loads((root / "v0002" / RECORD_FILE).read_text())["decision"] == "rejected"
    last = _history_lines(root)[-1]
    assert last["action"] == "rejected" and last["version"] == "v0002"
    assert last["previous"] == "v0001"
    assert "search_p99_cpu_ms" in last["failed"]


def test_a_candidate_from_scrambled_events_fails_the_recall_gate(shop, root):
    config = _deploy_config(shop, root, events=shop / "scrambled.csv")
    said: list[str] = []
    outcome = deploy(_build_config(), config, said.append)
    assert outcome.decision == "rejected"
    failed = {gate.name: gate for gate in outcome.gates if not gate.passed}
    assert "recall@10" in failed
    gate = failed["recall@10"]
    assert gate.candidate < gate.limit < gate.live
    assert any(line.startswith("FAIL recall@10: candidate") for line in said)
    assert (root / CURRENT).resolve().name == "v0001"


def test_held_out_rows_that_cannot_be_used_are_counted_by_reason(write):
    path = write(
        "held.csv",
        "user_id,item_id,event,timestamp\n"
        "b,kettle-2,purchase,2024-01-02\n"
        ",kettle-1,purchase,2024-01-01\n"
        "a,,view,2024-01-01\n"
        "a,kettle-1,wishlist,2024-01-01\n"
        "a,kettle-1,return,2024-01-01\n"
        "a,kettle-3,click,\n"
        "a,kettle-0,view,2024-01-01\n",
    )
    held = read_held_out_events(path, ShoplmConfig())
    assert held.rows_read == 7
    assert held.skipped == {
        "missing user_id": 1,
        "missing item_id": 1,
        "unknown event type": 1,
        "event type that is not an interest (return)": 1,
    }
    # in time order; the click without a time keeps its place after the event before it
    assert list(zip(held.users, held.items, strict=True)) == [
        ("a", "kettle-0"),
        ("b", "kettle-2"),
        ("a", "kettle-3"),
    ]


# ---------------------------------------------------------------------- rollback
def test_rollback_returns_to_the_previous_accepted_version(shop, root):
    build = _build_config()
    assert deploy(build, _deploy_config(shop, root), print).decision == "promoted"  # v0002
    rejected = deploy(build, _deploy_config(shop, root, size_budget_mb=1e-6), print)
    assert rejected.decision == "rejected" and rejected.version == "v0003"
    assert deploy(build, _deploy_config(shop, root), print).decision == "promoted"  # v0004

    runner = CliRunner()
    # the default target skips the rejected v0003
    result = runner.invoke(app, ["rollback", "--engine", str(root)])
    assert result.exit_code == 0, result.output
    assert "rolled back to v0002 (was v0004)" in result.output
    assert current_version(root) == "v0002"
    last = _history_lines(root)[-1]
    assert (last["action"], last["version"], last["previous"]) == ("rollback", "v0002", "v0004")

    refused = runner.invoke(app, ["rollback", "--engine", str(root), "--to", "v0003"])
    assert refused.exit_code == 2 and "v0003 was rejected" in refused.output
    missing = runner.invoke(app, ["rollback", "--engine", str(root), "--to", "v0099"])
    assert missing.exit_code == 2 and "no complete engine version 'v0099'" in missing.output
    assert runner.invoke(app, ["rollback", "--engine", str(root), "--to", "v0004"]).exit_code == 0
    assert current_version(root) == "v0004"
    # v0001 is older still: one more default rollback from v0002 reaches it
    outcome = rollback(root, None, DeployConfig(engine=root), print)
    assert outcome.version == "v0002" and outcome.previous == "v0004"


# ---------------------------------------------------------------------- scheduled mode
def test_watch_deploys_once_enough_new_events_arrived(shop, root, tmp_path):
    events = tmp_path / "events.csv"
    shutil.copy(shop / "events.csv", events)
    config = _deploy_config(shop, root, events=events, min_new_events=20, interval_s=0.01)
    build = _build_config()
    said: list[str] = []
    # v0001 was deployed without a count: all 432 events are new, so the first look deploys;
    # the second finds nothing new
    outcomes = watch(build, config, said.append, max_checks=2)
    assert [o.decision for o in outcomes] == ["promoted"]
    assert said[-1].endswith("0 new events, waiting for 20")
    record = json.loads((root / "v0002" / RECORD_FILE).read_text())
    assert record["events_seen"] == {"source": str(events.resolve()), "count": 432}

    def new_shoppers(users: range) -> list[str]:
        return [f"n{u},{item},purchase,1700000500\n" for u in users for item in _history(u)[0]]

    with open(events, "a", encoding="utf-8") as handle:
        handle.writelines(new_shoppers(range(4)))
    assert watch(build, config, said.append, max_checks=1) == []  # 12 < 20
    with open(events, "a", encoding="utf-8") as handle:
        handle.writelines(new_shoppers(range(4, 8)))
    outcomes = watch(build, config, said.append, max_runs=1)
    assert [(o.version, o.decision) for o in outcomes] == [("v0003", "promoted")]
    assert current_version(root) == "v0003"


def test_events_are_counted_in_the_service_log_read_only(tmp_path):
    log = EventLog(tmp_path / "events.sqlite3")
    frame = pd.DataFrame(
        [(None, f"p{i}", "kettle-1", "view", 1, None, None, None) for i in range(7)],
        columns=list(EVENT_COLUMNS),
    )
    log.append(frame)
    assert count_events(tmp_path / "events.sqlite3") == 7
    log.forget("p0")  # an erasure does not make old events new again
    assert count_events(tmp_path / "events.sqlite3") == 7
    log.close()


# ---------------------------------------------------------------------- under load
@pytest.fixture
def service(root: Path, tmp_path: Path) -> Iterator[str]:
    """``shoplm serve`` on a loopback port over ``root``; stopped by its pid."""
    port = free_port()
    log_path = tmp_path / "server.log"
    command = [sys.executable, "-m", "shoplm.serve", "--engine", str(root)]
    command += ["--port", str(port), "--data-dir", str(tmp_path / "live")]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command,
            env={**os.environ, "SHOPLM_ADMIN_KEYS": ADMIN},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=1).is_success:
                    break
            assert time.monotonic() < deadline, "no /health in 60 s: " + log_path.read_text()
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


class SteadyLoad(threading.Thread):
    """About ``rate`` requests a second, searches and recommendations in turn, each outcome
    kept with its time: a status code, or the transport error's name."""

    def __init__(self, url: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.period = url, 1.0 / rate
        self.outcomes: list[tuple[float, int | str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            due = time.monotonic()
            for i in range(1_000_000):
                if self.stop.is_set():
                    return
                path, params = (
                    ("/search", {"q": NOUNS[i % len(NOUNS)]})
                    if i % 2 == 0
                    else (f"/users/u{i % 144}/recommendations", {})
                )
                try:
                    status: int | str = client.get(path, params=params).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.outcomes.append((time.monotonic(), status))
                due += self.period
                self.stop.wait(max(0.0, due - time.monotonic()))


def test_no_request_fails_during_a_promote_and_a_rollback_under_load(
    shop, root, service, monkeypatch
):
    monkeypatch.setenv("SHOPLM_DEPLOY_ADMIN_KEY", ADMIN)
    config = _deploy_config(shop, root, service_url=service)
    load = SteadyLoad(service, rate=50)
    load.start()
    try:
        time.sleep(1.0)
        start = time.monotonic()
        promoted = deploy(_build_config(), config, print)
        promoted_at = time.monotonic()
        assert promoted.decision == "promoted", promoted.gates
        assert promoted.serving == "v0002"
        assert httpx.get(f"{service}/health").json()["engine_version"] == "v0002"
        back = rollback(root, None, config, print)
        rolled_back_at = time.monotonic()
        assert (back.decision, back.serving) == ("rolled-back", "v0001")
        assert httpx.get(f"{service}/health").json()["engine_version"] == "v0001"
        time.sleep(1.0)
    finally:
        load.stop.set()
        load.join(timeout=15)
    outcomes = load.outcomes
    failed = [status for _, status in outcomes if not (isinstance(status, int) and status < 300)]
    assert failed == [], failed[:10]
    # the load really ran across both swaps
    reload_seconds = promoted.record["steps"]["reload"]["seconds"]
    during_promote = [
        t for t, _ in outcomes if promoted_at - reload_seconds - 1 <= t <= promoted_at
    ]
    during_rollback = [t for t, _ in outcomes if promoted_at <= t <= rolled_back_at]
    assert during_promote and during_rollback
    seconds = outcomes[-1][0] - outcomes[0][0]
    print(f"{len(outcomes)} requests in {seconds:.1f} s, deploy {promoted_at - start:.1f} s")
    assert len(outcomes) / seconds > 15  # a steady load, even on a busy 2-core host
