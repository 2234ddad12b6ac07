"""HTTP load test: the real server in one process, a load generator in another.

The server is ``python -m shoplm.serve`` on loopback (one uvicorn worker); the load comes
from ``wrk`` when it is installed (``apt-get install wrk``), else from an asyncio httpx
client started as a separate process. Each route is driven at concurrency 1, 8 and 64 for
a fixed time; p50/p99 latency and requests per second are printed and written as JSON.

Routes: ``GET /search`` over queries made from catalogue titles, ``GET
/users/{id}/recommendations`` over the shop's real user ids, ``POST /events`` with one
event per request (``events``) and with ten (``events10``); every 2xx of these is durable
(fsynced), the server committing the requests that arrive together in one transaction.

Next to each cell the JSON records the 1-minute load average at its end and the server
process's CPU time per request (user + system, from ``/proc``), since on a shared host the
wall-clock figures move with other people's jobs while CPU per request does much less.

    python bench/load_http.py                       # builds the demo shop's engine first
    python bench/load_http.py --engine DIR --users users.txt --seconds 10
    python bench/load_http.py --engine DIR --routes recommendations events10

Both processes share the machine's cores, so the figures are a floor for a dedicated host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np

API_KEY = "bench-key-" + os.urandom(8).hex()
CONCURRENCY = (1, 8, 64)
ROUTES = ("search", "recommendations", "events", "events10")
#: events per request on the ``events10`` route
BATCH = 10


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _demo_engine(work: Path, dense: bool) -> tuple[Path, list[str]]:
    """Build the bundled demo shop; returns the engine and the shop's raw user ids."""
    import pandas as pd

    from shoplm.config import SearchConfig, ShoplmConfig
    from shoplm.data.demo import write_demo_shop
    from shoplm.engine import Engine

    shop = write_demo_shop(work / "input")
    config = ShoplmConfig(search=SearchConfig(dense=dense))
    Engine.build(shop.catalog, work / "engine", shop.events, config)
    users = pd.read_parquet(shop.events, columns=["user_id"])["user_id"].unique()
    return work / "engine", [str(u) for u in users]


def _workload(
    engine_dir: Path, users: list[str], n: int, seed: int, distinct: bool = False
) -> dict[str, list[dict]]:
    """Requests per route: method, path and body, drawn from the engine's own catalogue.

    Search queries are a title's first two words, so head queries repeat as in a shop's
    log; ``distinct`` makes every query new instead (two words of one title and one of
    another, deduplicated), which no cache of the service can answer.
    """
    from shoplm.engine import Engine

    rng = np.random.default_rng(seed)
    items = Engine.load(engine_dir).items
    titles = items["title"].fillna("").astype(str).to_numpy()
    titles = titles[titles != ""]
    if distinct:
        words = [t.lower().split() for t in rng.choice(titles, 2 * n)]
        others = [t.lower().split() for t in rng.choice(titles, 2 * n)]
        made = (
            [*rng.choice(w, min(2, len(w)), replace=False).tolist(), str(rng.choice(o))]
            for w, o in zip(words, others, strict=True)
            if w and o
        )
        queries = [quote(q) for q in dict.fromkeys(" ".join(w) for w in made)][:n]
    else:
        words = [t.lower().split()[:2] for t in rng.choice(titles, n)]
        queries = [quote(" ".join(w)) for w in words if w]
    item_ids = items["item_id"].astype(str).to_numpy()
    picked_users = rng.choice(np.asarray(users, dtype=object), n)
    picked_items = rng.choice(item_ids, n)

    def event(j: int) -> dict[str, str]:
        return {"user_id": str(picked_users[j]), "item_id": str(picked_items[j]), "event": "view"}

    return {
        "search": [{"method": "GET", "path": f"/search?q={q}&k=10"} for q in queries],
        "recommendations": [
            {"method": "GET", "path": f"/users/{quote(str(u), safe='')}/recommendations?k=10"}
            for u in picked_users
        ],
        "events": [
            {"method": "POST", "path": "/events", "body": json.dumps(event(j))} for j in range(n)
        ],
        "events10": [
            {
                "method": "POST",
                "path": "/events",
                "body": json.dumps([event((j + b) % n) for b in range(BATCH)]),
            }
            for j in range(n)
        ],
    }


# ---------------------------------------------------------------------- wrk
_WRK_SCRIPT = """
local requests = {%s}
local i = 0
request = function()
  i = i + 1
  local r = requests[(i %% #requests) + 1]
  return wrk.format(r[1], r[2], {["Content-Type"] = "application/json",
                                 ["X-API-Key"] = "%s"}, r[3])
end
"""


def _lua(text: str) -> str:
    # a JSON string literal without \\u escapes is a valid Lua string literal
    return json.dumps(text, ensure_ascii=False)


def _run_wrk(url: str, requests: list[dict], concurrency: int, seconds: int) -> dict:
    rows = ", ".join(
        f"{{{_lua(r['method'])}, {_lua(r['path'])}, {_lua(r.get('body', ''))}}}" for r in requests
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT % (rows, API_KEY))
    try:
        command = [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "--latency",
        ]
        out = subprocess.run(
            [*command, "-s", script.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    if re.search(r"\b0 requests in", out):
        raise RuntimeError(f"wrk completed no request:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        # anchored: a thread-stats line may end in "66.50%", which must not match
        "p50_ms": _wrk_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M)),
        "p99_ms": _wrk_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M)),
        "requests_per_s": float(re.search(r"Requests/sec:\s+(\S+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def _wrk_ms(match: re.Match[str] | None) -> float:
    assert match is not None, "wrk printed no latency distribution"
    value = match.group(1)
    unit = re.search(r"[a-z]+$", value).group(0)
    return float(value[: -len(unit)]) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


# ---------------------------------------------------------------------- httpx fallback
async def _drive(url: str, requests: list[dict], concurrency: int, seconds: int, key: str) -> dict:
    latencies: list[float] = []
    non_2xx = 0
    stop = time.perf_counter() + seconds
    headers = {"Content-Type": "application/json", "X-API-Key": key}
    limits = httpx.Limits(max_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker(start: int) -> None:
            nonlocal non_2xx
            i = start
            while time.perf_counter() < stop:
                r = requests[i % len(requests)]
                began = time.perf_counter()
                reply = await client.request(
                    r["method"], r["path"], content=r.get("body"), headers=headers
                )
                latencies.append(time.perf_counter() - began)
                non_2xx += not reply.is_success
                i += concurrency

        began = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - began
    ms = np.asarray(latencies) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "requests_per_s": len(ms) / elapsed,
        "requests": len(ms),
        "non_2xx": non_2xx,
        "socket_errors": "",
    }


def _run_httpx(url: str, requests: list[dict], concurrency: int, seconds: int) -> dict:
    """The fallback generator, in its own process so it does not share the GIL with timing."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as spec:
        json.dump([url, requests, concurrency, seconds, API_KEY], spec)
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--client", spec.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(spec.name)
    return json.loads(out)


# ---------------------------------------------------------------------- main
def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _warm_up(url: str, requests: list[dict]) -> None:
    """A few requests first, so one-off costs (first-call caches) stay out of the figures."""
    headers = {"Content-Type": "application/json", "X-API-Key": API_KEY}
    with httpx.Client(base_url=url, timeout=60) as client:
        for r in requests:
            reply = client.request(r["method"], r["path"], content=r.get("body"), headers=headers)
            reply.raise_for_status()


def _start_server(
    engine: Path, data_dir: Path, port: int, log: Path, max_batch: int
) -> subprocess.Popen:
    env = {**os.environ, "SHOPLM_API_KEYS": API_KEY, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "shoplm.serve", "--engine", str(engine)]
    command += ["--port", str(port), "--data-dir", str(data_dir), "--max-batch", str(max_batch)]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).is_success:
                return server
        except httpx.TransportError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("server did not start in 120 s")


def _batches(url: str) -> dict[str, tuple[float, float]]:
    """Requests and batches answered so far per route, from the server's ``/metrics``."""
    totals: dict[str, list[float]] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        match = re.match(r'shoplm_batch_requests_(sum|count)\{route="([^"]+)"\} (\S+)', line)
        if match:
            kind, route, value = match.groups()
            totals.setdefault(route, [0.0, 0.0])[kind == "count"] = float(value)
    return {route: (requests, batches) for route, (requests, batches) in totals.items()}


def _drive_routes(
    url: str,
    server: subprocess.Popen,
    workload: dict[str, list[dict]],
    args: argparse.Namespace,
    run: Callable[[str, list[dict], int, int], dict],
    max_batch: int,
) -> list[dict]:
    """Every route at every concurrency against one running server."""
    results = []
    for route in args.routes:
        requests = workload[route]
        _warm_up(url, requests[:20])
        for concurrency in args.concurrency:
            cpu_before, batches_before = _cpu_seconds(server.pid), _batches(url)
            figures = run(url, requests, concurrency, args.seconds)
            cpu = _cpu_seconds(server.pid) - cpu_before
            figures["server_cpu_ms_per_request"] = 1e3 * cpu / max(figures["requests"], 1)
            figures["load_average_1m"] = os.getloadavg()[0]
            for batched, (answered, batches) in _batches(url).items():
                before = batches_before.get(batched, (0.0, 0.0))
                if batches > before[1]:
                    figures["mean_batch"] = (answered - before[0]) / (batches - before[1])
            if route.startswith("events"):
                per_request = BATCH if route == "events10" else 1
                figures["events_per_s"] = figures["requests_per_s"] * per_request
            row = {"route": route, "concurrency": concurrency, "max_batch": max_batch}
            results.append({**row, **figures})
            events = (
                f"  {figures['events_per_s']:8.0f} events/s" if "events_per_s" in figures else ""
            )
            batch = f"  batch {figures['mean_batch']:.1f}" if "mean_batch" in figures else ""
            print(
                f"{route:16s} b={max_batch:<3d} c={concurrency:<3d} "
                f"p50 {figures['p50_ms']:8.2f} ms  "
                f"p99 {figures['p99_ms']:8.2f} ms  {figures['requests_per_s']:8.1f} req/s"
                f"{events}  cpu {figures['server_cpu_ms_per_request']:.2f} ms/req"
                f"  load {figures['load_average_1m']:.1f}  non-2xx {figures['non_2xx']}{batch}",
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", type=Path, help="engine directory [default: demo shop]")
    parser.add_argument("--users", type=Path, help="raw user ids, one a line (with --engine)")
    parser.add_argument("--lexical-only", action="store_true", help="demo engine without dense")
    parser.add_argument("--seconds", type=int, default=5, help="per route and concurrency")
    parser.add_argument("--generator", choices=["auto", "wrk", "httpx"], default="auto")
    parser.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES))
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=list(CONCURRENCY), help="connections"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--requests", type=int, default=2_000, help="distinct requests per route (cycled)"
    )
    parser.add_argument(
        "--distinct-queries", action="store_true", help="every search query new (no repeats)"
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        nargs="+",
        default=[32],
        help="the server's batch cap; several values run one server each (1: no batching)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/load_http.json"))
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:  # the fallback generator's own process
        print(json.dumps(asyncio.run(_drive(*json.loads(Path(args.client).read_text())))))
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "httpx"
    run = _run_wrk if generator == "wrk" else _run_httpx
    with tempfile.TemporaryDirectory(prefix="shoplm-load-") as tmp:
        work = Path(tmp)
        if args.engine is None:
            started = time.perf_counter()
            engine, users = _demo_engine(work, dense=not args.lexical_only)
            print(f"built the demo engine in {time.perf_counter() - started:.1f} s")
        else:
            engine = args.engine
            users = (
                args.users.read_text(encoding="utf-8").split()
                if args.users
                else [f"bench-user-{i}" for i in range(1000)]
            )
        if not users:
            parser.error("no user ids to ask recommendations for")
        workload = _workload(engine, users, args.requests, args.seed, args.distinct_queries)
        results = []
        for max_batch in args.max_batch:
            port = _free_port()
            data_dir = work / f"live-{max_batch}"
            log = work / f"server-{max_batch}.log"
            server = _start_server(engine, data_dir, port, log, max_batch)
            try:
                url = f"http://127.0.0.1:{port}"
                results += _drive_routes(url, server, workload, args, run, max_batch)
            finally:
                server.terminate()
                server.wait(timeout=30)
    report = {
        "generator": generator,
        "seconds_per_cell": args.seconds,
        "requests_per_route": args.requests,
        "distinct_queries": args.distinct_queries,
        "engine": str(args.engine or "demo shop (UCI Online Retail)"),
        "lexical_only": args.lexical_only,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m_at_end": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "note": "server and load generator share the same cores; one uvicorn worker",
        "max_batch": args.max_batch,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
