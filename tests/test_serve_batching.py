"""Requests that arrive together are answered by one batched call, exactly as if alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from sample_shop import build_lexical_engine

from shoplm.search.pipeline import SearchFilters
from shoplm.serve.app import create_app
from shoplm.serve.batching import MicroBatcher
from shoplm.serve.live import FeedRequest, LiveEngine, SearchRequest
from shoplm.serve.settings import ServeSettings


def _gather(batcher: MicroBatcher, requests: list) -> list:
    async def main() -> list:
        return await asyncio.gather(*(batcher.submit(r) for r in requests))

    return asyncio.run(main())


def test_requests_of_one_turn_share_one_call_in_order() -> None:
    calls: list[list[int]] = []

    def square(batch: list[int]) -> list[int]:
        calls.append(batch)
        return [x * x for x in batch]

    sizes: list[int] = []
    batcher = MicroBatcher(square, max_batch=4, observe=sizes.append)
    assert _gather(batcher, list(range(10))) == [x * x for x in range(10)]
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert sizes == [4, 4, 2]
    # a request alone is run at once, as a batch of one
    assert _gather(batcher, [7]) == [49] and calls[-1] == [7]


def test_a_failing_request_fails_alone() -> None:
    def inverse(batch: list[int]) -> list[float]:
        return [1 / x for x in batch]

    async def main() -> list:
        batcher = MicroBatcher(inverse)
        return await asyncio.gather(*(batcher.submit(x) for x in (1, 0, 4)), return_exceptions=True)

    one, zero, four = asyncio.run(main())
    assert one == 1.0 and four == 0.25
    assert isinstance(zero, ZeroDivisionError)


def test_a_cancelled_request_is_left_out() -> None:
    seen: list[list[str]] = []

    def echo(batch: list[str]) -> list[str]:
        seen.append(batch)
        return batch

    async def main() -> str:
        batcher = MicroBatcher(echo)
        gone = asyncio.ensure_future(batcher.submit("gone"))
        kept = asyncio.ensure_future(batcher.submit("kept"))
        await asyncio.sleep(0)  # both are queued now
        gone.cancel()
        return await kept

    assert asyncio.run(main()) == "kept"
    assert seen == [["kept"]]
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(echo, max_batch=0)


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lexical_engine(tmp_path_factory.mktemp("shop"))


def test_batched_answers_equal_answers_alone(engine_dir: Path, tmp_path: Path) -> None:
    live = LiveEngine.open(engine_dir, tmp_path / "events.sqlite3", fold_interval=3600)
    try:
        live.ingest([{"user_id": "erin", "item_id": "saw-1", "event": "view"}])
        live.put_item("drill-9", {"title": "Drill Bit Set", "category": "Tools > Drills"})
        live.delete_item("lamp-1")
        feeds = [
            FeedRequest("alice", 3),
            FeedRequest("erin", 2),  # only a live session
            FeedRequest("nobody", 4),
            FeedRequest("bob", 1),
            FeedRequest("alice", 5),
        ]
        together = live.recommend_many(feeds)
        assert together == [live.recommend(r.user, r.k, r.arm, r.key) for r in feeds]
        # 4 items listed (one withdrawn); alice has seen two of them, erin one
        assert [len(r.ids) for r in together] == [2, 2, 4, 1, 2]
        searches = [
            SearchRequest("drill", 2, 0, SearchFilters()),
            SearchRequest("drill", 2, 2, SearchFilters()),
            SearchRequest("lamp bulb", 5, 0, SearchFilters(price_max=20.0)),
            SearchRequest("makita", 5, 0, SearchFilters(category="Tools > Saws")),
            SearchRequest("drill bit", 3, 0, SearchFilters()),
        ]
        together = live.search_many(searches)
        alone = [live.search(r.query, r.k, r.offset, r.filters, r.arm) for r in searches]
        assert together == alone
        assert together[4].ids[0] == "drill-9"  # added after the build, found at once
        assert "lamp-1" not in {i for answer in together for i in answer.ids}
    finally:
        live.close()


def test_concurrent_http_requests_are_batched(engine_dir: Path, tmp_path: Path) -> None:
    app = create_app(engine_dir, tmp_path / "live", ServeSettings())
    users = ["alice", "bob", "carol", "dave", "nobody"] * 4
    queries = ["drill", "saw", "lamp", "bulb", "makita drill"] * 4

    async def main() -> tuple[list, list, list, list, str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            feeds = await asyncio.gather(
                *(client.get(f"/users/{u}/recommendations", params={"k": 3}) for u in users)
            )
            found = await asyncio.gather(*(client.get("/search", params={"q": q}) for q in queries))
            feeds_alone = [
                await client.get(f"/users/{u}/recommendations", params={"k": 3}) for u in users
            ]
            found_alone = [await client.get("/search", params={"q": q}) for q in queries]
            metrics = (await client.get("/metrics")).text
        return feeds, found, feeds_alone, found_alone, metrics

    try:
        feeds, found, feeds_alone, found_alone, metrics = asyncio.run(main())
    finally:
        app.state.live.close()
    assert all(r.status_code == 200 for r in feeds + found)
    # the same items in the same order; scores to float32 rounding (a batch of more than
    # eight queries sums BM25 terms in another order)
    for together, alone in zip(feeds + found, feeds_alone + found_alone, strict=True):
        assert _without_scores(together.json()) == _without_scores(alone.json())
        assert [i["score"] for i in together.json()["items"]] == pytest.approx(
            [i["score"] for i in alone.json()["items"]], rel=1e-5
        )
    # the 20 sequential requests of a route were 20 batches of one; its 20 concurrent
    # ones shared a few batches
    for route in ("/search", "/users/{user_id}/recommendations"):
        count = _sample(metrics, "shoplm_batch_requests_count", route)
        total = _sample(metrics, "shoplm_batch_requests_sum", route)
        assert total == 40 and count <= 20 + 5, (route, count)


def _without_scores(answer: dict) -> dict:
    items = [{k: v for k, v in item.items() if k != "score"} for item in answer["items"]]
    return {**answer, "items": items}


def _sample(metrics: str, name: str, route: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f'{name}{{route="{route}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {route} not in /metrics")
