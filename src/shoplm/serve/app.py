"""The HTTP API: one app factory over an engine directory and a data folder for the log.

Handlers are ``async`` wherever they do not wait on a disk or a lock. Search and
recommendations are a few milliseconds of numpy work each: running them on the event loop
spares each request the hop to a pool thread and back (py-spy put a hop at about 7% of an
event post's CPU), and one process holds the GIL for that work anyway. The requests that
reach the loop together are answered by one batched call (:mod:`shoplm.serve.batching`).
Event posts wait on the fsync without holding a thread (see
:meth:`LiveEngine.ingest_async`). Routes that block for long (catalogue edits, erasure,
reload) stay plain ``def`` and run in the thread pool.

Answers are serialised with orjson straight from Python values; the pydantic models stay
as the OpenAPI schema, which the tests check the answers against.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from shoplm import __version__
from shoplm.config import load_config
from shoplm.realtime.event_log import LogWriteError
from shoplm.search.pipeline import SearchFilters
from shoplm.serve.batching import MicroBatcher
from shoplm.serve.console import _finite, console_router
from shoplm.serve.experiments import EXPERIMENT_LOG_FILE, Assignment, LiveExperiments
from shoplm.serve.live import EventsRejected, FeedRequest, LiveEngine, SearchRequest
from shoplm.serve.monitoring import METRICS, Monitor, load_rules, parse_duration, parse_selector
from shoplm.serve.observability import LOGGER, Metrics, RequestObserver
from shoplm.serve.schemas import (
    AlertsOut,
    EventsAccepted,
    EventsIn,
    Health,
    ItemChanged,
    ItemIn,
    RecommendationsOut,
    Reloaded,
    SearchOut,
    SeriesOut,
    UserForgotten,
)
from shoplm.serve.security import BodySizeLimit, api_key_guard
from shoplm.serve.settings import ServeSettings

#: the event log's file inside the data folder
LOG_FILE = "events.sqlite3"
#: the monitor's history inside the data folder
MONITOR_FILE = "monitoring.db"
_METRIC_HELP = 'a metric and labels, e.g. p99_ms{route="/search"}; one of ' + ", ".join(METRICS)

ItemId = Annotated[str, PathParam(min_length=1, max_length=256)]
UserId = Annotated[str, PathParam(min_length=1, max_length=256)]


class FastJSON(Response):
    """A JSON answer serialised by orjson (several times faster than the json module)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def create_app(engine_dir: Path, data_dir: Path, settings: ServeSettings | None = None) -> FastAPI:
    """The service for the engine at ``engine_dir``, keeping its event log in ``data_dir``."""
    settings = settings or ServeSettings()
    data_dir = Path(data_dir)
    rules = load_rules(settings.alert_rules, settings.alerts_file)
    live = LiveEngine.open(
        Path(engine_dir),
        data_dir / LOG_FILE,
        settings.session_items,
        settings.max_log_bytes,
    )
    try:
        experiments = _experiments(live, data_dir, settings)
    except Exception:
        live.close()
        raise
    monitor = Monitor(
        data_dir / MONITOR_FILE,
        rules,
        bucket_seconds=settings.monitor_bucket_seconds,
        retention_seconds=settings.monitor_retention_seconds,
        gauges=lambda: _gauges(live, monitor),
    ).open()
    experiments.observers.append(monitor.record_variant)
    live.listeners.append(lambda rows: monitor.record_events(len(rows)))
    metrics = Metrics(live.version)
    metrics.registry.register(monitor)
    searches = MicroBatcher(
        live.search_many,
        settings.max_batch,
        metrics.batch_size.labels("/search").observe,
    )
    feeds = MicroBatcher(
        live.recommend_many,
        settings.max_batch,
        metrics.batch_size.labels("/users/{user_id}/recommendations").observe,
    )
    writer = [Depends(api_key_guard(settings.key_digests()))]
    admin = [Depends(api_key_guard(settings.admin_key_digests()))]
    reader = writer if settings.protect_reads else []

    async def ticking() -> None:
        """Seal, store and evaluate once per bucket; one tick at a time, off the loop."""
        while True:
            await asyncio.sleep(monitor.bucket_seconds)
            try:
                await asyncio.to_thread(monitor.tick)
            except Exception:
                LOGGER.exception("monitor tick failed")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(ticking())
        yield
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        monitor.close()
        experiments.close()
        live.close()

    app = FastAPI(
        title="shoplm",
        version=__version__,
        description="Search and recommendations for an online shop.",
        lifespan=lifespan,
    )
    app.state.live = live
    app.state.experiments = experiments
    app.state.monitor = monitor
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestObserver, metrics=metrics, record=monitor.record_request)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["X-API-Key", "Content-Type", "X-Request-ID"],
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 with each problem's field path spelt out in its message."""
        problems = [
            {
                "field": ".".join(str(p) for p in err["loc"]),
                "message": f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}",
            }
            for err in exc.errors()
        ]
        return JSONResponse({"detail": problems}, status_code=422)

    @app.exception_handler(LogWriteError)
    async def _unwritable(request: Request, exc: LogWriteError) -> JSONResponse:
        """507 when the disk is full (a client may retry later), 503 when it is read-only."""
        LOGGER.error(
            "event log not writable",
            extra={"fields": {"request_id": request.state.request_id, "error": str(exc)}},
        )
        return JSONResponse({"detail": str(exc)}, status_code=507 if exc.reason == "full" else 503)

    @app.exception_handler(Exception)
    async def _crashed(request: Request, exc: Exception) -> JSONResponse:
        LOGGER.error(
            "unhandled error",
            exc_info=exc,
            extra={"fields": {"request_id": request.state.request_id}},
        )
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.get("/search", response_model=SearchOut, dependencies=reader, tags=["read"])
    async def search(
        q: Annotated[str, Query(min_length=1, max_length=500, description="the search text")],
        k: Annotated[int, Query(ge=1, le=100)] = 10,
        page: Annotated[int, Query(ge=1, le=1000)] = 1,
        category: Annotated[str | None, Query(max_length=500)] = None,
        brand: Annotated[str | None, Query(max_length=256)] = None,
        price_min: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
        price_max: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
        user: Annotated[
            str | None, Query(max_length=256, description="record the search for this user")
        ] = None,
    ) -> Response:
        if price_min is not None and price_max is not None and price_min > price_max:
            raise HTTPException(422, "price_min: greater than price_max")
        filters = SearchFilters(category, brand, price_min, price_max)
        key, assignment = _assigned(user)
        found = await searches.submit(
            SearchRequest(q, k, (page - 1) * k, filters, assignment and assignment.arm)
        )
        if user is not None:
            try:
                await live.ingest_async([{"user_id": user, "event": "search", "query": q}])
            except EventsRejected as exc:
                raise HTTPException(
                    422, [{**p, "message": f"query.user: {p['message']}"} for p in exc.problems]
                ) from None
        if key is not None and assignment is not None:  # served: the answer goes out
            experiments.expose(key, assignment, "search", found.ids)
        answer = {
            "query": q,
            "items": [
                {"id": i, "title": t, "score": s}
                for i, t, s in zip(found.ids, found.titles, found.scores, strict=True)
            ],
            "total": found.total,
            "page": page,
            "facets": found.facets or {},
            "suggestion": found.suggestion,
            "applied": found.applied or {},
        }
        if assignment is not None:
            answer.update(assignment.fields())
        return FastJSON(answer)

    @app.get(
        "/users/{user_id}/recommendations",
        response_model=RecommendationsOut,
        dependencies=reader,
        tags=["read"],
    )
    async def recommendations(
        user_id: UserId, k: Annotated[int, Query(ge=1, le=100)] = 10
    ) -> Response:
        key, assignment = _assigned(user_id)
        found = await feeds.submit(FeedRequest(user_id, k, assignment and assignment.arm, key))
        answer: dict[str, object] = {
            "items": [
                {"id": i, "title": t, "score": s, "reason": r}
                for i, t, s, r in zip(
                    found.ids, found.titles, found.scores, found.reasons or [], strict=True
                )
            ]
        }
        if key is not None and assignment is not None:
            experiments.expose(key, assignment, "home", found.ids)
            answer.update(assignment.fields())
        return FastJSON(answer)

    @app.post("/events", response_model=EventsAccepted, dependencies=writer, tags=["write"])
    async def post_events(events: Annotated[EventsIn, Body()]) -> Response:
        """Store one event or a list, durably, before answering; a bad list stores none."""
        batch = events if isinstance(events, list) else [events]
        if not batch:
            raise HTTPException(422, "body: an empty list holds no event")
        if len(batch) > settings.max_events_per_request:
            raise HTTPException(
                422, f"body: more than {settings.max_events_per_request} events in one request"
            )
        where = "body.events.{}" if isinstance(events, list) else "body.event"
        try:
            stored = await live.ingest_async([e.model_dump(exclude_none=True) for e in batch])
        except EventsRejected as exc:
            raise HTTPException(
                422,
                [
                    {**p, "message": f"{where.format(p['row'])}.{p['field']}: {p['message']}"}
                    for p in exc.problems
                ],
            ) from None
        return FastJSON({"received": len(batch), "stored": stored})

    @app.put("/items/{item_id}", response_model=ItemChanged, dependencies=writer, tags=["write"])
    def put_item(item_id: ItemId, item: ItemIn) -> ItemChanged:
        """Add or change a product; it is searchable as soon as this answers."""
        created = live.put_item(item_id, item.model_dump(exclude_none=True))
        return ItemChanged(id=item_id, created=created)

    @app.delete("/items/{item_id}", response_model=ItemChanged, dependencies=writer, tags=["write"])
    def delete_item(item_id: ItemId) -> ItemChanged:
        """Withdraw a product from every answer."""
        if not live.delete_item(item_id):
            raise HTTPException(404, "item_id: no such item in the catalogue")
        return ItemChanged(id=item_id, deleted=True)

    @app.delete(
        "/users/{user_id}",
        response_model=UserForgotten,
        response_model_exclude_none=True,
        dependencies=writer,
        tags=["write"],
    )
    def delete_user(user_id: UserId) -> UserForgotten:
        """Erase a user's events everywhere (the right to be forgotten), experiments included."""
        removed = live.forget_user(user_id)
        rows = experiments.forget(live.pseudonym(user_id)) if experiments.has_log else None
        return UserForgotten(events_removed=removed, experiment_rows_removed=rows)

    @app.post(
        "/admin/reload",
        response_model=Reloaded,
        dependencies=admin,
        tags=["admin"],
        responses={409: {"description": "the engine could not be loaded; the old one serves"}},
    )
    def reload() -> Reloaded:
        """Load the engine the engine directory's ``current`` link points at, and serve it.

        The new engine is checked in full first; if it cannot be loaded the answer is 409
        with the reason, and the engine served so far goes on serving.
        """
        previous = live.version
        try:
            version = live.reload()
        except Exception as exc:
            LOGGER.error("engine reload failed", extra={"fields": {"error": str(exc)}})
            raise HTTPException(
                409, f"engine not reloaded, {previous} still serving: {exc}"
            ) from None
        metrics.serving(version)
        LOGGER.info("engine reloaded", extra={"fields": {"from": previous, "to": version}})
        return Reloaded(engine_version=version, previous_version=previous)

    @app.get("/health", response_model=Health, tags=["ops"])
    async def health() -> Health:
        return Health(
            status="ok",
            engine_version=live.version,
            shoplm_version=__version__,
            items=int((~live.catalog.deleted).sum()),
        )

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/experiments/{name}/report",
        dependencies=reader,
        tags=["experiments"],
        responses={404: {"description": "no such experiment running"}},
    )
    def experiment_report(
        name: Annotated[str, PathParam(min_length=1, max_length=64)],
    ) -> Response:
        """The statistics of a running experiment over everything served so far.

        The same analysis as ``shoplm ab report``: per variant users, CTR, conversion and
        revenue per user; per treatment the tests, intervals and the verdict.
        """
        try:
            report = experiments.report(name)
        except KeyError:
            running = [c.name for c in experiments.configs]
            raise HTTPException(
                404, f"path.name: no experiment {name!r} running; running: {running}"
            ) from None
        return FastJSON(_finite(report))

    @app.get(
        "/monitoring/series", response_model=SeriesOut, dependencies=reader, tags=["monitoring"]
    )
    def monitoring_series(
        metric: Annotated[str, Query(min_length=1, max_length=300, description=_METRIC_HELP)],
        window: Annotated[
            str, Query(max_length=16, description="how far back: 15m, 1h, 24h")
        ] = "1h",
    ) -> Response:
        """A metric's time series (points of ``[unix time, value]``, null without data)."""
        try:
            name, labels = parse_selector(metric, "query.metric")
            seconds = parse_duration(window, "query.window")
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        if not 0 < seconds <= monitor.retention_seconds:
            raise HTTPException(
                422, f"query.window: must be within the {monitor.retention_seconds:g} s kept"
            )
        return FastJSON(monitor.series(name, labels, seconds))

    @app.get(
        "/monitoring/alerts", response_model=AlertsOut, dependencies=reader, tags=["monitoring"]
    )
    def monitoring_alerts() -> Response:
        """Every alert rule with its state (ok, pending, firing), since when, and its value."""
        return FastJSON({"alerts": monitor.alerts()})

    def _assigned(user: str | None) -> tuple[str | None, Assignment | None]:
        """The user's pseudonym and variants when an experiment runs (else no work)."""
        if user is None or not experiments.running:
            return None, None
        key = live.pseudonym(user)
        return key, experiments.assign(key)

    app.include_router(console_router(settings))
    return app


def _experiments(live: LiveEngine, data_dir: Path, settings: ServeSettings) -> LiveExperiments:
    """The experiments to run (the file's, else the engine config's), opened and served."""
    if settings.experiments_file is not None:
        configs = load_config(settings.experiments_file).experiments
    else:
        configs = live.engine.config.experiments

    def prices(ids: list[str]) -> np.ndarray:
        served = live.served
        table = served.engine.items
        if "price" not in table:
            return np.full(len(ids), np.nan)
        base = table["price"].to_numpy(dtype=float, na_value=np.nan)
        rows = served.catalog.ids.get_indexer(ids)
        known = (rows >= 0) & (rows < base.size)
        return np.where(known, base[np.where(known, rows, 0)], np.nan)

    experiments = LiveExperiments(configs, data_dir / EXPERIMENT_LOG_FILE, prices)
    # a log left by an earlier run is opened too: erasure must reach its rows
    if experiments.running or experiments.log_path.exists():
        experiments.open()
    if experiments.running:
        live.set_arms(list(experiments.arms.values()))
        live.listeners.append(experiments.record_events)
    return experiments


def _gauges(live: LiveEngine, monitor: Monitor) -> dict[str, float | None]:
    newest = live.newest_event_ns
    return {
        "index_items": float((~live.catalog.deleted).sum()),
        "event_lag_s": monitor.clock() - newest / 1e9 if newest else None,
    }
