"""The HTTP API: one app factory over an engine directory and a data folder for the log.

Route handlers are plain ``def`` functions: search and recommendations are numpy work and
writes wait on an fsync, so they run in the server's thread pool instead of blocking the
event loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from shoplm import __version__
from shoplm.search.pipeline import SearchFilters
from shoplm.serve.live import EventsRejected, LiveEngine
from shoplm.serve.observability import LOGGER, Metrics, RequestObserver
from shoplm.serve.schemas import (
    EventsAccepted,
    EventsIn,
    Health,
    ItemChanged,
    ItemIn,
    RecommendationsOut,
    RecommendedItem,
    ScoredItem,
    SearchOut,
    UserForgotten,
)
from shoplm.serve.security import BodySizeLimit, api_key_guard
from shoplm.serve.settings import ServeSettings

#: the event log's file inside the data folder
LOG_FILE = "events.sqlite3"

ItemId = Annotated[str, PathParam(min_length=1, max_length=256)]
UserId = Annotated[str, PathParam(min_length=1, max_length=256)]


def create_app(engine_dir: Path, data_dir: Path, settings: ServeSettings | None = None) -> FastAPI:
    """The service for the engine at ``engine_dir``, keeping its event log in ``data_dir``."""
    settings = settings or ServeSettings()
    live = LiveEngine.open(Path(engine_dir), Path(data_dir) / LOG_FILE, settings.session_items)
    metrics = Metrics(live.version)
    writer = [Depends(api_key_guard(settings.key_digests()))]
    reader = writer if settings.protect_reads else []

    app = FastAPI(
        title="shoplm",
        version=__version__,
        description="Search and recommendations for an online shop.",
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

    @app.exception_handler(Exception)
    async def _crashed(request: Request, exc: Exception) -> JSONResponse:
        LOGGER.error(
            "unhandled error",
            exc_info=exc,
            extra={"fields": {"request_id": request.state.request_id}},
        )
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.get("/search", response_model=SearchOut, dependencies=reader, tags=["read"])
    def search(
        q: Annotated[str, Query(min_length=1, max_length=500, description="the search text")],
        k: Annotated[int, Query(ge=1, le=100)] = 10,
        page: Annotated[int, Query(ge=1, le=1000)] = 1,
        category: Annotated[str | None, Query(max_length=500)] = None,
        brand: Annotated[str | None, Query(max_length=256)] = None,
        price_min: Annotated[float | None, Query(ge=0)] = None,
        price_max: Annotated[float | None, Query(ge=0)] = None,
        user: Annotated[
            str | None, Query(max_length=256, description="record the search for this user")
        ] = None,
    ) -> SearchOut:
        if price_min is not None and price_max is not None and price_min > price_max:
            raise HTTPException(422, "price_min: greater than price_max")
        filters = SearchFilters(category, brand, price_min, price_max)
        found = live.search(q, k, (page - 1) * k, filters, user)
        return SearchOut(
            query=q,
            items=[
                ScoredItem(id=i, title=t, score=s)
                for i, t, s in zip(
                    live.item_ids(found.ids), live.titles(found.ids), found.scores, strict=True
                )
            ],
            total=found.total,
            page=page,
            facets=found.facets or {},
            suggestion=found.suggestion,
            applied=found.applied or {},
        )

    @app.get(
        "/users/{user_id}/recommendations",
        response_model=RecommendationsOut,
        dependencies=reader,
        tags=["read"],
    )
    def recommendations(
        user_id: UserId, k: Annotated[int, Query(ge=1, le=100)] = 10
    ) -> RecommendationsOut:
        found = live.recommend(user_id, k)
        return RecommendationsOut(
            items=[
                RecommendedItem(id=i, title=t, score=s, reason=r)
                for i, t, s, r in zip(
                    live.item_ids(found.ids),
                    live.titles(found.ids),
                    found.scores,
                    found.reasons or [],
                    strict=True,
                )
            ]
        )

    @app.post("/events", response_model=EventsAccepted, dependencies=writer, tags=["write"])
    def post_events(events: Annotated[EventsIn, Body()]) -> EventsAccepted:
        """Store one event or a list, durably, before answering; a bad list stores none."""
        batch = events if isinstance(events, list) else [events]
        if not batch:
            raise HTTPException(422, "body: an empty list holds no event")
        if len(batch) > settings.max_events_per_request:
            raise HTTPException(
                422, f"body: more than {settings.max_events_per_request} events in one request"
            )

        def where(problem: dict[str, object]) -> str:
            return f"body.events.{problem['row']}" if isinstance(events, list) else "body.event"

        try:
            stored = live.ingest([e.model_dump(exclude_none=True) for e in batch])
        except EventsRejected as exc:
            raise HTTPException(
                422,
                [
                    {**p, "message": f"{where(p)}.{p['field']}: {p['message']}"}
                    for p in exc.problems
                ],
            ) from None
        return EventsAccepted(received=len(batch), stored=stored)

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

    @app.get("/health", response_model=Health, tags=["ops"])
    def health() -> Health:
        return Health(
            status="ok",
            engine_version=live.version,
            shoplm_version=__version__,
            items=int((~live.catalog.deleted).sum()),
        )

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
