"""Replay a real event log through two variants, to show the A/B machinery end to end.

Each user of a real log with at least two events is held out on their last item: that item
is what they did next. A *variant* is any callable that returns top-k recommendations for a
batch of histories (popularity and co-occurrence by default). The simulator assigns users
to variants with the real sticky assignment (a new salt per seed), serves each user their
variant's list, and draws what they do from a simple, stated behaviour model:

- the served list *hits* when it contains the user's held-out next item;
- one uniform draw ``u`` per user: a purchase when ``u < p_buy``, a click when
  ``u < p_click`` (so every buyer clicked), where ``p_buy`` and ``p_click`` are the
  ``hit`` or ``miss`` probabilities;
- a purchase's revenue is drawn from the log's own order-line values where it has them
  (the bundled demo shop), else from a log-normal with a median of 20;
- ``lift`` multiplies the treatment's purchase probability (a *planted* effect of known
  size, to measure power), and ``same_behaviour`` serves the control's list in both arms
  (an A/A test, to measure false positives).

Outcomes happen within an hour or so of the exposure (exponential delays), well inside any
sensible attribution window. The lists are computed once (:func:`serve`) and a run is a
handful of numpy operations over the users, so hundreds of seeds are cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import numpy as np
import pandas as pd

from shoplm.data.demo import SERVICE_CODES
from shoplm.data.interactions import Interactions, Sequences
from shoplm.eval.datasets import (
    SeqRecDataset,
    load_online_retail_or,
    load_seqrec,
    online_retail_path,
)
from shoplm.experiment.assignment import assign
from shoplm.experiment.config import ExperimentConfig
from shoplm.experiment.log import Attribution, attribute
from shoplm.recommend.base import Recommender

#: A variant: top-``k`` item ids (n, k) for a batch of histories, padded with -1.
Variant = Callable[[Sequences, int], np.ndarray]

REPLAY_DATASETS = ("demo", "beauty", "scientific", "or")

_NS = 1_000_000_000
_START_NS = 1_700_000_000 * _NS  # a fixed clock, so runs are reproducible


@dataclass(frozen=True, eq=False)
class ReplayData:
    """Held-out users of a real log: what each did before, and what they did next."""

    name: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    history: Sequences
    targets: np.ndarray
    #: every event except the held-out ones: what the variants are fitted on
    train: Interactions
    #: positive order-line values of the log, to draw revenue from; ``None`` if it has none
    order_values: np.ndarray | None


def load_replay_data(name: str) -> ReplayData:
    """``demo`` (Online Retail from the shared data, an invoice is a user), or another dataset."""
    if name == "demo":
        return _demo_data()
    if name == "or":
        return _held_out(load_online_retail_or(), None)
    if name in ("beauty", "scientific"):
        return _held_out(load_seqrec(name), None)
    raise ValueError(f"unknown replay dataset {name!r}; choose from {list(REPLAY_DATASETS)}")


def recommender_variant(model: Recommender, batch_size: int = 2048) -> Variant:
    """A fitted recommender as a variant, scored in batches to bound memory."""

    def serve(histories: Sequences, k: int) -> np.ndarray:
        parts = [
            model.recommend(
                histories[np.arange(start, min(start + batch_size, len(histories)))], k
            )[0]
            for start in range(0, len(histories), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)

    return serve


def serve(data: ReplayData, variants: list[Variant], k: int) -> list[np.ndarray]:
    """Every variant's top-``k`` list for every held-out user, computed once for all runs."""
    return [np.asarray(variant(data.history, k)) for variant in variants]


@dataclass(frozen=True)
class ReplayRun:
    """One simulated experiment: what was served and what users did, as log frames."""

    #: columns variant, user, served_at, surface, items (as :meth:`ExperimentLog.record_exposures`)
    exposures: pd.DataFrame
    #: columns user, item, event, timestamp, revenue (as :meth:`ExperimentLog.record_outcomes`)
    outcomes: pd.DataFrame
    #: users who arrived before every arm had ``until`` users (all users if not given)
    n_arrived: int
    #: whether every arm reached ``until`` users
    reached: bool
    #: exposures removed by the planted logging fault (``lose_exposures``)
    n_lost_exposures: int

    def attribution(self, config: ExperimentConfig) -> Attribution:
        window = int(config.attribution_window.total_seconds() * _NS)
        return attribute(self.exposures, self.outcomes, window)


class ReplaySimulator:
    """Feed held-out users of a real log through an experiment's two variants.

    Parameters
    ----------
    config:
        The experiment (exactly two variants: control first). Its name and, per run, a
        salt derived from the seed drive the assignment.
    k:
        Length of the served list.
    p_click, p_buy:
        ``(hit, miss)`` probabilities of a click and of a purchase.
    lift:
        Factor on the treatment's purchase probability (1.10: a planted 10% lift).
    same_behaviour:
        Serve the control's list in both arms: an A/A test.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        k: int = 10,
        p_click: tuple[float, float] = (0.7, 0.3),
        p_buy: tuple[float, float] = (0.5, 0.15),
        lift: float = 1.0,
        same_behaviour: bool = False,
    ) -> None:
        self.config = config
        self.k = k
        self.p_click = p_click
        self.p_buy = p_buy
        self.lift = lift
        self.same_behaviour = same_behaviour

    def fit(self, data: ReplayData, served: list[np.ndarray]) -> Self:
        """Take each variant's lists for every held-out user (from :func:`serve`)."""
        if len(self.config.variants) != 2 or len(served) != 2:
            raise ValueError("the replay compares exactly two variants (control, treatment)")
        probabilities = (*self.p_click, *self.p_buy)
        if not all(0 <= p <= 1 for p in probabilities) or self.lift <= 0:
            raise ValueError(f"probabilities must lie in [0, 1] and lift be > 0: {self.__dict__}")
        if self.p_buy[0] * self.lift > 1:
            raise ValueError(f"p_buy hit {self.p_buy[0]} x lift {self.lift} exceeds 1")
        if any(s.shape != (data.targets.size, self.k) for s in served):
            raise ValueError(f"served lists must have shape ({data.targets.size}, {self.k})")
        self.data_ = data
        self.served_ = served
        self.hits_ = [(s == data.targets[:, None]).any(axis=1) for s in served]
        return self

    def hit_rate(self, variant: int) -> float:
        return float(self.hits_[variant].mean())

    def expected_conversion(self, variant: int) -> float:
        """The population conversion rate of a variant under the behaviour model."""
        behaviour = 0 if self.same_behaviour else variant
        hit, miss = self.p_buy
        rate = miss + (hit - miss) * self.hit_rate(behaviour)
        return rate * (self.lift if variant == 1 else 1.0)

    def config_for(self, seed: int) -> ExperimentConfig:
        """The experiment as run with ``seed``: its own salt, so each seed reshuffles users."""
        return self.config.model_copy(update={"salt": f"{self.config.salt}replay-{seed}"})

    def run(self, seed: int, until: int | None = None, lose_exposures: float = 0.0) -> ReplayRun:
        """One experiment: users arrive in a random order, until every arm has ``until``.

        ``lose_exposures`` plants a logging fault: that fraction of the treatment's users who
        did not click lose their exposure record (as when a variant's logging fires late and
        misses users who bounce), which an SRM check should catch.
        """
        rng = np.random.default_rng(seed)
        data = self.data_
        order = rng.permutation(data.targets.size)
        arm = assign(self.config_for(seed), data.user_ids[order])
        n_arrived = order.size
        reached = True
        if until is not None:
            counts = np.cumsum(arm[:, None] == np.arange(2), axis=0)
            firsts = [np.searchsorted(counts[:, j], until) for j in range(2)]
            reached = max(firsts) < order.size
            n_arrived = min(max(firsts) + 1, order.size)
            order, arm = order[:n_arrived], arm[:n_arrived]
        behaviour = np.zeros_like(arm) if self.same_behaviour else arm
        hits = np.stack(self.hits_)[behaviour, order]
        p_buy = np.where(hits, *self.p_buy) * np.where(arm == 1, self.lift, 1.0)
        p_click = np.maximum(np.where(hits, *self.p_click), p_buy)
        draw = rng.random(arm.size)
        buy, click = draw < p_buy, draw < p_click
        served_at = _START_NS + np.arange(arm.size, dtype=np.int64) * _NS
        logged = np.ones(arm.size, dtype=bool)
        if lose_exposures > 0:
            logged = ~((arm == 1) & ~click & (rng.random(arm.size) < lose_exposures))
        served = np.stack(self.served_)[behaviour, order]
        users = data.user_ids[order]
        names = np.asarray(self.config.variant_names, dtype=object)
        exposures = pd.DataFrame(
            {
                "variant": names[arm[logged]],
                "user": users[logged],
                "served_at": served_at[logged],
                "surface": "home",
                "items": _item_lists(data.item_ids, served[logged]),
            }
        )
        click_at = served_at + (rng.exponential(600.0, arm.size) * _NS).astype(np.int64)
        buy_at = click_at + (rng.exponential(1800.0, arm.size) * _NS).astype(np.int64)
        revenue = self._revenue(rng, arm.size)
        target = data.item_ids[data.targets[order]]
        outcomes = pd.concat(
            [
                pd.DataFrame(
                    {
                        "user": users[click],
                        "item": target[click],
                        "event": "click",
                        "timestamp": click_at[click],
                        "revenue": 0.0,
                    }
                ),
                pd.DataFrame(
                    {
                        "user": users[buy],
                        "item": target[buy],
                        "event": "purchase",
                        "timestamp": buy_at[buy],
                        "revenue": revenue[buy],
                    }
                ),
            ],
            ignore_index=True,
        )
        return ReplayRun(exposures, outcomes, int(n_arrived), bool(reached), int((~logged).sum()))

    def _revenue(self, rng: np.random.Generator, n: int) -> np.ndarray:
        values = self.data_.order_values
        if values is not None and values.size:
            return rng.choice(values, size=n)
        return np.round(rng.lognormal(np.log(20.0), 0.8, size=n), 2)


def _item_lists(item_ids: np.ndarray, served: np.ndarray) -> list[np.ndarray]:
    """Each served row as the shop's item ids, without the -1 padding of short lists."""
    external = item_ids[np.where(served < 0, 0, served)]
    if np.all(served >= 0):
        return list(external)
    return [row[ids >= 0] for row, ids in zip(external, served, strict=True)]


def _held_out(dataset: SeqRecDataset, order_values: np.ndarray | None) -> ReplayData:
    seqs = dataset.sequences
    rows = np.flatnonzero(seqs.lengths >= 2)
    kept = seqs[rows]
    history = kept.drop_last(1)
    train = seqs.drop_last(np.where(seqs.lengths >= 2, 1, 0))
    return ReplayData(
        name=dataset.name,
        user_ids=np.asarray(dataset.user_ids, dtype=object)[rows],
        item_ids=np.asarray(dataset.item_ids, dtype=object),
        history=history,
        targets=kept.last(),
        train=Interactions.from_sequences(train, dataset.n_items),
        order_values=order_values,
    )


def _demo_data() -> ReplayData:
    """The Online Retail log: each invoice a user, its lines in file order."""
    log = pd.read_parquet(online_retail_path())
    sale = (
        ~log["StockCode"].isin(SERVICE_CODES)
        & ~log["InvoiceNo"].str.startswith("C")
        & (log["Quantity"] > 0)
        & (log["UnitPrice"] > 0)
    )
    lines = log[sale.to_numpy()].drop_duplicates(["InvoiceNo", "StockCode"])
    users, user_ids = pd.factorize(lines["InvoiceNo"])
    items, item_ids = pd.factorize(lines["StockCode"])
    events = Interactions(
        users=users,
        items=items,
        times=np.arange(len(lines)),
        weights=np.ones(len(lines), dtype=np.float32),
        n_users=len(user_ids),
        n_items=len(item_ids),
    )
    values = (lines["Quantity"] * lines["UnitPrice"]).to_numpy(dtype=np.float64)
    dataset = SeqRecDataset(
        "demo",
        events.to_sequences(),
        np.asarray(user_ids, dtype=object),
        np.asarray(item_ids, dtype=object),
        None,
    )
    return _held_out(dataset, np.round(values, 2))
