"""The statistics of an A/B test, and the verdict they allow.

Choices, and why:

- **The user is the unit.** Users are randomised, so every metric is a per-user mean over
  *exposed* users (zeros included): CTR is the share of exposed users who clicked, conversion
  the share who bought, revenue per user the mean attributed revenue. Per-impression ratios
  would treat one user's twenty page views as twenty independent trials and make intervals
  far too narrow.
- **Proportions** (CTR, conversion) are tested with the two-sided two-proportion z-test with
  the pooled variance (the variance under the null hypothesis of no difference); the
  interval for the difference uses the unpooled (Wald) variance, the variance where the
  difference is not assumed to be 0. **Revenue** is tested with Welch's t-test, which does not
  assume equal variances; revenue is heavy-tailed, and at the sample sizes a shop needs the
  central limit theorem carries the mean.
- **Relative lifts** get percentile bootstrap intervals (users resampled within each arm,
  seeded, vectorised): a ratio of two means has no simple exact interval.
- **Sample-ratio mismatch**: a chi-square goodness-of-fit test of users per variant against
  the configured shares; p < 0.001 means assignment or logging is broken (bots filtered in one
  arm, a crash in one variant's logging) and no lift can be trusted.
- **Minimum sample** per variant follows from alpha, power and the minimum detectable effect
  (the usual normal-approximation formula, allowing unequal shares); before every variant
  has it there is no verdict. With several treatments alpha is split (Bonferroni).

Read the verdict once, when the minimum sample is reached: looking every day and stopping at
the first significant result inflates false positives far beyond alpha.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from shoplm.experiment.config import ExperimentConfig, Metric
from shoplm.experiment.log import Attribution

SRM_THRESHOLD = 0.001

#: Cells of one bootstrap block (resamples x draws): bounds memory to ~32 MB per block.
_BLOCK_CELLS = 4_000_000

VerdictKind = Literal["better", "worse", "no_difference", "not_enough_data", "srm"]
NO_DIFFERENCE = "no detectable difference"
NOT_ENOUGH_DATA = "not enough data yet"
SRM_TEXT = "SRM: do not trust"


# ---------------------------------------------------------------------- tests
@dataclass(frozen=True)
class HypothesisTest:
    """A two-sided test of treatment - control, with a confidence interval of the difference."""

    test: str
    diff: float
    ci_low: float
    ci_high: float
    statistic: float
    p_value: float


def two_proportion_ztest(
    x_control: int, n_control: int, x_treatment: int, n_treatment: int, alpha: float = 0.05
) -> HypothesisTest:
    """Pooled two-proportion z-test of ``p_t - p_c``, with an unpooled (Wald) interval."""
    if min(n_control, n_treatment) <= 0:
        raise ValueError("both groups need at least one user")
    p_c, p_t = x_control / n_control, x_treatment / n_treatment
    pooled = (x_control + x_treatment) / (n_control + n_treatment)
    se_null = math.sqrt(pooled * (1 - pooled) * (1 / n_control + 1 / n_treatment))
    diff = p_t - p_c
    z = diff / se_null if se_null > 0 else 0.0
    se = math.sqrt(p_c * (1 - p_c) / n_control + p_t * (1 - p_t) / n_treatment)
    half = stats.norm.ppf(1 - alpha / 2) * se
    return HypothesisTest(
        "two-proportion z (pooled)",
        diff,
        diff - half,
        diff + half,
        z,
        float(2 * stats.norm.sf(abs(z))),
    )


def welch_ttest(control: np.ndarray, treatment: np.ndarray, alpha: float = 0.05) -> HypothesisTest:
    """Welch's t-test of ``mean_t - mean_c`` and its interval."""
    if min(control.size, treatment.size) < 2:
        raise ValueError("both groups need at least two users")
    diff = float(treatment.mean() - control.mean())
    if control.var() == 0 and treatment.var() == 0:
        return HypothesisTest("Welch t", diff, diff, diff, 0.0, 1.0 if diff == 0 else 0.0)
    result = stats.ttest_ind(treatment, control, equal_var=False)
    ci = result.confidence_interval(1 - alpha)
    return HypothesisTest(
        "Welch t",
        diff,
        float(ci.low),
        float(ci.high),
        float(result.statistic),
        float(result.pvalue),
    )


# ---------------------------------------------------------------------- bootstrap
@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


def bootstrap_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_resamples`` resamples (with replacement, same size) of ``values``.

    Exact, and cheap for shop data where most users are 0: resampling n users from n values
    of which m are non-zero picks Binomial(n, m/n) non-zero ones, each uniform over the m;
    so only those draws are made, in blocks, and a 0/1 metric needs no draws at all.
    """
    n = values.size
    if n == 0:
        raise ValueError("cannot bootstrap an empty group")
    nonzero = values[values != 0].astype(np.float64)
    if nonzero.size == 0:
        return np.zeros(n_resamples)
    picks = rng.binomial(n, nonzero.size / n, size=n_resamples)
    if np.all(nonzero == nonzero[0]):
        return picks * nonzero[0] / n
    width = max(int(picks.max()), 1)
    rows = max(1, _BLOCK_CELLS // width)
    sums = np.empty(n_resamples)
    columns = np.arange(width)
    for start in range(0, n_resamples, rows):
        block = picks[start : start + rows]
        draws = nonzero[rng.integers(0, nonzero.size, size=(block.size, width))]
        sums[start : start + rows] = np.where(columns < block[:, None], draws, 0.0).sum(axis=1)
    return sums / n


def bootstrap_lift(
    control: np.ndarray,
    treatment: np.ndarray,
    n_resamples: int = 2000,
    alpha: float = 0.05,
    rng: np.random.Generator | None = None,
) -> Interval:
    """Relative lift ``mean_t / mean_c - 1`` with a percentile bootstrap interval.

    Each arm is resampled on its own (the arms are independent samples). Undefined when the
    control's mean is 0; resamples whose control mean is 0 are left out of the percentiles.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    base = control.mean()
    if base == 0:
        return Interval(math.nan, math.nan, math.nan)
    means_c = bootstrap_means(control, n_resamples, rng)
    means_t = bootstrap_means(treatment, n_resamples, rng)
    ok = means_c > 0
    lifts = means_t[ok] / means_c[ok] - 1
    low, high = np.quantile(lifts, [alpha / 2, 1 - alpha / 2])
    return Interval(float(treatment.mean() / base - 1), float(low), float(high))


# ---------------------------------------------------------------------- design checks
@dataclass(frozen=True)
class SampleRatioCheck:
    observed: list[int]
    expected: list[float]
    chi2: float
    p_value: float
    flagged: bool


def srm_check(
    observed: np.ndarray | list[int], shares: list[float], threshold: float = SRM_THRESHOLD
) -> SampleRatioCheck:
    """Chi-square goodness of fit of users per variant against the configured shares."""
    counts = np.asarray(observed, dtype=np.int64)
    expected = np.asarray(shares, dtype=np.float64) * counts.sum()
    if counts.sum() == 0:
        return SampleRatioCheck(counts.tolist(), expected.tolist(), 0.0, 1.0, False)
    chi2, p_value = stats.chisquare(counts, f_exp=expected)
    return SampleRatioCheck(
        counts.tolist(), expected.tolist(), float(chi2), float(p_value), bool(p_value < threshold)
    )


def min_sample_proportion(
    baseline: float, mde: float, alpha: float, power: float, ratio: float = 1.0
) -> int:
    """Control users needed to detect a relative change ``mde`` of a rate ``baseline``.

    Two-sided test at ``alpha`` with ``power``; the treatment gets ``ratio`` times the
    control's users. Normal approximation with the pooled variance under the null and the
    unpooled one under the alternative (Fleiss, Levin & Paik, ch. 4).
    """
    p1, p2 = baseline, baseline * (1 + mde)
    if not 0 < p1 < 1 or not 0 < p2 < 1:
        raise ValueError(f"baseline {baseline} with lift {mde} leaves the (0, 1) range")
    pbar = (p1 + ratio * p2) / (1 + ratio)
    z_a, z_b = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    root = z_a * math.sqrt(pbar * (1 - pbar) * (1 + 1 / ratio)) + z_b * math.sqrt(
        p1 * (1 - p1) + p2 * (1 - p2) / ratio
    )
    return math.ceil(root**2 / (p2 - p1) ** 2)


def min_sample_mean(
    mean: float, sd: float, mde: float, alpha: float, power: float, ratio: float = 1.0
) -> int:
    """Control users needed to detect a relative change ``mde`` of a mean (equal variances)."""
    if mean <= 0 or sd <= 0:
        raise ValueError(f"need a positive mean and spread, got mean={mean}, sd={sd}")
    z_a, z_b = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    return math.ceil((z_a + z_b) ** 2 * sd**2 * (1 + 1 / ratio) / (mde * mean) ** 2)


# ---------------------------------------------------------------------- the report
_COLUMNS: dict[Metric, str] = {"ctr": "clicks", "conversion": "purchases", "revenue_per_user": ""}


@dataclass(frozen=True)
class VariantSummary:
    name: str
    share: float
    users: int
    exposures: int
    ctr: float
    cart_rate: float
    conversion: float
    revenue_per_user: float
    revenue: float


@dataclass(frozen=True)
class MetricComparison:
    metric: Metric
    control: float
    treatment: float
    test: HypothesisTest
    lift: Interval


@dataclass(frozen=True)
class Comparison:
    control: str
    treatment: str
    metrics: list[MetricComparison]
    #: the treatment's verdict on the primary metric
    kind: VerdictKind
    verdict: str


@dataclass(frozen=True)
class ABReport:
    experiment: str
    primary_metric: Metric
    alpha: float
    #: alpha of each treatment-vs-control comparison (Bonferroni)
    alpha_per_comparison: float
    power: float
    minimum_detectable_effect: float
    variants: list[VariantSummary]
    comparisons: list[Comparison]
    srm: SampleRatioCheck
    #: users each variant needs before a verdict; ``None`` when the baseline is still unknown
    min_sample: list[int] | None
    #: where the sample-size rule's baseline came from, and its value
    baseline: dict[str, Any]
    kind: VerdictKind
    verdict: str
    notes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def analyse(attribution: Attribution, config: ExperimentConfig) -> ABReport:
    """The full report of one experiment from its per-user attribution."""
    users = attribution.users
    groups = [users[users["variant"] == name] for name in config.variant_names]
    summaries = [_summary(v.name, v.share, g) for v, g in zip(config.variants, groups, strict=True)]
    srm = srm_check([s.users for s in summaries], config.shares)
    n_comparisons = len(config.variants) - 1
    alpha = config.alpha / n_comparisons
    rng = np.random.default_rng(config.seed)
    control = groups[0]
    comparisons = []
    for variant, group in zip(config.variants[1:], groups[1:], strict=True):
        metrics = [
            _compare(metric, control, group, alpha, config.bootstrap_resamples, rng)
            for metric in ("ctr", "conversion", "revenue_per_user")
            if control.shape[0] >= 2 and group.shape[0] >= 2
        ]
        comparisons.append((variant.name, metrics))
    min_sample, baseline = _min_sample(config, control, alpha)
    enough = min_sample is not None and all(
        s.users >= need for s, need in zip(summaries, min_sample, strict=True)
    )
    results = []
    for treatment, metrics in comparisons:
        kind, text = _comparison_verdict(treatment, metrics, config.primary_metric, alpha)
        if srm.flagged:
            kind, text = "srm", SRM_TEXT
        elif not enough:
            kind, text = "not_enough_data", NOT_ENOUGH_DATA
        results.append(Comparison(config.variant_names[0], treatment, metrics, kind, text))
    if srm.flagged:
        kind, verdict = "srm", SRM_TEXT
    elif not enough:
        kind, verdict = "not_enough_data", NOT_ENOUGH_DATA
    elif len(results) == 1:
        kind, verdict = results[0].kind, results[0].verdict
    else:
        best = [c for c in results if c.kind == "better"]
        kind = "better" if best else "no_difference"
        verdict = "; ".join(
            c.verdict if c.kind != "no_difference" else f"{c.treatment}: {c.verdict}"
            for c in results
        )
    return ABReport(
        experiment=config.name,
        primary_metric=config.primary_metric,
        alpha=config.alpha,
        alpha_per_comparison=alpha,
        power=config.power,
        minimum_detectable_effect=config.minimum_detectable_effect,
        variants=summaries,
        comparisons=results,
        srm=srm,
        min_sample=min_sample,
        baseline=baseline,
        kind=kind,
        verdict=verdict,
        notes={
            "users exposed to more than one variant (kept in their first)": (
                attribution.n_multi_variant_users
            ),
            "outcomes outside the attribution window or before the first exposure": (
                attribution.n_unattributed_outcomes
            ),
            "exposed users in no configured variant": int(
                (pd.Index(config.variant_names).get_indexer(users["variant"]) < 0).sum()
            ),
        },
    )


def _values(group: Any, metric: Metric) -> np.ndarray:
    if metric == "revenue_per_user":
        return group["revenue"].to_numpy(dtype=np.float64)
    return (group[_COLUMNS[metric]].to_numpy() > 0).astype(np.float64)


def _summary(name: str, share: float, group: Any) -> VariantSummary:
    n = group.shape[0]

    def rate(column: str) -> float:
        return float((group[column] > 0).mean()) if n else math.nan

    return VariantSummary(
        name=name,
        share=share,
        users=n,
        exposures=int(group["exposures"].sum()),
        ctr=rate("clicks"),
        cart_rate=rate("carts"),
        conversion=rate("purchases"),
        revenue_per_user=float(group["revenue"].mean()) if n else math.nan,
        revenue=float(group["revenue"].sum()),
    )


def _compare(
    metric: Metric,
    control: Any,
    treatment: Any,
    alpha: float,
    n_resamples: int,
    rng: np.random.Generator,
) -> MetricComparison:
    a, b = _values(control, metric), _values(treatment, metric)
    if metric == "revenue_per_user":
        test = welch_ttest(a, b, alpha)
    else:
        test = two_proportion_ztest(int(a.sum()), a.size, int(b.sum()), b.size, alpha)
    lift = bootstrap_lift(a, b, n_resamples, alpha, rng)
    return MetricComparison(metric, float(a.mean()), float(b.mean()), test, lift)


def _comparison_verdict(
    treatment: str, metrics: list[MetricComparison], primary: Metric, alpha: float
) -> tuple[VerdictKind, str]:
    found = [m for m in metrics if m.metric == primary]
    if not found or found[0].test.p_value >= alpha:
        return "no_difference", NO_DIFFERENCE
    if found[0].test.diff > 0:
        return "better", f"{treatment} better"
    return "worse", f"{treatment} worse"


def _min_sample(
    config: ExperimentConfig, control: Any, alpha: float
) -> tuple[list[int] | None, dict[str, Any]]:
    """Users each variant needs, from the plan; the control's baseline if none is configured."""
    shares = np.asarray(config.shares)
    if config.min_sample_per_variant is not None:
        fixed = config.min_sample_per_variant
        return [fixed] * shares.size, {"source": "config min_sample_per_variant", "value": None}
    metric = config.primary_metric
    values = _values(control, metric) if control.shape[0] else np.zeros(0)
    if metric == "revenue_per_user":
        source = "observed control"
        mean = float(values.mean()) if values.size else 0.0
        sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
        if mean <= 0 or sd <= 0:
            return None, {"source": source, "value": None}
        need = [
            min_sample_mean(mean, sd, config.minimum_detectable_effect, alpha, config.power, r)
            for r in shares[1:] / shares[0]
        ]
        baseline = {"source": source, "value": mean, "sd": sd}
    else:
        if config.baseline_rate is not None:
            source, rate = "config baseline_rate", config.baseline_rate
        else:
            source, rate = "observed control", float(values.mean()) if values.size else 0.0
        if not 0 < rate * (1 + config.minimum_detectable_effect) < 1:
            return None, {"source": source, "value": rate}
        need = [
            min_sample_proportion(rate, config.minimum_detectable_effect, alpha, config.power, r)
            for r in shares[1:] / shares[0]
        ]
        baseline = {"source": source, "value": rate}
    # the control must be large enough for every comparison; each treatment for its own
    ratios = shares[1:] / shares[0]
    control_need = max(need)
    treatment_need = [math.ceil(n * r) for n, r in zip(need, ratios, strict=True)]
    return [control_need, *treatment_need], baseline
