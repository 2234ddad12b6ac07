"""The service under faults and abuse: fuzzed requests, a full or read-only disk, a damaged
engine directory, and an engine reloaded while requests are in flight."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
import schemathesis
from conftest import free_port
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from sample_shop import CATALOG, EVENTS
from schemathesis.checks import not_a_server_error

from shoplm.config import SearchConfig, ShoplmConfig
from shoplm.engine import Engine
from shoplm.realtime.event_log import EventLog
from shoplm.serve.app import LOG_FILE, create_app
from shoplm.serve.settings import ServeSettings, hash_api_key
from shoplm.store import EngineNotFoundError

KEY = "fault-key-0123456789"
ADMIN = "admin-key-0123456789"
CONFIG = ShoplmConfig(search=SearchConfig(dense=False))


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small shop's input files and one built engine (``shop/engine``), never changed."""
    root = tmp_path_factory.mktemp("shop")
    (root / "catalog.csv").write_text(CATALOG, encoding="utf-8")
    (root / "events.csv").write_text(EVENTS, encoding="utf-8")
    Engine.build(root / "catalog.csv", root / "engine", root / "events.csv", CONFIG)
    return root


@pytest.fixture
def engine_dir(shop: Path, tmp_path: Path) -> Path:
    """A private copy of the engine, for tests that change or damage it."""
    return Path(shutil.copytree(shop / "engine", tmp_path / "engine", symlinks=True))


def _app(engine_dir: Path, data_dir: Path, **options: object) -> TestClient:
    settings = ServeSettings(
        api_key_hashes=[hash_api_key(KEY)], admin_key_hashes=[hash_api_key(ADMIN)], **options
    )
    return TestClient(create_app(engine_dir, data_dir, settings))


def _events(start: int, n: int) -> list[dict[str, object]]:
    return [
        {"user_id": f"u{i}", "item_id": "saw-1", "event": "view", "session_id": f"s{i:06d}"}
        for i in range(start, start + n)
    ]


# ---------------------------------------------------------------------- fuzzing
def test_fuzzed_requests_never_get_a_5xx(engine_dir, tmp_path):
    """Requests generated from the app's own OpenAPI schema, for every operation, with keys.

    Bounded by examples per operation (about 20 s in all on two busy cores).
    """
    app = _app(engine_dir, tmp_path / "live").app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/search", "/events", "/admin/reload"}

    for operation in operations:
        examples = 3 if operation.path.startswith("/admin") else 15

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def call(case: schemathesis.Case) -> None:
            key = ADMIN if case.path.startswith("/admin") else KEY
            case.call_and_validate(headers={"X-API-Key": key}, checks=[not_a_server_error])

        call()


# ---------------------------------------------------------------------- disk faults
@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at ``path``; skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(client: TestClient) -> tuple[int, httpx.Response]:
    """Post batches until one is refused; returns events acknowledged and the refusal."""
    acknowledged = 0
    for _ in range(1_000):
        reply = client.post("/events", json=_events(acknowledged, 50), headers={"X-API-Key": KEY})
        if reply.status_code != 200:
            return acknowledged, reply
        acknowledged += 50
    raise AssertionError(f"no refusal after {acknowledged} events")


def _intact(log_file: Path, acknowledged: int) -> None:
    """The log opens, passes SQLite's integrity check and holds every acknowledged event."""
    with sqlite3.connect(log_file) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = EventLog(log_file).events()["session"]
    assert stored.tolist() == [f"s{i:06d}" for i in range(acknowledged)]


@pytest.mark.parametrize("limit", ["log size cap", "tmpfs"])
def test_a_full_disk_is_a_507_naming_it_and_loses_nothing(limit, engine_dir, tmp_path):
    data_dir = tmp_path / "live"
    with contextlib.ExitStack() as stack:
        if limit == "tmpfs":
            stack.enter_context(_tmpfs(data_dir, "256k"))
            client = _app(engine_dir, data_dir)
        else:
            client = _app(engine_dir, data_dir, max_log_bytes=65_536)
        acknowledged, refused = _fill(client)
        assert acknowledged > 0
        assert refused.status_code == 507, refused.text
        message = refused.json()["detail"]
        assert "full" in message and str(data_dir / LOG_FILE) in message
        # reads go on, and the log is whole
        assert client.get("/search", params={"q": "drill"}).status_code == 200
        client.app.state.live.close()
        _intact(data_dir / LOG_FILE, acknowledged)
        # a restarted service opens it and answers
        assert _app(engine_dir, data_dir).get("/health").status_code == 200


def test_a_read_only_data_directory_is_a_503_and_writes_resume_after(engine_dir, tmp_path):
    data_dir = tmp_path / "live"
    auth = {"X-API-Key": KEY}
    with _tmpfs(data_dir, "4m"):
        client = _app(engine_dir, data_dir)
        assert client.post("/events", json=_events(0, 5), headers=auth).status_code == 200
        client.app.state.live.close()
        # (Linux refuses to remount a file system read-only while a file on it is open
        # for writing, so the service meets the read-only directory at its next start.)
        subprocess.run(["mount", "-o", "remount,ro", str(data_dir)], check=True)
        client = _app(engine_dir, data_dir)
        refused = client.post("/events", json=_events(5, 5), headers=auth)
        assert refused.status_code == 503, refused.text
        assert "read-only" in refused.json()["detail"]
        put = client.put("/items/new-1", json={"title": "New"}, headers=auth)
        assert put.status_code == 503 and "read-only" in put.json()["detail"]
        assert client.get("/users/u1/recommendations").status_code == 200
        client.app.state.live.close()
        subprocess.run(["mount", "-o", "remount,rw", str(data_dir)], check=True)
        client = _app(engine_dir, data_dir)
        assert client.post("/events", json=_events(5, 5), headers=auth).status_code == 200
        client.app.state.live.close()
        _intact(data_dir / LOG_FILE, 10)


# ---------------------------------------------------------------------- damaged engines
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _damage(version: Path, how: str) -> str:
    """Damage an engine version; returns the file the refusal must name."""
    manifest_path = version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if how == "missing file":
        (version / "histories" / "users.parquet").unlink()
        return "users.parquet"
    if how == "corrupt parquet":
        items = version / "items.parquet"
        items.write_bytes(items.read_bytes()[:-100])
        return "items.parquet"
    if how == "wrong format version":
        manifest["format_version"] = 999
        manifest_path.write_text(json.dumps(manifest))
        return "manifest.json"
    assert how == "hash mismatch"
    items = version / "items.parquet"
    manifest["files"] = {"items.parquet": _sha256(items)}
    manifest_path.write_text(json.dumps(manifest))
    frame = pd.read_parquet(items)
    frame.loc[0, "title"] = "Tampered"
    frame.to_parquet(items, index=False)  # still a valid Parquet file
    return "items.parquet"


DAMAGE = ["missing file", "corrupt parquet", "wrong format version", "hash mismatch"]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_engine_is_refused_naming_the_file(how, engine_dir):
    named = _damage(engine_dir / "v0001", how)
    with pytest.raises(EngineNotFoundError, match=named):
        Engine.load(engine_dir)


def test_an_intact_engine_with_digests_loads(engine_dir):
    version = engine_dir / "v0001"
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["files"] = {
        str(p.relative_to(version)): _sha256(p)
        for p in version.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    (version / "manifest.json").write_text(json.dumps(manifest))
    assert Engine.load(engine_dir).path == version


# ---------------------------------------------------------------------- reload
def _build_next(shop: Path, engine_dir: Path, title: str) -> Path:
    """Build a new version with one more product, and make it current."""
    catalog = shop / f"catalog-{title}.csv"
    catalog.write_text(CATALOG + f"new-1,{title},,Tools > Saws,Acme,10\n", encoding="utf-8")
    return Engine.build(catalog, engine_dir, shop / "events.csv", CONFIG).path


def _start(engine_dir: Path, data_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "SHOPLM_API_KEYS": KEY, "SHOPLM_ADMIN_KEYS": ADMIN}
    command = [sys.executable, "-m", "shoplm.serve", "--engine", str(engine_dir)]
    command += ["--port", str(port), "--data-dir", str(data_dir)]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=1).is_success:
                return server, url
        time.sleep(0.2)
    server.kill()
    raise AssertionError(f"server did not start in 60 s: {log.read_text()}")


def test_reload_swaps_engines_between_requests_and_refuses_a_damaged_one(
    shop, engine_dir, tmp_path
):
    server, url = _start(engine_dir, tmp_path / "live", tmp_path / "server.log")
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.post("/admin/reload").status_code == 401
            assert client.post("/admin/reload", headers={"X-API-Key": KEY}).status_code == 403
            admin = {"X-API-Key": ADMIN}

            # a damaged new version is refused, with the file named, and v0001 serves on
            _damage(_build_next(shop, engine_dir, "Broken Saw"), "corrupt parquet")
            refused = client.post("/admin/reload", headers=admin)
            assert refused.status_code == 409
            assert "items.parquet" in refused.json()["detail"]
            assert "v0001 still serving" in refused.json()["detail"]
            assert client.get("/health").json()["engine_version"] == "v0001"

            # a good one is swapped in while readers keep asking: every answer is a 200
            _build_next(shop, engine_dir, "Quantum Saw")
            statuses: list[int] = []
            stop = threading.Event()

            def read() -> None:
                with httpx.Client(base_url=url, timeout=30) as reader:
                    while not stop.is_set():
                        statuses.append(reader.get("/search", params={"q": "saw"}).status_code)
                        statuses.append(reader.get("/users/alice/recommendations").status_code)

            readers = [threading.Thread(target=read) for _ in range(4)]
            for thread in readers:
                thread.start()
            time.sleep(0.3)
            reloaded = client.post("/admin/reload", headers=admin)
            time.sleep(0.3)
            stop.set()
            for thread in readers:
                thread.join(timeout=30)
            assert reloaded.status_code == 200, reloaded.text
            assert reloaded.json() == {"engine_version": "v0003", "previous_version": "v0001"}
            assert len(statuses) > 10 and set(statuses) == {200}
            found = client.get("/search", params={"q": "quantum saw"}).json()["items"]
            assert found[0]["id"] == "new-1"
            metrics = client.get("/metrics").text
            assert 'engine_version="v0003"' in metrics
    finally:
        server.kill()
        server.wait()
