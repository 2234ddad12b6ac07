"""``shoplm serve``: run the HTTP API with uvicorn."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from threadpoolctl import threadpool_limits

from shoplm.serve.app import create_app
from shoplm.serve.observability import configure_logging
from shoplm.serve.settings import ServeSettings


def serve(
    engine: Annotated[Path, typer.Option("--engine", help="engine directory (root or version)")],
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="folder for the live event log [default: ENGINE/live]"),
    ] = None,
    experiments: Annotated[
        Path | None,
        typer.Option(
            "--experiments", help="TOML file whose experiments run (default: the engine config's)"
        ),
    ] = None,
    alert: Annotated[
        list[str] | None,
        typer.Option("--alert", help="alert rule, e.g. 'p99_ms{route=\"/search\"} > 50 for 5m'"),
    ] = None,
    alerts: Annotated[
        Path | None, typer.Option("--alerts", help="TOML file of alert tables (name, rule)")
    ] = None,
    max_batch: Annotated[
        int,
        typer.Option(
            "--max-batch",
            min=1,
            max=1024,
            help="most search or recommendation requests answered together (1: no batching)",
        ),
    ] = ServeSettings.model_fields["max_batch"].default,
) -> None:
    """Serve search, recommendations and event intake over HTTP (OpenAPI docs at /docs).

    Write routes need an API key: set SHOPLM_API_KEYS to one or more comma-separated keys;
    POST /admin/reload needs one of SHOPLM_ADMIN_KEYS.
    """
    configure_logging()
    # One BLAS / OpenMP thread per call: the server's concurrency comes from requests, and
    # a thread pool per matrix product on a busy 2-core host made a search 2.5 times
    # slower (34 ms against 13 ms wall, 16 ms against 6 ms CPU on the demo shop).
    threadpool_limits(1)
    settings = ServeSettings(
        experiments_file=experiments,
        alert_rules=alert or [],
        alerts_file=alerts,
        max_batch=max_batch,
    )
    if not settings.key_digests():
        typer.echo(
            f"no API key set ({settings.api_keys_env}): write routes will refuse every request",
            err=True,
        )
    app = create_app(engine, data_dir or Path(engine) / "live", settings)
    # The loaded engine and libraries are hundreds of thousands of long-lived objects that
    # every full collection would walk again, a pause that lands in some request's latency
    gc.freeze()
    typer.echo(
        f"serving {app.state.live.version} on http://{host}:{port} "
        "(storefront /, dashboard /dashboard, API schema /openapi.json)"
    )
    # uvicorn's access log prints paths and query strings, which carry user ids and search
    # text; the app logs each request itself, by route template. httptools and uvloop are
    # uvicorn's C parser and event loop (its "standard" choice).
    uvicorn.run(
        app,
        host=host,
        port=port,
        access_log=False,
        log_config=None,
        http="httptools",
        loop="auto",  # uvloop where installed (not on Windows)
    )
