"""Service settings: who may write, how big a request may be, who may call from a browser."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

_SHA256_HEX = 64


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest stored in place of an API key.

    Keys are long random tokens, so a plain (unsalted, fast) hash is enough: there is no
    small space of likely keys to search, and a leaked settings file gives no usable key.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: SHA-256 hex digests of the accepted API keys (see :func:`hash_api_key`)
    api_key_hashes: list[str] = Field(default_factory=list)
    #: environment variable with further keys in clear, comma-separated; hashed at start
    api_keys_env: str = "SHOPLM_API_KEYS"
    #: digests of the keys for admin routes (engine reload); write keys do not open them
    admin_key_hashes: list[str] = Field(default_factory=list)
    admin_keys_env: str = "SHOPLM_ADMIN_KEYS"
    #: require a key on read routes (search, recommendations) too
    protect_reads: bool = False
    #: larger request bodies are refused with 413 before they are read
    max_body_bytes: int = Field(default=1_048_576, ge=1_024)
    max_events_per_request: int = Field(default=1_000, ge=1)
    #: browser origins allowed to call the API (CORS); empty allows none
    cors_origins: list[str] = Field(default_factory=list)
    #: most search or recommendation requests answered by one batched call; 1 turns the
    #: batching of requests that arrive together off
    max_batch: int = Field(default=32, ge=1, le=1_024)
    #: recent items kept per user for real-time recommendations
    session_items: int = Field(default=50, ge=1)
    #: cap on the event log's size; at the cap writes fail as on a full disk (507)
    max_log_bytes: int | None = Field(default=None, ge=65_536)
    #: a TOML file whose ``[[experiments]]`` the service runs (read with
    #: :func:`shoplm.config.load_config`); unset: those of the served engine's config
    experiments_file: Path | None = None
    #: alert rules, each ``METRIC{LABELS} OP THRESHOLD for WINDOW [over SPAN]``
    #: (e.g. ``p99_ms{route="/search"} > 50 for 5m``); see :mod:`shoplm.serve.monitoring`
    alert_rules: list[str] = Field(default_factory=list)
    #: a TOML file of further rules: ``[[alerts]]`` tables with ``name`` and ``rule``
    alerts_file: Path | None = None
    #: width of the monitor's time buckets; rules are evaluated once per bucket
    monitor_bucket_seconds: float = Field(default=10.0, ge=0.5, le=3_600)
    #: history the monitor keeps (memory and its SQLite table)
    monitor_retention_seconds: float = Field(default=86_400.0, ge=60)

    @field_validator("api_key_hashes", "admin_key_hashes")
    @classmethod
    def _hex_digests(cls, value: list[str]) -> list[str]:
        for digest in value:
            if len(digest) != _SHA256_HEX or not all(c in "0123456789abcdef" for c in digest):
                raise ValueError("each key hash must be a lowercase SHA-256 hex digest")
        return value

    def key_digests(self) -> list[bytes]:
        """Digests of every accepted key: the configured hashes and the keys in the env."""
        return _digests(self.api_key_hashes, self.api_keys_env)

    def admin_key_digests(self) -> list[bytes]:
        """Digests of the admin keys; with none configured every admin request is refused."""
        return _digests(self.admin_key_hashes, self.admin_keys_env)


def _digests(hashes: list[str], env: str) -> list[bytes]:
    from_env = [k.strip() for k in os.environ.get(env, "").split(",")]
    return [bytes.fromhex(d) for d in hashes + [hash_api_key(k) for k in from_env if k]]
