"""Does the A/B machinery keep its promises? Power, A/A false positives and SRM, by replay.

Protocol (every number comes from the code paths ``shoplm ab report`` uses: sticky
assignment, attribution, ``analyse``; only the SQLite round trip is skipped, which
``tests/test_experiment.py`` covers):

- Data: Amazon Beauty 5-core (``load_seqrec("beauty")``), each user held out on their last
  item (22,363 users). Variants are fitted on every other event: popularity (control) and
  item-item co-occurrence with the engine's defaults (treatment); each serves a top-10 list.
- Behaviour (``ReplaySimulator`` defaults): the list *hits* when it holds the user's held-out
  next item; P(buy) = 0.50 on a hit, 0.15 on a miss; P(click) = 0.70 / 0.30 (buyers click);
  revenue log-normal with a median of 20.
- The plan: primary metric conversion, two-sided alpha = 0.05, power = 0.80, minimum
  detectable effect = 10% relative. The baseline is the control's expected conversion under
  the behaviour model (what a pre-test estimate gives), so the minimum sample n* per arm is
  fixed before any run.
- A run (one seed): users arrive in a seeded random order and are assigned with the salt
  ``replay-<seed>``; the run stops as soon as both arms hold n* users, and the verdict is read
  once, there. Runs differ in assignment, arrival order and behaviour draws.
- (a) planted: both arms serve the control's lists; the treatment's P(buy) x 1.10. Power is
  the share of runs whose verdict is "B better". Bootstrap coverage: the share whose
  conversion-lift interval holds the true 10%.
- (b) A/A: the same with no lift. The false-positive rate is the share of runs with any
  "better"/"worse" verdict, with a Wilson 95% interval; also the coverage of 0 by the
  bootstrap interval of the conversion lift.
- (c) SRM: false alarms over the A/A runs (p < 0.001 expects 0.1%); and a planted logging
  fault, A/A otherwise: a share of the treatment's users who did not click lose their
  exposure record. For each fault size: how often the SRM check fires, and how often the
  report would have said "B better" had it not been there.
- (d) the real comparison on every held-out user, co-occurrence against popularity, once.

    python bench/ab_replay.py --seeds 200 --aa-seeds 1000 --fault-seeds 100 \
        --out bench/results/ab_replay.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from shoplm.experiment.config import ExperimentConfig
from shoplm.experiment.replay import (
    REPLAY_DATASETS,
    ReplaySimulator,
    load_replay_data,
    recommender_variant,
    serve,
)
from shoplm.experiment.stats import ABReport, MetricComparison, analyse, min_sample_proportion
from shoplm.recommend.cooccurrence import CooccurrenceRecommender
from shoplm.recommend.popularity import PopularityRecommender

FAULTS = (0.01, 0.02, 0.05, 0.10)


def wilson(successes: int, n: int, level: float = 0.95) -> list[float]:
    """Wilson score interval of a binomial proportion."""
    z = stats.norm.ppf(0.5 + level / 2)
    p = successes / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return [round(float(centre - half), 4), round(float(centre + half), 4)]


def share(hits: int, runs: int) -> dict[str, Any]:
    return {"count": int(hits), "runs": runs, "rate": hits / runs, "ci95": wilson(int(hits), runs)}


def conversion(report: ABReport) -> MetricComparison:
    return next(m for m in report.comparisons[0].metrics if m.metric == "conversion")


def repeat(
    simulator: ReplaySimulator, seeds: range, n_star: int, lose_exposures: float = 0.0
) -> list[ABReport]:
    """One report per seed, each read once when both arms hold ``n_star`` users."""
    reports = []
    for seed in seeds:
        run = simulator.run(seed, until=n_star, lose_exposures=lose_exposures)
        if not run.reached:
            raise RuntimeError(f"seed {seed}: the data ran out before both arms had {n_star}")
        config = simulator.config_for(seed)
        reports.append(analyse(run.attribution(config), config))
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="beauty", choices=REPLAY_DATASETS)
    parser.add_argument("--seeds", type=int, default=200, help="runs of (a), the planted lift")
    parser.add_argument("--aa-seeds", type=int, default=1000, help="runs of (b), the A/A test")
    parser.add_argument("--fault-seeds", type=int, default=100, help="runs per fault size")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ab_replay.json"))
    args = parser.parse_args()
    wall, cpu = time.perf_counter(), time.process_time()

    data = load_replay_data(args.dataset)
    served = serve(
        data,
        [
            recommender_variant(PopularityRecommender().fit(data.train)),
            recommender_variant(CooccurrenceRecommender().fit(data.train)),
        ],
        k=10,
    )
    variants = [{"name": "A", "share": 0.5}, {"name": "B", "share": 0.5}]
    probe = ReplaySimulator(
        ExperimentConfig(name="probe", variants=variants), same_behaviour=True
    ).fit(data, served)
    baseline = probe.expected_conversion(0)
    plan = ExperimentConfig(name=f"bench-{args.dataset}", variants=variants, baseline_rate=baseline)
    n_star = min_sample_proportion(baseline, plan.minimum_detectable_effect, plan.alpha, plan.power)
    print(
        f"{args.dataset}: {data.targets.size:,} users; hit@10 {probe.hit_rate(0):.4f} (popularity)"
        f" {probe.hit_rate(1):.4f} (co-occurrence); baseline conversion {baseline:.4f}; "
        f"n* = {n_star:,} per arm"
    )
    planted = ReplaySimulator(plan, lift=1.10, same_behaviour=True).fit(data, served)
    aa = ReplaySimulator(plan, same_behaviour=True).fit(data, served)
    setup_s = time.perf_counter() - wall

    started = time.process_time()
    planted_reports = repeat(planted, range(args.seeds), n_star)
    aa_reports = repeat(aa, range(args.aa_seeds), n_star)
    cpu_per_run = (time.process_time() - started) / (args.seeds + args.aa_seeds)

    faults = {}
    for fault in FAULTS:
        reports = repeat(aa, range(10_000, 10_000 + args.fault_seeds), n_star, fault)
        would_say_better = sum(
            conversion(r).test.p_value < plan.alpha and conversion(r).test.diff > 0 for r in reports
        )
        faults[f"{fault:.0%}"] = {
            "srm_flagged": share(sum(r.kind == "srm" for r in reports), len(reports)),
            "b_better_without_srm_check": share(would_say_better, len(reports)),
            "median_srm_p": float(np.median([r.srm.p_value for r in reports])),
            "median_lost_exposures": float(
                np.median([r.srm.expected[1] - r.srm.observed[1] for r in reports])
            ),
        }

    real = ReplaySimulator(plan.model_copy(update={"baseline_rate": None})).fit(data, served)
    real_report = analyse(real.run(0).attribution(real.config_for(0)), real.config_for(0))

    covered = sum(
        conversion(r).lift.low <= 0.10 <= conversion(r).lift.high for r in planted_reports
    )
    users = [v.users for r in planted_reports for v in r.variants]
    result = {
        "dataset": args.dataset,
        "held_out_users": int(data.targets.size),
        "hit_rate@10": {"popularity": probe.hit_rate(0), "cooccurrence": probe.hit_rate(1)},
        "plan": {
            "alpha": plan.alpha,
            "power": plan.power,
            "mde_relative": plan.minimum_detectable_effect,
            "baseline_conversion": baseline,
            "min_sample_per_arm": n_star,
        },
        "users_per_arm_at_stop": {
            "min": int(min(users)),
            "median": float(np.median(users)),
            "max": int(max(users)),
        },
        "planted_10pct": {
            "power": share(sum(r.kind == "better" for r in planted_reports), args.seeds),
            "wrong_direction": share(sum(r.kind == "worse" for r in planted_reports), args.seeds),
            "srm_flagged": share(sum(r.kind == "srm" for r in planted_reports), args.seeds),
            "bootstrap_conversion_lift_coverage": share(covered, args.seeds),
            "median_lift_estimate": float(
                np.median([conversion(r).lift.estimate for r in planted_reports])
            ),
        },
        "aa": {
            "false_positive": share(
                sum(r.kind in ("better", "worse") for r in aa_reports), args.aa_seeds
            ),
            "srm_false_alarm": share(sum(r.kind == "srm" for r in aa_reports), args.aa_seeds),
            "bootstrap_conversion_lift_coverage_of_0": share(
                sum(conversion(r).lift.low <= 0 <= conversion(r).lift.high for r in aa_reports),
                args.aa_seeds,
            ),
            "p_values_ks_uniform_p": float(
                stats.kstest([conversion(r).test.p_value for r in aa_reports], "uniform").pvalue
            ),
        },
        "srm_logging_fault": faults,
        "real_ab_all_users": {
            "verdict": real_report.verdict,
            "users": [v.users for v in real_report.variants],
            "conversion": [v.conversion for v in real_report.variants],
            "revenue_per_user": [v.revenue_per_user for v in real_report.variants],
            "conversion_lift": asdict(conversion(real_report).lift),
            "revenue_per_user_lift": asdict(real_report.comparisons[0].metrics[2].lift),
            "srm_p": real_report.srm.p_value,
        },
        "timing": {
            "setup_wall_s": round(setup_s, 1),
            "cpu_s_per_run": round(cpu_per_run, 3),
            "total_wall_s": round(time.perf_counter() - wall, 1),
            "total_cpu_s": round(time.process_time() - cpu, 1),
            "note": "2 shared cores; wall times are inflated by other sessions' load",
        },
        "seeds": args.seeds,
        "aa_seeds": args.aa_seeds,
        "fault_seeds": args.fault_seeds,
        "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), "utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
