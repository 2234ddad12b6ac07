"""The ``[deploy]`` section of ``shoplm.toml``: inputs, quality gates, the service to reload.

This module imports nothing from shoplm, so ``shoplm.config`` can hold a ``deploy`` field
of this type without an import cycle. Secrets never live in the file: the admin key is read
from the environment variable the section names.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: where the service's admin key is read from when a service URL is set
ADMIN_KEY_ENV = "SHOPLM_DEPLOY_ADMIN_KEY"


class DeployConfig(BaseModel):
    """How ``shoplm deploy`` builds, judges and ships a candidate engine."""

    model_config = ConfigDict(extra="forbid")

    # ---- inputs of the build
    #: engine root (the folder of vNNNN versions and the ``current`` link)
    engine: Path | None = None
    catalog: Path | None = None
    events: Path | None = None
    #: judged queries the search ranker is trained on (``query, item_id, relevance``)
    search_labels: Path | None = None

    # ---- held-out data both engines are scored on (never given to the build)
    #: events after the build's events: each user's first new item is the target
    holdout_events: Path | None = None
    #: judged queries (``query, item_id, relevance``) for search NDCG@10
    holdout_queries: Path | None = None
    #: held-out users scored at most (a seeded sample): bounds the evaluation's time
    eval_users: int = Field(default=5_000, ge=10)
    eval_queries: int = Field(default=2_000, ge=10)
    #: single requests timed per engine and per route for the p99 latency
    latency_sample: int = Field(default=200, ge=20)

    # ---- gates
    #: how far each offline metric of the candidate may fall below the live engine's
    max_drop: float = Field(default=0.01, ge=0.0)
    #: "absolute": candidate >= live - max_drop; "relative": candidate >= live * (1 - max_drop)
    drop_mode: Literal["absolute", "relative"] = "absolute"
    #: p99 of a single search and of a single recommendation, in process, in milliseconds
    latency_budget_ms: float = Field(default=200.0, gt=0)
    #: "cpu": the process's CPU time per request, what the engine itself costs, which a
    #: busy host does not inflate; "wall": elapsed time, what a caller waits on an idle host
    latency_clock: Literal["cpu", "wall"] = "cpu"
    #: the candidate's version folder on disk, in MB (10^6 bytes)
    size_budget_mb: float = Field(default=2_000.0, gt=0)

    # ---- the running service
    #: base URL of the service to reload after a promote or rollback (none: no reload)
    service_url: str | None = None
    #: environment variable holding one of the service's admin keys (SHOPLM_ADMIN_KEYS)
    admin_key_env: str = ADMIN_KEY_ENV
    reload_timeout_s: float = Field(default=120.0, gt=0)

    # ---- scheduled mode
    #: the service's SQLite event log to count new events in (read-only); default: the
    #: event file
    event_log: Path | None = None
    min_new_events: int = Field(default=10_000, ge=1)
    interval_s: float = Field(default=3_600.0, gt=0)


class DeployConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the field."""


def read_config_file(path: Path) -> tuple[dict, DeployConfig]:
    """The file's build sections (as a dict, for ``ShoplmConfig``) and its ``[deploy]``.

    The ``[deploy]`` section is taken out before the rest is validated, so the file works
    whether or not ``ShoplmConfig`` itself has a ``deploy`` field.
    """
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DeployConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise DeployConfigError(f"{path}: not valid TOML: {exc}") from exc
    section = raw.pop("deploy", {})
    try:
        deploy = DeployConfig.model_validate(section)
    except ValidationError as exc:
        problems = "; ".join(
            f"deploy.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise DeployConfigError(f"{path}: {problems}") from exc
    base = Path(path).resolve().parent
    # paths in the file are relative to the file, as a reader of the file expects
    rebased = {
        name: base / value.expanduser()
        for name in _PATH_FIELDS
        if (value := getattr(deploy, name)) is not None and not value.expanduser().is_absolute()
    }
    return raw, deploy.model_copy(update=rebased)


_PATH_FIELDS = (
    "engine",
    "catalog",
    "events",
    "search_labels",
    "holdout_events",
    "holdout_queries",
    "event_log",
)
