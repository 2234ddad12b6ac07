"""Build → evaluate → gate → promote → reload; rollback; rerun when enough events arrive.

A candidate is built into a new version folder *without* being made current, scored next
to the live engine on the same held-out data (:mod:`shoplm.deploy.evaluate`) and judged by
the gates of ``[deploy]``. Only a candidate that passes every gate is promoted, by the
store's atomic rename of the ``current`` link, and then loaded into the running service by
``POST /admin/reload``, which checks the new engine in full before it swaps; ``/health``
must then name it. A failing gate changes nothing that serves: the candidate stays on disk,
marked rejected, for inspection.

Every run leaves its record in the candidate's ``deploy.json`` (inputs, each step's
seconds, both engines' metrics, each gate with both numbers, the decision, who and when)
and one line in ``ENGINE_ROOT/deployments.jsonl``, the history the console shows. One
deploy or rollback at a time per engine root: they hold an exclusive ``flock`` on
``ENGINE_ROOT/.deploy.lock``.
"""

from __future__ import annotations

import fcntl
import getpass
import gzip
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from shoplm import store
from shoplm.config import ShoplmConfig
from shoplm.data.readers import file_format
from shoplm.deploy.config import DeployConfig
from shoplm.deploy.evaluate import (
    K,
    choose_targets,
    folder_mb,
    latency,
    read_held_out_events,
    read_judged_queries,
    score_recommendations,
    score_search,
)
from shoplm.engine import Engine

#: the history next to the version folders; ``shoplm.serve.console`` reads the same file
DEPLOYMENTS_FILE = "deployments.jsonl"
#: the run's record inside the candidate's version folder, next to its manifest
RECORD_FILE = "deploy.json"
LOCK_FILE = ".deploy.lock"
#: offline metrics gated against the live engine (those measured on the given data)
GATED_METRICS = (f"recall@{K}", f"ndcg@{K}", f"search_ndcg@{K}")
#: decisions of a version that ``rollback`` will not return to
REFUSED = ("rejected", "failed", "reload-failed")
INPUTS = ("catalog", "events", "search_labels", "holdout_events", "holdout_queries")

Say = Callable[[str], None]


class DeployError(RuntimeError):
    """A deploy or rollback that cannot start or go on; the message says why."""


class ReloadError(RuntimeError):
    """The service did not load the new version; it goes on serving the one it had."""


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    candidate: float
    #: the bound the candidate had to meet; None when there was nothing to compare with
    limit: float | None
    live: float | None
    why: str


@dataclass
class Outcome:
    """What a deploy or rollback did; ``record`` is what ``deploy.json`` holds."""

    decision: str  # promoted | rejected | failed | reload-failed | rolled-back | unchanged
    version: str
    previous: str | None
    gates: list[Gate] = field(default_factory=list)
    record: dict = field(default_factory=dict)
    #: what the service answers from after the reload (None: no service configured)
    serving: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.decision in ("promoted", "rolled-back", "unchanged")


# ---------------------------------------------------------------------- deploy
def deploy(
    build_config: ShoplmConfig,
    config: DeployConfig,
    say: Say,
    progress: bool = False,
    events_seen: dict | None = None,
) -> Outcome:
    """Run the whole pipeline once; the outcome says whether the candidate went live.

    ``events_seen`` (source and count of events when the run started) is stored in the
    record so that scheduled mode counts new events from this run on.
    """
    root = _engine_root(config)
    if config.catalog is None:
        raise DeployError("deploy.catalog: no catalogue file given (--catalog or [deploy])")
    admin_key = _admin_key(config)
    with deploy_lock(root):
        previous = current_version(root)
        started = datetime.now(UTC)
        steps: dict[str, dict] = {}
        say(f"building a candidate from {config.catalog} (live engine: {previous or 'none'})")
        tick = time.perf_counter()
        candidate = build_unpromoted(
            config.catalog, root, config.events, build_config, progress, config.search_labels
        )
        manifest = json.loads((candidate / store.MANIFEST).read_text("utf-8"))
        steps["build"] = {
            "seconds": _since(tick),
            "version": candidate.name,
            "counts": manifest["counts"],
            "validation": manifest["validation"],
        }
        record: dict = {
            "candidate": candidate.name,
            "live": previous,
            "by": getpass.getuser(),
            "host": socket.gethostname(),
            "started_at": started.isoformat(timespec="seconds"),
            "inputs": {
                name: str(path) if (path := getattr(config, name)) is not None else None
                for name in INPUTS
            },
            "events_seen": events_seen,
            "deploy_config": config.model_dump(mode="json"),
            "steps": steps,
        }
        say(f"built {candidate.name} in {steps['build']['seconds']} s; evaluating")
        try:
            gates = _evaluate_and_gate(root, candidate, previous, config, record, say)
        except BaseException as exc:
            record["decision"] = "failed"
            record["error"] = f"{type(exc).__name__}: {exc}"
            _finish(root, candidate, record, "rejected", previous, error=record["error"])
            raise
        if not all(gate.passed for gate in gates):
            failed = [gate.name for gate in gates if not gate.passed]
            record["decision"] = "rejected"
            _finish(root, candidate, record, "rejected", previous, failed=failed)
            return Outcome("rejected", candidate.name, previous, gates, record)

        tick = time.perf_counter()
        store.promote(root, candidate)
        steps["promote"] = {"seconds": _since(tick)}
        append_history(root, "promote", candidate.name, previous)
        outcome = Outcome("promoted", candidate.name, previous, gates, record)
        if config.service_url is not None:
            assert admin_key is not None
            try:
                steps["reload"] = reload_service(
                    config.service_url, admin_key, candidate.name, config.reload_timeout_s
                )
                outcome.serving = candidate.name
            except ReloadError as exc:
                steps["reload"] = {"error": str(exc)}
                outcome.decision, outcome.error = "reload-failed", str(exc)
                _switch_back(root, previous, candidate.name, str(exc))
        record["decision"] = outcome.decision
        _finish(root, candidate, record, None, previous)
        return outcome


def _evaluate_and_gate(
    root: Path,
    candidate: Path,
    previous: str | None,
    config: DeployConfig,
    record: dict,
    say: Say,
) -> list[Gate]:
    """Score the candidate and the live engine on the same data; the gates' verdicts."""
    tick = time.perf_counter()
    engines = {"candidate": Engine.load(candidate)}
    if previous is not None:
        engines["live"] = Engine.load(root / previous)
    build_config = engines["candidate"].config
    metrics: dict[str, dict[str, float]] = {name: {} for name in engines}
    data: dict[str, object] = {}
    if config.holdout_events is not None:
        held = read_held_out_events(config.holdout_events, build_config)
        targets = choose_targets(held, engines["candidate"], config.eval_users)
        data["holdout_events"] = {
            "rows_read": held.rows_read,
            "skipped": held.skipped,
            **targets.counts,
        }
        for name, engine in engines.items():
            metrics[name] |= score_recommendations(engine, targets)
    queries: list[str] = []
    if config.holdout_queries is not None:
        judged = read_judged_queries(config.holdout_queries, config.eval_queries)
        queries = judged.queries
        data["holdout_queries"] = {
            "rows_read": judged.rows_read,
            "skipped": judged.skipped,
            "queries": len(judged.queries),
        }
        for name, engine in engines.items():
            metrics[name] |= score_search(engine, judged)
    record["steps"]["evaluate"] = {"seconds": _since(tick), "data": data}
    tick = time.perf_counter()
    for name, engine in engines.items():
        metrics[name] |= latency(engine, queries, config.latency_sample)
        metrics[name]["size_mb"] = round(folder_mb(engine.path), 3)
    record["steps"]["measure"] = {"seconds": _since(tick)}
    record["metrics"] = metrics
    gates = check_gates(metrics["candidate"], metrics.get("live"), config)
    record["gates"] = [vars(gate) for gate in gates]
    for gate in gates:
        say(("pass " if gate.passed else "FAIL ") + gate.why)
    return gates


def check_gates(
    candidate: dict[str, float], live: dict[str, float] | None, config: DeployConfig
) -> list[Gate]:
    """Each gate with both numbers: offline metrics against the live engine's less the
    margin, p99 latencies against the budget, the folder's size against its budget."""
    gates = []
    for name in GATED_METRICS:
        if name not in candidate:
            continue
        value = candidate[name]
        if live is None or name not in live:
            gates.append(
                Gate(name, True, value, None, None, f"{name}: {value:.4f} (no live engine)")
            )
            continue
        if config.drop_mode == "absolute":
            limit = live[name] - config.max_drop
            rule = f"live {live[name]:.4f} - {config.max_drop:g}"
        else:
            limit = live[name] * (1 - config.max_drop)
            rule = f"live {live[name]:.4f} x (1 - {config.max_drop:g})"
        passed = value >= limit
        relation = ">=" if passed else "<"
        why = f"{name}: candidate {value:.4f} {relation} {limit:.4f} ({rule})"
        gates.append(Gate(name, passed, value, limit, live[name], why))
    clock = "_cpu" if config.latency_clock == "cpu" else ""
    for route in ("search", "recommend"):
        name = f"{route}_p99{clock}_ms"
        if name in candidate:
            gates.append(_budget(name, candidate[name], config.latency_budget_ms, live, "ms"))
    gates.append(_budget("size_mb", candidate["size_mb"], config.size_budget_mb, live, "MB"))
    return gates


def _budget(
    name: str, value: float, limit: float, live: dict[str, float] | None, unit: str
) -> Gate:
    passed = value <= limit
    relation = "<=" if passed else ">"
    live_value = live.get(name) if live else None
    seen = f"; live {live_value:.1f} {unit}" if live_value is not None else ""
    why = f"{name}: candidate {value:.1f} {unit} {relation} budget {limit:g} {unit}{seen}"
    return Gate(name, passed, value, limit, live_value, why)


def build_unpromoted(
    catalog: Path,
    root: Path,
    events: Path | None,
    config: ShoplmConfig,
    progress: bool,
    search_labels: Path | None,
) -> Path:
    """A new complete version folder under ``root`` that ``current`` does not name."""
    result = Engine.build(catalog, root, events, config, progress, search_labels, promote=False)
    return result.path


# ---------------------------------------------------------------------- rollback
def rollback(root: Path, to: str | None, config: DeployConfig, say: Say) -> Outcome:
    """Make ``to`` (default: the newest accepted version older than ``current``) current,
    then reload the service as a deploy does."""
    root = Path(root)
    admin_key = _admin_key(config)
    with deploy_lock(root):
        previous = current_version(root)
        complete = {folder.name: folder for folder in store.versions(root)}
        target = to or _older_version(root, previous, complete)
        if target not in complete:
            raise DeployError(
                f"--to: no complete engine version {target!r} in {root} "
                f"(complete: {', '.join(complete) or 'none'})"
            )
        decision = (read_record(complete[target]) or {}).get("decision")
        if decision in REFUSED:
            raise DeployError(
                f"--to: {target} was {decision} by its deploy (see {complete[target]}/"
                f"{RECORD_FILE}); deploy it again to re-evaluate it"
            )
        if target == previous:
            say(f"{target} is already current; nothing changed")
            return Outcome("unchanged", target, previous)
        store.promote(root, complete[target])
        append_history(root, "rollback", target, previous)
        say(f"current: {previous} -> {target}")
        outcome = Outcome("rolled-back", target, previous)
        if config.service_url is not None:
            assert admin_key is not None
            try:
                outcome.record["reload"] = reload_service(
                    config.service_url, admin_key, target, config.reload_timeout_s
                )
                outcome.serving = target
            except ReloadError as exc:
                outcome.decision, outcome.error = "reload-failed", str(exc)
                _switch_back(root, previous, target, str(exc))
        return outcome


def _older_version(root: Path, current: str | None, complete: dict[str, Path]) -> str:
    if current is None:
        raise DeployError(f"{root}: no current engine to roll back from; name one with --to")
    names = list(complete)
    older = names[: names.index(current)] if current in names else []
    for name in reversed(older):
        if (read_record(complete[name]) or {}).get("decision") not in REFUSED:
            return name
    raise DeployError(f"{root}: no earlier accepted version than {current} to roll back to")


# ---------------------------------------------------------------------- scheduled mode
def watch(
    build_config: ShoplmConfig,
    config: DeployConfig,
    say: Say,
    max_runs: int | None = None,
    max_checks: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Outcome]:
    """Deploy whenever ``min_new_events`` events arrived since the last deploy's count.

    The source is ``event_log`` (the service's SQLite log, read-only: its highest row id,
    which erasures never lower) or else the event file (its records). The count a run
    started from is stored in its record, so a restarted watcher carries on from there.
    Stops after ``max_runs`` deploys or ``max_checks`` looks, or at Ctrl-C (the caller
    catches ``KeyboardInterrupt``); a deploy in progress is never cut short by the timer.
    """
    source = config.event_log or config.events
    if source is None:
        raise DeployError("deploy --watch: no event file or event log to watch")
    root = _engine_root(config)
    baseline = last_events_seen(root, source)
    outcomes: list[Outcome] = []
    checks = 0
    while True:
        count = count_events(source)
        checks += 1
        if count < baseline:
            say(f"{source}: {count} events, fewer than the {baseline} last counted; recounting")
            baseline = 0
        new = count - baseline
        if new >= config.min_new_events:
            say(f"{source}: {new} new events (>= {config.min_new_events}); deploying")
            outcome = deploy(build_config, config, say, events_seen=_seen(source, count))
            outcomes.append(outcome)
            baseline = count
        else:
            say(f"{source}: {new} new events, waiting for {config.min_new_events}")
        if (max_runs is not None and len(outcomes) >= max_runs) or (
            max_checks is not None and checks >= max_checks
        ):
            return outcomes
        sleep(config.interval_s)


def count_events(source: Path) -> int:
    """Events in the SQLite event log (highest id) or records in an event file.

    CSV and JSONL are counted by lines (less the header), Parquet from its footer: cheap
    enough to run every interval on a large log.
    """
    source = Path(source)
    if not source.is_file():
        raise DeployError(f"{source}: no such event file or event log")
    if source.suffix in (".sqlite3", ".sqlite", ".db"):
        wal = source.with_name(source.name + "-wal")
        mode = "ro" if wal.exists() else "ro&immutable=1"
        with closing(sqlite3.connect(f"{source.resolve().as_uri()}?mode={mode}", uri=True)) as db:
            return int(db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
    fmt = file_format(source)
    if fmt == "parquet":
        return pq.read_metadata(source).num_rows
    lines, last = 0, b"\n"
    opener = gzip.open if source.suffix.lower() == ".gz" else open
    with opener(source, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"  # a last line without its newline
    return max(lines - (1 if fmt in ("csv", "tsv") else 0), 0)


def last_events_seen(root: Path, source: Path) -> int:
    """The event count the newest deploy of ``source`` started from (0: none yet)."""
    for version in reversed(store.versions(root)):
        seen = (read_record(version) or {}).get("events_seen") or {}
        if seen.get("source") == str(Path(source).resolve()):
            return int(seen["count"])
    return 0


def _seen(source: Path, count: int) -> dict:
    return {"source": str(Path(source).resolve()), "count": count}


# ---------------------------------------------------------------------- service
def reload_service(url: str, key: str, expected: str, timeout: float) -> dict:
    """``POST /admin/reload`` then ``GET /health``, which must name ``expected``."""
    tick = time.perf_counter()
    try:
        with httpx.Client(base_url=url.rstrip("/"), timeout=timeout) as client:
            answer = client.post("/admin/reload", headers={"X-API-Key": key})
            if answer.status_code != 200:
                raise ReloadError(
                    f"POST {url}/admin/reload answered {answer.status_code}: {answer.text[:500]}"
                )
            serving = client.get("/health").json().get("engine_version")
    except httpx.HTTPError as exc:
        raise ReloadError(f"{url}: {type(exc).__name__}: {exc}") from exc
    if serving != expected:
        raise ReloadError(f"{url}/health names {serving}, not {expected}, after the reload")
    return {"seconds": _since(tick), "serving": serving, "url": url}


def _switch_back(root: Path, previous: str | None, failed: str, reason: str) -> None:
    """Put ``current`` back when the service would not load ``failed``: the link and the
    history then tell the truth about what serves."""
    _point_current(root, previous)
    if previous is not None:
        append_history(root, "rollback", previous, failed, reason=f"reload failed: {reason}")


# ---------------------------------------------------------------------- records
def current_version(root: Path) -> str | None:
    """The version the ``current`` link names, or None when there is none."""
    link = Path(root) / store.CURRENT
    return os.readlink(link) if link.is_symlink() else None


def read_record(version: Path) -> dict | None:
    """The ``deploy.json`` of a version (None: never deployed, or unreadable)."""
    try:
        record = json.loads((version / RECORD_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def append_history(root: Path, action: str, version: str, previous: str | None, **extra) -> None:
    """One line of ``deployments.jsonl`` (the console's format), flushed to disk."""
    entry = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "action": action,
        "version": version,
        "previous": previous,
        "by": getpass.getuser(),
        **extra,
    }
    with open(Path(root) / DEPLOYMENTS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _finish(
    root: Path,
    candidate: Path,
    record: dict,
    history: str | None,
    previous: str | None,
    **extra,
) -> None:
    record["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    # written under a name Engine.check_files does not parse, then renamed: a reload never
    # sees half a record
    tmp = candidate / f".{RECORD_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=2), "utf-8")
    os.replace(tmp, candidate / RECORD_FILE)
    if history is not None:
        append_history(root, history, candidate.name, previous, **extra)


def _point_current(root: Path, version: str | None) -> None:
    if version is None:
        (root / store.CURRENT).unlink(missing_ok=True)
    else:
        store.promote(root, root / version)


def _engine_root(config: DeployConfig) -> Path:
    if config.engine is None:
        raise DeployError("deploy.engine: no engine root given (--engine or [deploy])")
    root = Path(config.engine)
    if (root / store.MANIFEST).is_file():
        raise DeployError(f"{root}: a version folder; give the engine root (its parent)")
    return root


def _admin_key(config: DeployConfig) -> str | None:
    if config.service_url is None:
        return None
    key = os.environ.get(config.admin_key_env, "").strip()
    if not key:
        raise DeployError(
            f"deploy.service_url is set but {config.admin_key_env} holds no admin key "
            "(one of the service's SHOPLM_ADMIN_KEYS)"
        )
    return key


@contextmanager
def deploy_lock(root: Path) -> Iterator[None]:
    """Hold the engine root's deploy lock (``flock``, released if the process dies); a
    second holder is refused at once with :class:`DeployError`, never left waiting."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DeployError(
                f"{root}: another deploy or rollback is running (it holds {LOCK_FILE})"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _since(tick: float) -> float:
    return round(time.perf_counter() - tick, 2)
