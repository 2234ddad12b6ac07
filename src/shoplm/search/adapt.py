"""Adapting the query encoder to one shop inside a build (``shoplm build --finetune``).

The packaged MiniLM knows language, not the shop. A ``--finetune`` build therefore:

1. writes synthetic shopper queries for every product with the template backend (no model
   needed, about 600 products/s) and keeps a query only when the shop's own lexical
   retriever ranks its product in the top 10 (the round-trip filter of ``shoplm.augment``);
2. adds the judged labels (``--search-labels``, gain >= 1 as positives); with labels, the
   synthetic pairs are a seeded draw of at most :data:`SYNTHETIC_PER_LABEL` per label pair
   (but at least :data:`MIN_SYNTHETIC`, so a shop with a handful of labels still learns
   its catalogue);
3. fine-tunes MiniLM's *query* tower against the base model's item vectors with
   whole-catalogue negatives, the recipe that measured best on Home Depot (docs/finetune.md:
   dense NDCG@10 0.2777 zero-shot -> 0.3226 with the labels and twice as many template
   pairs, 1.16x; 0.3165 with labels alone, 0.3107 with template queries alone), so the
   catalogue never has to be re-encoded;
4. hands the model folder to the search pipeline, whose dense retriever serves its ONNX int8
   export for queries.

Everything is written under the engine version being built (``models/encoder``,
``augment/``), so a version carries the model it was built with.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from shoplm.augment.run import augment_catalogue
from shoplm.augment.template import TemplateBackend
from shoplm.models.finetune import BiEncoderFinetuner, synthetic_pairs
from shoplm.search.dense import DenseRetriever, item_texts
from shoplm.search.lexical import LexicalRetriever

ENCODER_FOLDER = Path("models") / "encoder"
#: synthetic pairs drawn per label pair when the shop has labels (the mix measured on Home
#: Depot: 29,964 label pairs and 59,928 template pairs)
SYNTHETIC_PER_LABEL = 2.0
#: ... but never fewer than this many (or all there are)
MIN_SYNTHETIC = 10_000
AUGMENT_FOLDER = Path("augment")


def finetune_query_encoder(
    items: pd.DataFrame,
    labels: pd.DataFrame | None,
    version: Path,
    vector_cache: Path | None,
    max_minutes: float,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Path, dict[str, object]]:
    """Train the shop's query encoder; returns its folder and a report for the manifest."""
    texts = item_texts(items, DenseRetriever().fields)
    augment_report = augment_catalogue(
        items,
        version / AUGMENT_FOLDER,
        TemplateBackend(seed=seed),
        retriever=LexicalRetriever().fit(items),
        seed=seed,
        progress=progress,
    )
    synthetic = synthetic_pairs(
        pd.read_parquet(version / AUGMENT_FOLDER / "synthetic_queries.parquet"),
        pd.Index(items["item_id"]),
    )
    available = len(synthetic)
    positives, exclude = None, None
    if labels is not None and not labels.empty:
        positives = labels.loc[labels["gain"] >= 1.0, ["query", "item"]]
        exclude = labels.loc[labels["gain"] > 0, ["query", "item"]]
        keep = max(int(SYNTHETIC_PER_LABEL * len(positives)), MIN_SYNTHETIC)
        if keep < len(synthetic):
            synthetic = synthetic.sample(n=keep, random_state=seed)
    training = pd.concat([synthetic[["query", "item"]], positives], ignore_index=True)
    base_vectors = DenseRetriever(encoder="minilm", cache_dir=vector_cache).fit(items)
    finetuner = BiEncoderFinetuner(
        towers="query",
        catalogue_negatives=True,
        freeze_embeddings=False,
        hard_negatives=0,
        lr=5e-5,
        epochs=1.0,
        max_minutes=max_minutes,
        seed=seed,
        show_progress=progress,
    ).fit(training, texts, exclude=exclude, item_vectors=base_vectors.vectors_["minilm"])
    folder = finetuner.save(version / ENCODER_FOLDER)
    report = {
        "synthetic_pairs": len(synthetic),
        "synthetic_pairs_available": available,
        "label_pairs": len(training) - len(synthetic),
        "augment": {
            key: augment_report[key] for key in ("sample", "seconds") if key in augment_report
        },
        "encoder": str(ENCODER_FOLDER),
        "max_minutes": max_minutes,
    }
    return folder, report
