"""``shoplm finetune``: train the bi-encoder or the cross-encoder reranker on a shop's pairs.

Register in the main CLI with ``app.add_typer(finetune_app, name="finetune")``. The source
is an engine directory or a catalogue file (read as ``shoplm augment`` reads it); training
pairs are a parquet or CSV file keyed by the catalogue's ``item_id``:

- ``query, item_id`` and optionally ``gain`` (0 = not relevant; pairs with gain >= 1 are
  positives, every pair with gain > 0 is kept out of the negatives), e.g. judged queries or
  search→click pairs;
- or an augmentation output (``item_id, query, backend, kept``): kept queries only.

Each command writes its model folder with a manifest that holds the parameters and the
training report (pairs, pairs/s, CPU time, how many rows were dropped and why).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from shoplm.models.cross_encoder import CrossEncoderReranker
from shoplm.models.finetune import BiEncoderFinetuner, synthetic_pairs

app = typer.Typer(no_args_is_help=True, help="Fine-tune the search models on the shop's data.")

SourceArg = Annotated[Path, typer.Argument(help="engine directory or catalogue file")]
OutOption = Annotated[Path, typer.Option("--out", help="model folder to write")]


def _read_pairs(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise typer.BadParameter(f"{path}: no such file", param_hint="--pairs")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = [c for c in ("query", "item_id") if c not in frame.columns]
    if missing:
        raise typer.BadParameter(f"{path}: missing column(s) {missing}", param_hint="--pairs")
    return frame


def _catalogue(source: Path, config: Path | None) -> tuple[pd.DataFrame, list[str], pd.Index]:
    from shoplm.augment.command import read_items
    from shoplm.search.dense import item_texts

    items = read_items(source, config)
    texts = item_texts(items, ("title", "brand", "category"))
    return items, texts, pd.Index(items["item_id"].astype(str))


def _rows(frame: pd.DataFrame, ids: pd.Index, name: str) -> pd.DataFrame:
    """``item_id`` -> catalogue row; unknown ids are dropped, counted and reported."""
    item = ids.get_indexer(frame["item_id"].astype(str))
    unknown = int((item < 0).sum())
    if unknown:
        typer.echo(f"{name}: {unknown} rows name an item_id not in the catalogue: skipped")
    out = frame.assign(item=item)[item >= 0].reset_index(drop=True)
    out.attrs["dropped_unknown_item"] = unknown
    return out


@app.command()
def encoder(
    source: SourceArg,
    pairs: Annotated[Path, typer.Option("--pairs", help="query,item_id[,gain] or augment output")],
    out: OutOption,
    towers: Annotated[str, typer.Option(help="'query' (items keep base vectors) or 'both'")] = (
        "query"
    ),
    epochs: float = 2.0,
    batch_size: int = 64,
    lr: float = 1e-4,
    hard_negatives: int = 4,
    lora_rank: Annotated[int | None, typer.Option(help="LoRA rank (needs peft)")] = None,
    max_minutes: float | None = None,
    config: Annotated[Path | None, typer.Option(help="shoplm.toml")] = None,
) -> None:
    """Contrastive fine-tuning of MiniLM; serve with ``DenseRetriever(encoder=OUT)``."""
    _, texts, ids = _catalogue(source, config)
    frame = _read_pairs(pairs)
    exclude = None
    if "kept" in frame.columns:
        train = synthetic_pairs(frame, ids)
    else:
        frame = _rows(frame, ids, str(pairs))
        gain = frame["gain"] if "gain" in frame.columns else pd.Series(1.0, index=frame.index)
        train = frame[gain >= 1.0][["query", "item"]]
        exclude = frame[gain > 0][["query", "item"]]
    model = BiEncoderFinetuner(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lora_rank=lora_rank,
        hard_negatives=hard_negatives,
        towers=towers,
        max_minutes=max_minutes,
    ).fit(train, texts, exclude=exclude)
    model.save(out)
    typer.echo(json.dumps(model.report_, indent=1))


@app.command()
def reranker(
    source: SourceArg,
    labels: Annotated[Path, typer.Option("--labels", help="query,item_id,gain (0..max-gain)")],
    out: OutOption,
    epochs: float = 1.0,
    negatives: int = 2,
    max_gain: float = 2.0,
    top_n: int = 20,
    max_minutes: float | None = None,
    config: Annotated[Path | None, typer.Option(help="shoplm.toml")] = None,
) -> None:
    """Train the cross-encoder reranker on graded pairs plus BM25-mined negatives."""
    _, texts, ids = _catalogue(source, config)
    frame = _read_pairs(labels)
    if "gain" not in frame.columns:
        raise typer.BadParameter(f"{labels}: missing column 'gain'", param_hint="--labels")
    frame = _rows(frame, ids, str(labels))
    model = CrossEncoderReranker(
        epochs=epochs, negatives=negatives, max_gain=max_gain, top_n=top_n, max_minutes=max_minutes
    ).fit(frame[["query", "item", "gain"]], texts)
    model.save(out)
    typer.echo(json.dumps(model.report_, indent=1))
