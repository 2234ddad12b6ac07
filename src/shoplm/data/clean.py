"""Text cleaning: HTML, broken Unicode and stray control characters.

Cleaning runs on the distinct values of a column (catalogues and query logs repeat a lot),
so its cost follows the vocabulary, not the row count.
"""

from __future__ import annotations

import html
import re
import unicodedata

import ftfy
import numpy as np
import pandas as pd

_TAG = re.compile(r"<[^>]{0,2000}>")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\ufeff]")
_SPACE = re.compile(r"\s+")
_HTML_HINT = re.compile(r"<[a-zA-Z/!][^>]*>|&[#a-zA-Z0-9]+;")


def clean_one(text: str) -> str:
    """Fix mojibake, drop HTML tags and entities, control characters and extra spaces."""
    fixed = ftfy.fix_text(text, unescape_html=False)
    if _HTML_HINT.search(fixed):
        fixed = html.unescape(_TAG.sub(" ", fixed))
    fixed = _CONTROL.sub("", fixed)
    return _SPACE.sub(" ", unicodedata.normalize("NFC", fixed)).strip()


def clean_text_column(values: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Clean a text column.

    Returns the cleaned strings (missing values become ""), a mask of rows whose text was
    changed by more than whitespace, and a mask of rows that still hold U+FFFD, the mark of
    bytes that were not valid UTF-8 and could not be repaired.
    """
    text = values.astype("string").fillna("").astype(object)
    uniques, inverse = np.unique(text.to_numpy(dtype=object).astype(str), return_inverse=True)
    cleaned_uniques = np.array([clean_one(u) for u in uniques], dtype=object)
    squashed = np.array([_SPACE.sub(" ", u).strip() for u in uniques], dtype=object)
    changed = (cleaned_uniques != squashed)[inverse]
    broken = np.char.find(cleaned_uniques.astype(str), "\ufffd")[inverse] >= 0
    return pd.Series(cleaned_uniques[inverse], index=values.index, dtype=object), changed, broken
