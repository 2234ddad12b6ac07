"""Tokenisation for lexical search: English stemming and stop words, Chinese segmentation.

Text is split into runs of Han characters and runs of other word characters, so a mixed
title such as ``"LED灯泡 E27"`` yields both kinds. Latin-script words are case-folded, stop
words dropped and stemmed (``drills`` -> ``drill``); Han runs are segmented with jieba in
search mode (words plus their dictionary sub-words) and additionally contribute every single
character, because shoppers type fragments (``灯``) of compound product words (``吸顶灯``)
that no segmenter would split out.

Work is done once per distinct word, not per occurrence: a catalogue of 50k titles has a
vocabulary of a few tens of thousands, so stemming and segmentation cost follows that.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
import pandas as pd

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
#: a run of Han characters, or a run of other word characters (letters, digits; not "_")
_WORD = re.compile(rf"[{_HAN}]+|[^\W_{_HAN}]+")
_SEPARATOR = "\x1e"  # ASCII record separator: not a word character, never in a token
_WORD_OR_SEPARATOR = re.compile(f"{_SEPARATOR}|{_WORD.pattern}")
_IS_HAN = re.compile(rf"[{_HAN}]")
_LATIN_LETTER = re.compile(r"[a-zA-Z\u00c0-\u024f]")
_SINGLE_LETTER = re.compile(r"^[^\W\d_]$")

Script = Literal["latin", "han", "other"]


@dataclass(frozen=True)
class Tokenized:
    """Tokens of texts in CSR layout: text ``i`` has ``tokens[indptr[i]:indptr[i + 1]]``."""

    indptr: np.ndarray
    tokens: np.ndarray

    def __len__(self) -> int:
        return self.indptr.size - 1

    @property
    def rows(self) -> np.ndarray:
        """The text index of every token."""
        return np.repeat(np.arange(len(self)), np.diff(self.indptr))

    def to_lists(self) -> list[list[str]]:
        return [
            list(self.tokens[a:b]) for a, b in zip(self.indptr[:-1], self.indptr[1:], strict=True)
        ]


class TextAnalyzer:
    """Turns strings into search tokens; the same instance serves index and query side.

    ``stemmer`` is a Snowball language name for PyStemmer (or ``None`` for none) and
    ``stopwords`` a bm25s stop-word list name (or ``None``); both apply to non-Han words.
    Single letters are dropped with the stop words: in a catalogue they are mostly the
    ``x`` of ``3 in. x 8 ft.`` and match everything.

    With ``char_ngrams=n`` the analyzer instead emits the character n-grams of each word
    (Han runs: character bigrams), marked with a leading ``#`` so they never collide with
    word tokens in a shared vocabulary. They match misspellings ("recepicating") and
    run-together words ("concretetile") that whole words miss.
    """

    def __init__(
        self,
        stemmer: str | None = "english",
        stopwords: str | None = "en",
        han_chars: bool = True,
        char_ngrams: int | None = None,
    ) -> None:
        self.stemmer = stemmer
        self.stopwords = stopwords
        self.han_chars = han_chars
        self.char_ngrams = char_ngrams

    def analyze(self, texts: Sequence[str]) -> Tokenized:
        """Tokenise every text; empty, emoji-only or garbage input gives zero tokens.

        All texts are joined with a record separator and normalised and split by one regex
        pass over the joined string, so the per-text cost is C code, not Python; the separator
        matches as a word of its own and marks where each text ends.
        """
        cleaned = [t.replace(_SEPARATOR, " ") if isinstance(t, str) else "" for t in texts]
        joined = unicodedata.normalize("NFKC", _SEPARATOR.join([*cleaned, ""])).casefold()
        found = np.array(_WORD_OR_SEPARATOR.findall(joined), dtype=object)
        is_separator = found == _SEPARATOR
        word_rows = np.cumsum(is_separator)[~is_separator]
        codes, uniques = pd.factorize(found[~is_separator])
        expansions = [self._expand(str(word)) for word in uniques]
        # Expand every occurrence of a distinct word into that word's tokens, vectorised.
        sizes = np.array([len(e) for e in expansions], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        pool = np.array([t for e in expansions for t in e] or [""], dtype=object)
        occurrence_sizes = sizes[codes]
        offsets = np.arange(occurrence_sizes.sum()) - np.repeat(
            np.cumsum(occurrence_sizes) - occurrence_sizes, occurrence_sizes
        )
        tokens = pool[np.repeat(starts[codes], occurrence_sizes) + offsets]
        text_sizes = np.bincount(word_rows, weights=occurrence_sizes, minlength=len(cleaned))
        indptr = np.concatenate([[0], np.cumsum(text_sizes)]).astype(np.int64)
        return Tokenized(indptr=indptr, tokens=tokens)

    def _expand(self, word: str) -> list[str]:
        """The tokens that one distinct word (a Han run or another word run) contributes."""
        if self.char_ngrams:
            n = 2 if _IS_HAN.match(word) else self.char_ngrams
            grams = [word[i : i + n] for i in range(max(len(word) - n + 1, 1))]
            return [f"#{gram}" for gram in grams]
        if _IS_HAN.match(word):
            segments = [s for s in _jieba().cut_for_search(word) if s.strip()]
            if self.han_chars:
                segments += [c for c in word if c not in segments]
            return segments
        if _SINGLE_LETTER.match(word) or word in _stopword_set(self.stopwords):
            return []
        if self.stemmer and _LATIN_LETTER.search(word):
            return [_stemmer(self.stemmer).stemWord(word)]
        return [word]


@cache
def _stemmer(language: str):  # type: ignore[no-untyped-def]
    import Stemmer

    return Stemmer.Stemmer(language)


@cache
def _stopword_set(name: str | None) -> frozenset[str]:
    if name is None:
        return frozenset()
    import bm25s.stopwords

    lists = {
        "en": bm25s.stopwords.STOPWORDS_EN,
        "english": bm25s.stopwords.STOPWORDS_EN,
        "en_plus": bm25s.stopwords.STOPWORDS_EN_PLUS,
        "de": bm25s.stopwords.STOPWORDS_GERMAN,
        "fr": bm25s.stopwords.STOPWORDS_FRENCH,
        "es": bm25s.stopwords.STOPWORDS_SPANISH,
        "it": bm25s.stopwords.STOPWORDS_ITALIAN,
        "nl": bm25s.stopwords.STOPWORDS_DUTCH,
        "pt": bm25s.stopwords.STOPWORDS_PORTUGUESE,
    }
    if name not in lists:
        raise ValueError(f"unknown stop-word list {name!r}; choose from {sorted(lists)}")
    return frozenset(lists[name])


@cache
def _jieba():  # type: ignore[no-untyped-def]
    """One jieba tokenizer per process; its dictionary load (~1 s) happens on first Han text."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba.Tokenizer()


def dominant_script(texts: Sequence[str], sample: int = 2000) -> Script:
    """The script most of the letters in ``texts`` are written in (the first ``sample`` texts).

    Used to choose a model: English models fail on Chinese, and a catalogue is rarely mixed
    enough for a per-item choice to pay.
    """
    head = pd.Series(list(texts[:sample]), dtype=object).fillna("").astype(str)
    han = int(head.str.count(f"[{_HAN}]").sum())
    latin = int(head.str.count(_LATIN_LETTER.pattern).sum())
    other = int(head.str.count(r"[^\W\d_]").sum()) - han - latin
    best = max((latin, "latin"), (han, "han"), (other, "other"))
    return best[1] if best[0] > 0 else "latin"  # type: ignore[return-value]


def script_of(text: str) -> Script:
    """The dominant script of a single string (queries are routed by it)."""
    return dominant_script([text])
