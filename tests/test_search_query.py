"""Query understanding: what shoppers type becomes text to match plus filters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shoplm.search.query import QueryParser, price_mask

ITEMS = pd.DataFrame(
    {
        "title": ["Cordless Drill 20V", "Refrigerator, stainless steel", "Desk Lamp", "LED 台灯"],
        "brand": ["Makita", "GE Appliances", "Ikea", ""],
        "category": ["Tools > Drills", "Kitchen", "Lighting", "照明"],
        "description": ["", "", "", ""],
    }
)


@pytest.fixture(scope="module")
def parser() -> QueryParser:
    return QueryParser().fit(ITEMS)


@pytest.mark.parametrize(
    ("query", "text", "low", "high"),
    [
        ("drill under $100", "drill", None, 100.0),
        ("lamp below 25.50 dollars", "lamp", None, 25.5),
        ("fridge over £1,299.99", "fridge", 1299.99, None),
        ("lamp 50-100", "lamp", 50.0, 100.0),
        ("lamp between 20 and 40", "lamp", 20.0, 40.0),
        ("低于100元的台灯", "台灯", None, 100.0),
        ("台灯 100元以上", "台灯", 100.0, None),
        ("台灯 50到100元", "台灯", 50.0, 100.0),
        # sizes, ratings and fractions are not prices
        ("drill under 30 inch", "drill under 30 inch", None, None),
        ("1-1/4 in. screws", "1-1/4 in. screws", None, None),
        ("drill 18-20v", "drill 18-20v", None, None),
    ],
)
def test_price_phrases_become_filters(parser, query, text, low, high):
    parsed = parser.parse_one(query)
    assert (parsed.text, parsed.price_min, parsed.price_max) == (text, low, high)


def test_misspellings_are_corrected_against_the_catalogue(parser):
    parsed = parser.parse_one("cordles drill for refridgerator")
    assert parsed.text == "cordless drill for refrigerator"
    assert parsed.corrections == (("cordles", "cordless"), ("refridgerator", "refrigerator"))
    assert parsed.suggestion == "cordless drill for refrigerator"
    # known words, short words and numbers are left alone
    assert parser.parse_one("led lamp 20v").corrections == ()


def test_brand_words_become_a_filter(parser):
    assert parser.parse_one("makita drill").filters == {"brand": "Makita"}
    assert parser.parse_one("ge appliances fridge").filters == {"brand": "GE Appliances"}
    assert parser.parse_one("drill").filters == {}


def test_hostile_input_never_crashes(parser):
    for query in ["", " ", "x" * 10_000, "\x00\x01\ufffd" * 50, "🙂🙂🙂", "$$$ under under"]:
        parsed = parser.parse_one(query)
        assert isinstance(parsed.text, str)


def test_price_mask_excludes_unknown_prices(parser):
    prices = np.array([10.0, np.nan, 60.0, 100.0])
    mask = price_mask(prices, parser.parse_one("lamp 50-100"))
    assert mask.tolist() == [False, False, True, True]
    assert price_mask(prices, parser.parse_one("lamp")) is None


def test_save_load_round_trip(parser, tmp_path):
    parser.save(tmp_path)
    again = QueryParser.load(tmp_path)
    for query in ["cordles drill under $100", "makita", "低于100元的台灯"]:
        assert again.parse_one(query) == parser.parse_one(query)
