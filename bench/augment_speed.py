"""Augmentation backends on Home Depot: speed (tokens/s, queries/s) and round-trip keep rate.

Protocol: a seeded random sample of ``--sample`` products (seed ``--seed``) from the 54,667
Home Depot titles (``shoplm.eval.search.home_depot_split``); each backend writes
``--n-queries`` queries per product with the few-shot prompts of ``shoplm.augment``; the
round-trip filter is shoplm's ``LexicalRetriever`` fitted on the whole catalogue, keeping a
query when its source product ranks within ``--keep-rank``. No cache is used, so every
figure is a fresh generation. Backends:

- ``template``: ``TemplateBackend`` (no model);
- ``gemma``: ``LlamaCppBackend("gemma3-270m")`` (Gemma 3 270M base, Q4_K_M);
- ``smollm2``: ``LlamaCppBackend("smollm2")`` (SmolLM2-135M-Instruct, Q4_1);
- ``openai``: ``OpenAICompatibleBackend`` (completions API, concurrency 1) against an
  OpenAI-compatible server on 127.0.0.1 that this script starts, answering with the same
  Gemma model through llama-cpp-python: the figure is the HTTP client's overhead over the
  direct backend on the same model.

Model backends see the first ``--llm-sample`` products of the sample (they write about one
product a second on 2 cores). Wall time and process CPU time are both recorded, since the
machine is shared. The JSON also projects the mix for a build budget: how many products an
LLM covers in N minutes, and the template time for the rest of the catalogue.

    python bench/augment_speed.py --out bench/results/augment
    python bench/augment_speed.py --backends template --sample 2000   # templates only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from shoplm.augment import (
    GenerationBackend,
    LlamaCppBackend,
    OpenAICompatibleBackend,
    SyntheticQueryGenerator,
    TemplateBackend,
)
from shoplm.augment.prompts import STOP
from shoplm.augment.run import sample_rows
from shoplm.eval.search import catalogue, home_depot_split
from shoplm.search.lexical import LexicalRetriever

CATALOGUE_SIZE = 54_667


def _llama_server(model: str, n_threads: int | None) -> tuple[ThreadingHTTPServer, str]:
    """A minimal OpenAI-compatible /v1/completions server around one llama.cpp model."""
    llm = LlamaCppBackend(model=model, n_threads=n_threads).load()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:  # one model, one request at a time
                llm.set_seed(int(body.get("seed", 0)))
                result = llm.create_completion(
                    body["prompt"],
                    max_tokens=int(body["max_tokens"]),
                    temperature=float(body["temperature"]),
                    repeat_penalty=1.3,
                    stop=body.get("stop", STOP),
                )
            data = json.dumps(result).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def run_backend(
    name: str, backend: GenerationBackend, items, rows: np.ndarray, retriever, args
) -> dict[str, object]:
    generator = SyntheticQueryGenerator(
        backend, n_queries=args.n_queries, keep_rank=args.keep_rank, progress=True
    )
    wall, cpu = time.perf_counter(), time.process_time()
    result = generator.generate(items, retriever, None, rows)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = backend.stats.as_dict()
    report = result.report
    stages = report["stages"]
    gen_s = float(stats["seconds"]) or wall
    row = {
        "backend": name,
        "model": backend.model,
        "products": len(rows),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "generation_s": round(gen_s, 2),
        "completion_tokens": stats["completion_tokens"],
        "tokens_per_s": round(stats["completion_tokens"] / gen_s, 2),
        "products_per_s": round(len(rows) / gen_s, 3),
        "queries_per_s": round(stages["generated"] / gen_s, 2),
        "kept_queries_per_s": round(stages["kept"] / gen_s, 2),
        "queries_per_product": round(stages["generated"] / max(len(rows), 1), 2),
        "kept_per_product": round(stages["kept"] / max(len(rows), 1), 2),
        "keep_rate": report["keep_rate"],
        "items_failed": report["items_failed"],
        "items_without_queries": report["items_without_queries"],
        "stages": stages,
        "examples": result.frame.head(12).to_dict(orient="records"),
    }
    print(json.dumps({k: v for k, v in row.items() if k != "examples"}))
    return row


def project_mix(rows: list[dict[str, object]], budgets_min: list[int]) -> list[dict[str, object]]:
    """For each LLM backend and budget: products it covers, template time for the rest."""
    template = next((r for r in rows if r["backend"] == "template"), None)
    out = []
    for row in rows:
        if row["backend"] == "template":
            continue
        for minutes in budgets_min:
            covered = min(CATALOGUE_SIZE, int(float(row["products_per_s"]) * minutes * 60))
            rest_s = (
                (CATALOGUE_SIZE - covered) / float(template["products_per_s"]) if template else None
            )
            out.append(
                {
                    "backend": row["backend"],
                    "budget_min": minutes,
                    "llm_products": covered,
                    "llm_kept_queries": int(covered * float(row["kept_per_product"])),
                    "template_products": CATALOGUE_SIZE - covered,
                    "template_seconds": round(rest_s, 1) if rest_s is not None else None,
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample", type=int, default=300)
    parser.add_argument("--llm-sample", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-queries", type=int, default=5)
    parser.add_argument("--keep-rank", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    parser.add_argument("--backends", default="template,gemma,smollm2,openai")
    parser.add_argument("--budgets", default="10,20,30", help="LLM minutes to project")
    parser.add_argument("--out", type=Path, default=Path("bench/results/augment"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    items = catalogue(home_depot_split().products)
    started = time.perf_counter()
    retriever = LexicalRetriever().fit(items)
    fit_s = time.perf_counter() - started
    rows = sample_rows(len(items), args.sample, args.seed)
    llm_rows = rows[: args.llm_sample]
    results = []
    for name in args.backends.split(","):
        if name == "template":
            results.append(
                run_backend(name, TemplateBackend(args.seed), items, rows, retriever, args)
            )
        elif name in ("gemma", "smollm2"):
            model = "gemma3-270m" if name == "gemma" else "smollm2"
            backend = LlamaCppBackend(model=model, seed=args.seed, n_threads=args.threads)
            backend.load()  # model loading is not generation time
            results.append(run_backend(name, backend, items, llm_rows, retriever, args))
        elif name == "openai":
            server, url = _llama_server("gemma3-270m", args.threads)
            try:
                backend = OpenAICompatibleBackend(
                    url, "gemma3-270m", mode="completions", max_tokens=48, concurrency=1
                )
                results.append(run_backend(name, backend, items, llm_rows, retriever, args))
            finally:
                server.shutdown()
                server.server_close()
        else:
            raise SystemExit(f"unknown backend {name!r}")
    report = {
        "protocol": {
            "dataset": "home-depot-search-relevance",
            "sample": args.sample,
            "llm_sample": len(llm_rows),
            "seed": args.seed,
            "n_queries": args.n_queries,
            "keep_rank": args.keep_rank,
            "round_trip_retriever": "shoplm LexicalRetriever on all 54,667 titles",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_end": os.getloadavg(),
        },
        "retriever_fit_s": round(fit_s, 2),
        "backends": results,
        "mix": project_mix(results, [int(b) for b in args.budgets.split(",")]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "augment_speed.json"
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str))
    print(json.dumps(report["mix"], indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
