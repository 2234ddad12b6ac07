"""Descriptions written for products whose own text is too thin, kept beside the original.

A product with a bare title gives a text encoder little to work with; a sentence that says
what it is ("a 2-foot zinc-plated steel chain for hanging") helps. The generated text goes
into its own field, ``description_generated``, and never replaces the shop's description:
it can be wrong, and the shop's text is the record.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Literal

import numpy as np
import pandas as pd

from shoplm.augment.base import GenerationBackend, Language
from shoplm.augment.cache import GenerationCache, generate_cached
from shoplm.augment.queries import products_from_items, thin_text

ENRICH_COLUMNS = ("item_id", "description_generated", "backend")
_SPACES = re.compile(r"\s+")


class DescriptionEnricher:
    """Writes ``description_generated`` for rows whose description has < ``min_words`` words.

    Answers shorter than ``min_chars`` are counted as ``empty``; longer than ``max_chars``
    are cut at the last sentence end (or word) before the limit and counted as ``cut``.
    """

    def __init__(
        self,
        backend: GenerationBackend,
        min_words: int = 12,
        min_chars: int = 10,
        max_chars: int = 400,
        batch_size: int = 16,
        language: Language | Literal["auto"] = "auto",
        progress: bool = True,
    ) -> None:
        self.backend = backend
        self.min_words = min_words
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.batch_size = batch_size
        self.language = language
        self.progress = progress

    def enrich(
        self,
        items: pd.DataFrame,
        cache: GenerationCache | None = None,
        rows: np.ndarray | None = None,
    ) -> tuple[pd.DataFrame, dict[str, object]]:
        """Generated descriptions for the thin rows among ``rows`` (default: all rows)."""
        started = time.perf_counter()
        rows = np.arange(len(items)) if rows is None else np.asarray(rows, dtype=np.int64)
        thin = rows[thin_text(items, self.min_words)[rows]]
        products = products_from_items(items, self.language)
        prompts = [self.backend.prompt("description", products[r], 1) for r in thin]
        answers, from_cache = generate_cached(
            self.backend,
            prompts,
            cache,
            self.batch_size,
            self.progress,
            desc=f"descriptions ({self.backend.name})",
        )
        counts: Counter = Counter()
        ids, texts = [], []
        for row, answer in zip(thin, answers, strict=True):
            if answer is None:
                counts["failed"] += 1
                continue
            text = _SPACES.sub(" ", answer).strip()
            if len(text) < self.min_chars:
                counts["empty"] += 1
                continue
            if len(text) > self.max_chars:
                counts["cut"] += 1
                text = _cut(text, self.max_chars)
            ids.append(str(items["item_id"].iloc[row]))
            texts.append(text)
        frame = pd.DataFrame(
            {
                "item_id": pd.Series(ids, dtype=str),
                "description_generated": pd.Series(texts, dtype=str),
                "backend": pd.Series([self.backend.name] * len(ids), dtype=str),
            }
        )
        report = {
            "backend": self.backend.name,
            "items": len(rows),
            "thin": len(thin),
            "from_cache": from_cache,
            "failed": counts["failed"],
            "empty": counts["empty"],
            "cut": counts["cut"],
            "written": len(ids),
            "seconds": round(time.perf_counter() - started, 2),
        }
        return frame, report


def _cut(text: str, limit: int) -> str:
    head = text[:limit]
    end = max(head.rfind(". "), head.rfind("。"))
    if end > limit // 2:
        return head[: end + 1]
    return head.rsplit(" ", 1)[0] if " " in head else head
