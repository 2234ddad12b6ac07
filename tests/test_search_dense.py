"""Dense retrieval with the packaged encoders, and the ONNX int8 query encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shoplm.models import encoders
from shoplm.search.dense import DenseRetriever, item_texts

ENGLISH = pd.DataFrame(
    {
        "item_id": [f"sku{i}" for i in range(6)],
        "title": [
            "Cordless drill driver 18V",
            "Garden hose with spray nozzle",
            "Stainless steel kitchen sink",
            "LED ceiling light for bathroom",
            "Wool winter gloves",
            "Wooden dining table",
        ],
        "brand": ["Makita", "Gardena", "", "Philips", "", "Ikea"],
        "category": ["Tools", "Garden", "Kitchen", "Lighting", "Clothing", "Furniture"],
    }
)

CHINESE = pd.DataFrame(
    {
        "item_id": [f"zh{i}" for i in range(5)],
        "title": ["浴室防水吸顶灯", "客厅水晶吊灯", "厨房不锈钢水槽", "儿童羊毛手套", "实木餐桌"],
    }
)


@pytest.fixture(scope="module")
def english(tmp_path_factory: pytest.TempPathFactory) -> DenseRetriever:
    cache = tmp_path_factory.mktemp("vectors")
    return DenseRetriever(cache_dir=cache, show_progress=False).fit(ENGLISH)


def test_onnx_int8_query_encoder_matches_torch(english: DenseRetriever) -> None:
    sentences = [
        "cordless drill",
        "waterproof bathroom ceiling light",
        "1/2 in. x 10 ft. copper pipe",
        "what should I buy to water my garden?",
    ]
    reference = encoders.MiniLMEncoder().encode(sentences)
    assert english.onnx_path_ is not None
    served = encoders.OnnxMiniLMEncoder(english.onnx_path_).encode(sentences)
    cosine = (reference * served).sum(axis=1)
    assert cosine.min() >= 0.98
    assert english.onnx_path_.stat().st_size < 40e6  # int8, not the 90 MB fp32 graph
    # a text's vector does not depend on the texts encoded with it (int8 scales per run)
    onnx = encoders.OnnxMiniLMEncoder(english.onnx_path_)
    alone = np.vstack([onnx.encode([sentence]) for sentence in sentences])
    np.testing.assert_array_equal(served, alone)


def test_finds_items_by_meaning(english: DenseRetriever) -> None:
    assert english.encoders_ == ["minilm"]
    # No query shares a word with its product: only meaning connects them.
    queries = [
        "keep my hands warm",
        "something to water plants",
        "where to wash dishes",
        "lamp for the shower room",
    ]
    ids, scores = english.retrieve(queries, 2)
    assert ids[:, 0].tolist() == [4, 1, 2, 3]
    assert (np.diff(scores, axis=1) <= 0).all()


def test_item_vectors_are_cached(english: DenseRetriever, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_encoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("item vectors should have come from the cache")

    monkeypatch.setattr("shoplm.search.dense.load_encoder", no_encoding)
    refit = DenseRetriever(cache_dir=english.cache_dir, show_progress=False).fit(ENGLISH)
    np.testing.assert_array_equal(refit.vectors_["minilm"], english.vectors_["minilm"])


def test_hnsw_and_exact_agree_and_survive_save_load(
    english: DenseRetriever, tmp_path: Path
) -> None:
    queries = ["drill", "sink for the kitchen", "table"]
    exact_ids, exact_scores = english.retrieve(queries, 3)
    graph = DenseRetriever(index="hnsw", cache_dir=english.cache_dir, show_progress=False)
    graph.fit(ENGLISH)
    graph_ids, graph_scores = graph.retrieve(queries, 3)
    np.testing.assert_array_equal(graph_ids, exact_ids)
    np.testing.assert_allclose(graph_scores, exact_scores, atol=1e-5)
    for model in (english, graph):
        model.save(tmp_path / model.index)
        loaded = DenseRetriever.load(tmp_path / model.index)
        for got, expected in zip(
            loaded.retrieve(queries, 3), model.retrieve(queries, 3), strict=True
        ):
            np.testing.assert_array_equal(got, expected)


def test_hostile_queries_never_crash(english: DenseRetriever) -> None:
    garbage = bytes(range(256)).decode("latin-1")
    queries = ["", "  \t", "😀🔨🚿", "?!", garbage, "cordless drill " * 700]
    ids, scores = english.retrieve(queries, 3)
    assert ids.shape == scores.shape == (len(queries), 3)
    assert (ids[:4] == -1).all() and np.isneginf(scores[:4]).all()
    assert ids[5, 0] == 0  # a 10,000-character query is cut to the model's window, not refused
    assert ((ids[4] >= 0) & (ids[4] < len(ENGLISH))).all()


def test_chinese_catalogue_picks_multilingual_encoder() -> None:
    model = DenseRetriever(show_progress=False).fit(CHINESE)
    assert model.encoders_ == ["use"] and model.onnx_path_ is None
    ids, _ = model.retrieve(["浴室 防水 灯", "餐桌", "bathroom light"], 1)
    assert ids[:, 0].tolist() == [0, 4, 0]


def test_multilingual_queries_on_english_catalogue() -> None:
    model = DenseRetriever(multilingual_queries=True, show_progress=False).fit(ENGLISH)
    assert model.encoders_ == ["minilm", "use"]
    ids, _ = model.retrieve(["电钻", "厨房水槽", "garden hose"], 1)
    assert ids[:, 0].tolist() == [0, 2, 1]


def test_item_text_joins_non_empty_fields() -> None:
    texts = item_texts(ENGLISH, ("title", "brand", "missing"))
    assert texts[0] == "Cordless drill driver 18V. Makita"
    assert texts[2] == "Stainless steel kitchen sink"


class CountingEncoder(encoders.TextEncoder):
    name, dim = "counting", 2

    def __init__(self) -> None:
        self.seen: list[str] = []

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        self.seen += texts
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


def test_query_vector_cache_encodes_each_text_once_and_forgets_the_oldest() -> None:
    inner = CountingEncoder()
    cached = encoders.CachedQueryEncoder(inner, size=2)
    first = cached.encode(["drill", "hose"])
    np.testing.assert_allclose(cached.encode(["hose", "drill"]), first[::-1])
    assert sorted(inner.seen) == ["drill", "hose"]
    cached.encode(["saw"])  # "hose" was used longest ago: forgotten now
    cached.encode(["drill", "hose"])
    assert sorted(inner.seen) == ["drill", "hose", "hose", "saw"]
