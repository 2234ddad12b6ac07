"""``shoplm augment``: synthetic queries (and descriptions) for a catalogue, resumable.

The lead CLI registers this sub-app (``app.add_typer(augment_app)`` or
``app.command()(augment)``). The source is an engine directory (its current version's item
table) or a catalogue file read with the same validation as ``shoplm build``.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from shoplm.augment.base import GenerationBackend
from shoplm.augment.llamacpp import LlamaCppBackend
from shoplm.augment.openai_compat import BackendConfigError, OpenAICompatibleBackend
from shoplm.augment.run import augment_catalogue
from shoplm.augment.template import TemplateBackend
from shoplm.config import ConfigError, load_config
from shoplm.data.catalog import load_catalog
from shoplm.data.report import ValidationReport
from shoplm.search.lexical import LexicalRetriever
from shoplm.store import resolve

app = typer.Typer(help="Generate training data with a language model or templates.")


class BackendName(StrEnum):
    template = "template"
    llamacpp = "llamacpp"
    openai = "openai"


class ApiMode(StrEnum):
    chat = "chat"
    completions = "completions"


def read_items(source: Path, config: Path | None = None) -> pd.DataFrame:
    """The item table of an engine directory, or of a catalogue file (validated as in build)."""
    source = Path(source)
    if source.is_dir():
        return pd.read_parquet(resolve(source) / "items.parquet")
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such engine directory or catalogue file")
    report = ValidationReport()
    items = load_catalog(source, load_config(config), report)
    report.close()
    if items.empty:
        raise ValueError(f"{source}: no usable item in the catalogue")
    return items


@app.command()
def augment(
    source: Annotated[Path, typer.Argument(help="engine directory or catalogue file")],
    out: Annotated[Path, typer.Option("--out", help="output folder (cache and results)")],
    backend: Annotated[BackendName, typer.Option(help="generator for the sample")] = (
        BackendName.template
    ),
    sample: Annotated[
        int | None,
        typer.Option(help="products given to --backend (seeded random); default: all"),
    ] = None,
    rest: Annotated[
        bool, typer.Option("--rest/--no-rest", help="templates for products outside --sample")
    ] = True,
    seed: Annotated[int, typer.Option(help="sample and generation seed")] = 0,
    n_queries: Annotated[int, typer.Option(min=1, max=20, help="queries asked per product")] = 5,
    keep_rank: Annotated[
        int, typer.Option(min=1, help="round trip: source must rank within this")
    ] = 10,
    round_trip: Annotated[
        bool, typer.Option("--round-trip/--no-round-trip", help="filter with lexical search")
    ] = True,
    enrich: Annotated[
        bool, typer.Option("--enrich/--no-enrich", help="also describe thin products")
    ] = False,
    model: Annotated[
        str, typer.Option(help="llamacpp: gemma3-270m, smollm2 or a .gguf path")
    ] = "gemma3-270m",
    base_url: Annotated[
        str, typer.Option(help="openai: API root with /v1")
    ] = "http://127.0.0.1:8080/v1",
    model_name: Annotated[str, typer.Option(help="openai: model name to request")] = "default",
    api_key_env: Annotated[
        str | None, typer.Option(help="openai: environment variable holding the key")
    ] = None,
    mode: Annotated[ApiMode, typer.Option(help="openai: chat or completions API")] = ApiMode.chat,
    concurrency: Annotated[int, typer.Option(min=1, help="openai: requests at once")] = 4,
    timeout: Annotated[float, typer.Option(help="openai: seconds per request")] = 60.0,
    max_retries: Annotated[int, typer.Option(min=0, help="openai: retries per prompt")] = 3,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.7,
    max_tokens: Annotated[int, typer.Option(min=1, help="tokens per answer")] = 48,
    cache: Annotated[
        Path | None, typer.Option(help="SQLite cache file [default: OUT/cache.sqlite]")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="shoplm.toml (catalogue columns)")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Write OUT/synthetic_queries.parquet and OUT/report.json; rerun to resume."""
    try:
        items = read_items(source, config)
    except (FileNotFoundError, ValueError, ConfigError) as exc:
        raise typer.BadParameter(str(exc), param_hint="SOURCE") from exc
    chosen: GenerationBackend
    if backend == BackendName.llamacpp:
        chosen = LlamaCppBackend(
            model=model, max_tokens=max_tokens, temperature=temperature, seed=seed
        )
    elif backend == BackendName.openai:
        chosen = OpenAICompatibleBackend(
            base_url=base_url,
            model_name=model_name,
            api_key_env=api_key_env,
            mode=mode.value,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            timeout=timeout,
            max_retries=max_retries,
            concurrency=concurrency,
        )
    else:
        chosen = TemplateBackend(seed=seed)
    others = TemplateBackend(seed=seed) if rest and backend != BackendName.template else None
    retriever = LexicalRetriever().fit(items) if round_trip else None
    try:
        report = augment_catalogue(
            items,
            out,
            chosen,
            rest=others,
            sample=sample,
            seed=seed,
            retriever=retriever,
            n_queries=n_queries,
            keep_rank=keep_rank,
            enrich=enrich,
            cache=cache,
            progress=progress,
        )
    except (ImportError, BackendConfigError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    stages = report["stages"]
    typer.echo(json.dumps(stages))
    typer.echo(
        f"{report['items']} products: {report['items_without_queries']} without a kept query "
        f"({report['items_failed']} the backend failed on), keep rate {report['keep_rate']}; "
        f"wrote {out}"
    )
