"""The whole search pipeline on small catalogues: relevance, filters, facets, pages, LTR."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shoplm.search.pipeline import SearchFilters, SearchPipeline

ROWS = [
    # title, category, brand, price
    ("Cordless Drill 20V Brushless", "Tools > Drills", "Makita", 129.0),
    ("Cordless Drill Driver 12V", "Tools > Drills", "Bosch", 59.0),
    ("Hammer Drill Corded 800W", "Tools > Drills", "Bosch", 45.0),
    ("Drill Bit Set 30 pieces", "Tools > Accessories", "Makita", 19.0),
    ("Circular Saw 7-1/4 in.", "Tools > Saws", "Makita", 99.0),
    ("Jigsaw with laser guide", "Tools > Saws", "Bosch", 79.0),
    ("LED Desk Lamp with dimmer", "Home > Lighting", "Ikea", 25.0),
    ("Pendant Light Brass", "Home > Lighting", "Ikea", 65.0),
    ("Bathroom Waterproof Ceiling Light", "Home > Lighting", "Philips", 39.0),
    ("Garden Hose 50 ft", "Garden > Watering", "Gardena", 35.0),
    ("Lawn Mower Cordless", "Garden > Mowers", "Makita", 299.0),
    ("Stainless Steel Refrigerator", "Kitchen > Appliances", "GE", 1299.0),
]


def _catalogue(rows=ROWS) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["title", "category", "brand", "price"])
    frame.insert(0, "item_id", [f"i{i}" for i in range(len(frame))])
    frame["description"] = ""
    frame["attributes"] = "{}"
    return frame


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> SearchPipeline:
    judged = {
        "drill": {0: 2, 1: 2, 2: 2, 3: 1},
        "cordless drill": {0: 2, 1: 2, 10: 1},
        "saw": {4: 2, 5: 2},
        "lamp": {6: 2, 7: 1},
        "ceiling light": {8: 2, 7: 1},
        "bathroom light": {8: 2},
        "hose": {9: 2},
        "cordless mower": {10: 2},
        "fridge": {11: 2},
        "stainless steel": {11: 2},
        "makita": {0: 2, 3: 2, 4: 2, 10: 2},
        "bosch drill": {1: 2, 2: 2},
    }
    labels = pd.DataFrame(
        [(q, i, float(g)) for q, grades in judged.items() for i, g in grades.items()],
        columns=["query", "item", "gain"],
    )
    cache = tmp_path_factory.mktemp("vectors")
    return SearchPipeline(vector_cache=cache).fit(_catalogue(), labels=labels)


def test_relevant_items_come_first(pipeline):
    ids, scores = pipeline.retrieve(["cordless drill", "bathroom waterproof light"], 3)
    assert ids[0, 0] in (0, 1)
    assert ids[1, 0] == 8
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert pipeline.ranker_ is not None  # labels were given, so the ranker was trained


def test_price_phrase_filters_and_reports_what_it_applied(pipeline):
    page = pipeline.search("drill under $60", k=10)
    prices = np.array([row[3] for row in ROWS])
    assert (prices[page.ids] <= 60).all()
    assert set(page.ids[:2].tolist()) == {1, 2}  # the drills come first
    assert page.applied == {"price_max": 60.0}
    assert page.parsed.text == "drill"


def test_explicit_filters_facets_and_pages(pipeline):
    page = pipeline.search("drill", k=10, filters=SearchFilters(category="Tools > Drills"))
    assert set(page.ids.tolist()) == {0, 1, 2}  # every item in the category, nothing else
    assert page.facets["category"] == {"Tools > Drills": 3}
    assert page.facets["brand"] == {"Bosch": 2, "Makita": 1}
    assert sum(page.facets["price"].values()) == 3
    everything = pipeline.search("tools", k=100)
    first, second = pipeline.search("tools", k=2), pipeline.search("tools", k=2, offset=2)
    assert first.ids.tolist() + second.ids.tolist() == everything.ids[:4].tolist()
    assert first.total == everything.total
    bosch = pipeline.search("drill", k=10, filters=SearchFilters(brand="Bosch"))
    assert set(bosch.ids[:2].tolist()) == {1, 2}
    assert set(bosch.ids.tolist()) <= {1, 2, 5}  # Bosch only


def test_misspelt_query_is_corrected_and_suggested(pipeline):
    page = pipeline.search("cordles dril", k=3)
    assert page.parsed.suggestion == "cordless drill"
    assert page.ids[0] in (0, 1)


@pytest.mark.parametrize("query", ["", "   ", "x" * 10_000, "\x00\xff\ufffd" * 100, "🙂🙂🙂"])
def test_hostile_queries_give_an_answer_not_a_crash(pipeline, query):
    page = pipeline.search(query, k=5)
    assert len(page.ids) <= 5
    ids, _ = pipeline.retrieve([query], 5)
    assert ids.shape == (1, 5)


def test_save_load_gives_identical_results(pipeline, tmp_path):
    pipeline.save(tmp_path / "search")
    again = SearchPipeline.load(tmp_path / "search")
    queries = ["cordless drill", "lamp under 30", "makita saw"]
    a_ids, a_scores = pipeline.retrieve(queries, 5)
    b_ids, b_scores = again.retrieve(queries, 5)
    assert np.array_equal(a_ids, b_ids)
    assert np.allclose(a_scores, b_scores)


def test_chinese_catalogue_and_query():
    rows = [
        ("浴室防水吸顶灯 LED", "照明 > 吸顶灯", "欧普", 129.0),
        ("客厅水晶吊灯", "照明 > 吊灯", "雷士", 899.0),
        ("无线电钻 20V", "工具 > 电钻", "牧田", 499.0),
        ("不锈钢厨房水槽", "厨房 > 水槽", "九牧", 350.0),
        ("儿童护眼台灯", "照明 > 台灯", "飞利浦", 89.0),
    ]
    pipeline = SearchPipeline().fit(_catalogue(rows))
    ids, _ = pipeline.retrieve(["浴室 防水 灯", "电钻", "低于100元的台灯"], 1)
    assert ids[:, 0].tolist() == [0, 2, 4]
