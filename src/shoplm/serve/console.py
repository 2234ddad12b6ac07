"""The web console: a storefront at ``/``, a dashboard at ``/dashboard``, and their JSON.

The pages are plain HTML, CSS and JavaScript modules in ``serve/static`` (no build step,
nothing fetched from anywhere but this server), and they call the public API like any
client: ``/search``, ``/users/{id}/recommendations``, ``POST /events``. What the public
API does not answer lives under ``/console/api``: product details for result cards, the
engine versions with their manifests and validation counts, the A/B report, the deployment
history and a rollback. The product page's similar and bought-together lists are public
read routes (``/items/{id}/similar``, ``/items/{id}/bought-together``).

:func:`console_router` makes the routes for one app, guarded by the service's own keys as
``create_app`` guards its routes (reads open unless ``protect_reads``, rollback behind the
admin keys). Handlers take the engine from ``request.app.state.live`` per request, so they
follow a reload without being rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from shoplm import store
from shoplm.deploy.pipeline import DeployError, deploy_lock
from shoplm.realtime.items import LiveCatalog
from shoplm.recommend.feed import BOUGHT_TOGETHER
from shoplm.serve.live import LiveEngine
from shoplm.serve.schemas import RecommendationsOut, RecommendedItem
from shoplm.serve.security import api_key_guard
from shoplm.serve.settings import ServeSettings

STATIC_DIR = Path(__file__).parent / "static"
#: deployment history next to the version folders: one JSON object per line
DEPLOYMENTS_FILE = "deployments.jsonl"
#: environment variable naming the A/B report the dashboard shows: a JSON file, or a folder
#: whose newest ``*.json`` is shown (``shoplm ab report --out FOLDER`` writes one per test)
EXPERIMENT_REPORT_ENV = "SHOPLM_EXPERIMENT_REPORT"
#: the report folder when the variable is unset, under the engine root
EXPERIMENT_REPORT_DEFAULT = Path("experiments")

_MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
_STATIC_NAME = r"^[a-z0-9_-]{1,64}\.(js|css|svg)$"
#: The pages load only this server's own scripts and styles and talk only to it; nothing
#: inline runs, so text that reaches a page from the catalogue cannot become script.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

ItemId = Annotated[str, PathParam(min_length=1, max_length=256)]


def console_router(settings: ServeSettings) -> APIRouter:
    """The console's pages and JSON routes, for an app made by ``create_app``."""
    read = [Depends(api_key_guard(settings.key_digests()))] if settings.protect_reads else []
    admin = [Depends(api_key_guard(settings.admin_key_digests()))]
    router = APIRouter()
    for path, page in (("/", storefront), ("/dashboard", dashboard)):
        router.add_api_route(path, page, methods=["GET"], include_in_schema=False)
    router.add_api_route(
        "/console/static/{name}", static_file, methods=["GET"], include_in_schema=False
    )
    for path, handler, model in (
        ("/items/{item_id}/similar", similar, RecommendationsOut),
        ("/items/{item_id}/bought-together", bought_together, RecommendationsOut),
    ):
        router.add_api_route(
            path, handler, methods=["GET"], response_model=model, dependencies=read, tags=["read"]
        )
    for path, handler, model in (
        ("/console/api/items", items, ItemsOut),
        ("/console/api/versions", versions, VersionsOut),
        ("/console/api/experiment", experiment, ExperimentOut),
        ("/console/api/deployments", deployments, DeploymentsOut),
    ):
        router.add_api_route(
            path,
            handler,
            methods=["GET"],
            response_model=model,
            dependencies=read,
            tags=["console"],
        )
    router.add_api_route(
        "/console/api/rollback",
        rollback,
        methods=["POST"],
        response_model=RollbackOut,
        dependencies=admin,
        tags=["console"],
    )
    return router


def _live(request: Request) -> LiveEngine:
    return request.app.state.live


Live = Annotated[LiveEngine, Depends(_live)]


def engine_root(engine_dir: Path) -> Path:
    """The folder of version folders: the served path, or its parent when it is a version."""
    engine_dir = Path(engine_dir)
    if (engine_dir / store.MANIFEST).is_file():
        return engine_dir.parent
    return engine_dir


def current_version(root: Path) -> str | None:
    """The version the ``current`` link names, or None when there is no link."""
    link = root / store.CURRENT
    return link.resolve().name if link.is_symlink() else None


# ---------------------------------------------------------------------- pages
def _page(name: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type="text/html", headers=_PAGE_HEADERS)


def storefront() -> FileResponse:
    return _page("index.html")


def dashboard() -> FileResponse:
    return _page("dashboard.html")


def static_file(name: Annotated[str, PathParam(pattern=_STATIC_NAME)]) -> FileResponse:
    """One file of the console; the name pattern admits no path, so nothing else is served."""
    path = STATIC_DIR / name
    if not path.is_file():
        raise HTTPException(404, f"path.name: no console file {name!r}")
    return FileResponse(
        path, media_type=_MEDIA_TYPES[path.suffix], headers={"Cache-Control": "no-cache"}
    )


# ---------------------------------------------------------------------- items
class ItemDetails(BaseModel):
    id: str
    title: str
    description: str | None = None
    category: str | None = None
    brand: str | None = None
    price: float | None = None


class ItemsOut(BaseModel):
    items: list[ItemDetails] = Field(description="the known, live items, in the order asked")
    missing: list[str] = Field(description="ids not in the catalogue or withdrawn")


def items(
    live: Live,
    ids: Annotated[list[str], Query(min_length=1, max_length=100)],
) -> ItemsOut:
    """Product details for result cards and product pages (the search answers ids+titles).

    Items added since the build carry their title only: the engine's table holds the other
    fields of the items it was built with.
    """
    catalog, table = live.catalog, live.engine.items
    rows = catalog.ids.get_indexer(ids)
    found = (rows >= 0) & ~catalog.deleted[np.maximum(rows, 0)]
    out = []
    for item_id, row in zip(ids, rows.tolist(), strict=True):
        if row < 0 or catalog.deleted[row]:
            continue
        fields: dict[str, Any] = {"id": item_id, "title": catalog.titles[row]}
        if row < catalog.n_base:
            record = table.iloc[row]
            for name in ("description", "category", "brand", "price"):
                value = record.get(name)
                fields[name] = None if _blank(value) else value
        out.append(ItemDetails(**fields))
    return ItemsOut(items=out, missing=[i for i, ok in zip(ids, found, strict=True) if not ok])


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _known_row(catalog: LiveCatalog, item_id: str) -> int:
    row = int(catalog.ids.get_indexer([item_id])[0])
    if row < 0 or catalog.deleted[row]:
        raise HTTPException(404, "item_id: no such item in the catalogue")
    return row


def _still_listed(
    catalog: LiveCatalog, ids: list[str], scores: list[float], reasons: list[str], k: int
) -> RecommendationsOut:
    """The first ``k`` recommended items that are still in the catalogue."""
    rows = catalog.ids.get_indexer(ids)
    kept = [
        RecommendedItem(id=i, title=catalog.titles[r], score=s, reason=why)
        for i, r, s, why in zip(ids, rows.tolist(), scores, reasons, strict=True)
        if r >= 0 and not catalog.deleted[r]
    ]
    return RecommendationsOut(items=kept[:k])


def similar(
    request: Request,
    live: Live,
    item_id: ItemId,
    k: Annotated[int, Query(ge=1, le=100)] = 10,
    user: Annotated[
        str | None, Query(max_length=256, description="the shopper (for A/B experiments)")
    ] = None,
) -> RecommendationsOut:
    """Items to show next to a product: bought together, similar text, then popular.

    With a ``user`` and a running experiment, the user's variant answers and the list is
    recorded as an exposure (surface ``similar``).
    """
    experiments = request.app.state.experiments
    assignment = None
    if user is not None and experiments.running:
        key = live.pseudonym(user)
        assignment = experiments.assign(key)
    try:
        found = live.similar(item_id, k, assignment.arm if assignment else None)
    except KeyError:
        raise HTTPException(404, "item_id: no such item in the catalogue") from None
    if assignment is not None:
        experiments.expose(key, assignment, "similar", found.ids)
    items = [
        RecommendedItem(id=i, title=t, score=s, reason=r)
        for i, t, s, r in zip(
            found.ids, found.titles, found.scores, found.reasons or [], strict=True
        )
    ]
    return RecommendationsOut(items=items, **(assignment.fields() if assignment else {}))


def bought_together(
    live: Live, item_id: ItemId, k: Annotated[int, Query(ge=1, le=100)] = 10
) -> RecommendationsOut:
    """Items bought with this one; empty (never filled with others) when there are none."""
    catalog, engine = live.catalog, live.engine
    row = _known_row(catalog, item_id)
    if row >= catalog.n_base:  # added since the build: no purchase with it is known yet
        return RecommendationsOut(items=[])
    hidden = int(catalog.deleted[: catalog.n_base].sum())
    ids, scores = engine.cooccurrence.similar_items(np.array([row]), k + hidden)
    listed = ids[0] >= 0
    external = engine.item_ids(ids[0][listed])
    values = scores[0][listed].astype(float).tolist()
    return _still_listed(catalog, external, values, [BOUGHT_TOGETHER] * len(external), k)


# ---------------------------------------------------------------------- engine versions
class ValidationSummary(BaseModel):
    errors: int = 0
    warnings: int = 0
    rows_read: int = 0
    rows_kept: int = 0
    rows_rejected: int = 0


class InputSummary(BaseModel):
    """An input file as the manifest records it, less its path (a server detail)."""

    bytes: int | None = None
    sha256: str | None = None


class VersionOut(BaseModel):
    version: str
    current: bool = Field(description="the `current` link names it")
    serving: bool = Field(description="this process answers from it")
    created_at: str | None = None
    created_by: str | None = None
    shoplm_version: str | None = None
    build_seconds: float | None = None
    counts: dict[str, int] = Field(default_factory=dict)
    components: dict[str, list[str]] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(
        default_factory=dict, description="offline evaluation, when the build recorded it"
    )
    inputs: dict[str, InputSummary] = Field(default_factory=dict)
    validation: ValidationSummary


class VersionsOut(BaseModel):
    current: str | None
    serving: str
    versions: list[VersionOut] = Field(description="newest first")
    unreadable: list[str] = Field(description="version folders whose manifest would not parse")


def versions(live: Live) -> VersionsOut:
    """Every complete engine version under the served engine's root, with its manifest."""
    root = engine_root(live.engine_dir)
    current = current_version(root)
    found, unreadable = [], []
    for folder in reversed(store.versions(root)):
        try:
            manifest = json.loads((folder / store.MANIFEST).read_text("utf-8"))
        except (OSError, ValueError):
            unreadable.append(folder.name)
            continue
        found.append(
            VersionOut(
                version=folder.name,
                current=folder.name == current,
                serving=folder.name == live.version,
                created_at=manifest.get("created_at"),
                created_by=manifest.get("created_by"),
                shoplm_version=manifest.get("shoplm_version"),
                build_seconds=manifest.get("build_seconds"),
                counts=manifest.get("counts") or {},
                components=manifest.get("components") or {},
                metrics=_finite(manifest.get("metrics") or _deploy_metrics(folder)),
                inputs={
                    name: InputSummary(bytes=given.get("bytes"), sha256=given.get("sha256"))
                    for name, given in (manifest.get("inputs") or {}).items()
                    if given
                },
                validation=_validation(folder, manifest),
            )
        )
    return VersionsOut(current=current, serving=live.version, versions=found, unreadable=unreadable)


def _validation(folder: Path, manifest: dict) -> ValidationSummary:
    """The build's validation counts: the manifest's totals plus rows per input file."""
    given = manifest.get("validation") or {}
    summary = ValidationSummary(errors=given.get("errors", 0), warnings=given.get("warnings", 0))
    try:
        report = json.loads((folder / "validation" / "report.json").read_text("utf-8"))
    except (OSError, ValueError):
        return summary
    for stats in (report.get("files") or {}).values():
        summary.rows_read += int(stats.get("rows_read", 0))
        summary.rows_kept += int(stats.get("rows_kept", 0))
        summary.rows_rejected += int(stats.get("rows_rejected", 0))
    return summary


def _finite(value: Any) -> Any:
    """JSON as parsed, with NaN and infinities as null (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# ---------------------------------------------------------------------- A/B report
class ExperimentOut(BaseModel):
    running: list[str] = Field(
        default_factory=list,
        description="experiments this service runs; each has GET /experiments/{name}/report",
    )
    source: str = Field(description="the report file's name")
    report: dict[str, Any] | None = Field(description="the report as written; null: none")
    error: str | None = Field(default=None, description="why an existing report was not read")


def experiment(live: Live, request: Request) -> ExperimentOut:
    """The running experiments' names, and the A/B report file for the dashboard to draw.

    The dashboard asks ``/experiments/{name}/report`` for each running experiment and
    falls back to the file (``shoplm ab report``'s JSON) when none runs.
    """
    running = [c.name for c in request.app.state.experiments.configs]
    return _report_file(live).model_copy(update={"running": running})


def _report_file(live: LiveEngine) -> ExperimentOut:
    given = os.environ.get(EXPERIMENT_REPORT_ENV)
    path = Path(given) if given else engine_root(live.engine_dir) / EXPERIMENT_REPORT_DEFAULT
    if path.is_dir():
        reports = sorted(path.glob("*.json"), key=lambda p: p.stat().st_mtime)
        if not reports:
            return ExperimentOut(source=f"{path.name}/*.json", report=None)
        path = reports[-1]
    if not path.is_file():
        return ExperimentOut(source=path.name, report=None)
    try:
        report = json.loads(path.read_text("utf-8"))
    except ValueError as exc:
        return ExperimentOut(source=path.name, report=None, error=f"{path.name}: {exc}")
    if not isinstance(report, dict):
        return ExperimentOut(source=path.name, report=None, error=f"{path.name}: not a JSON object")
    return ExperimentOut(source=path.name, report=_finite(report))


# ---------------------------------------------------------------------- deployments
class Deployment(BaseModel):
    model_config = ConfigDict(extra="allow")

    at: str
    action: str
    version: str
    previous: str | None = None


class DeploymentsOut(BaseModel):
    deployments: list[Deployment] = Field(description="newest first")
    skipped_lines: int = Field(description="lines of the history file that did not parse")


def deployments(live: Live) -> DeploymentsOut:
    """What was made current, when, and what it replaced (``deployments.jsonl``)."""
    path = engine_root(live.engine_dir) / DEPLOYMENTS_FILE
    if not path.is_file():
        return DeploymentsOut(deployments=[], skipped_lines=0)
    entries, skipped = [], 0
    for line in path.read_text("utf-8").splitlines():
        if not line.strip():
            continue
        try:
            entries.append(Deployment.model_validate_json(line))
        except ValueError:
            skipped += 1
    return DeploymentsOut(deployments=entries[::-1], skipped_lines=skipped)


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(pattern=r"^v\d{4,}$", description="an engine version folder, e.g. v0002")


class RollbackOut(BaseModel):
    current: str
    previous: str | None
    serving: str = Field(description="the version this process answers from until reloaded")
    changed: bool


def rollback(live: Live, body: RollbackIn, request: Request) -> RollbackOut:
    """Point ``current`` at an earlier (or any complete) version; the service reloads apart.

    Only the link changes here, atomically; ``POST /admin/reload`` then loads the version
    into the running service, so a failed load leaves the link and the log telling the truth.
    """
    root = engine_root(live.engine_dir)
    known = {folder.name: folder for folder in store.versions(root)}
    if body.version not in known:
        raise HTTPException(
            422, f"body.version: no complete engine version {body.version!r} in the engine root"
        )
    try:
        with deploy_lock(root):  # the same lock as `shoplm deploy` / `rollback`
            previous = current_version(root)
            changed = previous != body.version
            if changed:
                store.promote(root, known[body.version])
                entry = {
                    "at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "action": "rollback",
                    "version": body.version,
                    "previous": previous,
                    # a short digest tells keys apart in the history without revealing one
                    "key": hashlib.sha256(request.headers["x-api-key"].encode()).hexdigest()[:8],
                }
                with open(root / DEPLOYMENTS_FILE, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(entry) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
    except DeployError as exc:
        raise HTTPException(409, str(exc)) from None
    return RollbackOut(
        current=body.version, previous=previous, serving=live.version, changed=changed
    )


def _deploy_metrics(folder: Path) -> dict[str, Any]:
    """The offline metrics ``shoplm deploy`` measured for this version, if it was deployed."""
    try:
        record = json.loads((folder / "deploy.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return (record.get("metrics") or {}).get("candidate") or {}
