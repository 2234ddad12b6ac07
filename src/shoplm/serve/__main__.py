"""``python -m shoplm.serve --engine DIR``: the server without the full CLI."""

import typer

from shoplm.serve.command import serve

typer.run(serve)
