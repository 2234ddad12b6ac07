"""``shoplm deploy`` and ``shoplm rollback``.

Both are plain functions (register them with ``app.command()(deploy)``) and also the
commands of :data:`app`. Options given on the command line override the ``[deploy]``
section of the config file. Exit codes: 0 the candidate (or the rollback target) is live,
1 a gate refused the candidate or the service would not load it (the live engine is
untouched, the reason printed), 2 an input or setting that cannot be used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import ValidationError
from rich.console import Console

from shoplm.config import ShoplmConfig
from shoplm.data.privacy import PrivacyError
from shoplm.data.readers import InputError
from shoplm.deploy.config import DeployConfig, DeployConfigError, read_config_file
from shoplm.deploy.pipeline import DeployError, Outcome, watch
from shoplm.deploy.pipeline import deploy as run_deploy
from shoplm.deploy.pipeline import rollback as run_rollback
from shoplm.engine import BuildError
from shoplm.store import EngineNotFoundError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Deploy and roll back.")
console = Console(stderr=True, soft_wrap=True)

_USER_ERRORS = (
    DeployError,
    DeployConfigError,
    InputError,
    BuildError,
    EngineNotFoundError,
    PrivacyError,
)


def deploy(
    config: Annotated[
        Path | None, typer.Option("--config", help="shoplm.toml with a deploy section")
    ] = None,
    engine: Annotated[Path | None, typer.Option("--engine", help="engine root")] = None,
    catalog: Annotated[Path | None, typer.Option("--catalog", help="catalogue file")] = None,
    events: Annotated[Path | None, typer.Option("--events", help="event log file")] = None,
    search_labels: Annotated[
        Path | None, typer.Option("--search-labels", help="judged queries to train search on")
    ] = None,
    holdout_events: Annotated[
        Path | None, typer.Option("--holdout-events", help="later events to score recs on")
    ] = None,
    holdout_queries: Annotated[
        Path | None, typer.Option("--holdout-queries", help="judged queries to score search on")
    ] = None,
    max_drop: Annotated[
        float | None, typer.Option("--max-drop", min=0, help="allowed fall of each metric")
    ] = None,
    drop_mode: Annotated[
        str | None, typer.Option("--drop-mode", help="absolute or relative")
    ] = None,
    latency_budget_ms: Annotated[
        float | None, typer.Option("--latency-budget-ms", help="p99 budget per request")
    ] = None,
    latency_clock: Annotated[
        str | None, typer.Option("--latency-clock", help="cpu (default) or wall")
    ] = None,
    size_budget_mb: Annotated[
        float | None, typer.Option("--size-budget-mb", help="version folder budget")
    ] = None,
    service_url: Annotated[
        str | None, typer.Option("--service-url", help="service to reload after the promote")
    ] = None,
    watch_events: Annotated[
        bool, typer.Option("--watch", help="rerun whenever enough new events arrived")
    ] = False,
    event_log: Annotated[
        Path | None, typer.Option("--event-log", help="the service's SQLite log to count")
    ] = None,
    min_new_events: Annotated[int | None, typer.Option("--min-new-events", min=1)] = None,
    interval: Annotated[
        float | None, typer.Option("--interval", help="seconds between counts")
    ] = None,
    max_runs: Annotated[
        int | None, typer.Option("--max-runs", min=1, help="stop after this many deploys")
    ] = None,
    max_checks: Annotated[
        int | None, typer.Option("--max-checks", min=1, help="stop after this many counts")
    ] = None,
) -> None:
    """Build a candidate, score it against the live engine, gate, promote, reload.

    A failing gate leaves the live engine as it is and exits 1 naming the gate and both
    numbers. With --watch it reruns whenever --min-new-events events arrived.
    """
    overrides = {
        "engine": engine,
        "catalog": catalog,
        "events": events,
        "search_labels": search_labels,
        "holdout_events": holdout_events,
        "holdout_queries": holdout_queries,
        "max_drop": max_drop,
        "drop_mode": drop_mode,
        "latency_budget_ms": latency_budget_ms,
        "latency_clock": latency_clock,
        "size_budget_mb": size_budget_mb,
        "service_url": service_url,
        "event_log": event_log,
        "min_new_events": min_new_events,
        "interval_s": interval,
    }
    try:
        build_config, deploy_config = _configs(config, overrides)
        if not watch_events:
            outcome = run_deploy(build_config, deploy_config, _say, progress=True)
            raise typer.Exit(_report(outcome))
        try:
            outcomes = watch(build_config, deploy_config, _say, max_runs, max_checks)
        except KeyboardInterrupt:
            console.print("watch stopped (Ctrl-C)")
            return
        if outcomes and not outcomes[-1].ok:
            raise typer.Exit(1)
    except _USER_ERRORS as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def rollback(
    engine: Annotated[Path, typer.Option("--engine", help="engine root")],
    to: Annotated[
        str | None,
        typer.Option("--to", help="version to make current (default: the previous accepted one)"),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="shoplm.toml with a deploy section")
    ] = None,
    service_url: Annotated[
        str | None, typer.Option("--service-url", help="service to reload after the switch")
    ] = None,
) -> None:
    """Make an earlier engine version current again and reload the service."""
    try:
        _, deploy_config = _configs(config, {"engine": engine, "service_url": service_url})
        outcome = run_rollback(engine, to, deploy_config, _say)
    except _USER_ERRORS as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    raise typer.Exit(_report(outcome))


app.command()(deploy)
app.command()(rollback)


def _configs(path: Path | None, overrides: dict) -> tuple[ShoplmConfig, DeployConfig]:
    raw, section = read_config_file(path) if path is not None else ({}, DeployConfig())
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        build_config = ShoplmConfig.model_validate(raw)
        deploy_config = DeployConfig.model_validate(section.model_dump() | given)
    except ValidationError as exc:
        where = path or "command line"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise DeployConfigError(f"{where}: {problems}") from exc
    return build_config, deploy_config


def _report(outcome: Outcome) -> Literal[0, 1]:
    messages = {
        "promoted": f"[green]promoted[/green] {outcome.version} (was {outcome.previous})",
        "rolled-back": f"[green]rolled back[/green] to {outcome.version} (was {outcome.previous})",
        "unchanged": f"{outcome.version} is current; nothing to do",
        "rejected": f"[red]rejected[/red] {outcome.version}: "
        + "; ".join(gate.why for gate in outcome.gates if not gate.passed)
        + f". The live engine ({outcome.previous or 'none'}) is untouched.",
        "reload-failed": f"[red]the service did not load {outcome.version}[/red] "
        f"({outcome.error}); current is back on {outcome.previous}",
    }
    console.print(messages[outcome.decision])
    if outcome.serving is not None:
        console.print(f"the service now serves {outcome.serving}")
    return 0 if outcome.ok else 1


def _say(message: str) -> None:
    console.print(message, markup=False, highlight=False)
