"""A/B experiments: sticky assignment, the exposure log, attribution, statistics and replay.

What the service calls, in order:

1. :func:`assign_names` (or :func:`assign`) on the pseudonymised users of a request, to pick
   each user's variant, then serve that variant;
2. :meth:`ExperimentLog.record_exposures` with what was served;
3. :meth:`ExperimentLog.record_outcomes` with every accepted click, cart and purchase.

``shoplm ab report`` (or :func:`analyse` on :meth:`ExperimentLog.attributed`) does the rest.
"""

from shoplm.experiment.assignment import BUCKETS, assign, assign_names, buckets
from shoplm.experiment.config import ExperimentConfig, VariantConfig
from shoplm.experiment.log import Attribution, ExperimentError, ExperimentLog, attribute
from shoplm.experiment.stats import ABReport, analyse

__all__ = [
    "BUCKETS",
    "ABReport",
    "Attribution",
    "ExperimentConfig",
    "ExperimentError",
    "ExperimentLog",
    "VariantConfig",
    "analyse",
    "assign",
    "assign_names",
    "attribute",
    "buckets",
]
