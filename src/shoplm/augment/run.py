"""One augmentation run over a catalogue: an LLM on a sample, templates on the rest.

This is what ``shoplm augment`` and a ``--finetune`` build call. A 270M model on 2 cores
writes queries for about one product a second, so it cannot cover a 50k-product catalogue
inside a build; the run gives the model backend a seeded random ``sample`` of products and
the ``rest`` backend (templates: thousands of products a second) everything else. Every
generated text is cached in ``cache`` (SQLite), so an interrupted run resumes and a rebuild
over the same catalogue generates nothing again.

Outputs, written atomically into ``out``:

- ``synthetic_queries.parquet``: ``item_id`` (str), ``query`` (str), ``backend`` (str),
  ``kept`` (bool: passed the round trip), ``rank`` (int16: the source product's rank, 0 when
  outside ``keep_rank``);
- ``enriched_descriptions.parquet`` (with ``enrich``): ``item_id``, ``description_generated``,
  ``backend``, for products whose description is thin;
- ``report.json``: counts per stage and backend, items left without queries, speeds.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from shoplm.augment.base import GenerationBackend
from shoplm.augment.cache import GenerationCache
from shoplm.augment.enrich import DescriptionEnricher
from shoplm.augment.queries import QueryRetriever, SyntheticQueryGenerator, merge_reports

QUERIES_FILE = "synthetic_queries.parquet"
DESCRIPTIONS_FILE = "enriched_descriptions.parquet"
REPORT_FILE = "report.json"
CACHE_FILE = "cache.sqlite"


def sample_rows(n_items: int, sample: int | None, seed: int) -> np.ndarray:
    """A seeded random sample of row positions (all rows when ``sample`` is None or larger).

    The sample is a prefix of one seeded permutation, so a larger sample with the same seed
    contains the smaller one: raising ``--sample`` between builds only generates the new
    products, the cache answers the rest.
    """
    if sample is None or sample >= n_items:
        return np.arange(n_items)
    if sample < 0:
        raise ValueError(f"sample must be >= 0, got {sample}")
    return np.random.default_rng(seed).permutation(n_items)[:sample]


def augment_catalogue(
    items: pd.DataFrame,
    out: Path,
    backend: GenerationBackend,
    rest: GenerationBackend | None = None,
    sample: int | None = None,
    seed: int = 0,
    retriever: QueryRetriever | None = None,
    n_queries: int = 5,
    keep_rank: int = 10,
    enrich: bool = False,
    cache: Path | None = None,
    progress: bool = True,
) -> dict[str, object]:
    """Synthetic queries (and optionally descriptions) for ``items``; returns the report.

    ``backend`` covers the ``sample`` rows (all rows when ``sample`` is None); ``rest``, if
    given, covers the others. ``retriever`` (fitted on ``items``) enables the round-trip
    filter. ``cache`` defaults to ``out/cache.sqlite``.
    """
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = sample_rows(len(items), sample, seed)
    others = np.setdiff1d(np.arange(len(items)), chosen)
    plan = [(backend, chosen)]
    if rest is not None and others.size:
        plan.append((rest, others))
    frames, reports, descriptions, description_reports = [], [], [], []
    with GenerationCache(cache or out / CACHE_FILE) as store:
        for part_backend, rows in plan:
            generator = SyntheticQueryGenerator(
                part_backend, n_queries=n_queries, keep_rank=keep_rank, progress=progress
            )
            result = generator.generate(items, retriever, store, rows)
            frames.append(result.frame)
            reports.append(result.report)
            if enrich:
                enricher = DescriptionEnricher(part_backend, progress=progress)
                frame, report = enricher.enrich(items, store, rows)
                descriptions.append(frame)
                description_reports.append(report)
    queries = pd.concat(frames, ignore_index=True)
    _write_parquet(queries, out / QUERIES_FILE)
    report = merge_reports(reports)
    report["sample"] = {"size": int(chosen.size), "seed": seed, "backend": backend.name}
    report["items_not_covered"] = int(others.size) if rest is None else 0
    if enrich:
        _write_parquet(pd.concat(descriptions, ignore_index=True), out / DESCRIPTIONS_FILE)
        report["descriptions"] = description_reports
    report["seconds"] = round(time.perf_counter() - started, 2)
    tmp = out / f".{REPORT_FILE}.tmp"
    tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False), "utf-8")
    os.replace(tmp, out / REPORT_FILE)
    return report


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write then rename, so a crash never leaves a half-written file under the final name."""
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
