"""``shoplm serve``: run the HTTP API with uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import uvicorn

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
) -> None:
    """Serve search, recommendations and event intake over HTTP (OpenAPI docs at /docs).

    Write routes need an API key: set SHOPLM_API_KEYS to one or more comma-separated keys.
    """
    configure_logging()
    settings = ServeSettings()
    if not settings.key_digests():
        typer.echo(
            f"no API key set ({settings.api_keys_env}): write routes will refuse every request",
            err=True,
        )
    app = create_app(engine, data_dir or Path(engine) / "live", settings)
    typer.echo(f"serving {app.state.live.version} on http://{host}:{port} (docs: /docs)")
    # uvicorn's access log prints paths and query strings, which carry user ids and search
    # text; the app logs each request itself, by route template.
    uvicorn.run(app, host=host, port=port, access_log=False, log_config=None)
