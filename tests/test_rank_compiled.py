"""Compiled trees: the same scores as LightGBM's own predictor, or LightGBM when they cannot
be compiled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shoplm.rank import compiled
from shoplm.rank.ltr import LambdaMARTRanker


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(3000, 6)).astype(np.float32)
    labels = (features[:, 0] + rng.normal(size=3000) > 0.5).astype(np.int32)
    return features, labels, np.full(30, 100)


@pytest.mark.parametrize("objective", ["lambdarank", "binary"])
def test_compiled_trees_score_as_lightgbm_does(
    objective: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOPLM_CACHE_DIR", str(tmp_path))
    x, y, groups = _data()
    valid = (x[2000:], y[2000:], groups[20:])
    model = LambdaMARTRanker(n_estimators=80, objective=objective, threads=1)
    model.fit(x[:2000], y[:2000], groups[:20], valid=valid)
    scores = model.predict(x)
    assert model._compiled() is not None
    # early stopping kept fewer trees than were trained: only those count
    best = model.booster_.best_iteration
    assert 0 < best < 80
    expected = model.booster_.predict(x, num_iteration=best, num_threads=1)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert len(list((tmp_path / "trees").glob("*.o"))) == 1


def test_a_saved_model_loads_compiled_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOPLM_CACHE_DIR", str(tmp_path / "cache"))
    x, y, groups = _data(1)
    model = LambdaMARTRanker(n_estimators=20, threads=1).fit(x, y, groups)
    before = model.predict(x)
    model.save(tmp_path / "ranker")
    objects = sorted((tmp_path / "cache" / "trees").glob("*.o"))
    loaded = LambdaMARTRanker.load(tmp_path / "ranker")
    np.testing.assert_array_equal(loaded.predict(x), before)
    # the same trees: the object compiled for the fitted model served the loaded one
    assert sorted((tmp_path / "cache" / "trees").glob("*.o")) == objects


def test_without_a_compiler_lightgbm_predicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # a cache folder that cannot be created: compiling fails, predicting must not
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SHOPLM_CACHE_DIR", str(blocker))
    x, y, groups = _data(2)
    model = LambdaMARTRanker(n_estimators=20, threads=1).fit(x, y, groups)
    with caplog.at_level("WARNING", logger=compiled.__name__):
        scores = model.predict(x)
    assert model._compiled() is None
    assert "could not compile the trees" in caplog.text
    np.testing.assert_allclose(scores, model.booster_.predict(x, num_threads=1), rtol=1e-6)
