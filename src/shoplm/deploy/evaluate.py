"""What the deploy gates compare: scores of one engine on held-out data, its speed, its size.

The candidate and the live engine are scored on the same data, chosen once:

- **Recommendations**: a held-out event file holds events that came after the build's
  events. Each user's target is their first held-out item that their history (as the
  candidate knows it) does not hold yet: the "next new item" a feed should surface, since
  the engine leaves items already had out of its lists. ``Engine.recommend`` ranks the
  whole catalogue for each user; Recall@10 and NDCG@10 of the one target follow (see
  :func:`shoplm.eval.recommend.score_lists`). Users the engine never saw stay in: a cold
  start is part of the quality a shop gets.
- **Search**: judged queries (``query, item_id, relevance``); gain = relevance - the file's
  lowest grade, unjudged items gain 0, NDCG@10 over the whole catalogue via
  ``Engine.search``.
- **Latency**: p50 / p99 of single in-process searches and recommendations with one BLAS
  thread, as ``shoplm serve`` runs them (HTTP and queueing come on top), in wall time and
  in the process's CPU time.
- **Size**: the bytes of the version folder.

Every held-out row that cannot be used is counted by reason and reported, never dropped
silently.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from shoplm.config import ShoplmConfig
from shoplm.data.labels import LABEL_FIELDS
from shoplm.data.mapping import resolve_columns
from shoplm.data.parsing import parse_numbers, parse_timestamps
from shoplm.data.readers import read_chunks
from shoplm.data.schema import EVENT_FIELDS, EventType
from shoplm.engine import EVENT_WEIGHTS, Engine
from shoplm.eval.metrics import ndcg_at_k
from shoplm.eval.recommend import score_lists

K = 10
_BATCH = 512


@dataclass(frozen=True)
class HeldOutEvents:
    """Usable held-out events in time order, and the rows left out by reason."""

    users: np.ndarray  # external user ids (object)
    items: np.ndarray  # external item ids (object)
    rows_read: int
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Targets:
    """One target item per held-out user, the same for every engine scored."""

    users: list[str]
    items: np.ndarray  # external item ids
    counts: dict[str, int]


@dataclass(frozen=True)
class JudgedQueries:
    queries: list[str]
    item_ids: pd.Index  # the judged items: the columns of ``gains``
    gains: sp.csr_matrix  # (queries, judged items)
    rows_read: int
    skipped: dict[str, int] = field(default_factory=dict)


def read_held_out_events(path: Path, config: ShoplmConfig) -> HeldOutEvents:
    """The item events of ``path`` (the shop's columns and event names, as the build reads
    them) that say a user wanted an item, in time order; events without a time keep the
    place of the event before them in the file, as in the build."""
    users, items, stamps = [], [], []
    skipped: Counter[str] = Counter()
    rows_read = 0
    event_names = {
        **{e.value: e.value for e in EventType},
        **{k.lower(): v.value for k, v in config.events.event_names.items()},
    }
    wanted = {str(name) for name, weight in EVENT_WEIGHTS.items() if weight > 0}
    for chunk in read_chunks(path, config.load.chunk_rows):
        rows_read += len(chunk.frame) + len(chunk.problems)
        skipped["unreadable record"] += len(chunk.problems)
        if chunk.frame.empty:
            continue
        frame = chunk.frame
        columns = resolve_columns(
            path, frame.columns, config.events.columns, EVENT_FIELDS, ["user_id", "item_id"]
        )
        user = _text(frame, columns, "user_id")
        item = _text(frame, columns, "item_id")
        raw_event = _text(frame, columns, "event").str.lower()
        event = raw_event.map(event_names).where(raw_event != "", EventType.PURCHASE.value)
        keep = np.ones(len(frame), dtype=bool)
        for reason, bad in (
            ("missing user_id", (user == "").to_numpy()),
            ("missing item_id", (item == "").to_numpy()),
            ("unknown event type", event.isna().to_numpy()),
            ("event type that is not an interest (return)", ~event.isin(wanted).to_numpy()),
        ):
            skipped[reason] += int((keep & bad).sum())
            keep &= ~bad
        if "timestamp" in columns:
            stamps.append(parse_timestamps(frame[columns["timestamp"]]).values[keep])
        else:
            stamps.append(np.full(int(keep.sum()), np.iinfo(np.int64).min))
        users.append(user.to_numpy(dtype=object)[keep])
        items.append(item.to_numpy(dtype=object)[keep])
    if not users:
        return HeldOutEvents(np.empty(0, object), np.empty(0, object), rows_read, _nonzero(skipped))
    times = np.concatenate(stamps)
    known = np.where(times != np.iinfo(np.int64).min, np.arange(len(times)), 0)
    order = np.argsort(times[np.maximum.accumulate(known)], kind="stable")
    return HeldOutEvents(
        np.concatenate(users)[order], np.concatenate(items)[order], rows_read, _nonzero(skipped)
    )


def choose_targets(held: HeldOutEvents, engine: Engine, max_users: int, seed: int = 0) -> Targets:
    """Each user's first held-out item not in their history in ``engine`` (the candidate).

    At most ``max_users`` users, a seeded sample. Users whose every held-out item is one
    they already had are counted and left out (no engine lists those items).
    """
    distinct = pd.unique(held.users)
    counts = {"held_out_users": len(distinct)}
    if len(distinct) > max_users:
        chosen = np.random.default_rng(seed).choice(len(distinct), max_users, replace=False)
        distinct = distinct[np.sort(chosen)]
    counts["sampled_users"] = len(distinct)
    user_rows = pd.Index(distinct).get_indexer(held.users)
    sampled = user_rows >= 0
    rows, items = user_rows[sampled], held.items[sampled]
    internal = pd.Index(engine.items["item_id"]).get_indexer(items)
    histories = engine.user_histories(distinct.tolist())
    stride = len(engine.items) + 1
    owned = np.repeat(np.arange(len(distinct)), histories.lengths) * stride + histories.items
    new = ~((internal >= 0) & np.isin(rows * stride + internal, owned))
    first_rows, first = np.unique(rows[new], return_index=True)
    counts["users_with_only_repeat_items"] = len(distinct) - len(first_rows)
    target_items = items[new][first]
    counts["targets_not_in_catalogue"] = int(
        (pd.Index(engine.items["item_id"]).get_indexer(target_items) < 0).sum()
    )
    counts["users"] = len(first_rows)
    return Targets(distinct[first_rows].astype(str).tolist(), target_items, counts)


def score_recommendations(engine: Engine, targets: Targets) -> dict[str, float]:
    """Recall@10 and NDCG@10 of the targets in each user's full-catalogue list.

    ``recall@10_se`` is the binomial standard error, to judge a gate margin against.
    """
    if not targets.users:
        return {}
    lists: list[list[str]] = []
    for begin in range(0, len(targets.users), _BATCH):
        batch = targets.users[begin : begin + _BATCH]
        lists += [rec.items for rec in engine.recommend(batch, K)]
    scores = score_lists(lists, targets.items, (K,))
    recall, n = scores[f"recall@{K}"], len(targets.users)
    return {
        f"recall@{K}": recall,
        f"ndcg@{K}": scores[f"ndcg@{K}"],
        f"recall@{K}_se": float(np.sqrt(recall * (1 - recall) / n)),
        "users": n,
    }


def read_judged_queries(path: Path, max_queries: int, seed: int = 0) -> JudgedQueries:
    """Judged queries, gains = relevance - the lowest relevance in the file."""
    parts = []
    skipped: Counter[str] = Counter()
    rows_read = 0
    for chunk in read_chunks(path, 200_000):
        rows_read += len(chunk.frame) + len(chunk.problems)
        skipped["unreadable record"] += len(chunk.problems)
        if chunk.frame.empty:
            continue
        frame = chunk.frame
        columns = resolve_columns(path, frame.columns, {}, LABEL_FIELDS, list(LABEL_FIELDS))
        query = _text(frame, columns, "query")
        item = _text(frame, columns, "item_id")
        relevance = parse_numbers(frame[columns["relevance"]])
        keep = np.ones(len(frame), dtype=bool)
        for reason, bad in (
            ("missing query", (query == "").to_numpy()),
            ("missing item_id", (item == "").to_numpy()),
            ("relevance not a number", relevance.bad | relevance.missing),
        ):
            skipped[reason] += int((keep & bad).sum())
            keep &= ~bad
        parts.append(
            pd.DataFrame(
                {"query": query[keep], "item_id": item[keep], "relevance": relevance.values[keep]}
            )
        )
    labels = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if labels.empty:
        return JudgedQueries([], pd.Index([]), sp.csr_matrix((0, 0)), rows_read, _nonzero(skipped))
    labels["gain"] = labels["relevance"] - labels["relevance"].min()
    pairs = labels.groupby(["query", "item_id"], as_index=False)["gain"].mean()
    queries = pd.unique(pairs["query"])
    if len(queries) > max_queries:
        chosen = np.random.default_rng(seed).choice(len(queries), max_queries, replace=False)
        queries = queries[np.sort(chosen)]
        pairs = pairs[pairs["query"].isin(queries)]
    rows = pd.Index(queries).get_indexer(pairs["query"])
    item_ids = pd.Index(pd.unique(pairs["item_id"]))
    gains = sp.csr_matrix(
        (pairs["gain"].to_numpy(), (rows, item_ids.get_indexer(pairs["item_id"]))),
        shape=(len(queries), len(item_ids)),
    )
    return JudgedQueries(list(queries), item_ids, gains, rows_read, _nonzero(skipped))


def score_search(engine: Engine, judged: JudgedQueries) -> dict[str, float]:
    """Mean NDCG@10 over the judged queries with a positive gain (full catalogue)."""
    if not judged.queries:
        return {}
    ranked = np.full((len(judged.queries), K), -1, dtype=np.int64)
    for begin in range(0, len(judged.queries), _BATCH):
        results = engine.search(judged.queries[begin : begin + _BATCH], K)
        for row, result in enumerate(results, start=begin):
            found = judged.item_ids.get_indexer(result.items[:K])
            ranked[row, : len(found)] = found
    values = ndcg_at_k(ranked, judged.gains, K)
    return {
        f"search_ndcg@{K}": float(np.nanmean(values)),
        "queries": int(np.isfinite(values).sum()),
    }


def latency(engine: Engine, queries: Sequence[str], n: int, seed: int = 0) -> dict[str, float]:
    """p50 / p99 milliseconds of single searches and single recommendations.

    Searches use ``queries`` (the judged ones) or, without them, the first three words of
    sampled titles; recommendations use sampled stored histories, the path the service
    takes for a known user.
    """
    rng = np.random.default_rng(seed)
    if not queries:
        titles = engine.items["title"].to_numpy(dtype=object)
        picked = titles[rng.choice(len(titles), min(n, len(titles)), replace=False)]
        queries = [" ".join(str(t).split()[:3]) or "a" for t in picked]
    queries = list(queries)[:n]
    n_users = len(engine.histories)
    rows = rng.choice(n_users, min(n, n_users), replace=False) if n_users else np.zeros(0, int)
    samples = [engine.histories[np.array([row])] for row in rows]
    with threadpool_limits(1):
        report = _percentiles("search", [lambda q=q: engine.search([q], K) for q in queries])
        report |= _percentiles(
            "recommend",
            [lambda h=h: engine.recommend_histories(["latency"], h, K) for h in samples],
        )
    return report


def _percentiles(name: str, calls: list[Callable[[], object]]) -> dict[str, float]:
    """p50 / p99 milliseconds of ``calls``, one at a time, after one warm-up call: wall
    time, and the process's CPU time, which other work on a busy host does not inflate."""
    if not calls:
        return {}
    calls[0]()
    wall, cpu = np.empty(len(calls)), np.empty(len(calls))
    for i, call in enumerate(calls):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        wall[i], cpu[i] = time.perf_counter() - start, time.process_time() - start_cpu
    return {
        f"{name}_p50_ms": float(np.percentile(wall, 50) * 1e3),
        f"{name}_p99_ms": float(np.percentile(wall, 99) * 1e3),
        f"{name}_p99_cpu_ms": float(np.percentile(cpu, 99) * 1e3),
    }


def folder_mb(version: Path) -> float:
    """Bytes of every file under ``version``, in MB (10^6 bytes)."""
    total = sum(p.stat().st_size for p in version.rglob("*") if p.is_file() and not p.is_symlink())
    return total / 1e6


def _text(frame: pd.DataFrame, columns: dict[str, str], name: str) -> pd.Series:
    if name not in columns:
        return pd.Series("", index=frame.index, dtype=object)
    return frame[columns[name]].astype("string").str.strip().fillna("").astype(object)


def _nonzero(counts: Counter[str]) -> dict[str, int]:
    return {reason: n for reason, n in counts.items() if n}
