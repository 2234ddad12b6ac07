"""Time a full deploy of the demo shop: build, evaluate, gate, promote.

Protocol: the demo shop's events (UCI Online Retail, ``shoplm demo`` input) are split by
time: the last ``--holdout-days`` days are the held-out events, the rest the build's
events. A first deploy on an empty engine root makes v0001 live (nothing to compare with);
the second, timed as the figure (``--keep-live`` runs only this one when the work folder
already has a live engine), builds v0002 from the same inputs, scores both engines on
the held-out events (Recall@10, NDCG@10, full ranking) and the latency sample, applies the
default gates and promotes. Wall and CPU seconds (this process and its children) and the
host's load average are recorded for each; on a shared host wall time is inflated by
other work, CPU time much less so. The demo has no judged queries, so no search gate.

    .venv/bin/shoplm demo --out /tmp/h6demo       # writes /tmp/h6demo/input
    .venv/bin/python bench/deploy_demo.py --input /tmp/h6demo/input --work /tmp/deploy-demo

Writes ``bench/results/deploy_demo.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path

import pandas as pd

from shoplm.config import ShoplmConfig
from shoplm.deploy.config import DeployConfig
from shoplm.deploy.pipeline import current_version, deploy


def split_events(source: Path, out: Path, days: float) -> tuple[Path, Path, dict[str, int]]:
    """The build's events and the held-out events (the last ``days`` days of the log)."""
    events = pd.read_parquet(source)
    cutoff = events["timestamp"].max() - pd.Timedelta(days=days)
    later = (events["timestamp"] > cutoff).to_numpy()
    out.mkdir(parents=True, exist_ok=True)
    train, held = out / "events.parquet", out / "holdout.parquet"
    events[~later].to_parquet(train, index=False)
    events[later].to_parquet(held, index=False)
    return train, held, {"build_events": int((~later).sum()), "held_out_events": int(later.sum())}


def timed_deploy(config: DeployConfig) -> dict[str, object]:
    load_before = os.getloadavg()
    cpu_before = _cpu_seconds()
    start = time.perf_counter()
    outcome = deploy(ShoplmConfig(), config, lambda message: print(message, flush=True))
    return {
        "decision": outcome.decision,
        "version": outcome.version,
        "previous": outcome.previous,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(_cpu_seconds() - cpu_before, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "steps": outcome.record["steps"],
        "metrics": outcome.record["metrics"],
        "gates": outcome.record["gates"],
    }


def _cpu_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", type=Path, default=Path("/tmp/h6demo/input"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/deploy-demo"))
    parser.add_argument("--holdout-days", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/deploy_demo.json"))
    parser.add_argument(
        "--keep-live", action="store_true", help="reuse the work folder's live engine if any"
    )
    args = parser.parse_args()
    reuse = args.keep_live and current_version(args.work / "engine") is not None
    if not reuse:
        shutil.rmtree(args.work / "engine", ignore_errors=True)
    train, held, counts = split_events(args.input / "events.parquet", args.work, args.holdout_days)
    config = DeployConfig(
        engine=args.work / "engine",
        catalog=args.input / "catalog.parquet",
        events=train,
        holdout_events=held,
    )
    report: dict[str, object] = {
        "protocol": f"demo shop, last {args.holdout_days:g} days held out; default build "
        "config and gates; deploy 2 is the figure (candidate against a live engine)",
        "cpu_count": os.cpu_count(),
        **counts,
    }
    for name in ("deploy",) if reuse else ("first_deploy", "deploy"):
        report[name] = timed_deploy(config)
        print(json.dumps({name: report[name]["wall_seconds"]}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report["deploy"].items() if k != "gates"}, indent=1))


if __name__ == "__main__":
    main()
