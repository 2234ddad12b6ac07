"""A disk cache of generated texts, so a rerun generates nothing twice and a crash resumes.

One SQLite file (WAL mode): the key is the sha256 of the backend name, model, prompt and
generation parameters, so an answer is reused only under exactly the settings that made it.
Answers are committed after every batch, so an interrupted run loses at most one batch.
Failed prompts (``None``) are not stored: the next run tries them again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from tqdm.auto import tqdm

from shoplm.augment.base import GenerationBackend

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    output TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (datetime('now'))
)
"""

#: SQLite caps host parameters per statement (32,766 since 3.32); stay well below
_LOOKUP_CHUNK = 900


def cache_key(backend: GenerationBackend, prompt: str) -> str:
    """sha256 of (backend name, model, prompt, generation parameters) as canonical JSON."""
    payload = json.dumps(
        [backend.name, backend.model, prompt, backend.generation_params()],
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class GenerationCache:
    """Generated texts by cache key, in the SQLite file ``path`` (created with its folder)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    def open(self) -> Self:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db = sqlite3.connect(self.path)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(_SCHEMA)
            except sqlite3.DatabaseError as exc:
                raise ValueError(
                    f"{self.path}: not a usable shoplm generation cache: {exc}"
                ) from exc
        return self

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def db(self) -> sqlite3.Connection:
        return self.open()._db  # type: ignore[return-value]

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        """The cached outputs of those ``keys`` that are present."""
        found: dict[str, str] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = unique[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT key, output FROM generations WHERE key IN ({marks})", chunk
            )
            found.update(rows.fetchall())
        return found

    def put_many(self, rows: Sequence[tuple[str, str, str, str]]) -> None:
        """Store ``(key, backend, model, output)`` rows and commit."""
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO generations (key, backend, model, output) "
                "VALUES (?, ?, ?, ?)",
                rows,
            )

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM generations").fetchone()[0])


def generate_cached(
    backend: GenerationBackend,
    prompts: Sequence[str],
    cache: GenerationCache | None,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "generating",
) -> tuple[list[str | None], int]:
    """Answers for ``prompts``: from the cache where present, else from ``backend`` in batches.

    Returns the answers (``None`` where the backend failed) and how many came from the cache.
    Identical prompts are generated once. The progress bar counts prompts still to generate,
    with rate and ETA.
    """
    keys = [cache_key(backend, p) for p in prompts]
    use_cache = cache is not None and backend.cacheable
    cached = cache.get_many(keys) if use_cache else {}  # type: ignore[union-attr]
    todo = [k for k in dict.fromkeys(keys) if k not in cached]
    prompt_of = dict(zip(keys, prompts, strict=True))
    fresh: dict[str, str | None] = {}
    with tqdm(total=len(todo), desc=desc, unit="prompt", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            answers = backend.generate([prompt_of[k] for k in batch])
            if len(answers) != len(batch):
                raise RuntimeError(
                    f"backend {backend.name!r} returned {len(answers)} answers "
                    f"for {len(batch)} prompts"
                )
            fresh.update(zip(batch, answers, strict=True))
            if use_cache:
                cache.put_many(  # type: ignore[union-attr]
                    [
                        (k, backend.name, backend.model, a)
                        for k, a in zip(batch, answers, strict=True)
                        if a is not None
                    ]
                )
            bar.update(len(batch))
    answers_out = [cached[k] if k in cached else fresh[k] for k in keys]
    return answers_out, sum(k in cached for k in keys)
