"""Implicit-feedback matrix factorisation (Hu, Koren & Volinsky 2008), trained by ``implicit``.

Training learns item factors ``Y`` (and user factors, which are thrown away). Queries come as
histories, not user ids, so a user's factor is recomputed from the history by the same
weighted least squares that ALS alternates on (*fold-in*):

    x_u = argmin_x  sum_i c_ui (p_ui - x . y_i)^2 + regularization * |x|^2,
    c_ui = alpha * (count of i in the history) for items in it, 1 elsewhere,

solved exactly for a whole batch by ``implicit``'s multithreaded solver
(``AlternatingLeastSquares.recalculate_user``). A user who arrived a second ago is therefore
scored like one seen in training, and forgetting a user needs no retraining.

``model="bpr"`` trains the item factors by Bayesian Personalised Ranking instead (its last
factor column is the item bias) and folds users in by the same least squares on those
factors: BPR has no closed-form fold-in of its own.
"""

from __future__ import annotations

import hashlib
import json
import threading
from functools import cache
from pathlib import Path
from typing import Literal, Self

import numpy as np
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from threadpoolctl import ThreadpoolController

from shoplm.data.interactions import Interactions, Sequences
from shoplm.recommend.base import Recommender
from shoplm.recommend.cooccurrence import history_matrix

_PARAMS_FILE = "als.json"
_ARRAYS_FILE = "als.npz"
#: batches up to this many histories fold in through numpy (see ``_fold_in``)
_NUMPY_MAX_ROWS = 8
#: folded-in user factors kept per model (512 bytes each at 128 factors): a shopper asks
#: for the feed again and again with the same history, as a trained model's user matrix
#: would serve them, and a changed history is a new key
_FOLD_IN_MEMO = 65_536


class ALSRecommender(Recommender):
    """Item factors from ALS (or BPR); user factors folded in from each history at query time.

    Parameters
    ----------
    factors:
        Latent dimensions.
    regularization:
        L2 weight on the factors (``implicit``'s unscaled convention). The default suits ALS;
        BPR wants about 0.01.
    alpha:
        Confidence per interaction: ``c_ui = alpha * count``; the unobserved cells weigh 1.
        The defaults of ``factors``, ``regularization`` and ``alpha`` are near the best of
        ``bench/eval_sources.py``'s validation grid on Beauty, Scientific and OR, where
        alpha of 1 was far behind and regularization mattered little.
    iterations:
        ALS sweeps, or BPR epochs.
    model:
        ``"als"`` or ``"bpr"`` (see the module docstring).
    learning_rate:
        BPR's SGD step; unused by ALS.
    random_state:
        Seed of the factor initialisation. ALS is then deterministic; BPR with more than one
        thread is not (its threads update shared factors without locks).
    num_threads:
        Threads for training and fold-in; 0 uses every core.
    """

    def __init__(
        self,
        factors: int = 128,
        regularization: float = 10.0,
        alpha: float = 50.0,
        iterations: int = 15,
        model: Literal["als", "bpr"] = "als",
        learning_rate: float = 0.01,
        random_state: int = 0,
        num_threads: int = 0,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.model = model
        self.learning_rate = learning_rate
        self.random_state = random_state
        self.num_threads = num_threads

    def fit(self, interactions: Interactions) -> Self:
        user_items = interactions.to_csr()
        # implicit's own advice: its threads and a threaded BLAS fight over the cores.
        with _one_blas_thread():
            if self.model == "als":
                trainer = AlternatingLeastSquares(
                    factors=self.factors,
                    regularization=self.regularization,
                    alpha=self.alpha,
                    iterations=self.iterations,
                    random_state=self.random_state,
                    num_threads=self.num_threads,
                )
            elif self.model == "bpr":
                trainer = BayesianPersonalizedRanking(
                    factors=self.factors,
                    learning_rate=self.learning_rate,
                    regularization=self.regularization,
                    iterations=self.iterations,
                    random_state=self.random_state,
                    num_threads=self.num_threads,
                )
            else:
                raise ValueError(f"model must be 'als' or 'bpr', got {self.model!r}")
            trainer.fit(user_items, show_progress=False)
        self._set_item_factors(np.asarray(trainer.item_factors, dtype=np.float32))
        return self

    def _set_item_factors(self, item_factors: np.ndarray) -> None:
        """Keep the factors and a solver that folds users in against them."""
        self.item_factors_ = item_factors
        self.n_items = item_factors.shape[0]
        with _one_blas_thread():
            self._solver = AlternatingLeastSquares(
                factors=item_factors.shape[1],
                regularization=self.regularization,
                alpha=self.alpha,
                num_threads=self.num_threads,
            )
        self._solver.item_factors = item_factors
        self._memo: dict[bytes, np.ndarray] = {}
        self._memo_lock = threading.Lock()
        factors = item_factors.astype(np.float64)
        self._gram = factors.T @ factors + self.regularization * np.eye(factors.shape[1])
        self._gram_inverse = np.linalg.inv(self._gram)

    def user_factors(self, histories: Sequences) -> np.ndarray:
        """Each history's least-squares user factor, float32 (n, factors).

        A few short histories (a live request) are solved here in numpy; batches go to
        ``implicit``'s threaded solver. Both solve the same system.
        """
        if len(histories) <= _NUMPY_MAX_ROWS:
            return np.stack(
                [self._remembered_fold_in(histories[row]) for row in range(len(histories))]
            ).reshape(len(histories), -1)
        counts = history_matrix(histories, self.n_items)
        with _one_blas_thread():
            return self._solver.recalculate_user(np.arange(len(histories)), counts)

    def _remembered_fold_in(self, history: np.ndarray) -> np.ndarray:
        """:meth:`_fold_in`, memoised by the history's exact items (a 16-byte digest).

        The oldest entry is dropped when the memo is full."""
        key = hashlib.blake2b(np.ascontiguousarray(history).tobytes(), digest_size=16).digest()
        factor = self._memo.get(key)
        if factor is None:
            factor = self._fold_in(history)
            with self._memo_lock:  # a rebuild thread may fold users in meanwhile
                if len(self._memo) >= _FOLD_IN_MEMO:
                    del self._memo[next(iter(self._memo))]
                self._memo[key] = factor
        return factor

    def _fold_in(self, history: np.ndarray) -> np.ndarray:
        """One user's factor. ``m`` history items change the regularised Gram matrix
        ``A = Y'Y + λI`` by ``U D U'`` (``U``: their factors, ``D``: confidence - 1), so
        for ``m`` below the factor count the Woodbury identity, with ``A^-1`` kept per
        model, turns the factors x factors solve into an m x m one (implicit's own solver
        also pays ~0.3 ms of set-up a call):

            x = (A + U D U')^-1 U c = B (c - (I + D G)^-1 D G c),  B = A^-1 U,  G = U' B
        """
        items, counts = np.unique(history, return_counts=True)
        if not items.size:
            return np.zeros(self.item_factors_.shape[1], dtype=np.float32)
        confidence = self.alpha * counts.astype(np.float64)
        factors = self.item_factors_[items].astype(np.float64)  # U' (m, f)
        if items.size >= factors.shape[1]:
            system = self._gram + factors.T @ ((confidence - 1.0)[:, None] * factors)
            return np.linalg.solve(system, factors.T @ confidence).astype(np.float32)
        spread = self._gram_inverse @ factors.T  # B (f, m)
        gram = factors @ spread  # G (m, m)
        boost = (confidence - 1.0)[:, None] * gram  # D G
        correction = np.linalg.solve(np.eye(items.size) + boost, boost @ confidence)
        return (spread @ (confidence - correction)).astype(np.float32)

    def score(self, histories: Sequences) -> np.ndarray:
        """Dot products of the folded-in user factors with every item factor.

        An empty history folds in to the zero vector, so every item scores 0.
        """
        return self.user_factors(histories) @ self.item_factors_.T

    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        params = {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
            "model": self.model,
            "learning_rate": self.learning_rate,
            "random_state": self.random_state,
            "num_threads": self.num_threads,
        }
        (path / _PARAMS_FILE).write_text(json.dumps(params, indent=2))
        np.savez(path / _ARRAYS_FILE, item_factors=self.item_factors_)

    @classmethod
    def load(cls, path: Path) -> Self:
        path = Path(path)
        model = cls(**json.loads((path / _PARAMS_FILE).read_text()))
        with np.load(path / _ARRAYS_FILE) as arrays:
            model._set_item_factors(arrays["item_factors"])
        return model


@cache
def _controller() -> ThreadpoolController:
    return ThreadpoolController()


def _one_blas_thread():  # type: ignore[no-untyped-def]
    """One BLAS thread while ``implicit`` runs (its own advice: its threads and a threaded
    BLAS fight over the cores). The controller is built once: ``threadpool_limits`` scans
    the process's loaded libraries on every call, 13 ms, six times the fold-in itself."""
    return _controller().limit(limits=1, user_api="blas")
