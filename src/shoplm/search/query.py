"""Query understanding: spelling correction, price phrases and brand words as filters.

Shoppers type "cordles drill under $100" or "低于100元的台灯". Before retrieval the query is
split into what to match ("cordless drill") and what to filter on (price at most 100), and
words the catalogue has never seen are corrected against the catalogue's own vocabulary
(SymSpell: edit-distance lookups in microseconds), so corrections are always words some
product actually uses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd
from symspellpy import SymSpell, Verbosity

_WORD = re.compile(r"[a-z][a-z'-]*[a-z]|[a-z]")
# 1,299.99 or 12.5 or 12,5; the lookahead takes the whole number, so "30 inch" is never
# read as "3" followed by something that is not a unit.
_NUMBER = r"(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:[.,]\d+)?)(?![\d.,]?\d)"
_CURRENCY_BEFORE = r"(?:[$£€¥]\s*)?"
_CURRENCY_AFTER = r"(?:\s*(?:dollars?|usd|bucks|pounds?|gbp|euros?|eur|元|块钱?|rmb))?"
# A number followed by a unit is a size or a rating, not a price: "under 30 inch", "20v".
_NOT_A_UNIT = (
    r"(?!\s*(?:/|x\b|%|in\b|inch|ft\b|feet|foot|mm\b|cm\b|m\b|v\b|volt|w\b|watt|lb|lbs|oz\b"
    r"|gal|gallon|qt\b|amp|a\b|ah\b|mah|btu|gauge|ga\b|pack|pk\b|piece|pc|count|ct\b|sq|cu|"
    r"\"|'|-\s*\d+\s*/))"
)
_PRICE_MAX_EN = re.compile(
    r"\b(?:under|below|less than|cheaper than|up to|no more than|max(?:imum)?|within)\s+"
    + _CURRENCY_BEFORE
    + _NUMBER
    + _CURRENCY_AFTER
    + _NOT_A_UNIT,
    re.IGNORECASE,
)
_PRICE_MIN_EN = re.compile(
    r"\b(?:over|above|more than|at least|min(?:imum)?|from)\s+"
    + _CURRENCY_BEFORE
    + _NUMBER
    + _CURRENCY_AFTER
    + _NOT_A_UNIT,
    re.IGNORECASE,
)
_PRICE_RANGE = re.compile(
    r"(?:\bbetween\s+)?"
    + _CURRENCY_BEFORE
    + r"(?<![\d./-])"
    + _NUMBER
    + r"\s*(?:-|\u2013|to|and|到|至)\s*"
    + _CURRENCY_BEFORE
    + _NUMBER
    + r"(?![\d./])"
    + _CURRENCY_AFTER
    + _NOT_A_UNIT,
    re.IGNORECASE,
)
_PRICE_MAX_ZH = re.compile(
    r"(?:低于|少于|不超过|不到|小于|便宜于)\s*" + _NUMBER + r"\s*(?:元|块钱?)?(?:以下|以内)?"
    r"|" + _NUMBER + r"\s*(?:元|块钱?)\s*(?:以下|以内)"
)
_PRICE_MIN_ZH = re.compile(
    r"(?:高于|超过|大于|不低于)\s*" + _NUMBER + r"\s*(?:元|块钱?)?(?:以上)?"
    r"|" + _NUMBER + r"\s*(?:元|块钱?)\s*以上"
)


@dataclass(frozen=True)
class ParsedQuery:
    raw: str
    #: what the retrievers match: price phrases removed, misspellings corrected
    text: str
    corrections: tuple[tuple[str, str], ...] = ()
    price_min: float | None = None
    price_max: float | None = None
    #: exact-value filters found in the words, e.g. {"brand": "Makita"}
    filters: dict[str, str] = field(default_factory=dict)

    @property
    def suggestion(self) -> str | None:
        """ "Did you mean" text when a word was corrected."""
        return self.text if self.corrections else None


class QueryParser:
    """Learns the catalogue's vocabulary and brands; parses queries into text and filters.

    ``min_word_length``: shorter words are never corrected (too many near neighbours);
    ``max_edit_distance``: 1 for words up to 6 letters, this for longer ones.
    """

    def __init__(
        self,
        spelling: bool = True,
        min_word_length: int = 4,
        max_edit_distance: int = 2,
        brand_filters: bool = True,
    ) -> None:
        self.spelling = spelling
        self.min_word_length = min_word_length
        self.max_edit_distance = max_edit_distance
        self.brand_filters = brand_filters

    def fit(self, items: pd.DataFrame) -> Self:
        columns = [c for c in ("title", "brand", "category", "description") if c in items]
        text = items[columns].fillna("").astype(str).agg(" ".join, axis=1).str.casefold()
        words = text.str.findall(_WORD).explode().dropna()
        counts = words.value_counts()
        self.vocabulary_ = dict(zip(counts.index.tolist(), counts.to_numpy().tolist(), strict=True))
        brands = items["brand"].fillna("").astype(str).str.strip() if "brand" in items else None
        self.brands_ = (
            {}
            if brands is None
            else {b.casefold(): b for b in brands[brands != ""].unique().tolist()}
        )
        self._symspell = None
        return self

    def parse(self, queries: Sequence[str]) -> list[ParsedQuery]:
        return [self.parse_one(q) for q in queries]

    def parse_one(self, query: str) -> ParsedQuery:
        text = " ".join(str(query).split())
        price_min, price_max, text = _extract_prices(text)
        corrections: list[tuple[str, str]] = []
        if self.spelling:
            text, corrections = self._correct(text)
        filters = {}
        if self.brand_filters and self.brands_:
            folded = f" {text.casefold()} "
            found = [b for b in self.brands_ if f" {b} " in folded]
            if found:
                filters["brand"] = self.brands_[max(found, key=len)]
        return ParsedQuery(query, text.strip(), tuple(corrections), price_min, price_max, filters)

    def _correct(self, text: str) -> tuple[str, list[tuple[str, str]]]:
        corrections = []

        def fix(match: re.Match[str]) -> str:
            word = match.group(0)
            folded = word.casefold()
            if len(folded) < self.min_word_length or folded in self.vocabulary_:
                return word
            distance = 1 if len(folded) <= 6 else self.max_edit_distance
            hits = self.symspell.lookup(folded, Verbosity.TOP, max_edit_distance=distance)
            if not hits:
                return word
            corrections.append((word, hits[0].term))
            return hits[0].term

        corrected = re.sub(r"[A-Za-z][A-Za-z'-]*[A-Za-z]", fix, text)
        return corrected, corrections

    @property
    def symspell(self) -> SymSpell:
        if self._symspell is None:
            speller = SymSpell(max_dictionary_edit_distance=self.max_edit_distance, prefix_length=7)
            for word, count in self.vocabulary_.items():
                if len(word) >= 3:
                    speller.create_dictionary_entry(word, count)
            self._symspell = speller
        return self._symspell

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        params = {
            "spelling": self.spelling,
            "min_word_length": self.min_word_length,
            "max_edit_distance": self.max_edit_distance,
            "brand_filters": self.brand_filters,
        }
        state = {"params": params, "vocabulary": self.vocabulary_, "brands": self.brands_}
        (path / "query_parser.json").write_text(json.dumps(state, ensure_ascii=False), "utf-8")

    @classmethod
    def load(cls, path: Path) -> Self:
        state = json.loads((path / "query_parser.json").read_text("utf-8"))
        parser = cls(**state["params"])
        parser.vocabulary_ = state["vocabulary"]
        parser.brands_ = state["brands"]
        parser._symspell = None
        return parser


def _extract_prices(text: str) -> tuple[float | None, float | None, str]:
    """Pull price limits out of the text; returns (min, max, remaining text)."""
    price_min = price_max = None
    for pattern in (_PRICE_MAX_EN, _PRICE_MAX_ZH):
        match = pattern.search(text)
        if match:
            price_max = _number(next(g for g in match.groups() if g))
            text = _cut(text, match)
    for pattern in (_PRICE_MIN_EN, _PRICE_MIN_ZH):
        match = pattern.search(text)
        if match:
            price_min = _number(next(g for g in match.groups() if g))
            text = _cut(text, match)
    if price_min is None and price_max is None:
        match = _PRICE_RANGE.search(text)
        if match:
            low, high = sorted((_number(match.group(1)), _number(match.group(2))))
            if low < high:
                price_min, price_max = low, high
                text = _cut(text, match)
    return price_min, price_max, text


def _number(text: str) -> float:
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):
        return float(text.replace(",", ""))
    return float(text.replace(",", "."))


def _cut(text: str, match: re.Match[str]) -> str:
    rest = text[: match.start()] + " " + text[match.end() :]
    return " ".join(rest.replace("的", " ").split()) if "的" in rest else " ".join(rest.split())


def price_mask(prices: np.ndarray, query: ParsedQuery) -> np.ndarray | None:
    """Items whose price satisfies the query's limits (None when it has none).

    Items without a price fail a price filter: a shopper asking for "under $50" is not
    served by a product whose price nobody knows.
    """
    if query.price_min is None and query.price_max is None:
        return None
    low = -np.inf if query.price_min is None else query.price_min
    high = np.inf if query.price_max is None else query.price_max
    return (prices >= low) & (prices <= high)
