"""Request ids, structured JSON logs and Prometheus metrics for every request.

Logs and metrics name a request by its route *template* (``/users/{user_id}/...``), never
by its path or query string: those carry user ids and search text, which must not reach a
log file or a metrics store.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shoplm import __version__

LOGGER = logging.getLogger("shoplm.serve")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: int = logging.INFO) -> None:
    """Send shoplm's service logs to stderr as JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level)
    LOGGER.propagate = False


class Metrics:
    """The service's metrics in a registry of its own (one per app, so tests can make many)."""

    def __init__(self, engine_version: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "shoplm_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "shoplm_http_request_seconds",
            "HTTP request latency by route template and method",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "shoplm_batch_requests",
            "requests answered together by one batched search or recommendation call",
            ["route"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.engine = Info(
            "shoplm_engine", "the engine version being served", registry=self.registry
        )
        self.serving(engine_version)

    def serving(self, engine_version: str) -> None:
        """Record the engine version now served (at start and after each reload)."""
        self.engine.info({"engine_version": engine_version, "shoplm_version": __version__})


class RequestObserver:
    """ASGI middleware: a request id on every response, one log line and metrics per request.

    The caller's ``X-Request-ID`` is kept when it is a plain token (so ids can be traced
    across services) and replaced by a fresh one otherwise, so a header cannot inject text
    into the logs.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        record: Callable[[str, float, int], None] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        #: also told of each request (route template, seconds, status): the monitor
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "(unmatched)")
            method = scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(seconds)
            if self.record is not None:
                self.record(route, seconds, status)
            LOGGER.info(
                "request",
                extra={
                    "fields": {
                        "request_id": request_id,
                        "method": method,
                        "route": route,
                        "status": status,
                        "ms": round(seconds * 1000, 2),
                    }
                },
            )
