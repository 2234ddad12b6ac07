"""The ``shoplm`` command. Every command is a thin shell over :class:`shoplm.engine.Engine`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from shoplm.augment.command import augment
from shoplm.config import ConfigError, ShoplmConfig, load_config
from shoplm.data.catalog import load_catalog
from shoplm.data.events import load_events
from shoplm.data.privacy import PrivacyError, Pseudonymiser
from shoplm.data.readers import InputError
from shoplm.data.report import SEVERITY_MEANING, ValidationReport
from shoplm.deploy.command import deploy, rollback
from shoplm.engine import BuildError, Engine, Recommendation, forget_user
from shoplm.eval.command import app as eval_app
from shoplm.experiment.command import ab
from shoplm.models.finetune_command import app as finetune_app
from shoplm.serve.command import serve
from shoplm.store import EngineNotFoundError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="shoplm: search and recommendations for an online shop.",
)
console = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="shoplm.toml with column mappings and settings")
]
EngineOption = Annotated[Path, typer.Option("--engine", help="engine directory (root or version)")]
KOption = Annotated[int, typer.Option("--k", min=1, max=1000, help="results per line")]
OutOption = Annotated[Path, typer.Option("--out", help="JSONL file to write, one line per input")]


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into a one-line message and exit code 2."""
    try:
        yield
    except (InputError, ConfigError, BuildError, EngineNotFoundError, PrivacyError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _config(path: Path | None) -> ShoplmConfig:
    with _user_errors():
        return load_config(path)


@app.command()
def validate(
    catalog: Annotated[Path, typer.Option("--catalog", help="product catalogue file")],
    events: Annotated[Path | None, typer.Option("--events", help="event log file")] = None,
    config: ConfigOption = None,
    issues: Annotated[
        Path | None, typer.Option("--issues", help="write every problem row to this CSV")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the report as JSON")
    ] = None,
) -> None:
    """Check a catalogue (and event log) and report every problem with its row.

    Exits 1 when nothing usable remains, 2 when a file cannot be read at all.
    """
    cfg = _config(config)
    report = ValidationReport(issues, cfg.load.examples_per_reason)
    with _user_errors():
        items = load_catalog(catalog, cfg, report, progress=True)
        if events is not None:
            # Validation writes nothing, so a throwaway key is enough to run the pipeline.
            load_events(
                events,
                cfg,
                pd.Index(items["item_id"]),
                Pseudonymiser(os.urandom(32)),
                report,
                out=None,
                progress=True,
            )
    report.close()
    _print_report(report)
    if json_out:
        report.write_json(json_out)
    usable = len(items) > 0 and (events is None or report.stats(str(events)).rows_kept > 0)
    if not usable:
        console.print("[red]nothing usable remains[/red]")
        raise typer.Exit(1)


@app.command()
def build(
    catalog: Annotated[Path, typer.Option("--catalog", help="product catalogue file")],
    out: Annotated[Path, typer.Option("--out", help="engine directory to create or add to")],
    events: Annotated[Path | None, typer.Option("--events", help="event log file")] = None,
    config: ConfigOption = None,
    search_labels: Annotated[
        Path | None,
        typer.Option("--search-labels", help="judged queries: query, item_id, relevance"),
    ] = None,
    finetune: Annotated[
        bool,
        typer.Option(
            "--finetune", help="fine-tune the query encoder on this shop (synthetic queries)"
        ),
    ] = False,
) -> None:
    """Build a new engine version from a catalogue (and event log) and make it current."""
    cfg = _config(config)
    if finetune:
        cfg.search.finetune = True
    with _user_errors():
        result = Engine.build(catalog, out, events, cfg, progress=True, search_labels=search_labels)
    _print_report(result.report)
    counts = result.manifest["counts"]
    console.print(
        f"[green]built[/green] {result.path} — {counts['items']} items, {counts['events']} "
        f"events, {counts['users']} users in {result.manifest['build_seconds']} s"
    )


@app.command()
def search(
    engine: EngineOption,
    queries: Annotated[Path, typer.Option("--queries", help="text file, one query per line")],
    out: OutOption,
    k: KOption = 10,
) -> None:
    """Search a batch of queries; writes {"query", "items", "scores"} per line."""
    lines = _read_lines(queries)
    loaded = _load(engine)
    _write_jsonl(out, (vars(r) for r in loaded.search(lines, k)))


@app.command()
def recommend(
    engine: EngineOption,
    users: Annotated[Path, typer.Option("--users", help="text file, one user id per line")],
    out: OutOption,
    k: KOption = 10,
) -> None:
    """Recommend for a batch of users; writes {"user", "items", "reasons"} per line."""
    _write_recommendations(engine, users, out, "user", lambda e, ids: e.recommend(ids, k))


@app.command()
def similar(
    engine: EngineOption,
    items: Annotated[Path, typer.Option("--items", help="text file, one item id per line")],
    out: OutOption,
    k: KOption = 10,
) -> None:
    """Items to show next to each item; writes {"item", "items", "scores", "reasons"}."""
    _write_recommendations(engine, items, out, "item", lambda e, ids: e.similar(ids, k))


def _write_recommendations(
    engine: Path,
    inputs: Path,
    out: Path,
    key: str,
    ask: Callable[[Engine, list[str]], list[Recommendation]],
) -> None:
    """Answer one id per input line and write one JSON line per answer, keyed by ``key``."""
    lines = _read_lines(inputs)
    loaded = _load(engine)
    with _user_errors():
        results = ask(loaded, lines)
    _write_jsonl(
        out,
        ({key: r.key, "items": r.items, "scores": r.scores, "reasons": r.reasons} for r in results),
    )


@app.command()
def forget(
    engine: EngineOption,
    user: Annotated[str, typer.Option("--user", help="the user id, as the shop knows it")],
) -> None:
    """Erase one user's events from every version of an engine (right to be forgotten)."""
    with _user_errors():
        removed = forget_user(engine, user, _load(engine).config)
    console.print(f"removed {removed} events")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="engine directory for the demo shop")] = Path(
        ".shoplm/demo"
    ),
) -> None:
    """Build the demo shop (UCI Online Retail, CC BY 4.0) and show a few answers."""
    from shoplm.data.demo import write_demo_shop

    try:
        shop = write_demo_shop(out / "input")
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/red] the demo shop's log: {exc}")
        raise typer.Exit(2) from None
    for reason, n in shop.skipped.items():
        console.print(f"demo input: skipped {n} {reason}")
    with _user_errors():
        result = Engine.build(shop.catalog, out / "engine", shop.events, progress=True)
    _print_report(result.report)
    loaded = Engine.load(out / "engine")
    table = Table(title="search")
    table.add_column("query")
    table.add_column("top results")
    titles = loaded.items.set_index("item_id")["title"]
    for hit in loaded.search(["white hanging heart", "red retrospot bag", "christmas lights"], 3):
        table.add_row(hit.query, "\n".join(titles[i] for i in hit.items))
    console.print(table)
    table = Table(title="recommendations")
    table.add_column("user")
    table.add_column("recommended (reason)")
    for rec in loaded.recommend(["17850", "12347", "someone-new"], 3):
        table.add_row(
            rec.key,
            "\n".join(
                f"{titles[i]} ({why})" for i, why in zip(rec.items, rec.reasons, strict=True)
            ),
        )
    console.print(table)
    console.print(f"engine: {result.path}")


app.command()(serve)
app.add_typer(eval_app, name="eval")
app.add_typer(ab, name="ab")
app.add_typer(finetune_app, name="finetune")
app.command()(augment)
app.command()(deploy)
app.command()(rollback)


def _load(engine: Path) -> Engine:
    with _user_errors():
        return Engine.load(engine)


def _read_lines(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return [line.rstrip("\r\n") for line in handle]
    except OSError as exc:
        console.print(f"[red]error:[/red] {path}: {exc.strerror}")
        raise typer.Exit(2) from None


def _write_jsonl(path: Path, rows: Iterator[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _print_report(report: ValidationReport) -> None:
    table = Table(title="validation")
    for column in ("file", "read", "kept", "rejected"):
        table.add_column(column)
    for name, stats in report.files.items():
        table.add_row(name, str(stats.rows_read), str(stats.rows_kept), str(stats.rows_rejected))
    console.print(table)
    for (file, field, severity, reason), count in sorted(report.counts.items()):
        examples = ", ".join(
            f"row {row}" + (f" ({value})" if value else "")
            for row, value in report.examples.get((file, field, severity, reason), [])
        )
        console.print(
            f"{severity} ({SEVERITY_MEANING[severity]}): {Path(file).name} {field}: {reason} — "
            f"{count} row(s); e.g. {examples}"
        )
    for (file, field, what), n in sorted(report.fixes.items()):
        console.print(f"fixed: {Path(file).name} {field}: {what} — {n} row(s)")
    if report.issues_path:
        console.print(f"every problem row: {report.issues_path}")
