"""Lexical retrieval: what a shop relies on when customers type words that are in the data."""

from __future__ import annotations

from pathlib import Path

import bm25s
import numpy as np
import pandas as pd
import pytest

from shoplm.recommend.base import top_k
from shoplm.search import lexical
from shoplm.search.lexical import LexicalRetriever
from shoplm.search.maxscore import maxscore_top_k
from shoplm.search.text import TextAnalyzer, dominant_script

COLUMNS = ["item_id", "title", "description", "category", "brand", "price", "attributes"]


def catalogue(rows: list[dict[str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS, dtype=object).fillna("")
    frame["item_id"] = [f"sku{i}" for i in range(len(frame))]
    return frame


@pytest.fixture(scope="module")
def tools() -> pd.DataFrame:
    return catalogue(
        [
            {"title": "Cordless Drill 18V with 2 batteries", "category": "Tools > Drills"},
            {"title": "Hammer drilling bit set", "category": "Tools > Accessories"},
            {"title": "Garden hose 50 ft", "category": "Garden > Watering"},
            {"title": "Impact driver", "brand": "Makita", "category": "Tools > Drivers"},
            {"title": "Circular saw", "description": "Compatible with Makita blades."},
            {"title": "Red garden gloves", "attributes": '{"colour": "red", "size": "M"}'},
            {"title": "LED灯泡 E27 暖白", "category": "照明"},
        ]
    )


def test_stemming_matches_inflected_words(tools: pd.DataFrame) -> None:
    words_only = LexicalRetriever(ngram_weight=0.0).fit(tools)
    ids, _ = words_only.retrieve(["drills"], 3)
    assert set(ids[0, :2]) == {0, 1}  # "Drill" and "drilling"
    assert ids[0, 2] == -1  # nothing else mentions drills


def test_field_weights_decide_which_field_wins(tools: pd.DataFrame) -> None:
    # "makita" is item 3's brand and a word of item 4's description.
    brand_first = LexicalRetriever(field_weights={"title": 1.0, "brand": 1.0, "description": 0.1})
    ids, _ = brand_first.fit(tools).retrieve(["makita"], 2)
    assert ids[0].tolist() == [3, 4]
    description_first = LexicalRetriever(field_weights={"brand": 0.1, "description": 1.0})
    ids, _ = description_first.fit(tools).retrieve(["makita"], 2)
    assert ids[0].tolist() == [4, 3]


def test_fields_sum_with_their_weights(tools: pd.DataFrame) -> None:
    queries = ["garden drill makita", "red tools"]
    everything = np.tile(np.arange(len(tools)), (len(queries), 1))
    weights = {"title": 1.0, "category": 0.5, "attributes": 0.25}
    combined = LexicalRetriever(field_weights=weights).fit(tools).score_items(queries, everything)
    # Every field keeps its own BM25 statistics, so the blend is a weighted sum of models.
    parts = sum(
        w * LexicalRetriever(field_weights={f: 1.0}).fit(tools).score_items(queries, everything)
        for f, w in weights.items()
    )
    np.testing.assert_allclose(combined, parts, rtol=1e-5)


def test_scores_are_bm25s_scores(tools: pd.DataFrame) -> None:
    analyzer = TextAnalyzer()
    reference = bm25s.BM25(k1=1.3, b=0.6)
    reference.index(analyzer.analyze(tools["title"].tolist()).to_lists(), show_progress=False)
    query = "cordless garden drill"
    expected = reference.get_scores(analyzer.analyze([query]).to_lists()[0])
    model = LexicalRetriever(field_weights={"title": 1.0}, k1=1.3, b=0.6, ngram_weight=0.0)
    model.fit(tools)
    got = model.score_items([query], np.arange(len(tools))[None, :])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_attributes_are_searchable(tools: pd.DataFrame) -> None:
    ids, _ = LexicalRetriever(field_weights={"attributes": 1.0}).fit(tools).retrieve(["red"], 2)
    assert ids[0].tolist() == [5, -1]


def test_chinese_catalogue() -> None:
    items = catalogue(
        [
            {"title": "浴室防水吸顶灯 LED", "category": "灯具"},
            {"title": "客厅水晶吊灯", "category": "灯具"},
            {"title": "厨房不锈钢水槽", "category": "厨卫"},
            {"title": "浴室防滑地垫", "category": "家纺"},
            {"title": "儿童卧室护眼台灯", "category": "灯具"},
            {"title": "户外防水手电筒", "category": "户外"},
        ]
    )
    assert dominant_script(items["title"].tolist()) == "han"
    ids, scores = LexicalRetriever().fit(items).retrieve(["浴室 防水 灯", "吊灯"], 3)
    assert ids[0, 0] == 0
    assert scores[0, 0] > scores[0, 1]
    assert ids[1, 0] == 1


def test_mixed_script_title(tools: pd.DataFrame) -> None:
    ids, _ = LexicalRetriever().fit(tools).retrieve(["e27 灯泡", "led bulb 暖白"], 1)
    assert ids[:, 0].tolist() == [6, 6]


def test_save_load_gives_identical_results(tools: pd.DataFrame, tmp_path: Path) -> None:
    model = LexicalRetriever(k1=0.9).fit(tools)
    model.save(tmp_path / "lexical")
    loaded = LexicalRetriever.load(tmp_path / "lexical")
    queries = ["drill", "makita saw", "灯泡", "red gloves size m"]
    for got, expected in zip(loaded.retrieve(queries, 5), model.retrieve(queries, 5), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert loaded.get_params() == model.get_params()


def test_hostile_queries_never_crash(tools: pd.DataFrame) -> None:
    model = LexicalRetriever().fit(tools)
    garbage = bytes(range(256)).decode("latin-1")
    random_bytes = np.random.default_rng(0).bytes(500).decode("utf-8", errors="replace")
    essay = "cordless drill " + "lorem ipsum " * 900  # ~10,000 characters
    queries = ["", "   ", "😀🔨🚿", garbage, random_bytes, essay, "the and of"]
    ids, scores = model.retrieve(queries, 4)
    assert ids.shape == scores.shape == (len(queries), 4)
    for row in (0, 1, 2, 6):  # nothing searchable: no result, not a random one
        assert (ids[row] == -1).all() and np.isneginf(scores[row]).all()
    assert ids[5, 0] == 0  # the first words of a pasted essay still count
    assert ((ids >= -1) & (ids < len(tools))).all()


def test_short_result_lists_are_padded(tools: pd.DataFrame) -> None:
    ids, scores = LexicalRetriever().fit(tools).retrieve(["hose"], 20)
    assert ids[0, 0] == 2 and (ids[0, 1:] == -1).all() and np.isneginf(scores[0, 1:]).all()


def test_rejects_catalogue_without_text() -> None:
    items = catalogue([{"title": ""}, {"title": ""}])
    with pytest.raises(ValueError, match="no non-empty text field"):
        LexicalRetriever().fit(items)


@pytest.mark.parametrize("path", ["gathered rows", "MaxScore"])
def test_a_few_queries_score_as_a_large_batch_does(
    path: str, tools: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One to eight queries are scored apart from larger batches: by summing their terms'
    # rows when those are short (as here), else by MaxScore (forced here by a 0 threshold).
    if path == "MaxScore":
        monkeypatch.setattr(lexical, "_GATHER_MAX_POSTINGS", 0)
    model = LexicalRetriever().fit(tools)
    queries = ["cordless drill", "makita", "garden gloves red", "nothing matches", ""] * 4
    everything = np.tile(np.arange(len(tools)), (len(queries), 1))
    together = np.concatenate([block for _, block in model.score_blocks(queries)])
    for k in (1, 3, len(tools)):
        one_by_one = [model.retrieve([q], k) for q in queries]
        np.testing.assert_array_equal(
            np.concatenate([i for i, _ in one_by_one]), top_k(together, k)[0]
        )
    lookups = np.concatenate([model.score_items([q], everything[:1]) for q in queries])
    np.testing.assert_allclose(lookups, np.where(np.isfinite(together), together, 0), rtol=1e-6)


def test_maxscore_gives_the_top_list_of_scoring_everything() -> None:
    # Zipf-distributed words: a few terms are in most titles, most are rare, as in a shop.
    rng = np.random.default_rng(0)
    vocabulary = np.array([f"w{i}" for i in range(200)])
    zipf = 1.0 / np.arange(1, 201)
    titles = [" ".join(rng.choice(vocabulary, 6, p=zipf / zipf.sum())) for _ in range(2000)]
    model = LexicalRetriever(ngram_weight=0.0).fit(catalogue([{"title": t} for t in titles]))
    queries = [" ".join(rng.choice(vocabulary, rng.integers(1, 6))) for _ in range(40)]
    full = np.concatenate([block for _, block in model.score_blocks(queries)])
    for k in (1, 10, 100):
        ids, scores = top_k(full, k)
        for row, query in enumerate(queries):
            _, terms, counts = model._query_terms([query])
            found, best = maxscore_top_k(
                model.term_weights_, model.term_bounds_, terms, counts.astype(np.float64), k
            )
            # equal scores may come in either order at the k-th place: compare scores
            assert found.size == (ids[row] >= 0).sum()
            np.testing.assert_allclose(best, scores[row, : found.size], rtol=1e-6)
            np.testing.assert_allclose(full[row, found], best, rtol=1e-6)
