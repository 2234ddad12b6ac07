"""How an experiment is declared: variants, traffic shares and the statistical plan.

The plan (primary metric, alpha, power, minimum detectable effect) is fixed *before* any
data comes in, as a careful analyst does: the minimum sample follows from it, and no verdict
is given before every variant has reached it, so an early lucky streak cannot end a test.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Metrics a verdict can be based on; all are per exposed user, the unit of randomisation.
Metric = Literal["conversion", "ctr", "revenue_per_user"]

#: Shares must sum to 1 within this tolerance (room for decimal fractions like 1/3).
_SHARE_TOLERANCE = 1e-6


class VariantConfig(BaseModel):
    """One arm of an experiment: what its users are served, and how many get it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    #: fraction of the experiment's users, in (0, 1]
    share: float = Field(gt=0, le=1)
    #: engine version folder (e.g. ``"v0003"``) serving this arm; ``None``: the current one
    engine: str | None = None
    #: pipeline settings this arm overrides (e.g. ``{"recommend.source": "popularity"}``)
    settings: dict[str, Any] = Field(default_factory=dict)


class ExperimentConfig(BaseModel):
    """An A/B (or A/B/n) test; the first variant is the control every other one is compared to.

    Assignment hashes ``(name, salt, user)``: a new ``salt`` reshuffles everybody (use it to
    restart a test on fresh buckets), and adding a variant at the end while taking its share
    from the last one keeps every user of the other variants where they were.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    salt: str = ""
    variants: list[VariantConfig] = Field(min_length=2)
    primary_metric: Metric = "conversion"
    #: two-sided significance level; with more than one treatment it is split (Bonferroni)
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    #: probability of detecting a true effect of ``minimum_detectable_effect``
    power: float = Field(default=0.8, gt=0.5, lt=1)
    #: smallest relative change of the primary metric worth detecting (0.10 = 10% lift)
    minimum_detectable_effect: float = Field(default=0.10, gt=0)
    #: control's expected primary rate for the sample-size rule; ``None``: the observed one
    baseline_rate: float | None = Field(default=None, gt=0, lt=1)
    #: fixed minimum users per variant, overriding the computed one
    min_sample_per_variant: int | None = Field(default=None, ge=1)
    #: clicks, carts and purchases count if this soon after the user's latest exposure
    attribution_window: timedelta = timedelta(days=7)
    bootstrap_resamples: int = Field(default=2000, ge=100)
    #: seed of the bootstrap, so a report is reproducible
    seed: int = 0

    @field_validator("attribution_window")
    @classmethod
    def _positive_window(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("attribution_window must be positive")
        return value

    @model_validator(mode="after")
    def _check_variants(self) -> Self:
        names = [v.name for v in self.variants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"variants: duplicate name(s) {duplicates}")
        total = math.fsum(v.share for v in self.variants)
        if abs(total - 1.0) > _SHARE_TOLERANCE:
            raise ValueError(f"variants: shares sum to {total:g}, not 1")
        return self

    @property
    def variant_names(self) -> list[str]:
        return [v.name for v in self.variants]

    @property
    def shares(self) -> list[float]:
        return [v.share for v in self.variants]
