"""``shoplm eval``: the documented evaluation protocols, run from the command line."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from shoplm.eval.datasets import shared_data_dir

app = typer.Typer(no_args_is_help=True, help="Score shoplm on the public benchmarks.")
console = Console(stderr=True, soft_wrap=True)


def _require_shared_data() -> None:
    try:
        shared_data_dir()
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command("search")
def search(
    out: Annotated[Path, typer.Option("--out", help="folder for the JSON, markdown and SVG")] = (
        Path("eval/search")
    ),
    seed: Annotated[int, typer.Option(help="seed of the query-level train/dev split")] = 0,
    dev_fraction: Annotated[float, typer.Option(min=0.05, max=0.95)] = 0.3,
    depth: Annotated[int, typer.Option(min=10, help="ranked list length per query")] = 100,
    latency_queries: Annotated[int, typer.Option(min=1)] = 300,
    cache_dir: Annotated[
        Path | None, typer.Option(help="where item vectors are kept between runs")
    ] = None,
) -> None:
    """Home Depot search relevance: every stage against the BM25 peer, on dev queries."""
    from shoplm.eval.search import evaluate_stages, home_depot_split, write_report

    _require_shared_data()
    split = home_depot_split(seed, dev_fraction)
    report = evaluate_stages(split, depth, latency_queries, cache_dir, progress=True)
    console.print(write_report(report, out))
    console.print(f"written to {out}/eval_search.{{json,md,svg}}")


@app.command("recommend")
def recommend(
    dataset: Annotated[
        str, typer.Option(help="beauty, scientific, or (Online Retail) or all")
    ] = "all",
    out: Annotated[Path, typer.Option("--out", help="JSON report")] = Path("eval/recommend.json"),
    workdir: Annotated[
        Path | None, typer.Option(help="where the input files and engines are built")
    ] = None,
    seeds: Annotated[str, typer.Option(help="comma-separated build seeds")] = "0",
    ranker: Annotated[
        bool | None,
        typer.Option(
            "--ranker/--no-ranker",
            help="build with the feed's learned ranker on or off (default: as configured, on); "
            "with it on, the same engine is also scored without it",
        ),
    ] = None,
    ranker_objective: Annotated[
        str | None, typer.Option(help="the ranker's objective: lambdarank or binary")
    ] = None,
) -> None:
    """Leave-one-out next-item evaluation of the default build on the public datasets."""
    from shoplm.eval.recommend import DATASETS, evaluate_build, load_dataset

    _require_shared_data()
    names = list(DATASETS) if dataset == "all" else [dataset]
    if any(name not in DATASETS for name in names):
        console.print(f"[red]error:[/red] --dataset: choose from {', '.join(DATASETS)} or all")
        raise typer.Exit(2)
    if ranker_objective not in (None, "lambdarank", "binary"):
        console.print(
            f"[red]error:[/red] --ranker-objective: lambdarank or binary, got {ranker_objective!r}"
        )
        raise typer.Exit(2)
    root = workdir or Path(tempfile.mkdtemp(prefix="shoplm-eval-"))
    try:
        seed_list = [int(s) for s in seeds.split(",")]
    except ValueError:
        console.print(f"[red]error:[/red] --seeds: expected integers like 0,1,2, got {seeds!r}")
        raise typer.Exit(2) from None
    rows = [
        evaluate_build(
            load_dataset(name),
            root / f"{name}-seed{seed}",
            seed=seed,
            ranker=ranker,
            ranker_objective=ranker_objective,
        )
        for name in names
        for seed in seed_list
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    table = Table(title="default build, leave-one-out, full ranking")
    columns = ["recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20"]
    for column in ["dataset", "seed", *columns, "build_seconds"]:
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["dataset"],
            str(row["seed"]),
            *(f"{row[c]:.4f}" for c in columns),
            str(row["build_seconds"]),
        )
    console.print(table)
    for row in rows:
        if "delta_ndcg@10" in row:
            plain, delta, trained = row["without_ranker"], row["delta_ndcg@10"], row["ranker"]
            console.print(
                f"{row['dataset']} seed {row['seed']}: without the ranker R@10 "
                f"{plain['recall@10']:.4f} N@10 {plain['ndcg@10']:.4f}; per-user ΔNDCG@10 "
                f"{delta['mean']:+.4f} (95% CI {delta['ci95'][0]:+.4f} to "
                f"{delta['ci95'][1]:+.4f}); ranker {trained['objective']}, "
                f"{trained['training_queries']} queries, {trained['trees']} trees, "
                f"{trained['seconds']} s"
            )
        elif "ranker" in row:
            console.print(f"{row['dataset']} seed {row['seed']}: no ranker ({row['ranker']})")
    console.print(f"written to {out}")
