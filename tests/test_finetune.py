"""Fine-tuning the bi-encoder and training the cross-encoder reranker on a made-up catalogue.

Made-up words ("zorblax") name products: the packaged MiniLM cannot know them, so only
training can put the query next to its product. Real models, a few optimiser steps each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shoplm.models import encoders
from shoplm.models.cross_encoder import CrossEncoderReranker
from shoplm.models.finetune import BiEncoderFinetuner, check_pairs, synthetic_pairs
from shoplm.search.dense import DenseRetriever

TITLES = [
    "Cordless drill driver 18V with two batteries",
    "Garden hose 50 ft with spray nozzle",
    "Stainless steel kitchen sink, double bowl",
    "LED ceiling light for bathroom, waterproof",
    "Wool winter gloves for work",
    "Wooden dining table for six",
    "Copper pipe 1/2 in. x 10 ft.",
    "Paint roller kit with tray",
]
CATALOGUE = pd.DataFrame({"item_id": [f"sku{i}" for i in range(8)], "title": TITLES})
PAIRS = pd.DataFrame({"query": ["zorblax", "quimbly", "flerpo", "wuzzlet"], "item": [0, 1, 2, 3]})


def ranks(vectors_q: np.ndarray, vectors_items: np.ndarray) -> np.ndarray:
    """0-based rank of each query's own item (query i belongs to item i)."""
    scores = vectors_q @ vectors_items.T
    own = scores[np.arange(len(scores)), np.arange(len(scores))]
    return (scores > own[:, None]).sum(axis=1)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[BiEncoderFinetuner, Path]:
    model = BiEncoderFinetuner(
        epochs=12, batch_size=4, lr=2e-4, hard_negatives=1, negative_skip=0, show_progress=False
    ).fit(PAIRS, TITLES)
    return model, model.save(tmp_path_factory.mktemp("bi") / "model")


def test_training_moves_the_query_to_its_item(finetuned: tuple[BiEncoderFinetuner, Path]) -> None:
    model, _ = finetuned
    base = encoders.MiniLMEncoder()
    queries = PAIRS["query"].tolist()
    before = ranks(base.encode(queries), base.encode(TITLES))
    trained = model.model_.encode(queries, normalize_embeddings=True)
    after = ranks(trained, model.model_.encode(TITLES, normalize_embeddings=True))
    assert after.sum() < before.sum()
    assert (after == 0).all()
    assert model.report_["steps_done"] == 12 and model.report_["pairs_seen"] == 48


def test_saved_folder_serves_through_dense_retriever_and_onnx_agrees(
    finetuned: tuple[BiEncoderFinetuner, Path], tmp_path: Path
) -> None:
    model, folder = finetuned
    manifest = encoders.finetuned_manifest(folder)
    assert manifest["items"] == "model" and (folder / manifest["onnx"]).stat().st_size < 40e6
    torch_vectors = encoders.MiniLMEncoder(folder).encode(TITLES)
    onnx_vectors = encoders.load_encoder("minilm-onnx", model_dir=folder).encode(TITLES)
    assert (torch_vectors * onnx_vectors).sum(axis=1).min() > 0.98
    np.testing.assert_allclose(
        torch_vectors, model.model_.encode(TITLES, normalize_embeddings=True), atol=1e-5
    )
    dense = DenseRetriever(encoder=str(folder), show_progress=False).fit(CATALOGUE)
    dense.save(tmp_path / "dense")
    served = DenseRetriever.load(tmp_path / "dense")
    ids, _ = served.retrieve(PAIRS["query"].tolist(), k=1)
    np.testing.assert_array_equal(ids[:, 0], PAIRS["item"].to_numpy())


def test_query_tower_only_keeps_the_base_item_vectors(tmp_path: Path) -> None:
    base_items = encoders.MiniLMEncoder().encode(TITLES)
    model = BiEncoderFinetuner(
        epochs=12, batch_size=4, lr=3e-4, towers="query", hard_negatives=0, show_progress=False
    ).fit(PAIRS, TITLES, item_vectors=base_items)
    queries = model.model_.encode(PAIRS["query"].tolist(), normalize_embeddings=True)
    assert (ranks(queries, base_items) == 0).all()
    folder = model.save(tmp_path / "query-tower")
    dense = DenseRetriever(encoder=str(folder), show_progress=False).fit(CATALOGUE)
    np.testing.assert_allclose(dense.vectors_["minilm"], base_items, atol=1e-5)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="row 1 has item 9"):
        check_pairs(pd.DataFrame({"query": ["a", "b"], "item": [0, 9]}), n_items=8)
    with pytest.raises(ValueError, match="missing column"):
        check_pairs(pd.DataFrame({"q": ["a"]}), n_items=8)
    checked = check_pairs(pd.DataFrame({"query": ["a", " ", None], "item": [0, 1, 2]}), 8)
    assert len(checked) == 1 and checked.attrs["dropped_empty_query"] == 2
    frame = pd.DataFrame(
        {"item_id": ["sku1", "nope", "sku2"], "query": ["x", "y", "z"], "kept": [1, 1, 0]}
    )
    pairs = synthetic_pairs(frame, pd.Index(CATALOGUE["item_id"]))
    assert pairs["item"].tolist() == [1]
    assert pairs.attrs["dropped_unknown_item"] == 1 and pairs.attrs["dropped_not_kept"] == 1
    with pytest.raises(ValueError, match="towers"):
        BiEncoderFinetuner(towers="items").fit(PAIRS, TITLES)


def test_cross_encoder_learns_graded_pairs_and_reranks(tmp_path: Path) -> None:
    labels = pd.DataFrame(
        {
            "query": ["zorblax"] * 3 + ["quimbly"] * 3,
            "item": [0, 5, 6, 1, 4, 7],
            "gain": [2.0, 0.0, 0.0, 2.0, 0.0, 0.0],
        }
    )
    reranker = CrossEncoderReranker(
        epochs=15, batch_size=6, lr=1e-4, negatives=0, top_n=3, show_progress=False
    ).fit(labels, TITLES)
    folder = reranker.save(tmp_path / "reranker")
    served = CrossEncoderReranker.load(folder)
    queries = ["zorblax", "quimbly"]
    candidates = np.array([[5, 6, 0, 2], [7, 4, 1, 3]])  # the right item third, then a tail
    pipeline_scores = np.array([[4.0, 3.0, 2.0, 1.0]] * 2, dtype=np.float32)
    ids, scores = served.rerank(queries, candidates, pipeline_scores, TITLES)
    assert ids[:, 0].tolist() == [0, 1]
    assert ids[:, 3].tolist() == [2, 3]  # below top_n: untouched
    assert (np.diff(scores, axis=1) <= 0).all()
    flat_q = [q for q in queries for _ in range(3)]
    flat_t = [TITLES[i] for i in candidates[:, :3].ravel()]
    onnx, reference = served.score(flat_q, flat_t), reranker.score_torch(flat_q, flat_t)
    assert np.corrcoef(onnx, reference)[0, 1] > 0.98
    assert np.abs(onnx - reference).max() < 0.5
