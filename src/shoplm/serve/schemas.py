"""Request and response bodies of the HTTP API (they are also its OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

_ID = Field(min_length=1, max_length=256)


class _Strict(BaseModel):
    """Unknown fields are refused, so a misspelt field name is a 422 naming it."""

    model_config = ConfigDict(extra="forbid")


class EventIn(_Strict):
    """One event; the fields and their rules are those of an event file (see ``validate``)."""

    user_id: str = _ID
    item_id: str | None = Field(default=None, max_length=256)
    event: str | None = Field(default=None, max_length=64, description="empty means purchase")
    timestamp: str | float | None = Field(
        default=None, description="ISO 8601 or epoch seconds; empty means when received"
    )
    query: str | None = Field(default=None, max_length=1_000)
    value: float | str | None = None
    session_id: str | None = Field(default=None, max_length=256)
    event_id: str | None = Field(
        default=None,
        max_length=128,
        description="idempotency key: an event sent again with the same id is stored once",
    )


def _one_or_many(body: object) -> str:
    return "events" if isinstance(body, list) else "event"


#: ``POST /events`` takes one event or a list. The explicit choice keeps a bad field's error
#: path plain (``body.event.user_id``, ``body.events.3.item_id``) instead of one error per
#: union branch.
EventsIn = Annotated[
    Annotated[EventIn, Tag("event")] | Annotated[list[EventIn], Tag("events")],
    Discriminator(_one_or_many),
]


class EventsAccepted(BaseModel):
    received: int
    stored: int = Field(description="new events; the rest repeated an already stored event_id")


class ItemIn(_Strict):
    title: str = Field(min_length=1, max_length=1_000)
    description: str | None = Field(default=None, max_length=20_000)
    category: str | None = Field(default=None, max_length=1_000)
    brand: str | None = Field(default=None, max_length=256)
    price: float | None = Field(default=None, ge=0)


class ItemChanged(BaseModel):
    id: str
    created: bool = False
    deleted: bool = False


class ScoredItem(BaseModel):
    id: str
    title: str
    score: float


class _Assigned(BaseModel):
    """The experiment fields of an answer to a request with a user, while a test runs."""

    experiment: str | None = Field(
        default=None, description="the (first) running experiment; absent when none runs"
    )
    variant: str | None = Field(default=None, description="the user's variant in it")
    experiments: dict[str, str] | None = Field(
        default=None, description="the user's variant in every running experiment"
    )


class SearchOut(_Assigned):
    query: str
    items: list[ScoredItem]
    total: int = Field(description="results that pass the filters, over every page")
    page: int
    facets: dict[str, dict[str, int]]
    suggestion: str | None = Field(description='"did you mean" text when a word was corrected')
    applied: dict[str, str | float] = Field(description="filters in effect, given or parsed")


class RecommendedItem(ScoredItem):
    reason: str


class RecommendationsOut(_Assigned):
    items: list[RecommendedItem]


class UserForgotten(BaseModel):
    events_removed: int = Field(description="events erased from the live log and the engine")
    experiment_rows_removed: int | None = Field(
        default=None,
        description="exposures and outcomes erased from the experiment log (absent: no log)",
    )


class SeriesPoints(BaseModel):
    labels: dict[str, str]
    points: list[tuple[float, float | None]] = Field(description="[unix time, value] pairs")


class SeriesOut(BaseModel):
    metric: str
    labels: dict[str, str]
    window_s: float
    step_s: float = Field(description="seconds each point covers")
    series: list[SeriesPoints]


class AlertOut(BaseModel):
    name: str
    metric: str
    labels: dict[str, str]
    comparison: str
    threshold: float
    window_s: float
    over_s: float
    state: str = Field(description="ok, pending (condition holds, not yet for window) or firing")
    since: float = Field(description="unix time the rule entered its state")
    value: float | None
    series: dict[str, str] | None = Field(description="labels of the series that crossed")


class AlertsOut(BaseModel):
    alerts: list[AlertOut]


class Health(BaseModel):
    status: str
    engine_version: str
    shoplm_version: str
    items: int


class Reloaded(BaseModel):
    engine_version: str = Field(description="the engine version served from now on")
    previous_version: str
