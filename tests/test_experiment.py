"""A/B experiments: assignment, the exposure log and attribution, statistics, replay, CLI."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_data_or_skip
from scipy import stats
from typer.testing import CliRunner

from shoplm.experiment import (
    ExperimentConfig,
    ExperimentError,
    ExperimentLog,
    analyse,
    assign,
    assign_names,
    attribute,
)
from shoplm.experiment.command import ab
from shoplm.experiment.log import Attribution
from shoplm.experiment.replay import (
    ReplaySimulator,
    load_replay_data,
    recommender_variant,
    serve,
)
from shoplm.experiment.stats import (
    bootstrap_lift,
    bootstrap_means,
    min_sample_proportion,
    srm_check,
    two_proportion_ztest,
)
from shoplm.recommend.cooccurrence import CooccurrenceRecommender
from shoplm.recommend.popularity import PopularityRecommender

_US = 1000  # nanoseconds


def _config(shares: tuple[float, ...] = (0.5, 0.5), **kwargs: object) -> ExperimentConfig:
    names = "ABCDEFG"
    variants = [{"name": names[i], "share": s} for i, s in enumerate(shares)]
    return ExperimentConfig(name=kwargs.pop("name", "exp"), variants=variants, **kwargs)


def _users(n: int, seed: int = 0) -> np.ndarray:
    """Hex strings shaped like the service's keyed pseudonyms."""
    raw = np.random.default_rng(seed).integers(0, 2**63, size=(n, 2), dtype=np.int64)
    return np.array([f"{a:016x}{b:016x}" for a, b in raw], dtype=object)


# ---------------------------------------------------------------------- config
def test_config_rejects_bad_shares_and_duplicate_names() -> None:
    with pytest.raises(ValueError, match=r"sum to 0\.9"):
        _config((0.5, 0.4))
    with pytest.raises(ValueError, match="duplicate"):
        ExperimentConfig(
            name="x", variants=[{"name": "A", "share": 0.5}, {"name": "A", "share": 0.5}]
        )
    with pytest.raises(ValueError, match="at least 2"):
        ExperimentConfig(name="x", variants=[{"name": "A", "share": 1.0}])
    parsed = ExperimentConfig.model_validate(
        {
            "name": "x",
            "variants": [
                {"name": "A", "share": 0.5, "engine": "v0001"},
                {"name": "B", "share": 0.5},
            ],
            "attribution_window": "P1D",
        }
    )
    assert parsed.attribution_window.days == 1 and parsed.variants[0].engine == "v0001"


# ---------------------------------------------------------------------- assignment
def test_assignment_is_sticky_and_independent_across_experiments() -> None:
    users = _users(20_000)
    config = _config()
    first = assign(config, users)
    order = np.random.default_rng(1).permutation(users.size)
    assert np.array_equal(assign(config, users[order]), first[order])  # batch order is irrelevant
    assert np.array_equal(assign(config, np.concatenate([users, users]))[: users.size], first)
    assert assign_names(config, users[:3]).tolist() == ["AB"[i] for i in first[:3]]
    other = assign(_config(name="another"), users)
    resalted = assign(_config(salt="2"), users)
    # a new experiment or salt is a fresh shuffle: agreement ~50%, not ~100%
    for shuffled in (other, resalted):
        assert abs((shuffled == first).mean() - 0.5) < 0.02


def test_shares_are_accurate_on_100k_users() -> None:
    users = _users(100_000, seed=2)
    config = _config((0.5, 0.3, 0.2))
    counts = np.bincount(assign(config, users), minlength=3)
    _, p_value = stats.chisquare(counts, f_exp=np.array(config.shares) * users.size)
    assert p_value > 0.01, counts


def test_appending_a_variant_moves_only_the_last_variants_users() -> None:
    users = _users(50_000, seed=3)
    before = assign(_config((0.5, 0.5)), users)
    after = assign(_config((0.5, 0.3, 0.2)), users)
    assert np.array_equal(after[before == 0], before[before == 0])
    assert set(np.unique(after[before == 1])) == {1, 2}
    assert np.all(before[after == 2] == 1)


# ---------------------------------------------------------------------- statistics
def test_two_proportion_ztest_matches_hand_computation() -> None:
    # 100/1000 vs 130/1000: pooled p = 0.115, se0 = sqrt(0.115 * 0.885 * 2/1000) = 0.0142672,
    # z = 0.03 / se0 = 2.10274, p = 2 * (1 - Phi(z)) = 0.035488;
    # Wald se = sqrt(0.1 * 0.9 / 1000 + 0.13 * 0.87 / 1000) = 0.0142513,
    # interval = 0.03 -+ 1.959964 * se = [0.002068, 0.057932]
    result = two_proportion_ztest(100, 1000, 130, 1000, alpha=0.05)
    assert result.diff == pytest.approx(0.03)
    assert result.statistic == pytest.approx(2.10274, abs=1e-5)
    assert result.p_value == pytest.approx(0.035488, abs=1e-6)
    assert result.ci_low == pytest.approx(0.002068, abs=1e-6)
    assert result.ci_high == pytest.approx(0.057932, abs=1e-6)


def test_min_sample_matches_the_textbook_value_and_gives_the_stated_power() -> None:
    n = min_sample_proportion(0.10, 0.10, alpha=0.05, power=0.80)
    assert n == 14_751  # 10% -> 11%, two-sided 5%, 80% power (Fleiss, Levin & Paik)
    # the rule's promise, checked by simulation: z-tests at that n detect the lift ~80%
    rng = np.random.default_rng(4)
    x_a, x_b = rng.binomial(n, 0.10, 4000), rng.binomial(n, 0.11, 4000)
    pooled = (x_a + x_b) / (2 * n)
    z = (x_b - x_a) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    power = np.mean(2 * stats.norm.sf(np.abs(z)) < 0.05)
    assert 0.77 < power < 0.83
    assert min_sample_proportion(0.10, 0.10, 0.05, 0.80, ratio=3.0) < n  # more treatment users


def test_bootstrap_means_match_ordinary_resampling() -> None:
    rng = np.random.default_rng(5)
    values = np.where(rng.random(5000) < 0.1, rng.lognormal(3, 1, 5000), 0.0)
    means = bootstrap_means(values, 4000, np.random.default_rng(6))
    # the bootstrap distribution of a mean: centred on the sample mean, sd = sd_plugin / sqrt(n)
    assert means.mean() == pytest.approx(values.mean(), rel=0.01)
    assert means.std() == pytest.approx(values.std() / math.sqrt(values.size), rel=0.05)
    binary = (values > 0).astype(float)
    assert bootstrap_means(binary, 10, np.random.default_rng(0)).max() <= 1.0


def test_bootstrap_interval_covers_the_true_lift() -> None:
    rng = np.random.default_rng(7)
    n, runs, true_lift = 3000, 200, 0.10
    covered = {"conversion": 0, "revenue": 0}
    for _ in range(runs):
        bought_a = rng.random(n) < 0.10
        bought_b = rng.random(n) < 0.10 * (1 + true_lift)
        revenue_a = np.where(bought_a, rng.lognormal(3, 0.8, n), 0.0)
        revenue_b = np.where(bought_b, rng.lognormal(3, 0.8, n), 0.0)
        for name, a, b in (
            ("conversion", bought_a.astype(float), bought_b.astype(float)),
            ("revenue", revenue_a, revenue_b),
        ):
            lift = bootstrap_lift(a, b, n_resamples=2000, alpha=0.05, rng=rng)
            covered[name] += lift.low <= true_lift <= lift.high
    # nominal 95%; 200 runs put the observed rate within ~0.92-0.98 unless it is off
    for name, hits in covered.items():
        assert 0.91 <= hits / runs <= 0.99, (name, hits)


def test_srm_flags_a_52_48_split_on_100k_users() -> None:
    assert srm_check([52_000, 48_000], [0.5, 0.5]).flagged
    assert not srm_check([50_100, 49_900], [0.5, 0.5]).flagged
    # the same through the report: the verdict refuses to read the lift
    users = _users(100_000, seed=8)
    variant = np.where(np.arange(users.size) < 52_000, "A", "B")
    frame = pd.DataFrame(
        {
            "variant": variant,
            "first_exposure": 0,
            "exposures": 1,
            "clicks": 0,
            "carts": 0,
            "purchases": (np.arange(users.size) % 5 == 0).astype(int),
            "revenue": 0.0,
        },
        index=pd.Index(users, name="user"),
    )
    report = analyse(Attribution(frame, 0, 0), _config(bootstrap_resamples=200))
    assert report.srm.flagged and report.verdict == "SRM: do not trust"


def test_aa_false_positive_rate_is_within_alpha() -> None:
    """Repeated A/A tests through assignment, attribution and the report."""
    rng = np.random.default_rng(9)
    users = _users(4000, seed=10)
    runs = 200  # at the default alpha = 0.05
    false_positives = 0
    for run in range(runs):
        config = _config(salt=str(run), min_sample_per_variant=1500, bootstrap_resamples=100)
        exposures = pd.DataFrame(
            {"user": users, "variant": assign_names(config, users), "served_at": 0}
        )
        bought = rng.random(users.size) < 0.2
        outcomes = pd.DataFrame(
            {"user": users[bought], "event": "purchase", "timestamp": 1, "revenue": 10.0}
        )
        report = analyse(attribute(exposures, outcomes, window_ns=10), config)
        assert report.kind != "not_enough_data"
        false_positives += report.kind in ("better", "worse")
    # Binomial(200, 0.05): P(X > 19) < 0.002
    assert false_positives <= 19, false_positives


def test_verdicts_for_a_clear_win_and_too_little_data() -> None:
    users = _users(20_000, seed=11)
    config = _config(baseline_rate=0.1)
    arm = assign(config, users)
    rng = np.random.default_rng(12)
    bought = rng.random(users.size) < np.where(arm == 1, 0.14, 0.10)
    exposures = pd.DataFrame({"user": users, "variant": np.array(["A", "B"])[arm], "served_at": 0})
    outcomes = pd.DataFrame(
        {"user": users[bought], "event": "purchase", "timestamp": 5, "revenue": 1.0}
    )
    report = analyse(attribute(exposures, outcomes, 10), config)
    # 10% -> 11% needs 14,751 users per arm; ~10,000 each is not enough, whatever the data
    assert report.min_sample == [14_751, 14_751]
    assert report.verdict == "not enough data yet"
    big = analyse(attribute(exposures, outcomes, 10), _config(min_sample_per_variant=5000))
    assert big.verdict == "B better"
    small = analyse(attribute(exposures[:2000], outcomes, 10), _config(min_sample_per_variant=5000))
    assert small.verdict == "not enough data yet"


# ---------------------------------------------------------------------- attribution and log
def _attribution_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Times in microseconds (the resolution of a configured window); the window is 100."""
    exposures = pd.DataFrame(
        {
            "variant": ["A", "B", "B", "A"],
            "user": ["u1", "u1", "u2", "u3"],
            "served_at": np.array([0, 10, 50, 0]) * _US,
            "surface": "home",
            "items": [["i1", "i2"], ["i3"], ["i1"], ["i2"]],
        }
    )
    outcomes = pd.DataFrame(
        {
            "user": ["u1", "u1", "u1", "u2", "u2", "u4", "u3"],
            "item": ["i1", "i1", "i2", "i1", "i1", "i9", None],
            "event": ["click", "purchase", "purchase", "click", "add_to_cart", "purchase", "view"],
            "timestamp": np.array([5, 105, 150, 40, 150, 20, 1]) * _US,
            "revenue": [0.0, 30.0, 99.0, 0.0, 0.0, 7.0, 0.0],
        }
    )
    return exposures, outcomes


def _check_attribution(result: Attribution) -> None:
    users = result.users
    assert users.loc["u1", "variant"] == "A"  # first exposure decides, though u1 later saw B
    assert users.loc["u1", ["clicks", "purchases"]].tolist() == [1, 1]  # t=150 is 140 after t=10
    assert users.loc["u1", "revenue"] == 30.0
    assert users.loc["u2", ["clicks", "carts"]].tolist() == [0, 1]  # click before exposure
    assert users.loc["u3", ["clicks", "carts", "purchases", "revenue"]].tolist() == [0, 0, 0, 0]
    assert "u4" not in users.index  # never exposed
    assert result.n_multi_variant_users == 1
    assert result.n_unattributed_outcomes == 2


def test_attribution_respects_window_and_first_exposure() -> None:
    exposures, outcomes = _attribution_frames()
    _check_attribution(
        attribute(exposures, outcomes[outcomes["event"] != "view"], window_ns=100 * _US)
    )


def test_log_round_trip_attributes_the_same(tmp_path: Path) -> None:
    config = _config(attribution_window=timedelta(microseconds=100))
    exposures, outcomes = _attribution_frames()
    with ExperimentLog(tmp_path / "ab.db") as log:
        log.register(config)
        log.register(config)  # the same definition again is fine
        with pytest.raises(ExperimentError, match="another definition"):
            log.register(_config((0.4, 0.6)))
        with pytest.raises(ExperimentError, match="not in experiment"):
            log.record_exposures("exp", exposures.assign(variant="C"))
        with pytest.raises(ValueError, match="missing column"):
            log.record_outcomes(outcomes.drop(columns="revenue"))
        assert log.record_exposures("exp", exposures) == 4
        kept = log.record_outcomes(outcomes)
        assert kept.stored == 6 and kept.skipped == {"event 'view'": 1}
        assert json.loads(log.exposures("exp")["items"][0]) == ["i1", "i2"]
        _check_attribution(log.attributed("exp"))
        assert log.forget("u1") == 5  # 2 exposures, 3 outcomes
        assert "u1" not in log.attributed("exp").users.index
    with ExperimentLog(tmp_path / "ab.db") as reopened:  # durable across connections
        assert reopened.experiment("exp") == config


def test_report_command_prints_and_writes_json_and_svg(tmp_path: Path) -> None:
    users = _users(3000, seed=13)
    config = _config(min_sample_per_variant=500, bootstrap_resamples=200)
    rng = np.random.default_rng(14)
    bought = rng.random(users.size) < 0.3
    with ExperimentLog(tmp_path / "ab.db") as log:
        log.register(config)
        log.record_exposures(
            "exp",
            pd.DataFrame(
                {
                    "variant": assign_names(config, users),
                    "user": users,
                    "served_at": 1_000,
                    "surface": "home",
                    "items": [["x", "y"]] * users.size,
                }
            ),
        )
        log.record_outcomes(
            pd.DataFrame(
                {
                    "user": users[bought],
                    "item": "x",
                    "event": "purchase",
                    "timestamp": 2_000,
                    "revenue": rng.lognormal(3, 1, int(bought.sum())),
                }
            )
        )
    result = CliRunner().invoke(
        ab, ["report", "--log", str(tmp_path / "ab.db"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "verdict" in result.output and "sample ratio" in result.output
    saved = json.loads((tmp_path / "exp.json").read_text())
    assert saved["verdict"] in ("no detectable difference", "B better", "B worse")
    assert [v["users"] for v in saved["variants"]] == np.bincount(assign(config, users)).tolist()
    assert (tmp_path / "exp.svg").read_text().startswith("<svg")
    missing = CliRunner().invoke(ab, ["report", "--log", str(tmp_path / "none.db")])
    assert missing.exit_code == 2 and "--log" in missing.output


# ---------------------------------------------------------------------- replay
@pytest.fixture(scope="module")
def demo_simulator() -> ReplaySimulator:
    shared_data_or_skip()
    data = load_replay_data("demo")
    variants = [
        recommender_variant(PopularityRecommender().fit(data.train)),
        # a short window fits in a fraction of the time of whole-basket pairs
        recommender_variant(CooccurrenceRecommender(window=2).fit(data.train)),
    ]
    config = ExperimentConfig(
        name="replay", variants=[{"name": "A", "share": 0.5}, {"name": "B", "share": 0.5}]
    )
    return ReplaySimulator(config, lift=1.10, same_behaviour=True).fit(
        data, serve(data, variants, 10)
    )


def test_replay_runs_real_held_out_users(demo_simulator: ReplaySimulator) -> None:
    sim = demo_simulator
    assert sim.data_.targets.size > 15_000  # invoices of the bundled demo shop
    assert sim.hit_rate(1) > 2 * sim.hit_rate(0) > 0  # co-occurrence beats popularity
    assert sim.expected_conversion(1) == pytest.approx(1.10 * sim.expected_conversion(0))
    run = sim.run(seed=0, until=3000)
    assert run.reached
    counts = run.exposures["variant"].value_counts()
    assert counts.min() == 3000 and run.n_arrived == counts.sum()
    # A/A behaviour: both arms were served the control's lists
    served = dict(zip(sim.data_.user_ids, sim.served_[0][:, 0], strict=True))
    first = run.exposures["items"].map(lambda items: items[0])
    assert (first == run.exposures["user"].map(lambda u: sim.data_.item_ids[served[u]])).all()
    again = sim.run(seed=0, until=3000)
    pd.testing.assert_frame_equal(run.outcomes, again.outcomes)  # seeded


def test_replay_logging_fault_trips_the_srm_check(demo_simulator: ReplaySimulator) -> None:
    run = demo_simulator.run(seed=1, lose_exposures=0.2)
    assert run.n_lost_exposures > 0
    report = analyse(run.attribution(demo_simulator.config), demo_simulator.config)
    assert report.srm.flagged and report.verdict == "SRM: do not trust"
