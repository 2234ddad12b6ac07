"""Event loading: peak memory and speed of shoplm's streaming ingest against whole-file reads.

Generates a realistic event log (Zipf-like item popularity, skewed user activity, views,
clicks, carts, purchases and searches with queries, ISO timestamps) with a small share of
bad rows (unknown items and event names, unreadable or out-of-range timestamps, exact
duplicates) so validation does real work, and a matching catalogue. The first fifth of the
log is also written as a smaller file, to show how peak memory grows with the file size.

Each measurement runs in a fresh child process that reports its own peak resident set size
(Linux ``VmHWM``), so runs do not see each other's memory. Measured:

- ``shoplm``: ``load_events`` streaming the CSV, validating, pseudonymising and writing the
  canonical Parquet table (the path ``shoplm build`` takes), at both file sizes;
- ``pandas``: ``pandas.read_csv`` of the whole file into one DataFrame, what a naive loader
  does (reading only, no validation), at both file sizes;
- ``polars``: ``polars.read_csv`` of the whole file, when polars is installed.

    python bench/ingest_memory.py --events 5000000 --out ingest_memory.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from shoplm.config import LoadConfig, ShoplmConfig

SEED = 20240611
N_USERS = 200_000
N_QUERIES = 20_000
BLOCK_ROWS = 250_000
#: event mix of a typical shop log: mostly views, one purchase per ~50 events
EVENT_MIX = {"view": 0.68, "click": 0.12, "add_to_cart": 0.06, "purchase": 0.02, "search": 0.12}
#: share of rows made bad on purpose, so the validator has real work to do
BAD_SHARE = {
    "unknown_item": 0.003,
    "bad_timestamp": 0.002,
    "unknown_event": 0.0005,
    "duplicate": 0.005,
}
BAD_TIMESTAMPS = np.array(["not a date", "2024-13-45T25:00:00", "1900-01-01T00:00:00Z"])
START = np.datetime64("2024-01-01T00:00:00", "s")
SPAN_SECONDS = 180 * 86_400


def _words(text: str) -> np.ndarray:
    return np.array(text.split())


NOUNS = _words(
    "shirt dress jeans jacket coat sneakers boots sandals hat scarf gloves socks "
    "backpack wallet watch sunglasses lamp chair table sofa rug pillow blanket "
    "mug kettle blender toaster knife pan pot drill hammer saw ladder tent "
    "bicycle helmet ball racket yoga-mat headphones speaker charger cable "
    "keyboard mouse monitor laptop tablet phone-case camera tripod"
)
ADJECTIVES = _words(
    "red blue black white green grey pink leather wool cotton linen "
    "waterproof wireless vintage slim large small kids mens womens organic "
    "cordless portable ergonomic folding stainless"
)
BRANDS = _words(
    "acme northwind contoso fabrikam globex initech umbrella hooli vandelay "
    "wonka stark wayne tyrell cyberdyne soylent oceanic"
)
#: a few raw queries as shops log them: HTML entities, stray spaces, contact data
ODD_QUERIES = np.array(
    [
        "t-shirt &amp; shorts",
        "  red   dress ",
        "<b>boots</b>",
        "call me 0612 345 678",
        "send to jane.doe@example.com",
    ]
)

MB = 1024 * 1024


# ------------------------------------------------------------------------- generation
def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    return np.cumsum(weights) / weights.sum()


def _draw(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(n)), len(cdf) - 1)


def _join(*parts: np.ndarray | str) -> np.ndarray:
    """Element-wise string concatenation of arrays and constants (vectorised by numpy)."""
    out = np.asarray(parts[0], dtype=str)
    for part in parts[1:]:
        out = np.char.add(out, np.asarray(part, dtype=str))
    return out


def _catalogue(n_items: int, rng: np.random.Generator) -> pd.DataFrame:
    nouns = NOUNS[rng.integers(len(NOUNS), size=n_items)]
    brands = BRANDS[rng.integers(len(BRANDS), size=n_items)]
    adjectives = ADJECTIVES[rng.integers(len(ADJECTIVES), size=n_items)]
    return pd.DataFrame(
        {
            "item_id": _join("P", np.char.zfill(np.arange(n_items).astype(str), 7)),
            "title": _join(brands, " ", adjectives, " ", nouns),
            "category": _join("Shop > ", nouns),
            "brand": brands,
            "price": np.round(rng.lognormal(3.0, 0.8, size=n_items), 2),
        }
    )


def _query_vocabulary(rng: np.random.Generator) -> np.ndarray:
    n = N_QUERIES - len(ODD_QUERIES)
    nouns = NOUNS[rng.integers(len(NOUNS), size=n)]
    adjectives = ADJECTIVES[rng.integers(len(ADJECTIVES), size=n)]
    brands = BRANDS[rng.integers(len(BRANDS), size=n)]
    shape = rng.integers(3, size=n)
    queries = np.where(
        shape == 0,
        _join(adjectives, " ", nouns),
        np.where(
            shape == 1,
            _join(brands, " ", nouns),
            _join(
                brands, " ", adjectives, " ", nouns, " ", rng.integers(2, 60, size=n).astype(str)
            ),
        ),
    )
    return np.concatenate([queries, ODD_QUERIES])


class EventGenerator:
    """Draws the event log block by block, so the generator's memory is one block whatever
    the log's length; a block depends only on the seed and its position in the log."""

    def __init__(self, n_events: int, catalogue: pd.DataFrame, seed: int) -> None:
        self.n_events = n_events
        self.seed = seed
        rng = np.random.default_rng(seed)
        self.item_ids = catalogue["item_id"].to_numpy(dtype=str)
        self.prices = catalogue["price"].to_numpy()
        self.item_by_rank = rng.permutation(len(self.item_ids))
        self.item_cdf = _zipf_cdf(len(self.item_ids), 1.0)
        activity = rng.lognormal(0.0, 1.2, size=N_USERS)
        self.user_cdf = np.cumsum(activity) / activity.sum()
        self.queries = _query_vocabulary(rng)
        self.query_cdf = _zipf_cdf(len(self.queries), 0.9)
        self.events = np.array(list(EVENT_MIX))
        self.event_cdf = np.cumsum(list(EVENT_MIX.values()))

    def block(self, start: int, n: int) -> pd.DataFrame:
        rng = np.random.default_rng([self.seed, start])
        users = _draw(rng, self.user_cdf, n)
        event = self.events[_draw(rng, self.event_cdf, n)]
        search = event == "search"
        item = self.item_by_rank[_draw(rng, self.item_cdf, n)]
        item_id = np.where(search, "", self.item_ids[item])
        query = np.where(search, self.queries[_draw(rng, self.query_cdf, n)], "")
        position = np.maximum(start + np.arange(n) + rng.uniform(-50, 50, n), 0)
        seconds = position * SPAN_SECONDS / self.n_events
        stamps = START + seconds.astype("timedelta64[s]")
        quantity = rng.integers(1, 4, size=n).astype(str)
        value = np.where(
            event == "purchase",
            np.char.mod("%.2f", self.prices[item]),
            np.where(event == "add_to_cart", quantity, ""),
        )
        frame = pd.DataFrame(
            {
                "user_id": _join("U", users.astype(str)),
                "item_id": item_id,
                "event": event,
                "timestamp": np.datetime_as_string(stamps, unit="s", timezone="UTC"),
                "query": query,
                "value": value,
                "session_id": _join(
                    "S", users.astype(str), "-", (seconds // 1800).astype(np.int64).astype(str)
                ),
            }
        )
        self._spoil(rng, frame, ~search)
        return frame

    @staticmethod
    def _spoil(rng: np.random.Generator, frame: pd.DataFrame, has_item: np.ndarray) -> None:
        n = len(frame)
        bad = {kind: rng.random(n) < share for kind, share in BAD_SHARE.items()}
        unknown = bad["unknown_item"] & has_item
        frame.loc[unknown, "item_id"] = _join(
            "ZZ", rng.integers(10**6, size=int(unknown.sum())).astype(str)
        )
        frame.loc[bad["bad_timestamp"], "timestamp"] = rng.choice(
            BAD_TIMESTAMPS, size=int(bad["bad_timestamp"].sum())
        )
        frame.loc[bad["unknown_event"], "event"] = "pageview"
        # a duplicate repeats a row sent shortly before, as a client retry does
        copies = np.flatnonzero(bad["duplicate"])
        sources = np.maximum(copies - rng.integers(1, 2_000, size=len(copies)), 0)
        frame.iloc[copies] = frame.iloc[sources].to_numpy()


def write_inputs(workdir: Path, n_events: int, n_items: int) -> tuple[Path, Path, Path]:
    """The catalogue, the event log and its first fifth; files already there are reused
    (each is written under a temporary name and renamed, so an existing file is whole)."""
    tag = f"{n_items}items_seed{SEED}"
    catalog = workdir / f"catalog_{tag}.csv"
    big = workdir / f"events_{n_events}_{tag}.csv"
    small = workdir / f"events_{n_events // 5}_of_{n_events}_{tag}.csv"
    catalogue = _catalogue(n_items, np.random.default_rng(SEED))
    if not catalog.exists():
        _atomic(catalog, lambda handle: catalogue.to_csv(handle, index=False))
    if not big.exists():
        generator = EventGenerator(n_events, catalogue, SEED)

        def write(handle: IO[str]) -> None:
            for start in range(0, n_events, BLOCK_ROWS):
                block = generator.block(start, min(BLOCK_ROWS, n_events - start))
                block.to_csv(handle, header=start == 0, index=False)

        _atomic(big, write)
    if not small.exists():
        with open(big, newline="", encoding="utf-8") as source:
            # header + rows: the generated log has no line breaks inside quoted values
            _atomic(small, lambda handle: handle.writelines(islice(source, n_events // 5 + 1)))
    return catalog, small, big


def _atomic(path: Path, write: Callable[[IO[str]], object]) -> None:
    partial = path.with_suffix(".partial")
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        write(handle)
    partial.replace(path)


# ------------------------------------------------------------------------- measured runs
def _peak_rss_mb() -> float:
    """This process's own peak resident set size so far (Linux ``VmHWM``).

    ``getrusage``'s ``ru_maxrss`` (and so ``wait4`` or ``RUSAGE_CHILDREN``) is no use here:
    Linux carries the parent's peak over ``fork`` and ``exec`` into the child's figure, so
    every child would report at least the generator's memory.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return kib / 1024


def _shoplm_loader(
    events: Path, catalog: Path, workdir: Path, chunk_rows: int
) -> Callable[[], dict]:
    from shoplm.data.catalog import load_catalog
    from shoplm.data.events import load_events
    from shoplm.data.privacy import Pseudonymiser
    from shoplm.data.report import ValidationReport

    config = ShoplmConfig(load=LoadConfig(chunk_rows=chunk_rows))
    report = ValidationReport(workdir / f"issues_{events.stem}.csv")
    item_ids = pd.Index(load_catalog(catalog, config, report)["item_id"])
    parquet = workdir / f"{events.stem}.parquet"

    def load() -> dict:
        kept = load_events(events, config, item_ids, Pseudonymiser(b"k" * 32), report, parquet)
        report.close()
        stats = report.stats(str(events))
        problems = {
            f"{field}: {reason}": count
            for (file, field, _, reason), count in report.counts.items()
            if file == str(events)
        }
        return {
            "rows_read": stats.rows_read,
            "rows_kept": kept,
            "rows_rejected": stats.rows_rejected,
            "problems": problems,
            "parquet_mb": parquet.stat().st_size / MB,
        }

    return load


def _pandas_loader(events: Path, *_: object) -> Callable[[], dict]:
    def load() -> dict:
        frame = pd.read_csv(events)
        return {"rows_read": len(frame), "frame_mb": frame.memory_usage(deep=True).sum() / MB}

    return load


def _polars_loader(events: Path, *_: object) -> Callable[[], dict]:
    import polars as pl

    def load() -> dict:
        frame = pl.read_csv(events)
        return {"rows_read": frame.height, "frame_mb": frame.estimated_size() / MB}

    return load


LOADERS = {"shoplm": _shoplm_loader, "pandas": _pandas_loader, "polars": _polars_loader}


def run_child(loader: str, events: Path, catalog: Path, workdir: Path, chunk_rows: int) -> dict:
    """Set the loader up (imports, catalogue), then time it; in the measured child process."""
    load = LOADERS[loader](events, catalog, workdir, chunk_rows)
    before = _peak_rss_mb()
    start, cpu = time.perf_counter(), time.process_time()
    result = load()
    return {
        **result,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "rss_before_mb": before,
        "peak_rss_mb": _peak_rss_mb(),
    }


def measure(loader: str, events: Path, catalog: Path, workdir: Path, chunk_rows: int) -> dict:
    """Run one loader in a fresh interpreter, which reports its own time and peak memory."""
    result_path = workdir / f"result_{loader}_{events.stem}.json"
    command = [
        sys.executable,
        __file__,
        "--child",
        loader,
        "--child-events",
        str(events),
        "--child-catalog",
        str(catalog),
        "--workdir",
        str(workdir),
        "--chunk-rows",
        str(chunk_rows),
        "--out",
        str(result_path),
    ]
    subprocess.run(command, check=True)
    result = json.loads(result_path.read_text())
    return {
        "loader": loader,
        "file": events.name,
        "file_mb": events.stat().st_size / MB,
        "rows": result["rows_read"],
        "rows_per_s": result["rows_read"] / result["seconds"],
        **result,
    }


def print_table(runs: list[dict]) -> None:
    header = (
        f"{'loader':<8}{'file MB':>9}{'rows':>11}{'seconds':>9}{'CPU s':>8}{'rows/s':>11}"
        f"{'peak RSS MB':>13}{'before load':>13}"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        print(
            f"{run['loader']:<8}{run['file_mb']:>9.0f}{run['rows']:>11,}{run['seconds']:>9.1f}"
            f"{run['cpu_seconds']:>8.1f}{run['rows_per_s']:>11,.0f}{run['peak_rss_mb']:>13.0f}"
            f"{run['rss_before_mb']:>13.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000, help="events in the large log")
    parser.add_argument("--items", type=int, default=50_000, help="items in the catalogue")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where inputs and outputs go (default: a new temporary folder); "
        "inputs already there are reused",
    )
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=LoadConfig().chunk_rows,
        help="shoplm's load.chunk_rows (default: the config default)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--child", choices=list(LOADERS), help=argparse.SUPPRESS)
    parser.add_argument("--child-events", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-catalog", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = run_child(
            args.child, args.child_events, args.child_catalog, args.workdir, args.chunk_rows
        )
        args.out.write_text(json.dumps(result))
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="shoplm_ingest_"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    catalog, small, big = write_inputs(workdir, args.events, args.items)
    print(
        f"inputs in {workdir} ({time.perf_counter() - started:.0f} s); "
        f"shoplm reads {args.chunk_rows:,} rows per chunk"
    )
    loaders = ["shoplm", "pandas"]
    if importlib.util.find_spec("polars") is not None:
        loaders.append("polars")
    else:
        print("polars is not installed: skipped")
    runs = [
        measure(loader, events, catalog, workdir, args.chunk_rows)
        for events in (small, big)
        for loader in loaders
    ]
    print_table(runs)

    shoplm_small, shoplm_big = (r for r in runs if r["loader"] == "shoplm")
    growth = shoplm_big["peak_rss_mb"] - shoplm_small["peak_rss_mb"]
    hashes = shoplm_big["rows_kept"] * 8 / MB
    print(
        f"\nshoplm peak RSS grows {growth:+.0f} MB from {shoplm_small['rows']:,} to "
        f"{shoplm_big['rows']:,} events; the duplicate hashes alone are {hashes:.0f} MB at "
        f"{shoplm_big['rows']:,} ({shoplm_big['rows_kept']:,} kept rows x 8 bytes)"
    )
    print(
        f"shoplm at {shoplm_big['rows']:,} events: {shoplm_big['rows_kept']:,} kept, "
        f"{shoplm_big['rows_rejected']:,} rejected"
    )
    for problem, count in sorted(shoplm_big["problems"].items(), key=lambda p: -p[1]):
        print(f"  {count:>9,}  {problem}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "events": args.events,
                    "items": args.items,
                    "users": N_USERS,
                    "seed": SEED,
                    "chunk_rows": args.chunk_rows,
                    "cpu_count": os.cpu_count(),
                    "runs": runs,
                    "duplicate_hash_mb": hashes,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
