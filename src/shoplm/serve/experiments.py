"""A/B experiments on the serving path: assign, serve the variant, log exposures and outcomes.

Each request with a user is assigned in every running experiment (a pure hash of the
pseudonym, :func:`shoplm.experiment.assign_names`), served by the arm its variants name,
and recorded as an exposure; each committed click, cart and purchase is recorded as an
outcome. The statistics happen later, in :func:`shoplm.experiment.analyse`.

Writes to the experiment log do not wait on the request: they queue for one writer thread
that stores everything queued since its last write in one transaction per experiment (one
fsync per group, as the event log's committer does). A ``kill -9`` can lose the last
group (at most ``flush_seconds`` of traffic); both arms lose the same wall-clock slice, so
the loss is not a sample-ratio mismatch. A report or an erasure first waits for the queue
to drain, so it sees every exposure served before it.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shoplm.experiment import ExperimentConfig, ExperimentLog, analyse, assign_names
from shoplm.serve.live import ArmSpec

LOGGER = logging.getLogger("shoplm.serve")
#: the experiment log's file inside the data folder
EXPERIMENT_LOG_FILE = "experiments.db"
#: pseudonyms whose assignment is remembered (assignment is a pure function: a cache is safe)
_ASSIGNMENT_CACHE = 100_000


@dataclass(frozen=True)
class Assignment:
    """One user's variants: ``variants[i]`` in ``experiments[i]``, and the arm serving them."""

    experiments: tuple[str, ...]
    variants: tuple[str, ...]
    arm: ArmSpec

    def fields(self) -> dict[str, object]:
        """The answer's experiment fields: the first experiment, and all of them."""
        return {
            "experiment": self.experiments[0],
            "variant": self.variants[0],
            "experiments": dict(zip(self.experiments, self.variants, strict=True)),
        }


def arm_specs(configs: Sequence[ExperimentConfig]) -> dict[tuple[str, ...], ArmSpec]:
    """The arm of every combination of variants, checked; refuses experiments that clash.

    Several experiments may run at once (independent hashes); their variants must change
    different things, so that each combination has one meaning: at most one experiment may
    vary the engine version, and no two may vary the same setting.
    """
    engines = [c.name for c in configs if any(v.engine is not None for v in c.variants)]
    if len(engines) > 1:
        raise ValueError(
            f"experiments: {engines} all vary the engine version; run them one after another "
            "or as variants of one experiment"
        )
    for a, b in itertools.combinations(configs, 2):
        shared = {k for v in a.variants for k in v.settings} & {
            k for v in b.variants for k in v.settings
        }
        if shared:
            raise ValueError(f"experiments {a.name!r} and {b.name!r} both vary {sorted(shared)}")
    specs = {}
    for combo in itertools.product(*(c.variants for c in configs)):
        engine = next((v.engine for v in combo if v.engine is not None), None)
        settings: dict[str, object] = {}
        for config, variant in zip(configs, combo, strict=True):
            where = f"experiments.{config.name}.variants.{variant.name}"
            ArmSpec.make(variant.engine, variant.settings, where)  # names the variant on error
            settings.update(variant.settings)
        specs[tuple(v.name for v in combo)] = ArmSpec.make(engine, settings, "experiments")
    return specs


class LiveExperiments:
    """The running experiments of one service, their log and its writer thread."""

    def __init__(
        self,
        configs: Sequence[ExperimentConfig],
        log_path: Path,
        prices: Callable[[list[str]], np.ndarray],
        flush_seconds: float = 0.2,
    ) -> None:
        self.configs = list(configs)
        self.log_path = Path(log_path)
        #: the price of each item id (NaN when unknown), for the revenue of a purchase
        self.prices = prices
        self.flush_seconds = flush_seconds
        self.arms = arm_specs(self.configs) if self.configs else {}
        #: outcomes stored without revenue, by reason (counted, never silently zero)
        self.revenue_problems: dict[str, int] = {}
        #: called with (experiment, variant, field, count) for the monitor
        self.observers: list[Callable[[str, str, str, int], None]] = []
        self._names = tuple(c.name for c in self.configs)
        self._assigned: dict[str, tuple[str, ...]] = {}
        self._exposures: list[tuple[str, str, str, int, str, list[str]]] = []
        self._outcomes: list[tuple[str, str | None, str, int, float]] = []
        self._ready = threading.Condition()
        self._pending = 0  # groups taken by the writer and not yet stored
        self._closing = False
        self._log: ExperimentLog | None = None
        self._writer = threading.Thread(
            target=self._run_writes, name="shoplm-experiment-writes", daemon=True
        )

    @property
    def running(self) -> bool:
        return bool(self.configs)

    @property
    def has_log(self) -> bool:
        return self._log is not None

    @property
    def log(self) -> ExperimentLog:
        assert self._log is not None, "LiveExperiments.open opens the log"
        return self._log

    def open(self) -> LiveExperiments:
        """Open the log, register every experiment (refusing a changed definition), start."""
        self._log = ExperimentLog(self.log_path)
        for config in self.configs:
            self._log.register(config)
        self._writer.start()
        return self

    def close(self) -> None:
        """Store what is queued, stop the writer and close the log."""
        with self._ready:
            self._closing = True
            self._ready.notify_all()
        if self._writer.is_alive():
            self._writer.join()
        if self._log is not None:
            self._log.close()

    def config(self, name: str) -> ExperimentConfig | None:
        return next((c for c in self.configs if c.name == name), None)

    # ------------------------------------------------------------------ serving path
    def assign(self, pseudonym: str) -> Assignment:
        """The user's variant in every running experiment (cached; a pure hash)."""
        variants = self._assigned.get(pseudonym)
        if variants is None:
            variants = self._variants([pseudonym])[0]
            if len(self._assigned) >= _ASSIGNMENT_CACHE:
                self._assigned.clear()
            self._assigned[pseudonym] = variants
        return Assignment(self._names, variants, self.arms[variants])

    def _variants(self, pseudonyms: list[str]) -> list[tuple[str, ...]]:
        columns = [assign_names(config, pseudonyms) for config in self.configs]
        return [tuple(str(v) for v in row) for row in zip(*columns, strict=True)]

    def expose(
        self, pseudonym: str, assignment: Assignment, surface: str, items: list[str]
    ) -> None:
        """Queue the exposure of a served list to each experiment's variant."""
        now = time.time_ns()
        with self._ready:
            for name, variant in zip(assignment.experiments, assignment.variants, strict=True):
                self._exposures.append((name, variant, pseudonym, now, surface, items))
            self._ready.notify()
        for name, variant in zip(assignment.experiments, assignment.variants, strict=True):
            for observe in self.observers:
                observe(name, variant, "exposures", 1)

    def record_events(self, rows: list[tuple]) -> None:
        """Queue the outcomes among committed event rows (the event log's column order).

        A purchase's revenue is its quantity (``value``; 1 when absent) times the item's
        price; a purchase whose value is not a whole number, or whose item has no price
        (items added since the build among them), is stored with revenue 0 and counted
        in :attr:`revenue_problems`.
        """
        kept = [r for r in rows if r[3] in ("click", "add_to_cart", "purchase")]
        if not kept:
            return
        bought = [r for r in kept if r[3] == "purchase"]
        prices = dict(zip((r[2] for r in bought), self.prices([r[2] for r in bought]), strict=True))
        outcomes = []
        for _, user, item, event, stamp, _, value, _ in kept:
            revenue = 0.0
            if event == "purchase":
                quantity = 1.0 if value is None else float(value)
                price = float(prices[item])
                if quantity < 0 or not quantity.is_integer():
                    self._count("purchase value is not a quantity")
                elif math.isnan(price):
                    self._count("item has no price")
                else:
                    revenue = quantity * price
            outcomes.append((user, item, event, int(stamp), revenue))
        with self._ready:
            self._outcomes.extend(outcomes)
            self._ready.notify()
        if self.observers:
            for user, _, event, _, _ in outcomes:
                assignment = self.assign(user)
                for name, variant in zip(assignment.experiments, assignment.variants, strict=True):
                    for observe in self.observers:
                        observe(name, variant, event, 1)

    def _count(self, reason: str) -> None:
        self.revenue_problems[reason] = self.revenue_problems.get(reason, 0) + 1

    # ------------------------------------------------------------------ reads, erasure
    def flush(self) -> None:
        """Wait until everything queued so far is stored."""
        with self._ready:
            self._ready.notify()
            while self._exposures or self._outcomes or self._pending:
                self._ready.wait(timeout=1.0)
                if not self._writer.is_alive():
                    return

    def report(self, name: str) -> dict[str, object]:
        """:func:`analyse` of one experiment, over everything served until now."""
        config = self.config(name)
        if config is None:
            raise KeyError(name)
        self.flush()
        report = analyse(self.log.attributed(name), config).to_dict()
        report["revenue_not_counted"] = dict(self.revenue_problems)
        return report

    def forget(self, pseudonym: str) -> int:
        """Erase the user's exposures and outcomes, including any still queued."""
        self.flush()
        return self.log.forget(pseudonym)

    # ------------------------------------------------------------------ writer thread
    def _run_writes(self) -> None:
        while True:
            with self._ready:
                while not (self._exposures or self._outcomes) and not self._closing:
                    self._ready.wait()
                if not (self._exposures or self._outcomes):
                    return
                exposures, self._exposures = self._exposures, []
                outcomes, self._outcomes = self._outcomes, []
                self._pending += 1
            try:
                self._store(exposures, outcomes)
            except Exception:
                LOGGER.exception(
                    "experiment log write failed",
                    extra={"fields": {"exposures": len(exposures), "outcomes": len(outcomes)}},
                )
            with self._ready:
                self._pending -= 1
                self._ready.notify_all()
            if not self._closing:
                time.sleep(self.flush_seconds)  # let the next group gather

    def _store(self, exposures: list[tuple], outcomes: list[tuple]) -> None:
        if exposures:
            frame = pd.DataFrame(
                exposures,
                columns=["experiment", "variant", "user", "served_at", "surface", "items"],
            )
            for name, rows in frame.groupby("experiment", sort=False):
                self.log.record_exposures(str(name), rows.drop(columns="experiment"))
        if outcomes:
            self.log.record_outcomes(
                pd.DataFrame(outcomes, columns=["user", "item", "event", "timestamp", "revenue"])
            )
