"""``shoplm ab``: report on an experiment from its log, and replay a real log through one.

Register with ``app.add_typer(ab, name="ab")`` in the main CLI.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shoplm.experiment.config import ExperimentConfig
from shoplm.experiment.log import ExperimentError, ExperimentLog
from shoplm.experiment.replay import (
    REPLAY_DATASETS,
    ReplaySimulator,
    load_replay_data,
    recommender_variant,
    serve,
)
from shoplm.experiment.report import print_report, write_json, write_svg
from shoplm.experiment.stats import ABReport, analyse
from shoplm.recommend.cooccurrence import CooccurrenceRecommender
from shoplm.recommend.popularity import PopularityRecommender

ab = typer.Typer(help="A/B experiments: statistics reports and the replay simulator.")


class ReplayMode(StrEnum):
    AB = "ab"  # popularity (control) against co-occurrence (treatment)
    AA = "aa"  # both arms serve the control: any "effect" is a false positive
    PLANTED = "planted"  # both arms serve the control; the treatment's buying x lift


def report(
    log: Annotated[Path, typer.Option("--log", help="experiment log (SQLite) to read")],
    experiment: Annotated[
        str | None,
        typer.Option("--experiment", "-e", help="experiment name [default: the only one]"),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="folder for EXPERIMENT.json and EXPERIMENT.svg")
    ] = Path("."),
) -> None:
    """Print an experiment's statistics and verdict; write them as JSON and an SVG plot."""
    if not log.exists():
        raise typer.BadParameter(f"{log} does not exist", param_hint="--log")
    with ExperimentLog(log) as store:
        name = experiment or _only_experiment(store)
        try:
            config = store.experiment(name)
        except ExperimentError as exc:
            raise typer.BadParameter(str(exc), param_hint="--experiment") from exc
        result = analyse(store.attributed(name), config)
    _emit(result, out)


def replay(
    dataset: Annotated[
        str, typer.Option("--dataset", help=f"one of {', '.join(REPLAY_DATASETS)}")
    ] = "demo",
    mode: Annotated[ReplayMode, typer.Option("--mode")] = ReplayMode.AB,
    lift: Annotated[
        float, typer.Option("--lift", min=0.01, help="treatment's buying factor (planted)")
    ] = 1.10,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    k: Annotated[int, typer.Option("--k", min=1, help="length of the served list")] = 10,
    lose_exposures: Annotated[
        float,
        typer.Option(
            "--lose-exposures",
            min=0.0,
            max=1.0,
            help="plant a logging fault: share of non-clicking treatment users not logged",
        ),
    ] = 0.0,
    log: Annotated[
        Path | None, typer.Option("--log", help="experiment log [default: OUT/replay.db]")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="folder for the log and the report")] = Path(
        "ab-replay"
    ),
) -> None:
    """Feed a real log's held-out users through two variants, log it, and report on it."""
    if dataset not in REPLAY_DATASETS:
        raise typer.BadParameter(
            f"choose from {', '.join(REPLAY_DATASETS)}", param_hint="--dataset"
        )
    console = Console()
    data = load_replay_data(dataset)
    console.print(f"{dataset}: {data.targets.size:,} held-out users, {data.item_ids.size:,} items")
    # in A/A and planted runs both arms serve popularity: plain names say so
    names = ("popularity", "cooccurrence") if mode is ReplayMode.AB else ("A", "B")
    config = ExperimentConfig(
        name=f"replay-{dataset}-{mode.value}-s{seed}",
        variants=[{"name": name, "share": 0.5} for name in names],
    )
    variants = [
        recommender_variant(PopularityRecommender().fit(data.train)),
        recommender_variant(CooccurrenceRecommender().fit(data.train)),
    ]
    simulator = ReplaySimulator(
        config,
        k=k,
        lift=lift if mode is ReplayMode.PLANTED else 1.0,
        same_behaviour=mode is not ReplayMode.AB,
    ).fit(data, serve(data, variants, k))
    run = simulator.run(seed, lose_exposures=lose_exposures)
    run_config = simulator.config_for(seed)
    with ExperimentLog(log or out / "replay.db") as store:
        if run_config.name in store.experiment_names():
            raise typer.BadParameter(
                f"{store.path} already holds {run_config.name!r}; use another --log or --seed",
                param_hint="--log",
            )
        store.register(run_config)
        store.record_exposures(run_config.name, run.exposures)
        kept = store.record_outcomes(run.outcomes)
        console.print(
            f"logged {len(run.exposures):,} exposures and {kept.stored:,} outcomes to "
            f"{store.path} ({run.n_lost_exposures:,} exposures lost on purpose)"
        )
        result = analyse(store.attributed(run_config.name), run_config)
    _emit(result, out, console)


ab.command("report")(report)
ab.command("replay")(replay)


def _only_experiment(store: ExperimentLog) -> str:
    names = store.experiment_names()
    if len(names) != 1:
        raise typer.BadParameter(
            f"{store.path} holds {len(names)} experiments ({names}); name one",
            param_hint="--experiment",
        )
    return names[0]


def _emit(result: ABReport, out: Path, console: Console | None = None) -> None:
    console = console or Console()
    print_report(result, console)
    json_path = write_json(result, out / f"{result.experiment}.json")
    svg_path = write_svg(result, out / f"{result.experiment}.svg")
    console.print(f"wrote {json_path} and {svg_path}")
