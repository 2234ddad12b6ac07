"""One typed configuration, read from ``shoplm.toml``.

Every section is optional; with no file at all shoplm reads the default column names of
:mod:`shoplm.data.schema` and builds its default pipeline.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shoplm.data.schema import EVENT_FIELDS, ITEM_FIELDS, EventType
from shoplm.deploy.config import DeployConfig
from shoplm.experiment.config import ExperimentConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CatalogConfig(_Section):
    #: shoplm field -> the column name in the shop's catalogue file
    columns: dict[str, str] = Field(default_factory=dict)

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_mapping(value, ITEM_FIELDS, "catalog.columns")


class EventsConfig(_Section):
    #: shoplm field -> the column name in the shop's event file
    columns: dict[str, str] = Field(default_factory=dict)
    #: the shop's event names -> shoplm event types (e.g. ``pageview = "view"``)
    event_names: dict[str, EventType] = Field(default_factory=dict)

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_mapping(value, EVENT_FIELDS, "events.columns")


class PrivacyConfig(_Section):
    #: environment variable holding the pseudonymisation key
    key_env: str = "SHOPLM_PSEUDONYM_KEY"
    #: file holding the key when the variable is unset; never inside an engine directory
    key_file: Path = Path("~/.config/shoplm/pseudonym.key")


class LoadConfig(_Section):
    #: rows per chunk while streaming a file: bounds memory, whatever the file size
    #: (about 1.5 KB per row in flight; 50,000 costs no speed against larger chunks)
    chunk_rows: int = Field(default=50_000, ge=1_000)
    #: row-level problems kept in memory per (field, reason) for the printed report; every
    #: problem is still written to the issues file
    examples_per_reason: int = Field(default=5, ge=0)


class SearchConfig(_Section):
    #: candidates taken from each retriever before fusion and ranking
    depth: int = Field(default=100, ge=10, le=2000)
    #: dense retrieval with the packaged text encoder (off: lexical only)
    dense: bool = True
    #: "auto" (MiniLM for Latin-script catalogues, multilingual USE otherwise), "minilm", "use"
    encoder: str = "auto"
    spelling: bool = True
    #: train a LambdaMART ranker when judged labels or search clicks are available
    learn_to_rank: bool = True
    #: fine-tune MiniLM's query tower on the shop (template queries + judged labels) inside
    #: the build (``shoplm build --finetune``; see shoplm.search.adapt)
    finetune: bool = False
    #: wall-clock budget of that training; the model is saved as it stands when it runs out
    finetune_minutes: float = Field(default=30.0, gt=0)


class RecommendConfig(_Section):
    #: choose the co-occurrence window, damping and recency decay on each user's last item
    #: (held out, full ranking) at build time; off: the library defaults
    tune: bool = True
    #: a safety cap on the wall time of each search (the best point found so far is kept);
    #: the sample below, not this cap, is what keeps a build's cost in check, so that the
    #: same inputs give the same engine on a busy machine as on an idle one
    tune_seconds: float = Field(default=900.0, gt=0)
    #: validation users sampled for the search (seeded): bounds its cost on a large log
    tune_users: int = Field(default=5_000, ge=50)
    #: seed of that sample and of ALS's initial factors: a build is reproducible
    seed: int = 0
    #: blend implicit ALS into the feed when held-out items say it helps (its share is
    #: chosen from 0, 0.25, 0.5, 1 at build time; 0 leaves it out of the engine)
    collaborative: bool = True
    #: maximal marginal relevance on category in the personal feed: 0 ranks by relevance
    #: alone, 0.3 trades some of it for lists that are not all one category
    diversity: float = Field(default=0.0, ge=0.0, lt=1.0)
    #: re-order the feed's top candidates with a LightGBM ranker trained on the log's own
    #: held-out items (``shoplm.recommend.ranker``); the build keeps it only when it beats
    #: the plain blend on its validation users
    ranker: bool = True
    #: "lambdarank" (LambdaMART) or "binary" (cross-entropy on "was it the next item")
    ranker_objective: Literal["lambdarank", "binary"] = "lambdarank"
    #: the blend's best items per request that the ranker re-orders
    ranker_candidates: int = Field(default=100, ge=10, le=1000)
    #: held-out items per sampled user to learn from (each fold refits the sources once)
    ranker_folds: int = Field(default=2, ge=1, le=5)
    #: users sampled (seeded) per fold: bounds the training cost on a large log
    ranker_users: int = Field(default=20_000, ge=50)


class ShoplmConfig(_Section):
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    load: LoadConfig = Field(default_factory=LoadConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    recommend: RecommendConfig = Field(default_factory=RecommendConfig)
    #: ``shoplm deploy`` gates and service address (kept out of manifests; docs/deploy.md)
    deploy: DeployConfig = Field(default_factory=DeployConfig, exclude=True)
    #: A/B tests, ``[[experiments]]`` in TOML (see docs/experiments.md)
    experiments: list[ExperimentConfig] = Field(default_factory=list)

    @field_validator("experiments")
    @classmethod
    def _unique_experiments(cls, value: list[ExperimentConfig]) -> list[ExperimentConfig]:
        names = [experiment.name for experiment in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"experiments: names must be unique, repeated: {repeated}")
        return value


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the field."""


def _check_mapping(value: dict[str, str], known: dict[str, str], where: str) -> dict[str, str]:
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(
            f"{where}: unknown shoplm field(s) {unknown}; known fields are {sorted(known)}"
        )
    return value


def load_config(path: Path | None) -> ShoplmConfig:
    """Read ``path`` (TOML); ``None`` gives the defaults."""
    if path is None:
        return ShoplmConfig()
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return ShoplmConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
