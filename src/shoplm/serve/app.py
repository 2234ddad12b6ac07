"""The HTTP API: one app factory over an engine directory and a data folder for the log.

Handlers are ``async`` wherever they do not wait on a disk or a lock. Search and
recommendations are a few milliseconds of numpy work each: running them on the event loop
spares each request the hop to a pool thread and back (py-spy put a hop at about 7% of an
event post's CPU), and one process holds the GIL for that work anyway. Event posts wait on
the fsync without holding a thread (see :meth:`LiveEngine.ingest_async`). Routes that block
for long (catalogue edits, erasure, reload) stay plain ``def`` and run in the thread pool.

Answers are serialised with orjson straight from Python values; the pydantic models stay
as the OpenAPI schema, which the tests check the answers against.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from shoplm import __version__
from shoplm.realtime.event_log import LogWriteError
from shoplm.search.pipeline import SearchFilters
from shoplm.serve.console import console_router
from shoplm.serve.live import EventsRejected, LiveEngine
from shoplm.serve.observability import LOGGER, Metrics, RequestObserver
from shoplm.serve.schemas import (
    EventsAccepted,
    EventsIn,
    Health,
    ItemChanged,
    ItemIn,
    RecommendationsOut,
    Reloaded,
    SearchOut,
    UserForgotten,
)
from shoplm.serve.security import BodySizeLimit, api_key_guard
from shoplm.serve.settings import ServeSettings

#: the event log's file inside the data folder
LOG_FILE = "events.sqlite3"

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
    live = LiveEngine.open(
        Path(engine_dir),
        Path(data_dir) / LOG_FILE,
        settings.session_items,
        settings.max_log_bytes,
    )
    metrics = Metrics(live.version)
    writer = [Depends(api_key_guard(settings.key_digests()))]
    admin = [Depends(api_key_guard(settings.admin_key_digests()))]
    reader = writer if settings.protect_reads else []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        live.close()

    app = FastAPI(
        title="shoplm",
        version=__version__,
        description="Search and recommendations for an online shop.",
        lifespan=lifespan,
    )
    app.state.live = live
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestObserver, metrics=metrics)
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
        found = live.search(q, k, (page - 1) * k, filters)
        if user is not None:
            try:
                await live.ingest_async([{"user_id": user, "event": "search", "query": q}])
            except EventsRejected as exc:
                raise HTTPException(
                    422, [{**p, "message": f"query.user: {p['message']}"} for p in exc.problems]
                ) from None
        return FastJSON(
            {
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
        )

    @app.get(
        "/users/{user_id}/recommendations",
        response_model=RecommendationsOut,
        dependencies=reader,
        tags=["read"],
    )
    async def recommendations(
        user_id: UserId, k: Annotated[int, Query(ge=1, le=100)] = 10
    ) -> Response:
        found = live.recommend(user_id, k)
        return FastJSON(
            {
                "items": [
                    {"id": i, "title": t, "score": s, "reason": r}
                    for i, t, s, r in zip(
                        found.ids, found.titles, found.scores, found.reasons or [], strict=True
                    )
                ]
            }
        )

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
        "/users/{user_id}", response_model=UserForgotten, dependencies=writer, tags=["write"]
    )
    def delete_user(user_id: UserId) -> UserForgotten:
        """Erase a user's events everywhere (the right to be forgotten)."""
        return UserForgotten(events_removed=live.forget_user(user_id))

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

    app.include_router(console_router(settings))
    return app
